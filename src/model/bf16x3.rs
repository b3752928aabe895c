//! Compensated bf16 products (`mkl` feature; `biaslens eval --products bf16x3`): an f32 product
//! `x · Wᵀ` as three bf16 products with f32 accumulation, which CPUs with AMX run faster than
//! one f32 product (docs/performance.md, "Evaluation").
//!
//! Each f32 operand is split into two bf16 numbers, `a = a_hi + a_lo + r` with `a_hi = bf16(a)`
//! and `a_lo = bf16(a − a_hi)`, so `|r| ≤ 2⁻¹⁸ |a|`. The product keeps the three terms that
//! matter, `x_hi·W_hiᵀ + x_lo·W_hiᵀ + x_hi·W_loᵀ`, and drops `x_lo·W_loᵀ` (≈ 2⁻¹⁸ of the
//! product): about 2⁻¹⁸ relative error per element, against about 2⁻²⁴ in f32 (measured in the
//! tests below and in docs/performance.md). MKL's `cblas_gemm_bf16bf16f32` runs them in two
//! calls: `[x_hi, x_lo] · [W_hi, W_hi]ᵀ` (inner dimension 2k) and `x_hi · W_loᵀ`.
//!
//! The weight's halves are made once per weight ([`SplitWeight`], stored on the
//! [`super::layer::Linear`]); an activation's halves once per input, shared by the projections
//! that read it (q, k and v; gate and up).

use crate::Result;
use candle_core::{DType, Tensor, TensorId};
use std::mem::MaybeUninit;

