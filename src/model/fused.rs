//! One-pass versions of the eval path's elementwise chains (SwiGLU, RMS norm). candle runs each
//! op of a chain as its own pass over a fresh tensor, single-threaded; on SmolLM2's eval these
//! passes and their allocations took a tenth of the time. Used where `Transformer::fast_kernels`
//! is on, for f32 CPU tensors without gradient tracking; everything else composes candle's ops
//! (the reference these are tested against). The loops live in the kernel crate
//! (`biaslens_matmul::elementwise`), which is compiled optimised even in dev builds.

use super::matmul::with_cpu_f32;
use crate::Result;
use candle_core::Tensor;

/// `silu(g) · u` with candle's silu (`g / (1 + exp(-g))`), bit-identical to the composed ops;
/// `None` when the fused form does not apply.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if g.shape() != u.shape() {
        return Ok(None);
    }
    let out = with_cpu_f32([g, u], |[gv, uv]| {
        biaslens_matmul::elementwise::silu_mul(gv, uv)
    })?;
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
        biaslens_matmul::elementwise::rms_norm(xv, dim, sv, eps as f32)
    })?;
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?)),
        None => Ok(None),
    }
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
    fn silu_mul_is_bit_identical_to_candle() {
        let (g, u) = (data((2, 5, 37), 1), data((2, 5, 37), 2));
        let fused = silu_mul(&g, &u).unwrap().expect("applies to plain f32");
        let composed = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let diff = (fused - composed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
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
