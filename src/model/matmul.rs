//! A faster f32 `x · Wᵀ` for the CPU eval path (AVX-512, x86-64), checked against candle's
//! matmul (the slow reference) in tests and benches.
//!
//! Whether it pays is a measurement, not a promise: `cargo bench --bench matmul` runs it beside
//! candle's matmul at the model's shapes (docs/performance.md has the current figures). It is
//! the textbook layout: the weight is packed into panels of 32 output columns
//! (`[k][32]`, zero-padded), a 12-row × 32-column block of the output lives in 24 zmm
//! registers while k runs (blocked by 256 so a panel slice stays in L1/L2), and rows are split
//! across rayon's threads. Every output is a sequential fused-multiply-add sum over k, so it
//! differs from candle's result only by rounding (tests: < 1e-5 relative).
//!
//! Used only where enabled ([`crate::model::Transformer::fast_kernels`]: `biaslens eval`) and
//! only for f32 CPU tensors without gradient tracking and with at least [`MIN_ROWS`] rows;
//! everything else (edits, traces, the report, whose snapshots must not depend on the CPU, and
//! GPUs) keeps candle's matmul.

use crate::Result;
pub use biaslens_matmul::{
    attention, available, matmul_nt, matmul_packed, AttentionShape, PackedWeight,
};
use candle_core::{CpuStorage, DType, Storage, Tensor, TensorId};

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

/// A weight packed once for the kernel, with the id of the tensor it was packed from: a
/// weight replaced later (an edit assigns a new tensor) no longer matches and is packed per
/// call again.
#[derive(Debug)]
pub struct Packed {
    source: TensorId,
    weight: PackedWeight,
}

impl Packed {
    /// Pack `w [n, k]` when the kernel could use it (AVX-512, f32 on the CPU), else `None`.
    pub fn new(w: &Tensor) -> Result<Option<Packed>> {
        if !available() {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        let weight = with_cpu_f32([w], |[data]| PackedWeight::new(data, n, k))?;
        Ok(weight.map(|weight| Packed {
            source: w.id(),
            weight,
        }))
    }

    fn packs(&self, w: &Tensor) -> bool {
        self.source == w.id()
    }
}

/// `x [m, k] · w [n, k]ᵀ`: through the fast kernel when `fast` and it applies (with `packed`
/// when that was packed from `w`), else candle's matmul (the reference). The one entry point
/// for the projections and the unembedding.
pub fn x_wt(x: &Tensor, w: &Tensor, packed: Option<&Packed>, fast: bool) -> Result<Tensor> {
    if fast {
        if let Some(p) = packed.filter(|p| p.packs(w)) {
            if let Some(y) = packed_nt(x, &p.weight)? {
                return Ok(y);
            }
        }
        if let Some(y) = linear_nt(x, w)? {
            return Ok(y);
        }
    }
    super::stable_matmul::matmul(x, &w.t()?)
}

/// `x [m, k] · wᵀ` with a packed weight, or `None` where the kernel does not apply.
fn packed_nt(x: &Tensor, w: &PackedWeight) -> Result<Option<Tensor>> {
    if !available() {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims();
    if k != wk || m < MIN_ROWS {
        return Ok(None);
    }
    match with_cpu_f32([x], |[xa]| matmul_packed(xa, m, w))?.flatten() {
        Some(c) => Ok(Some(Tensor::from_vec(c, (m, n), x.device())?)),
        None => Ok(None),
    }
}

/// `x [m, k] · w[n, k]ᵀ` through the fast kernel, or `None` when it does not apply (no
/// AVX-512, not f32 on the CPU, gradients tracked, fewer than [`MIN_ROWS`] rows); the caller
/// then uses candle's matmul.
pub fn linear_nt(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !available() {
        return Ok(None);
    }
    let ((m, k), (n, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 || m < MIN_ROWS {
        return Ok(None);
    }
    match with_cpu_f32([x, w], |[xa, wa]| matmul_nt(xa, m, k, wa, n))?.flatten() {
        Some(c) => Ok(Some(Tensor::from_vec(c, (m, n), x.device())?)),
        None => Ok(None),
    }
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
        attention(qs, ks, vs, ms, shape)
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

    use biaslens_matmul::test_data as data;

    /// Every output against an f64 sum, on shapes that exercise every remainder (rows not a
    /// multiple of 12 or of a task, columns not a multiple of 16 or 32, k across blocks).
    #[test]
    fn matches_f64_reference_on_ragged_shapes() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the fast kernel is never used here");
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 17),
            (97, 300, 45),
            (200, 513, 33),
            (64, 576, 1536),
        ] {
            let (a, w) = (data(m * k, 1), data(n * k, 2));
            let c = matmul_nt(&a, m, k, &w, n).expect("available");
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| a[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                    assert!(
                        (c[i * n + j] as f64 - want).abs() < tol,
                        "[{m}x{k}x{n}] ({i},{j}): {} vs {want}",
                        c[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn linear_agrees_with_candle_and_declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(100 * 40, 3), (100, 40), &dev).unwrap();
        let w = Tensor::from_vec(data(70 * 40, 4), (70, 40), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        match linear_nt(&x, &w).unwrap() {
            Some(got) => {
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
            }
            None => assert!(!available()),
        }
        // Too few rows, or gradients tracked: candle's path.
        assert!(linear_nt(&x.narrow(0, 0, MIN_ROWS - 1).unwrap(), &w)
            .unwrap()
            .is_none());
        let var = candle_core::Var::from_tensor(&x).unwrap();
        assert!(linear_nt(var.as_tensor(), &w).unwrap().is_none());
    }

    /// A packed weight gives bit-for-bit the per-call kernel's product; once the weight it was
    /// packed from is replaced (as edits do), x_wt ignores it and uses the new weight.
    #[test]
    fn packed_weight_equals_per_call_packing_and_goes_stale_on_replacement() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(130 * 48, 5), (130, 48), &dev).unwrap();
        let w = Tensor::from_vec(data(70 * 48, 6), (70, 48), &dev).unwrap();
        let Some(packed) = Packed::new(&w).unwrap() else {
            assert!(!available());
            return;
        };
        let per_call = x_wt(&x, &w, None, true).unwrap();
        let with_pack = x_wt(&x, &w, Some(&packed), true).unwrap();
        let same = per_call.eq(&with_pack).unwrap().min_all().unwrap();
        assert_eq!(same.to_scalar::<u8>().unwrap(), 1);
        let w2 = (&w * 2.0).unwrap();
        let got = x_wt(&x, &w2, Some(&packed), true).unwrap();
        let want = x.matmul(&w2.t().unwrap()).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

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
