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
    if let Some(out) = chunked_avx512(g.len(), par, &|start, end, dst| {
        // SAFETY: called with AVX-512F present, `dst` at element `start` of room for `end`.
        unsafe { silu_mul_avx512(&g[start..end], &u[start..end], dst) }
    }) {
        return out;
    }
    silu_mul_scalar(g, u)
}

/// A fresh vector of `n` elements written in chunks of `CHUNK` on `par`'s threads: `write(start,
/// end, dst)` stores elements `start..end` through `dst` (element `start`), each exactly once;
/// `None` where the CPU lacks AVX-512, before anything is written.
#[cfg(target_arch = "x86_64")]
fn chunked_avx512(
    n: usize,
    par: &dyn ForEach,
    write: &(dyn Fn(usize, usize, *mut f32) + Sync),
) -> Option<Vec<f32>> {
    if !crate::available() {
        return None;
    }
    // Written once, not zeroed first: every element is stored exactly once below.
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = SharedOut::spare(&mut out);
    par.for_each(n.div_ceil(CHUNK), &|c| {
        let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        // SAFETY: `start` is inside the capacity; chunk `c` alone writes `start..end`.
        write(start, end, unsafe { dst.ptr(start) });
    });
    // SAFETY: the chunks covered 0..n.
    unsafe { out.set_len(n) };
    Some(out)
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

/// √(2/π), as candle's GELU writes it.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// `gelu(g) · u` with GELU's tanh approximation (Gemma-3's GeGLU; `u = None`: GELU alone, GPT-2's
/// `gelu_new`). Written `g / (1 + exp(−2z))` with `z = √(2/π)·g·(1 + 0.044715·g²)`, which is
/// `0.5·g·(1 + tanh z)` exactly, so the exponential is `softmax`'s polynomial; candle's
/// `0.5·g·(1 + tanh z)` in f32 loses digits where `tanh z` is near −1, this form does not.
pub fn gelu_tanh_mul(g: &[f32], u: Option<&[f32]>) -> Vec<f32> {
    gelu_tanh_mul_with(g, u, &Serial)
}

/// [`gelu_tanh_mul`] in chunks of `CHUNK` elements on `par`'s threads.
pub fn gelu_tanh_mul_with(g: &[f32], u: Option<&[f32]>, par: &dyn ForEach) -> Vec<f32> {
    if let Some(u) = u {
        assert_eq!(g.len(), u.len(), "gelu_tanh_mul: g and u differ in length");
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(out) = chunked_avx512(g.len(), par, &|start, end, dst| {
        let u = u.map(|u| &u[start..end]);
        // SAFETY: called with AVX-512F present, `dst` at element `start` of room for `end`.
        unsafe { gelu_tanh_mul_avx512(&g[start..end], u, dst) }
    }) {
        return out;
    }
    gelu_tanh_mul_scalar(g, u)
}

/// The same formula with the scalar `f32::exp`: the reference of the vectorised pass.
pub fn gelu_tanh_mul_scalar(g: &[f32], u: Option<&[f32]>) -> Vec<f32> {
    g.iter()
        .enumerate()
        .map(|(i, &a)| gelu_tanh_one(a) * u.map_or(1.0, |u| u[i]))
        .collect()
}

fn gelu_tanh_one(a: f32) -> f32 {
    let z = SQRT_TWO_OVER_PI * a * (1.0 + 0.044715 * a * a);
    a / ((-2.0 * z).exp() + 1.0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_tanh_mul_avx512(g: &[f32], u: Option<&[f32]>, dst: *mut f32) {
    use std::arch::x86_64::*;
    let n = g.len();
    let body = n - n % 16;
    let one = _mm512_set1_ps(1.0);
    let k = _mm512_set1_ps(0.044715);
    let minus_two_c = _mm512_set1_ps(-2.0 * SQRT_TWO_OVER_PI);
    for i in (0..body).step_by(16) {
        let a = _mm512_loadu_ps(g.as_ptr().add(i));
        // −2z = −2·√(2/π)·a·(1 + 0.044715·a²)
        let inner = _mm512_fmadd_ps(_mm512_mul_ps(k, a), a, one);
        let e = crate::softmax::avx512::exp16(_mm512_mul_ps(_mm512_mul_ps(minus_two_c, a), inner));
        let mut y = _mm512_div_ps(a, _mm512_add_ps(e, one));
        if let Some(u) = u {
            y = _mm512_mul_ps(y, _mm512_loadu_ps(u.as_ptr().add(i)));
        }
        _mm512_storeu_ps(dst.add(i), y);
    }
    for i in body..n {
        dst.add(i)
            .write(gelu_tanh_one(g[i]) * u.map_or(1.0, |u| u[i]));
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

    /// GELU (tanh form) times `u`, vectorised and scalar, against the f64 value of candle's
    /// formula `0.5·g·(1 + tanh z)`, on g from −100 to 100 and every tail length; alone
    /// (`u = None`) it equals the product with ones.
    #[test]
    fn gelu_tanh_mul_matches_f64() {
        for len in [1, 15, 16, 17, 1_000] {
            let g: Vec<f32> = crate::test_data(len, 6).iter().map(|v| v * 200.0).collect();
            let u = crate::test_data(len, 7);
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(&a, &b)| {
                    let a = f64::from(a);
                    let z = (2.0 / std::f64::consts::PI).sqrt() * a * (1.0 + 0.044715 * a * a);
                    0.5 * a * (1.0 + z.tanh()) * f64::from(b)
                })
                .collect();
            for got in [
                gelu_tanh_mul(&g, Some(&u)),
                gelu_tanh_mul_scalar(&g, Some(&u)),
            ] {
                for (i, (&f, &w)) in got.iter().zip(&want).enumerate() {
                    let err = (f64::from(f) - w).abs();
                    // A few f32 roundings of the argument, relative to the value, or of g·u
                    // where the value is far below it (the tail, where exp(−2z) is huge).
                    let scale = w.abs() * 32.0 + f64::from((g[i] * u[i]).abs()) * 1e-6;
                    assert!(
                        err <= f64::from(f32::EPSILON) * scale + 1e-30,
                        "len {len} [{i}] g {}: {f} vs {w}",
                        g[i]
                    );
                }
            }
            let ones = vec![1.0; len];
            assert_eq!(gelu_tanh_mul(&g, None), gelu_tanh_mul(&g, Some(&ones)));
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
        assert_eq!(
            gelu_tanh_mul_with(&g, Some(&u), &Rayon),
            gelu_tanh_mul(&g, Some(&u))
        );
        let scale = crate::test_data(576, 5);
        assert_eq!(
            rms_norm_with(&g, 576, &scale, 1e-5, &Rayon),
            rms_norm(&g, 576, &scale, 1e-5)
        );
    }
}
