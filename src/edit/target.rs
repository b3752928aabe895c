//! Target residual change δ per profession (MEMIT's z* = h + δ), found by gradient steps so that
//! after the edit p(he) ≈ p(she) at the end of every target prompt, while a KL term keeps the
//! next-token distribution after "The {profession} is" and a decay/clamp keeps δ small.

use super::context::EditPrompt;
use crate::model::{InterventionPlan, LogitsRequest, Site, Transformer};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetParams {
    /// Adam steps (MEMIT: 20-25).
    pub steps: usize,
    /// Adam learning rate on δ (MEMIT: 0.5).
    pub lr: f64,
    /// Weight of KL(original ‖ edited) on the "The {profession} is" prompts (MEMIT: 0.0625).
    pub kl_weight: f64,
    /// Weight of ‖δ‖² / ‖h‖² (MEMIT's v_weight_decay, 0.5 for GPT-J).
    pub weight_decay: f64,
    /// ‖δ‖ ≤ clamp · ‖h‖ after every step (MEMIT: 0.75 for GPT-J; DAMA: 4).
    pub clamp: f64,
    /// Rows per forward/backward chunk (memory bound).
    pub chunk: usize,
}

impl Default for TargetParams {
    fn default() -> Self {
        TargetParams { steps: 20, lr: 0.5, kl_weight: 0.0625, weight_decay: 0.5, clamp: 0.75, chunk: 128 }
    }
}

/// Optimised targets: δ per group and the loss trajectory.
#[derive(Debug, Clone)]
pub struct Targets {
    /// [groups, d]
    pub delta: Tensor,
    /// Mean over target prompts of (log p(he) - log p(she))² before and after each step.
    pub bias_loss: Vec<f64>,
    pub kl: Vec<f64>,
}

/// Residual stream after `layer` at every position of each prompt, with its padding.
struct Cached {
    resid: Tensor,
    pads: Vec<usize>,
    /// One-hot [rows, tokens, 1] at the last subject token.
    onehot: Tensor,
    groups: Tensor,
}

fn cache_rows(model: &Transformer, prompts: &[EditPrompt], layer: usize) -> Result<Cached> {
    let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let plan = InterventionPlan { capture: vec![Site::ResidPost(layer)], stop_after: Some(layer), ..Default::default() };
    let out = model.forward(&rows, &plan)?;
    let resid = out.captures[&Site::ResidPost(layer)].detach();
    let (b, t, _) = resid.dims3()?;
    let mut hot = vec![0f32; b * t];
    for (r, p) in prompts.iter().enumerate() {
        hot[r * t + out.pads[r] + p.last_subject_token] = 1.0;
    }
    let dev = resid.device().clone();
    let groups: Vec<u32> = prompts.iter().map(|p| p.group as u32).collect();
    Ok(Cached {
        resid,
        pads: out.pads,
        onehot: Tensor::from_vec(hot, (b, t, 1), &dev)?,
        groups: Tensor::from_vec(groups, b, &dev)?,
    })
}

fn shifted(c: &Cached, delta: &Tensor) -> Result<Tensor> {
    let rows = delta.index_select(&c.groups, 0)?.unsqueeze(1)?;
    Ok(c.resid.broadcast_add(&c.onehot.broadcast_mul(&rows)?)?)
}

