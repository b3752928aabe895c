//! One-pass elementwise chains of the eval path (SwiGLU's `silu(g) · u`, the RMS norm), here so
//! that they are compiled optimised like the kernel; biaslens's `model::fused` wraps them. The
//! `_with` forms spread chunks over a caller's [`ForEach`]; chunking changes no result.

use crate::parallel::{ForEach, Serial, SharedOut};

/// Elements per piece of a parallel elementwise pass (a multiple of 16: whole vectors).
const CHUNK: usize = 16 * 1024;

/// `g / (1 + exp(-g)) · u` elementwise: candle's silu times `u`. With AVX-512 the exponential
/// is `softmax`'s polynomial (≤ 2 ulp from `f32::exp`), else [`silu_mul_scalar`].
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    silu_mul_with(g, u, &Serial)
}

/// [`silu_mul`] in chunks of `CHUNK` elements on `par`'s threads.
pub fn silu_mul_with(g: &[f32], u: &[f32], par: &dyn ForEach) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "silu_mul: g and u differ in length");
    #[cfg(target_arch = "x86_64")]
    if crate::available() {
        let n = g.len();
        // Written once, not zeroed first: every element is stored exactly once below.
        let mut out: Vec<f32> = Vec::with_capacity(n);
        let dst = SharedOut::spare(&mut out);
        par.for_each(n.div_ceil(CHUNK), &|c| {
            let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
            // SAFETY: AVX-512F is present; chunk `c` alone writes `start..end`.
            unsafe { silu_mul_avx512(&g[start..end], &u[start..end], dst.ptr(start)) };
        });
        // SAFETY: the chunks covered 0..n.
        unsafe { out.set_len(n) };
        return out;
    }
    silu_mul_scalar(g, u)
}

/// The same f32 operations as candle's composed `silu(g) * u`, bit for bit.
pub fn silu_mul_scalar(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&a, &b)| a / ((-a).exp() + 1.0) * b)
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], dst: *mut f32) {
    use std::arch::x86_64::*;
    let n = g.len().min(u.len());
    let body = n - n % 16;
    let one = _mm512_set1_ps(1.0);
    for i in (0..body).step_by(16) {
        let a = _mm512_loadu_ps(g.as_ptr().add(i));
        let b = _mm512_loadu_ps(u.as_ptr().add(i));
        let e = crate::softmax::avx512::exp16(_mm512_sub_ps(_mm512_setzero_ps(), a));
        let y = _mm512_mul_ps(_mm512_div_ps(a, _mm512_add_ps(e, one)), b);
        _mm512_storeu_ps(dst.add(i), y);
    }
    for i in body..n {
        dst.add(i).write(g[i] / ((-g[i]).exp() + 1.0) * u[i]);
    }
}

/// HF's rotate-half RoPE of `x [rows, heads, t, d]` with per-row tables `cos`, `sin [rows, t,
/// d / 2]`: `x1·cos − x2·sin` and `x1·sin + x2·cos`, candle's `rope` kernel's operations, so its
/// bits. One piece per row on `par`'s threads.
#[allow(clippy::too_many_arguments)]
pub fn rope_with(
    x: &[f32],
    rows: usize,
    heads: usize,
    t: usize,
    d: usize,
    cos: &[f32],
    sin: &[f32],
    par: &dyn ForEach,
) -> Vec<f32> {
    let half = d / 2;
    assert!(d.is_multiple_of(2), "rope: odd head dimension {d}");
    assert_eq!(
        x.len(),
        rows * heads * t * d,
        "rope: x is not [rows, heads, t, d]"
    );
    assert_eq!(
        cos.len(),
        rows * t * half,
        "rope: cos is not [rows, t, d / 2]"
    );
    assert_eq!(sin.len(), cos.len(), "rope: sin and cos differ in shape");
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    let dst = SharedOut::spare(&mut out);
    par.for_each(rows, &|r| {
        for h in 0..heads {
            for i in 0..t {
                let at = ((r * heads + h) * t + i) * d;
                let (c, s) = (
                    &cos[(r * t + i) * half..][..half],
                    &sin[(r * t + i) * half..][..half],
                );
                let (x1, x2) = (&x[at..at + half], &x[at + half..at + d]);
                for j in 0..half {
                    // SAFETY: row r alone writes its heads' positions, each element once.
                    unsafe {
                        dst.ptr(at + j).write(x1[j] * c[j] - x2[j] * s[j]);
                        dst.ptr(at + half + j).write(x1[j] * s[j] + x2[j] * c[j]);
                    }
                }
            }
        }
    });
    // SAFETY: the rows wrote every element.
    unsafe { out.set_len(x.len()) };
    out
}

