//! One-pass elementwise chains of the eval path (SwiGLU's `silu(g) · u`, the RMS norm), here so
//! that they are compiled optimised like the kernel; biaslens's `model::fused` wraps them.

/// `g / (1 + exp(-g)) · u` elementwise: candle's silu times `u`. With AVX-512 the exponential
/// is `softmax`'s polynomial (≤ 2 ulp from `f32::exp`), else [`silu_mul_scalar`].
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "silu_mul: g and u differ in length");
    #[cfg(target_arch = "x86_64")]
    if crate::available() {
        // SAFETY: AVX-512F is present.
        return unsafe { silu_mul_avx512(g, u) };
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
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32]) -> Vec<f32> {
    use std::arch::x86_64::*;
    let n = g.len().min(u.len());
    let body = n - n % 16;
    // Written once, not zeroed first: every element below is stored exactly once.
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = out.as_mut_ptr();
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
    out.set_len(n);
    out
}

/// Rows of `dim` values: `x / sqrt(mean(x²) + eps) · scale`.
pub fn rms_norm(x: &[f32], dim: usize, scale: &[f32], eps: f32) -> Vec<f32> {
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "rms_norm: rows are not {dim} long"
    );
    assert_eq!(scale.len(), dim, "rms_norm: scale is not {dim} long");
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
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
        let r = (ss / dim as f32 + eps).sqrt().recip();
        out.extend(row.iter().zip(scale).map(|(&v, &s)| v * r * s));
    }
    out
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
}