#[cfg(feature = "mkl")]
extern "C" {
    // MKL's bf16 product with f32 accumulation and output (MKL_BF16 is an unsigned short).
    #[allow(clippy::too_many_arguments)]
    fn cblas_gemm_bf16bf16f32(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const u16,
        lda: i32,
        b: *const u16,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

/// Whether the CPU has AMX's bf16 tiles (CPUID leaf 7: AMX-BF16 and AMX-TILE), where the
/// compensated products pay. Elsewhere MKL still computes them, more slowly than f32.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 7 exists where leaf 0 reports a maximum of at least 7.
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// f32 → bf16, round to nearest even (finite inputs; a NaN stays a NaN of some payload).
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (rounded >> 16) as u16
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `(hi, lo)` with `hi = bf16(x)`, `lo = bf16(x − hi)`.
#[inline(always)]
fn split(x: f32) -> (u16, u16) {
    let hi = to_bf16(x);
    (hi, to_bf16(x - from_bf16(hi)))
}

/// Rows of `src` (`k` wide) into rows of `dst` (`2k` wide, written, never read): `[hi…, lo…]`.
#[inline(always)]
fn split_rows(src: &[f32], dst: &mut [MaybeUninit<u16>], k: usize) {
    for (s, d) in src.chunks_exact(k).zip(dst.chunks_exact_mut(2 * k)) {
        let (h, l) = d.split_at_mut(k);
        for ((x, h), l) in s.iter().zip(h).zip(l) {
            let (hi, lo) = split(*x);
            h.write(hi);
            l.write(lo);
        }
    }
}

/// `rows × k` floats as `rows × 2k` halves, in a vector of exactly that length.
fn split_matrix(src: &[f32], k: usize) -> Vec<u16> {
    let len = src.len() / k * 2 * k;
    let mut out = Vec::with_capacity(len);
    split_rows_fast(src, &mut out.spare_capacity_mut()[..len], k);
    // SAFETY: split_rows writes every one of the `len` elements.
    unsafe { out.set_len(len) };
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_rows_avx512(src: &[f32], dst: &mut [MaybeUninit<u16>], k: usize) {
    // The same loop, compiled for AVX-512 so that it vectorises.
    split_rows(src, dst, k)
}

fn split_rows_fast(src: &[f32], dst: &mut [MaybeUninit<u16>], k: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features it is compiled for were detected.
        return unsafe { split_rows_avx512(src, dst, k) };
    }
    split_rows(src, dst, k)
}

/// A weight `W [n, k]` split for [`x_wts`]: `W_hi` twice per row (`[n, 2k]`) and `W_lo` (`[n, k]`).
#[derive(Debug)]
// Without MKL nothing multiplies by it (`x_wts` declines, and the eval refuses bf16x3 first).
#[cfg_attr(not(feature = "mkl"), allow(dead_code))]
pub struct SplitWeight {
    /// The tensor it was made from: a `Linear` whose weight was replaced ignores it.
    pub source: TensorId,
    n: usize,
    k: usize,
    hi_hi: Vec<u16>,
    lo: Vec<u16>,
}

impl SplitWeight {
    /// `None` for a weight that is not a non-empty 2-D f32 CPU tensor.
    pub fn new(w: &Tensor) -> Result<Option<SplitWeight>> {
        if w.dtype() != DType::F32 || !w.device().is_cpu() || w.rank() != 2 {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        if n == 0 || k == 0 {
            return Ok(None);
        }
        let data: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let halves = split_matrix(&data, k);
        let mut hi_hi = vec![0u16; n * 2 * k];
        let mut lo = vec![0u16; n * k];
        for r in 0..n {
            let (h, l) = halves[r * 2 * k..(r + 1) * 2 * k].split_at(k);
            hi_hi[r * 2 * k..r * 2 * k + k].copy_from_slice(h);
            hi_hi[r * 2 * k + k..(r + 1) * 2 * k].copy_from_slice(h);
            lo[r * k..(r + 1) * k].copy_from_slice(l);
        }
        Ok(Some(SplitWeight {
            source: w.id(),
            n,
            k,
            hi_hi,
            lo,
        }))
    }
}

/// Rows per piece of the activation split on the OpenMP team.
#[cfg(feature = "mkl")]
const SPLIT_ROWS: usize = 64;

/// `x [m, k] · W_iᵀ` → `[m, n_i]` for every weight, the activation split once (q, k and v read
/// one input; so do gate and up); `None` where it does not apply (a build without the `mkl`
/// feature, not an f32 CPU tensor, a tracked gradient, a width other than a weight's, sizes past
/// i32), and the caller takes the f32 path.
pub fn x_wts(x: &Tensor, ws: &[&SplitWeight]) -> Result<Option<Vec<Tensor>>> {
    #[cfg(feature = "mkl")]
    {
        let Some(a) = SplitActivation::new(x, ws)? else {
            return Ok(None);
        };
        let outs = ws
            .iter()
            .map(|w| Tensor::from_vec(a.product(w), (a.m, w.n), x.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(outs))
    }
    #[cfg(not(feature = "mkl"))]
    {
        let _ = (x, ws);
        Ok(None)
    }
}

/// An activation `x [m, k]` as `m × 2k` halves `[x_hi, x_lo]`.
#[cfg(feature = "mkl")]
struct SplitActivation {
    halves: Vec<u16>,
    m: usize,
    k: usize,
}

#[cfg(feature = "mkl")]
impl SplitActivation {
    /// `None` where [`x_wts`] does not apply.
    fn new(x: &Tensor, ws: &[&SplitWeight]) -> Result<Option<SplitActivation>> {
        use biaslens_matmul::parallel::ForEach;
        use candle_core::{CpuStorage, Storage};
        if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() != 2 {
            return Ok(None);
        }
        let (m, k) = x.dims2()?;
        let widest = ws.iter().map(|w| w.n).max().unwrap_or(0);
        if ws.iter().any(|w| w.k != k) || m == 0 || i32::try_from(m.max(widest).max(2 * k)).is_err()
        {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let (st, l) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*st else {
            return Ok(None);
        };
        let src = &data[l.start_offset()..l.start_offset() + m * k];
        // Not zeroed: the pieces below write every element.
        let mut halves: Vec<u16> = Vec::with_capacity(m * 2 * k);
        let dst = SharedRows(halves.spare_capacity_mut().as_mut_ptr());
        super::mkl::OpenMp.for_each(m.div_ceil(SPLIT_ROWS), &|p| {
            let (r0, r1) = (p * SPLIT_ROWS, ((p + 1) * SPLIT_ROWS).min(m));
            // SAFETY: pieces write disjoint row ranges of `halves`' capacity, alive throughout.
            let d =
                unsafe { std::slice::from_raw_parts_mut(dst.at(r0 * 2 * k), (r1 - r0) * 2 * k) };
            split_rows_fast(&src[r0 * k..r1 * k], d, k);
        });
        // SAFETY: the pieces covered rows 0..m, 2k elements each.
        unsafe { halves.set_len(m * 2 * k) };
        Ok(Some(SplitActivation { halves, m, k }))
    }

    /// `[x_hi, x_lo] · [W_hi, W_hi]ᵀ + x_hi · W_loᵀ`, row-major `m × n`.
    fn product(&self, w: &SplitWeight) -> Vec<f32> {
        const ROW_MAJOR: i32 = 101;
        const NO_TRANS: i32 = 111;
        const TRANS: i32 = 112;
        let (m, n, k) = (self.m, w.n, self.k);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        // out (+)= [x_hi, x_lo][.., ..depth] · bᵀ, b being n × depth with leading dimension ldb.
        let gemm = |depth: i32, b: &[u16], ldb: i32, beta: f32, out: *mut f32| {
            // SAFETY: `halves` is m × 2k (depth ≤ 2k, row stride 2k), `b` holds n rows of `ldb`
            // ≥ depth, `out` has room for m × n (β = 0 writes every element, β = 1 reads them).
            unsafe {
                cblas_gemm_bf16bf16f32(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    mi,
                    ni,
                    depth,
                    1.0,
                    self.halves.as_ptr(),
                    2 * ki,
                    b.as_ptr(),
                    ldb,
                    beta,
                    out,
                    ni,
                )
            }
        };
        gemm(2 * ki, &w.hi_hi, 2 * ki, 0.0, out.as_mut_ptr());
        // SAFETY: the β = 0 call wrote all m × n elements.
        unsafe { out.set_len(m * n) };
        gemm(ki, &w.lo, ki, 1.0, out.as_mut_ptr());
        out
    }
}

/// A raw pointer the OpenMP pieces share; each writes its own rows.
#[cfg(feature = "mkl")]
#[derive(Clone, Copy)]
struct SharedRows(*mut MaybeUninit<u16>);
// SAFETY: used only for disjoint writes while the owning Vec is alive (see `SplitActivation::new`).
#[cfg(feature = "mkl")]
unsafe impl Sync for SharedRows {}
#[cfg(feature = "mkl")]
impl SharedRows {
    fn at(&self, i: usize) -> *mut MaybeUninit<u16> {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(i) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Round to nearest even, as `half`'s conversion does, on edge cases and random values.
    #[test]
    fn bf16_rounding_matches_half() {
        // Two ties (1 + 2⁻⁸ rounds down to even, 1 + 3·2⁻⁸ up), a subnormal, a large value.
        let ties = [f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000)];
        let mut xs = vec![0.0f32, -0.0, 1.0, -1.0, ties[0], ties[1], 3.3e-39, 6.5e4];
        let t = Tensor::randn(0f32, 3.0, 4096, &Device::Cpu).unwrap();
        xs.extend(t.to_vec1::<f32>().unwrap());
        for x in xs {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
            let (h, l) = split(x);
            let r = x - from_bf16(h) - from_bf16(l);
            // Relative bound for normal numbers; subnormals have fewer bits to split.
            if x.abs() > 1e-30 {
                assert!(r.abs() <= x.abs() * 2f32.powi(-17), "{x}: residual {r}");
            }
        }
    }

    /// The vectorised split equals the plain loop bit for bit.
    #[test]
    fn fast_split_is_the_plain_split() {
        let (m, k) = (37, 53);
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut a = vec![MaybeUninit::new(0u16); m * 2 * k];
        split_rows(&x, &mut a, k);
        // SAFETY: split_rows wrote every element (and they started initialised).
        let a: Vec<u16> = a.iter().map(|h| unsafe { h.assume_init() }).collect();
        assert_eq!(a, split_matrix(&x, k));
        assert_eq!(a[1], split(x[1]).0);
        assert_eq!(a[k + 1], split(x[1]).1);
    }

    #[cfg(feature = "mkl")]
    /// Against the f64 product: elementwise within 2⁻¹⁵ of the row's scale, and the mean
    /// relative error under 2⁻¹⁶ (f32's own is about 2⁻²²), on shapes that are not multiples
    /// of any tile.
    #[test]
    fn compensated_product_matches_the_f64_product() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 7, 3), (65, 130, 33), (200, 576, 192)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
            let sw = SplitWeight::new(&w).unwrap().unwrap();
            assert_eq!(sw.source, w.id());
            let got: Vec<f32> = x_wts(&x, &[&sw]).unwrap().expect("declined an f32 product")[0]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            let (mut err, mut mag) = (0f64, 0f64);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|c| xv[i * k + c] as f64 * wv[j * k + c] as f64)
                        .sum();
                    let abs: f64 = (0..k)
                        .map(|c| (xv[i * k + c] as f64 * wv[j * k + c] as f64).abs())
                        .sum();
                    let e = (got[i * n + j] as f64 - dot).abs();
                    assert!(
                        e <= abs * 2f64.powi(-15),
                        "({m},{k},{n}) [{i},{j}]: {e} vs {abs}"
                    );
                    err += e;
                    mag += dot.abs();
                }
            }
            assert!(
                err / mag < 2f64.powi(-16),
                "({m},{k},{n}): mean relative {}",
                err / mag
            );
        }
    }
}
