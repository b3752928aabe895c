//! One decoder layer: the projections ([`Linear`], with reduced-precision weights), the layer's
//! weights ([`Layer`]) and the layer loop every entry point ends in (norms, attention, MLP).

use super::attention::{gather_positions, ReadIndex, RopeTables};
use super::bf16x3::SplitWeight;
use super::config::{Activation, AttnKind};
use super::norm::Norm;
use super::seam::PassState;
use super::sites::{InterventionPlan, Site};
use super::stable_matmul::matmul as mm;
use super::transformer::{ForwardOutput, KvCache, Transformer};
use super::tree::attention_mask;
use super::unembed::check_finite;
use crate::Result;
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// y = x Wᵀ + b with W stored as [out, in] (HF layout).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// `weight` split for the compensated bf16 products (`Transformer::use_bf16x3_products`),
    /// used on the eval path only and only while `weight` is the tensor it was made from.
    pub bf16x3: Option<Arc<SplitWeight>>,
}

impl Linear {
    /// `fast`: the eval path's product ([`super::matmul::x_wt`], or the compensated bf16
    /// products where the weight is split).
    pub(super) fn forward(&self, x: &Tensor, fast: bool) -> Result<Tensor> {
        let mut ys = Linear::forward_many(&[self], x, fast)?;
        Ok(ys.remove(0))
    }

    /// Several projections of one input (q, k, v; gate, up), in order: with the compensated
    /// bf16 products the input is split once for all of them.
    pub(super) fn forward_many(lins: &[&Linear], x: &Tensor, fast: bool) -> Result<Vec<Tensor>> {
        let (b, t, i) = x.dims3()?;
        let x2 = x.reshape((b * t, i))?;
        let finish = |lin: &Linear, y: Tensor| -> Result<Tensor> {
            let y = match &lin.bias {
                Some(bias) => y.broadcast_add(bias)?,
                None => y,
            };
            Ok(y.reshape((b, t, ()))?)
        };
        let splits: Option<Vec<&SplitWeight>> = lins.iter().map(|l| l.split(fast)).collect();
        if let Some(ws) = splits {
            if let Some(ys) = super::bf16x3::x_wts(&x2, &ws)? {
                return lins.iter().zip(ys).map(|(l, y)| finish(l, y)).collect();
            }
        }
        lins.iter()
            .map(|l| finish(l, l.product(&x2, fast)?))
            .collect()
    }

    /// The split weight, where the eval path uses it and it still belongs to `weight`.
    fn split(&self, fast: bool) -> Option<&SplitWeight> {
        match &self.bf16x3 {
            Some(s) if fast && s.source == self.weight.id() => Some(s),
            _ => None,
        }
    }

    /// `x2 [rows, in] · Wᵀ` without the bias.
    fn product(&self, x2: &Tensor, fast: bool) -> Result<Tensor> {
        // Reduced-precision weights (see `Transformer::with_weight_dtype`): the matmul runs in the
        // weight dtype, everything around it stays in the activations' dtype (f32).
        Ok(if self.weight.dtype() == x2.dtype() {
            super::matmul::x_wt(x2, &self.weight, fast)?
        } else if self.weight.dtype() == DType::BF16 && x2.device().is_cpu() {
            // candle's CPU matmul has no bf16 kernel: emulate one (bf16 operands and output,
            // f32 accumulation, as cuBLAS does).
            let bf = |t: &Tensor| -> Result<Tensor> {
                Ok(t.to_dtype(DType::BF16)?.to_dtype(x2.dtype())?)
            };
            bf(&mm(&bf(x2)?, &self.weight.to_dtype(x2.dtype())?.t()?)?)?
        } else {
            mm(&x2.to_dtype(self.weight.dtype())?, &self.weight.t()?)?.to_dtype(x2.dtype())?
        })
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub post_attn_norm: Option<Norm>,
    pub mlp_norm: Norm,
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    pub post_mlp_norm: Option<Norm>,
}

impl Layer {
    /// Every projection of the layer (q, k, v, o, gate when present, up, down).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
            .into_iter()
            .chain(self.gate.as_mut())
            .chain([&mut self.up, &mut self.down])
    }
}

/// Where a pass's tokens sit: positions and left padding per row, and each row's tree
/// (parents in unpadded coordinates; chains for ordinary rows).
#[derive(Clone, Copy)]
pub(super) struct Layout<'a> {
    pub(super) positions: &'a [Vec<usize>],
    pub(super) pads: &'a [usize],
    pub(super) parents: &'a [Vec<Option<usize>>],
}

