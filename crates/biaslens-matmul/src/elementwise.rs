//! One-pass elementwise chains of the eval path (SwiGLU's `silu(g) · u`, the RMS norm), here so
//! that they are compiled optimised like the kernel; biaslens's `model::fused` wraps them.

/// `g / (1 + exp(-g)) · u` elementwise (candle's silu times `u`, the same f32 operations).
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "silu_mul: g and u differ in length");
    g.iter()
        .zip(u)
        .map(|(&a, &b)| a / ((-a).exp() + 1.0) * b)
        .collect()
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
