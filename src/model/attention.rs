//! Attention: RoPE tables and rotation, and the two attention paths (the fused CPU kernel and
//! candle's composed ops, which gradients flow through), with their head and output sites.

use super::layer::{Layer, Linear};
use super::seam::PassState;
use super::sites::Site;
use super::stable_matmul::matmul as mm;
use super::transformer::Transformer;
use crate::Result;
use candle_core::{Tensor, D};

/// RoPE cos/sin of one pass: `half` [rows, tokens, head_dim / 2] for candle's fused kernel,
/// `full` [rows, 1, tokens, head_dim] for the composed form that gradients flow through.
#[derive(Clone)]
pub(super) struct RopeTables {
    cos_half: Tensor,
    sin_half: Tensor,
    cos_full: Tensor,
    sin_full: Tensor,
}

impl RopeTables {
    pub(super) fn new(cos: Tensor, sin: Tensor) -> Result<Self> {
        let (b, _, t, hd) = cos.dims4()?;
        let half = |x: &Tensor| -> Result<Tensor> {
            Ok(x.narrow(3, 0, hd / 2)?
                .reshape((b, t, hd / 2))?
                .contiguous()?)
        };
        Ok(RopeTables {
            cos_half: half(&cos)?,
            sin_half: half(&sin)?,
            cos_full: cos,
            sin_full: sin,
        })
    }

    /// The tables at the read positions only: `read` as for [`gather_positions`].
    pub(super) fn select(&self, read: &ReadIndex) -> Result<Self> {
        let (b, _, t, hd) = self.cos_full.dims4()?;
        let full = |x: &Tensor| -> Result<Tensor> {
            gather_positions(&x.reshape((b, t, hd))?, read)?
                .unsqueeze(1)
                .map_err(Into::into)
        };
        Ok(RopeTables {
            cos_half: gather_positions(&self.cos_half, read)?,
            sin_half: gather_positions(&self.sin_half, read)?,
            cos_full: full(&self.cos_full)?,
            sin_full: full(&self.sin_full)?,
        })
    }

    /// Rotate [rows, heads, tokens, head_dim] in HF's rotate-half layout. The fused kernel
    /// computes x1·cos − x2·sin and x1·sin + x2·cos, the same floating-point operations as
    /// HF's x·cos + rotate_half(x)·sin, but has no backward.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() {
            return apply_rope(x, &self.cos_full, &self.sin_full);
        }
        if let Some(y) = super::fused::rope(x, &self.cos_half, &self.sin_half)? {
            return Ok(y);
        }
        Ok(candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos_half,
            &self.sin_half,
        )?)
    }
}

/// Per row the same number of positions, as flat indices into `[rows · tokens]`
/// (`InterventionPlan::read_at` made ready to gather with).
#[derive(Debug, Clone)]
pub(super) struct ReadIndex {
    pub(super) flat: Tensor,
    pub(super) per_row: usize,
}

impl ReadIndex {
    pub(super) fn new(
        read: &[Vec<usize>],
        tokens: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let per_row = read.first().map_or(0, Vec::len);
        let flat: Vec<u32> = read
            .iter()
            .enumerate()
            .flat_map(|(r, cols)| cols.iter().map(move |&c| (r * tokens + c) as u32))
            .collect();
        let n = flat.len();
        Ok(ReadIndex {
            flat: Tensor::from_vec(flat, n, device)?,
            per_row,
        })
    }
}

/// `x` [rows, tokens, rest...] at the read positions: [rows, read per row, rest...].
pub(super) fn gather_positions(x: &Tensor, read: &ReadIndex) -> Result<Tensor> {
    let dims = x.dims();
    let (b, t) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    let mut shape = dims.to_vec();
    shape[1] = read.per_row;
    Ok(x.reshape((b * t, rest))?
        .index_select(&read.flat, 0)?
        .reshape(shape)?)
}

impl Transformer {
    /// Whether attention runs through the fused CPU kernel (the eval path with the fast matmul
    /// on an AVX-512 CPU); it declines, per call, tensors it cannot take (gradients tracked).
    pub(super) fn fused_attention(&self) -> bool {
        self.fast_kernels && self.device.is_cpu() && super::matmul::available()
    }

