//! The eval path's CPU glue: the projections' entry point [`x_wt`], fused attention over the
//! AVX-512 kernel in `crates/biaslens-matmul`, and the one place the fast CPU paths read
//! candle's storage (`with_cpu_f32`).
//!
//! Used only where enabled ([`crate::model::Transformer::fast_kernels`]: `biaslens eval`) and
//! only for f32 CPU tensors without gradient tracking; everything else (edits, traces, the
//! report, whose snapshots must not depend on the CPU, and GPUs) keeps
//! [`super::stable_matmul`] and candle's ops.

use crate::Result;
pub use biaslens_matmul::{attention, attention_with, available, AttentionShape};
use candle_core::{CpuStorage, DType, Storage, Tensor};

/// Below this many rows, packing the weight costs more than the kernel saves.
pub const MIN_ROWS: usize = 64;

/// Run `f` on the f32 data of CPU tensors that track no gradient (made contiguous first); `None`
/// (and `f` not run) when any tensor is not one. The one place the fast CPU paths (kernels here
/// and in `model::fused`) read candle's storage.
pub(crate) fn with_cpu_f32<R, const N: usize>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Result<Option<R>> {
    if tensors
        .iter()
        .any(|t| t.track_op() || !t.device().is_cpu() || t.dtype() != DType::F32)
    {
        return Ok(None);
    }
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(N);
    for (st, l) in &guards {
        let Storage::Cpu(CpuStorage::F32(data)) = &**st else {
            return Ok(None);
        };
        slices.push(&data[l.start_offset()..l.start_offset() + l.shape().elem_count()]);
    }
    let slices: [&[f32]; N] = slices
        .try_into()
        .map_err(|_| crate::Error::Model("with_cpu_f32: slice count".into()))?;
    Ok(Some(f(slices)))
}

/// `x [m, k] · w [n, k]ᵀ`, the one entry point for the projections and the unembedding. With
/// `fast` (the eval path) it is candle's gemm in one call, whose AVX-512 kernels outrun this
/// crate's own (docs/performance.md, "The eval path's projections"); otherwise
/// [`super::stable_matmul::matmul`], whose bits do not depend on the CPU.
pub fn x_wt(x: &Tensor, w: &Tensor, fast: bool) -> Result<Tensor> {
    if fast && x.device().is_cpu() {
        #[cfg(feature = "mkl")]
        if let Some(out) = super::mkl::matmul(x, &w.t()?)? {
            return Ok(out);
        }
        return Ok(x.matmul(&w.t()?)?);
    }
    super::stable_matmul::matmul(x, &w.t()?)
}

/// Attention through the fused kernel: `q [b, h, t, d]` (scaled), `k`, `v [b, kvh, tk, d]`,
/// additive `mask [b, 1, t, tk]` → `z [b, t, h·d]`; `None` where it does not apply (no AVX-512,
/// not f32 on the CPU, gradients tracked), and the caller composes candle's ops instead.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
    if !available() {
        return Ok(None);
    }
    let (rows, heads, queries, head_dim) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    if mask.dims4()? != (rows, 1, queries, keys) || v.dims4()? != k.dims4()? {
        return Ok(None);
    }
    let shape = AttentionShape {
        rows,
        heads,
        kv_heads,
        queries,
        keys,
        head_dim,
    };
    let z = with_cpu_f32([q, k, v, mask], |[qs, ks, vs, ms]| {
        attention_with(qs, ks, vs, ms, shape, super::fused::attention_threads())
    })?;
    match z.flatten() {
        Some(z) => Ok(Some(Tensor::from_vec(
            z,
            (rows, queries, heads * head_dim),
            q.device(),
        )?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The glue against candle's composed attention (the reference path of
    /// `Transformer::attention`): grouped heads, a causal mask given as `[rows, 1, t, tk]` with
    /// past keys, output laid out as `[rows, t, heads · d]`. On an AVX-512 CPU the fused path
    /// must apply (a silent fallback would make the transformer-level tests vacuous).
    #[test]
    fn fused_attention_matches_candle_composition() {
        let dev = Device::Cpu;
        let (rows, heads, kvh, t, tk, d) = (2, 6, 2, 9, 13, 16);
        let q = Tensor::randn(0f32, 0.5, (rows, heads, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 0.5, (rows, kvh, tk, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 0.5, (rows, kvh, tk, d), &dev).unwrap();
        let past = tk - t;
        let mask: Vec<f32> = (0..rows * t * tk)
            .map(|i| {
                let (qi, j) = ((i / tk) % t, i % tk);
                if j <= past + qi {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, 1, t, tk), &dev).unwrap();
        let got = fused_attention(&q, &k, &v, &mask).unwrap();
        let Some(got) = got else {
            assert!(
                !available(),
                "the fused path declined plain f32 CPU tensors"
            );
            return;
        };
        let groups = heads / kvh;
        let expand = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .expand((rows, kvh, groups, tk, d))
                .unwrap()
                .reshape((rows, heads, tk, d))
                .unwrap()
        };
        let scores = q
            .matmul(&expand(&k).t().unwrap())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&expand(&v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((rows, t, heads * d))
            .unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