/// Optimise δ (one per group) added after `layer` at the last subject token.
/// `norms[g]` is ‖h‖ of group g at that site (for decay and clamp).
pub fn optimise_targets(
    model: &Transformer,
    target_prompts: &[EditPrompt],
    kl_prompts: &[EditPrompt],
    layer: usize,
    pronouns: [u32; 2],
    norms: &[f32],
    params: &TargetParams,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Targets> {
    let n_groups = norms.len();
    let d = model.cfg.hidden_size;
    let dev = model.device.clone();
    if target_prompts.is_empty() {
        return Err(Error::param("target prompts", "none"));
    }
    let chunks: Vec<Cached> = target_prompts.chunks(params.chunk.max(1)).map(|c| cache_rows(model, c, layer)).collect::<Result<_>>()?;
    let kl_chunks: Vec<(Cached, Tensor)> = kl_prompts
        .chunks(params.chunk.max(1))
        .map(|c| {
            let cached = cache_rows(model, c, layer)?;
            let base = model
                .forward_from_layer(layer + 1, &cached.resid, &cached.pads, &InterventionPlan::logits(LogitsRequest::LastToken))?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            Ok((cached, base))
        })
        .collect::<Result<_>>()?;
    let n_rows = target_prompts.len() as f64;
    let n_kl = kl_prompts.len().max(1) as f64;
    let delta = Var::zeros((n_groups, d), DType::F32, &dev)?;
    let norms_t = Tensor::from_vec(norms.to_vec(), (n_groups, 1), &dev)?;
    let (mut m, mut v) = (Tensor::zeros((n_groups, d), DType::F32, &dev)?, Tensor::zeros((n_groups, d), DType::F32, &dev)?);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let (mut bias_hist, mut kl_hist) = (Vec::new(), Vec::new());
    for step in 0..=params.steps {
        let mut grad = Tensor::zeros((n_groups, d), DType::F32, &dev)?;
        let (mut bias_loss, mut kl_loss) = (0f64, 0f64);
        for c in &chunks {
            let out = model.forward_from_layer(
                layer + 1,
                &shifted(c, delta.as_tensor())?,
                &c.pads,
                &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.to_vec())),
            )?;
            let lp = out.logprobs.ok_or_else(|| Error::Model("no logits".into()))?;
            let gap = (lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?;
            let loss = (gap.sqr()?.sum_all()? / n_rows)?;
            bias_loss += loss.to_scalar::<f32>()? as f64;
            if step < params.steps {
                let g = loss.backward()?;
                if let Some(gd) = g.get(delta.as_tensor()) {
                    grad = (grad + gd)?;
                }
            }
        }
        if params.kl_weight > 0.0 {
            for (c, base) in &kl_chunks {
                let out = model.forward_from_layer(layer + 1, &shifted(c, delta.as_tensor())?, &c.pads, &InterventionPlan::logits(LogitsRequest::LastToken))?;
                let lp = out.logprobs.ok_or_else(|| Error::Model("no logits".into()))?;
                let kl = (base.exp()? * (base - &lp)?)?.sum(D::Minus1)?.sum_all()?;
                let loss = (kl * (params.kl_weight / n_kl))?;
                kl_loss += loss.to_scalar::<f32>()? as f64 / params.kl_weight;
                if step < params.steps {
                    let g = loss.backward()?;
                    if let Some(gd) = g.get(delta.as_tensor()) {
                        grad = (grad + gd)?;
                    }
                }
            }
        }
        bias_hist.push(bias_loss);
        kl_hist.push(kl_loss);
        on_step(step, bias_loss);
        if step == params.steps {
            break;
        }
        // Decay term: weight_decay · ‖δ‖² / ‖h‖² per group.
        let decay = (delta.as_tensor().broadcast_div(&norms_t.sqr()?)? * (2.0 * params.weight_decay))?;
        grad = (grad + decay)?;
        m = ((m * b1)? + (&grad * (1.0 - b1))?)?;
        v = ((v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
        let t = (step + 1) as i32;
        let mhat = (&m / (1.0 - b1.powi(t)))?;
        let vhat = (&v / (1.0 - b2.powi(t)))?;
        let upd = (mhat / (vhat.sqrt()? + eps)?)?;
        let mut next = (delta.as_tensor() - (upd * params.lr)?)?;
        // Clamp ‖δ_g‖ ≤ clamp · ‖h_g‖.
        let nrm = next.sqr()?.sum_keepdim(1)?.sqrt()?;
        let limit = (&norms_t * params.clamp)?;
        let scale = limit.broadcast_div(&nrm.maximum(1e-12)?)?.minimum(1.0)?;
        next = next.broadcast_mul(&scale)?;
        delta.set(&next)?;
    }
    Ok(Targets { delta: delta.as_tensor().detach(), bias_loss: bias_hist, kl: kl_hist })
}
