//! One-pass versions of the eval path's elementwise chains (SwiGLU, RMS norm, the scoring
//! log-softmax). candle runs each
//! op of a chain as its own pass over a fresh tensor, single-threaded; on SmolLM2's eval these
//! passes and their allocations took a tenth of the time. Used where `Transformer::fast_kernels`
//! is on, for f32 CPU tensors without gradient tracking; everything else composes candle's ops
//! (the reference these are tested against). The loops live in the kernel crate
//! (`biaslens_matmul::elementwise`), which is compiled optimised even in dev builds.

use super::matmul::with_cpu_f32;
use super::transformer::log_softmax_accurate;
use crate::{Error, Result};
use biaslens_matmul::parallel::{ForEach, Rayon, Serial};
use candle_core::{DType, Tensor, D};

/// With `mkl`, called outside rayon's workers: the OpenMP team that runs MKL's products
/// ([`super::mkl::OpenMp`]), whose threads would otherwise spin idle between products.
fn openmp_team() -> Option<&'static dyn ForEach> {
    #[cfg(feature = "mkl")]
    if rayon::current_thread_index().is_none() {
        return Some(&super::mkl::OpenMp);
    }
    None
}

/// The threads of the element-wise passes: the OpenMP team where there is one, else the
/// calling thread, as candle's ops run.
pub(super) fn elementwise_threads() -> &'static dyn ForEach {
    openmp_team().unwrap_or(&Serial)
}

/// The threads of the fused attention's (row, head) pairs and of RoPE's rows: the OpenMP team
/// where there is one, else rayon's pool.
pub(super) fn attention_threads() -> &'static dyn ForEach {
    openmp_team().unwrap_or(&Rayon)
}

/// `silu(g) · u` with candle's silu (`g / (1 + exp(-g))`), the exponential vectorised (within
/// a few ulp of the composed ops); `None` when the fused form does not apply.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if g.shape() != u.shape() {
        return Ok(None);
    }
    let out = with_cpu_f32([g, u], |[gv, uv]| {
        biaslens_matmul::elementwise::silu_mul_with(gv, uv, elementwise_threads())
    })?;
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, g.shape(), g.device())?)),
        None => Ok(None),
    }
}

/// `gelu(g) · u` (`u = None`: `gelu(g)`) with GELU's tanh approximation, in one vectorised pass
/// (`biaslens_matmul::elementwise::gelu_tanh_mul`; within a few ulp of the exact function, as
/// close as candle's composed ops or closer); `None` when the fused form does not apply.
pub fn gelu_tanh_mul(g: &Tensor, u: Option<&Tensor>) -> Result<Option<Tensor>> {
    let out = match u {
        Some(u) if u.shape() != g.shape() => return Ok(None),
        Some(u) => with_cpu_f32([g, u], |[gv, uv]| {
            biaslens_matmul::elementwise::gelu_tanh_mul_with(gv, Some(uv), elementwise_threads())
        })?,
        None => with_cpu_f32([g], |[gv]| {
            biaslens_matmul::elementwise::gelu_tanh_mul_with(gv, None, elementwise_threads())
        })?,
    };
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, g.shape(), g.device())?)),
        None => Ok(None),
    }
}

/// `x / sqrt(mean(x², last axis) + eps) · scale` in one pass per row; differs from the
/// composed ops only by the rounding of the sum of squares. `None` when it does not apply.
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let dim = x.dims().last().copied().unwrap_or(0);
    if dim == 0 || scale.dims() != [dim] {
        return Ok(None);
    }
    let out = with_cpu_f32([x, scale], |[xv, sv]| {
        biaslens_matmul::elementwise::rms_norm_with(xv, dim, sv, eps as f32, elementwise_threads())
    })?;
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?)),
        None => Ok(None),
    }
}

/// HF's rotate-half RoPE of `x [rows, heads, t, d]` with per-row tables `cos`, `sin [rows, t,
/// d / 2]`: candle's `rope` kernel's operations (the same bits), its rows on
/// `attention_threads`. `None` when it does not apply.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    let (rows, heads, t, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims() != [rows, t, d / 2] || sin.dims() != cos.dims() {
        return Ok(None);
    }
    let out = with_cpu_f32([x, cos, sin], |[xv, cv, sv]| {
        biaslens_matmul::elementwise::rope_with(xv, rows, heads, t, d, cv, sv, attention_threads())
    })?;
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?)),
        None => Ok(None),
    }
}

/// Log-probabilities read from rows of logits: per row, `log p` of each requested token and
/// the row's most likely token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogProbs {
    /// `log_probs[row][j]` is `log p(tokens[row][j])`.
    pub log_probs: Vec<Vec<f32>>,
    pub argmax: Vec<u32>,
}

/// `log p` of `tokens[row]` under `logits [rows, vocab]`, and each row's argmax, without the
/// vocabulary-sized log-softmax: one pass for the max, one for the f64 normaliser (see
/// `biaslens_matmul::softmax`). Equals [`token_log_probs_composed`] up to the rounding of the
/// exponentials. `None` when it does not apply (not a plain f32 CPU tensor).
pub fn token_log_probs(logits: &Tensor, tokens: &[Vec<u32>]) -> Result<Option<TokenLogProbs>> {
    let (rows, vocab) = logits.dims2()?;
    check_tokens(rows, vocab, tokens)?;
    with_cpu_f32([logits], |[v]| {
        let norms = biaslens_matmul::softmax::row_normalisers(v, vocab);
        let log_probs = norms
            .iter()
            .zip(tokens)
            .enumerate()
            .map(|(row, (n, toks))| {
                toks.iter()
                    .map(|&t| n.log_prob(v[row * vocab + t as usize]))
                    .collect()
            })
            .collect();
        let argmax = norms.iter().map(|n| n.argmax as u32).collect();
        TokenLogProbs { log_probs, argmax }
    })
}