impl Transformer {
    pub(super) fn run_layers(
        &self,
        mut x: Tensor,
        start: usize,
        layout: Layout,
        past: Option<&KvCache>,
        plan: &InterventionPlan,
        mut st: PassState,
    ) -> Result<ForwardOutput> {
        let (rows, tokens, _) = x.dims3()?;
        plan.check_read_at(rows, tokens, self.cfg.num_layers)?;
        let read = match &plan.read_at {
            Some(read) => Some(ReadIndex::new(read, tokens, &self.device)?),
            None => None,
        };
        // Layers this pass runs: to `stop_after` when the plan stops early.
        let end = match plan.stop_after {
            Some(s) if s >= start => (s + 1).min(self.cfg.num_layers),
            _ => self.cfg.num_layers,
        };
        self.work
            .record((rows * tokens * end.saturating_sub(start)) as u64);
        let mut kv_out = if plan.capture_kv {
            Some(Vec::new())
        } else {
            None
        };
        let Layout {
            positions,
            pads,
            parents,
        } = layout;
        let mut rope_cache: HashMap<u64, RopeTables> = HashMap::new();
        // One mask per attention window (full and sliding layers), built once per pass.
        let mut mask_cache: HashMap<(Option<usize>, usize), Tensor> = HashMap::new();
        for l in start..self.cfg.num_layers {
            self.stop.check()?;
            let layer = &self.layers[l];
            x = self.intervene(Site::ResidPre(l), x, &mut st)?;
            let kind = self.cfg.layer_types[l];
            let theta = match (kind, self.cfg.rope_local_theta) {
                (AttnKind::Sliding, Some(t)) => Some(t),
                _ => self.cfg.rope_theta,
            };
            let rope = match theta {
                Some(th) => {
                    let tables = match rope_cache.entry(th.to_bits()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let (cos, sin) = self.rope_tables(positions, th)?;
                            e.insert(RopeTables::new(cos, sin)?).clone()
                        }
                    };
                    Some(tables)
                }
                None => None,
            };
            let window = match kind {
                AttnKind::Sliding => self.cfg.sliding_window,
                AttnKind::Full => None,
            };
            let layer_past = past.and_then(|p| p.get(l));
            let past_len = layer_past.map_or(Ok(0), |(k, _)| k.dim(2))?;
            // The last layer of a pass that reads a few positions runs its queries there only.
            let read = read.as_ref().filter(|_| l + 1 == self.cfg.num_layers);
            let build_mask = |read: Option<&ReadIndex>| -> Result<Tensor> {
                let m = attention_mask(
                    parents,
                    pads,
                    tokens,
                    past_len + tokens,
                    window,
                    &self.device,
                )?;
                let (m, queries) = match read {
                    Some(read) => (
                        gather_positions(&m.squeeze(1)?, read)?.unsqueeze(1)?,
                        read.per_row,
                    ),
                    None => (m, tokens),
                };
                // The fused attention reads one mask per row; candle's composed one adds
                // same-shape tensors far faster than a mask broadcast over the head axis.
                Ok(if self.fused_attention() {
                    m
                } else {
                    m.broadcast_as((rows, self.cfg.num_heads, queries, past_len + tokens))?
                        .contiguous()?
                })
            };
            let mask = match read {
                Some(read) => build_mask(Some(read))?,
                None => match mask_cache.entry((window, past_len)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(build_mask(None)?).clone()
                    }
                },
            };
            let (attn, kv) = self.attention(
                l,
                layer,
                &layer.attn_norm.forward_fast(&x, self.fast_kernels)?,
                rope.as_ref(),
                &mask,
                layer_past,
                read,
                &mut st,
            )?;
            if let Some(read) = read {
                x = gather_positions(&x, read)?;
            }
            if let Some(kvs) = kv_out.as_mut() {
                kvs.push(kv);
            }
            let attn = match &layer.post_attn_norm {
                Some(n) => n.forward_fast(&attn, self.fast_kernels)?,
                None => attn,
            };
            x = (x + attn)?;
            let h = layer.mlp_norm.forward_fast(&x, self.fast_kernels)?;
            let fast = self.fast_kernels;
            let key = match (&layer.gate, self.cfg.activation) {
                (Some(g), Activation::Silu) => {
                    let gu = Linear::forward_many(&[g, &layer.up], &h, fast)?;
                    silu_key(&gu[0], &gu[1], fast)?
                }
                (Some(g), Activation::GeluTanhGated) => {
                    let gu = Linear::forward_many(&[g, &layer.up], &h, fast)?;
                    gelu_tanh_key(&gu[0], Some(&gu[1]), fast)?
                }
                (_, _) => gelu_tanh_key(&layer.up.forward(&h, fast)?, None, fast)?,
            };
            let key = self.intervene(Site::MlpKey(l), key, &mut st)?;
            let m = self.intervene(Site::MlpOut(l), layer.down.forward(&key, fast)?, &mut st)?;
            let m = match &layer.post_mlp_norm {
                Some(n) => n.forward_fast(&m, fast)?,
                None => m,
            };
            x = self.intervene(Site::ResidPost(l), (x + m)?, &mut st)?;
            if plan.stop_after == Some(l) {
                return Ok(ForwardOutput {
                    captures: st.captured,
                    logprobs: None,
                    kv: kv_out,
                    pads: pads.to_vec(),
                    offset: st.offset,
                });
            }
        }
        let x = self.intervene(
            Site::FinalNorm,
            self.final_norm.forward_fast(&x, self.fast_kernels)?,
            &mut st,
        )?;
        let logprobs = self.logprobs(&x, &plan.logits, pads, st.offset)?;
        if let Some(lp) = &logprobs {
            check_finite(lp, "log-probabilities")?;
        }
        Ok(ForwardOutput {
            captures: st.captured,
            logprobs,
            kv: kv_out,
            pads: pads.to_vec(),
            offset: st.offset,
        })
    }
}

/// SiLU of `g` times `u`: the fused pass where it applies (`fast`), else candle's ops.
fn silu_key(g: &Tensor, u: &Tensor, fast: bool) -> Result<Tensor> {
    if fast {
        if let Some(key) = super::fused::silu_mul(g, u)? {
            return Ok(key);
        }
    }
    Ok((candle_nn::ops::silu(g)? * u)?)
}

/// GELU (tanh form) of `g`, times `u` when given: the fused pass where it applies (`fast`), else
/// candle's ops.
fn gelu_tanh_key(g: &Tensor, u: Option<&Tensor>, fast: bool) -> Result<Tensor> {
    if fast {
        if let Some(key) = super::fused::gelu_tanh_mul(g, u)? {
            return Ok(key);
        }
    }
    let y = g.gelu()?;
    Ok(match u {
        Some(u) => (y * u)?,
        None => y,
    })
}