    /// cos/sin tables [rows, 1, tokens, head_dim] in HF's (non-interleaved) rotate-half layout.
    pub(super) fn rope_tables(
        &self,
        positions: &[Vec<usize>],
        theta: f64,
    ) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / hd as f32))
            .collect();
        let (b, t) = (positions.len(), positions[0].len());
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        for row in positions {
            for &p in row {
                for _half in 0..2 {
                    for f in &inv {
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (b, 1, t, hd), &self.device)?,
            Tensor::from_vec(sin, (b, 1, t, hd), &self.device)?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        l: usize,
        layer: &Layer,
        h: &Tensor,
        rope: Option<&RopeTables>,
        mask: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        read: Option<&ReadIndex>,
        st: &mut PassState,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let c = &self.cfg;
        let b = h.dim(0)?;
        let split = |x: Tensor, heads: usize| -> Result<Tensor> {
            let t = x.dim(1)?;
            Ok(x.reshape((b, t, heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let fast = self.fast_kernels;
        // Queries from the read positions only when the caller reads no others (the mask
        // holds their rows only); keys and values from every token.
        // q, k and v of one input in one call (the bf16x3 products split it once).
        let (q, k, v) = match read {
            Some(read) => {
                let q = layer.q.forward(&gather_positions(h, read)?, fast)?;
                let kv = Linear::forward_many(&[&layer.k, &layer.v], h, fast)?;
                (q, kv[0].clone(), kv[1].clone())
            }
            None => {
                let qkv = Linear::forward_many(&[&layer.q, &layer.k, &layer.v], h, fast)?;
                (qkv[0].clone(), qkv[1].clone(), qkv[2].clone())
            }
        };
        let t = q.dim(1)?;
        let mut q = split(q, c.num_heads)?;
        let mut k = split(k, c.num_kv_heads)?;
        let v = split(v, c.num_kv_heads)?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward_fast(&q, fast)?;
            k = kn.forward_fast(&k, fast)?;
        }
        if let Some(r) = rope {
            q = match read {
                Some(read) => r.select(read)?.apply(&q)?,
                None => r.apply(&q)?,
            };
            k = r.apply(&k)?;
        }
        let (k_all, v_all) = match past {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k.clone(), v.clone()),
        };
        if self.fused_attention() {
            if let Some(z) =
                super::matmul::fused_attention(&(q.clone() * c.attn_scale)?, &k_all, &v_all, mask)?
            {
                let z = self.intervene(Site::HeadZ(l), z, st)?;
                let out = self.intervene(
                    Site::AttnOut(l),
                    layer.o.forward(&z, self.fast_kernels)?,
                    st,
                )?;
                return Ok((out, (k, v)));
            }
        }
        let groups = c.kv_groups();
        let expand = |x: &Tensor| -> Result<Tensor> {
            if groups == 1 {
                return Ok(x.clone());
            }
            let (b, kvh, tk, hd) = x.dims4()?;
            Ok(x.unsqueeze(2)?.expand((b, kvh, groups, tk, hd))?.reshape((
                b,
                kvh * groups,
                tk,
                hd,
            ))?)
        };
        let (ke, ve) = (expand(&k_all)?, expand(&v_all)?);
        // Scale the (small) queries rather than the scores; the mask is already one per head.
        let scores = mm(&(q * c.attn_scale)?, &ke.t()?)?.broadcast_add(mask)?;
        // The fused softmax has no backward; use the composed one when gradients are tracked.
        let probs = if scores.track_op() {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let z = mm(&probs, &ve)?
            .transpose(1, 2)?
            .reshape((b, t, c.num_heads * c.head_dim))?;
        let z = self.intervene(Site::HeadZ(l), z, st)?;
        let out = self.intervene(
            Site::AttnOut(l),
            layer.o.forward(&z, self.fast_kernels)?,
            st,
        )?;
        Ok((out, (k, v)))
    }
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(3)?;
    let x1 = x.narrow(3, 0, hd / 2)?;
    let x2 = x.narrow(3, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused RoPE kernel (inference: `fused::rope`), candle's and the composed form (where
    /// gradients flow) give bit-identical rotations at per-row positions: the same
    /// floating-point operations.
    #[test]
    fn fused_rope_equals_the_composed_form() {
        let (b, h, t, hd) = (2, 3, 5, 8);
        let dev = Device::Cpu;
        let positions = [[0usize, 1, 2, 3, 4], [0, 0, 1, 2, 7]];
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for row in positions {
            for p in row {
                for _half in 0..2 {
                    for i in 0..hd / 2 {
                        let a = p as f32 / 10000f32.powf((2 * i) as f32 / hd as f32);
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let tables = RopeTables::new(
            Tensor::from_vec(cos, (b, 1, t, hd), &dev).unwrap(),
            Tensor::from_vec(sin, (b, 1, t, hd), &dev).unwrap(),
        )
        .unwrap();
        let vals: Vec<f32> = (0..b * h * t * hd)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let x = Tensor::from_vec(vals, (b, h, t, hd), &dev).unwrap();
        let fused = tables.apply(&x).unwrap();
        let composed = apply_rope(&x, &tables.cos_full, &tables.sin_full).unwrap();
        let tracked = tables
            .apply(candle_core::Var::from_tensor(&x).unwrap().as_tensor())
            .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let candle = candle_nn::rotary_emb::rope(&x, &tables.cos_half, &tables.sin_half).unwrap();
        assert_eq!(bits(&fused), bits(&composed));
        assert_eq!(bits(&candle), bits(&composed));
        assert_eq!(bits(&tracked), bits(&composed));
    }
}