/// Rows of `dim` values: `x / sqrt(mean(x²) + eps) · scale`.
pub fn rms_norm(x: &[f32], dim: usize, scale: &[f32], eps: f32) -> Vec<f32> {
    rms_norm_with(x, dim, scale, eps, &Serial)
}

/// [`rms_norm`] in pieces of whole rows (about `CHUNK` elements each) on `par`'s threads.
pub fn rms_norm_with(
    x: &[f32],
    dim: usize,
    scale: &[f32],
    eps: f32,
    par: &dyn ForEach,
) -> Vec<f32> {
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "rms_norm: rows are not {dim} long"
    );
    assert_eq!(scale.len(), dim, "rms_norm: scale is not {dim} long");
    let rows = x.len() / dim;
    let per_piece = (CHUNK / dim).max(1);
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    let dst = SharedOut::spare(&mut out);
    par.for_each(rows.div_ceil(per_piece), &|p| {
        let (r0, r1) = (p * per_piece, ((p + 1) * per_piece).min(rows));
        for r in r0..r1 {
            // SAFETY: piece `p` alone writes rows r0..r1, each in full.
            unsafe { rms_norm_row(&x[r * dim..(r + 1) * dim], scale, eps, dst.ptr(r * dim)) };
        }
    });
    // SAFETY: the pieces wrote every row.
    unsafe { out.set_len(x.len()) };
    out
}

/// # Safety
/// `out` points at `row.len()` writable floats.
unsafe fn rms_norm_row(row: &[f32], scale: &[f32], eps: f32, out: *mut f32) {
    // Eight partial sums: vectorisable, and no less accurate than one running sum.
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let ss = acc.iter().sum::<f32>() + tail;
    let r = (ss / row.len() as f32 + eps).sqrt().recip();
    for (i, (&v, &s)) in row.iter().zip(scale).enumerate() {
        out.add(i).write(v * r * s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised SwiGLU product against the scalar one (candle's operations), on values
    /// from −100 to 100 (where exp(−g) overflows and the product is −0) and every tail length.
    #[test]
    fn silu_mul_matches_scalar() {
        for len in [1, 15, 16, 17, 1_000] {
            let g: Vec<f32> = crate::test_data(len, 1).iter().map(|v| v * 200.0).collect();
            let u = crate::test_data(len, 2);
            let (fast, slow) = (silu_mul(&g, &u), silu_mul_scalar(&g, &u));
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (f - s).abs() <= 4.0 * f32::EPSILON * s.abs() + 1e-30,
                    "len {len} [{i}] g {}: {f} vs {s}",
                    g[i]
                );
            }
        }
    }

    /// Spread over threads, the passes give the serial results bit for bit, across several
    /// chunks and a ragged last one.
    #[test]
    fn parallel_passes_equal_serial_ones() {
        use crate::parallel::Rayon;
        let len = 3 * CHUNK + 37 * 576 % CHUNK + 576;
        let len = len - len % 576;
        let g = crate::test_data(len, 3);
        let u = crate::test_data(len, 4);
        assert_eq!(silu_mul_with(&g, &u, &Rayon), silu_mul(&g, &u));
        let scale = crate::test_data(576, 5);
        assert_eq!(
            rms_norm_with(&g, 576, &scale, 1e-5, &Rayon),
            rms_norm(&g, 576, &scale, 1e-5)
        );
    }
}
