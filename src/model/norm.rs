//! The three norms of the supported families (RMS, Gemma's RMS with 1 + w, LayerNorm), and the
//! inverse an edit needs when a norm sits between a weight and the residual.

use super::config::NormKind;
use crate::{Error, Result};
use candle_core::{Tensor, D};

#[derive(Debug, Clone)]
pub struct Norm {
    /// Effective multiplier: w, or (1 + w) for Gemma.
    scale: Tensor,
    bias: Option<Tensor>,
    kind: NormKind,
    eps: f64,
}

impl Norm {
    pub(crate) fn new(w: Tensor, bias: Option<Tensor>, kind: NormKind, eps: f64) -> Result<Self> {
        let scale = match kind {
            NormKind::RmsOnePlus => (w + 1.0)?,
            _ => w,
        };
        Ok(Norm {
            scale,
            bias,
            kind,
            eps,
        })
    }

    /// [`Norm::forward`], in one pass per row when `fast` and the tensor allows it
    /// ([`super::fused::rms_norm`]; RMS norms without bias only).
    pub fn forward_fast(&self, x: &Tensor, fast: bool) -> Result<Tensor> {
        if fast && self.kind != NormKind::Layer && self.bias.is_none() {
            if let Some(y) = super::fused::rms_norm(x, &self.scale, self.eps)? {
                return Ok(y);
            }
        }
        self.forward(x)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = match self.kind {
            NormKind::Rms | NormKind::RmsOnePlus => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_mul(&(ms + self.eps)?.sqrt()?.recip()?)?
            }
            NormKind::Layer => {
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
        };
        let y = normed.broadcast_mul(&self.scale)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// An input for which this RMS norm outputs (the direction of) `target`, row by row, at the
    /// scale of `x`: x* = t · rms(x) / rms(t) with t = target / g. An RMS norm only reaches
    /// outputs whose t has the rms of forward(x)/g; forward(x*) is `target` rescaled onto that
    /// set, and exactly `target` when it is already there (so rms_preimage(x, forward(x)) = x).
    /// Coordinates whose scale g is 0 always output 0 (Gemma-3 has some); there t keeps x's
    /// normalised value. Edits of a weight feeding a post-norm (Gemma's MLP output) use this to
    /// turn a target for the norm's output into one for its input.
    pub fn rms_preimage(&self, x: &Tensor, target: &Tensor) -> Result<Tensor> {
        if self.kind == NormKind::Layer {
            return Err(Error::Model(
                "rms_preimage: LayerNorm is not an RMS norm".into(),
            ));
        }
        let dead = self.scale.abs()?.lt(1e-6)?;
        let safe_scale = dead.where_cond(&self.scale.ones_like()?, &self.scale)?;
        let x_normed = x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?)?;
        let t = dead
            .broadcast_as(x.shape())?
            .where_cond(&x_normed, &target.broadcast_div(&safe_scale)?)?;
        let rms = |v: &Tensor| -> Result<Tensor> { Ok(v.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?) };
        let rms_t = rms(&t)?;
        let smallest = rms_t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || *v <= 0.0);
        if let Some((row, v)) = smallest {
            return Err(Error::Numerical(format!(
                "rms_preimage: row {row} of the target has rms {v} (zero or not finite): a norm \
                 output of zero has no preimage of the input's scale"
            )));
        }
        Ok(t.broadcast_mul(&(rms(x)? / rms_t)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use proptest::prelude::*;

    fn rms_norm(scale: Vec<f32>, one_plus: bool) -> Norm {
        let d = scale.len();
        let w = Tensor::from_vec(scale, d, &Device::Cpu).unwrap();
        let kind = if one_plus {
            NormKind::RmsOnePlus
        } else {
            NormKind::Rms
        };
        Norm::new(w, None, kind, 1e-6).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn rms_preimage_refuses_a_zero_target() {
        let norm = rms_norm(vec![1.0; 4], false);
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 4), &Device::Cpu).unwrap();
        let zero = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let err = norm.rms_preimage(&x, &zero).unwrap_err().to_string();
        assert!(err.contains("row 0"), "{err}");
    }

    proptest! {
        /// forward(rms_preimage(x, forward(x) + r)) lands on forward(x) + r rescaled onto the
        /// norm's reachable set, keeps x's scale, and r = 0 gives x back.
        #[test]
        fn rms_preimage_inverts_the_norm(
            x in prop::collection::vec(-3.0f32..3.0, 8),
            r in prop::collection::vec(-0.5f32..0.5, 8),
            scale in prop::collection::vec(0.2f32..2.0, 8),
            one_plus in any::<bool>(),
        ) {
            let norm = rms_norm(scale.iter().map(|s| if one_plus { s - 1.0 } else { *s }).collect(), one_plus);
            let xs = Tensor::from_vec(x.clone(), (1, 8), &Device::Cpu).unwrap();
            let rms_x = (x.iter().map(|v| v * v).sum::<f32>() / 8.0).sqrt();
            prop_assume!(rms_x > 0.1);
            let y = norm.forward(&xs).unwrap();
            let back = norm.rms_preimage(&xs, &y).unwrap();
            prop_assert!(max_diff(&back, &xs) < 1e-4 * (1.0 + rms_x));

            let rs = Tensor::from_vec(r, (1, 8), &Device::Cpu).unwrap();
            let target = (&y + &rs).unwrap();
            let pre = norm.rms_preimage(&xs, &target).unwrap();
            let rms_pre = pre.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!((rms_pre - rms_x).abs() < 1e-4 * rms_x);
            // The output is the target, rescaled so that target/g has the rms forward(x)/g has.
            let g = Tensor::from_vec(scale, 8, &Device::Cpu).unwrap();
            let rms_over_g = |v: &Tensor| v.broadcast_div(&g).unwrap().sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
            let expected = (&target * (rms_over_g(&y) / rms_over_g(&target)) as f64).unwrap();
            prop_assert!(max_diff(&norm.forward(&pre).unwrap(), &expected) < 1e-4);
        }
    }

    #[test]
    fn rms_preimage_refuses_layer_norm() {
        let x = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
        let ln = Norm::new(
            Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
            None,
            NormKind::Layer,
            1e-5,
        )
        .unwrap();
        assert!(ln.rms_preimage(&x, &x).is_err());
    }

    /// A coordinate with scale 0 outputs 0 whatever the input; the others still reach the target.
    #[test]
    fn rms_preimage_skips_dead_coordinates() {
        let norm = rms_norm(vec![1.0, 0.0, 2.0, 0.5], false);
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0, 1.5]], &Device::Cpu).unwrap();
        let y = norm.forward(&x).unwrap();
        assert!(max_diff(&norm.rms_preimage(&x, &y).unwrap(), &x) < 1e-5);
        // A target reachable by construction: the output of another input.
        let other = Tensor::new(&[[1.0f32, 3.0, -0.5, 0.25]], &Device::Cpu).unwrap();
        let target = norm.forward(&other).unwrap();
        let pre = norm.rms_preimage(&x, &target).unwrap();
        let out = norm.forward(&pre).unwrap().to_vec2::<f32>().unwrap()[0].clone();
        assert_eq!(out[1], 0.0);
        let t = target.to_vec2::<f32>().unwrap()[0].clone();
        let ratio: Vec<f32> = [0, 2, 3].iter().map(|&i| out[i] / t[i]).collect();
        // Same direction on the live coordinates (the rescale onto the reachable set is shared).
        assert!(
            ratio
                .iter()
                .all(|r| (r - ratio[0]).abs() < 1e-5 && *r > 0.0),
            "{ratio:?}"
        );
    }
}