/// The reference: candle's ops through `log_softmax_accurate`, `argmax` and a gather.
pub fn token_log_probs_composed(logits: &Tensor, tokens: &[Vec<u32>]) -> Result<TokenLogProbs> {
    let (rows, vocab) = logits.dims2()?;
    check_tokens(rows, vocab, tokens)?;
    let lp = log_softmax_accurate(logits)?;
    let argmax = lp
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let idx: Vec<u32> = tokens
        .iter()
        .enumerate()
        .flat_map(|(row, toks)| toks.iter().map(move |&t| (row * vocab) as u32 + t))
        .collect();
    let m = idx.len();
    let mut vals = lp
        .flatten_all()?
        .index_select(&Tensor::from_vec(idx, m, logits.device())?, 0)?
        .to_vec1::<f32>()?
        .into_iter();
    let log_probs = tokens
        .iter()
        .map(|toks| vals.by_ref().take(toks.len()).collect())
        .collect();
    Ok(TokenLogProbs { log_probs, argmax })
}

fn check_tokens(rows: usize, vocab: usize, tokens: &[Vec<u32>]) -> Result<()> {
    if tokens.len() != rows {
        return Err(Error::Model(format!(
            "token_log_probs: {} token lists for {rows} rows of logits",
            tokens.len()
        )));
    }
    if let Some(&t) = tokens.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(Error::param(
            "token id",
            format!("{t} is outside the vocabulary ({vocab})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    fn data(shape: (usize, usize, usize), seed: u64) -> Tensor {
        Tensor::randn(0f32, 2.0, shape, &Device::Cpu)
            .and_then(|t| t.affine(1.0, seed as f64 * 0.01))
            .expect("random tensor")
    }

    #[test]
    fn silu_mul_matches_candle() {
        let (g, u) = (data((2, 5, 37), 1), data((2, 5, 37), 2));
        let fused = silu_mul(&g, &u).unwrap().expect("applies to plain f32");
        let composed = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let (f, c) = (
            fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            composed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, b) in f.iter().zip(&c) {
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs(), "{a} vs {b}");
        }
        // Where the CPU has no AVX-512 the scalar form runs: candle's operations exactly.
        if !biaslens_matmul::available() {
            assert_eq!(f, c);
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_norm() {
        let x = data((3, 4, 576), 3);
        let scale = Tensor::randn(1f32, 0.1, 576, &Device::Cpu).unwrap();
        let eps = 1e-5;
        let fused = rms_norm(&x, &scale, eps)
            .unwrap()
            .expect("applies to plain f32");
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = x
            .broadcast_mul(&(ms + eps).unwrap().sqrt().unwrap().recip().unwrap())
            .unwrap()
            .broadcast_mul(&scale)
            .unwrap();
        let rel = ((fused - &composed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap())
        .to_scalar::<f32>()
        .unwrap()
            / composed
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!(rel < 1e-6, "relative difference {rel}");
    }

    /// The fused reading against the composed one on logits of a 262k-sized spread (Gemma's
    /// vocabulary is that long; here 5,003 columns, off every block size).
    #[test]
    fn token_log_probs_match_the_composed_log_softmax() {
        let vocab = 5_003;
        let logits = Tensor::randn(0f32, 4.0, (6, vocab), &Device::Cpu).unwrap();
        let tokens: Vec<Vec<u32>> = (0..6u32)
            .map(|r| {
                (0..r)
                    .map(|j| (r * 997 + j * 1_231) % vocab as u32)
                    .collect()
            })
            .collect();
        let fused = token_log_probs(&logits, &tokens)
            .unwrap()
            .expect("applies to plain f32");
        let composed = token_log_probs_composed(&logits, &tokens).unwrap();
        assert_eq!(fused.argmax, composed.argmax);
        for (f, c) in fused
            .log_probs
            .iter()
            .flatten()
            .zip(composed.log_probs.iter().flatten())
        {
            assert!((f - c).abs() < 2e-6, "{f} vs {c}");
        }
        assert_eq!(fused.log_probs.iter().flatten().count(), 15);
        let bad = vec![vec![vocab as u32]; 6];
        assert!(token_log_probs(&logits, &bad).is_err());
        assert!(token_log_probs_composed(&logits, &bad).is_err());
    }

    #[test]
    fn declines_tracked_or_mismatched_tensors() {
        let g = data((1, 2, 8), 1);
        let u = data((1, 2, 9), 2);
        assert!(silu_mul(&g, &u).unwrap().is_none());
        let var = candle_core::Var::from_tensor(&g).unwrap();
        assert!(silu_mul(var.as_tensor(), &g).unwrap().is_none());
        assert!(rms_norm(
            &g,
            &Tensor::ones(9, DType::F32, &Device::Cpu).unwrap(),
            1e-5
        )
        .unwrap()
        .is_none());
    }
}
