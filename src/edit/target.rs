//! Target residual change δ per profession (MEMIT's z* = h + δ), found by gradient steps so that
//! after the edit p(he) ≈ p(she) at the end of every target prompt, while a KL term keeps the
//! next-token distribution after "The {profession} is" and a decay/clamp keeps δ small.

use super::context::EditPrompt;
use crate::model::{InterventionPlan, LogitsRequest, Site, Transformer};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

/// Missing fields take the defaults below (in `biaslens edit --spec` and report specs alike).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TargetParams {
    /// `gauss-newton` (default: least-norm steps on the linearised per-prompt gaps, converges in
    /// 2-4 steps) or `adam` (MEMIT's optimiser on the full loss incl. KL and decay).
    pub optimizer: Optimizer,
    /// Optimiser steps (MEMIT's Adam: 20-25; Gauss-Newton: 3).
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

/// How the target δ is optimised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// Least-norm steps on the linearised per-prompt gaps (KL and decay not in the step).
    #[default]
    GaussNewton,
    /// MEMIT's Adam on the full loss, KL and decay included.
    Adam,
}

impl Optimizer {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Optimizer::GaussNewton => "gauss-newton",
            Optimizer::Adam => "adam",
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Optimizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "target.optimizer",
            s,
            &[Optimizer::GaussNewton, Optimizer::Adam],
            Optimizer::name,
        )
    }
}

impl Default for TargetParams {
    fn default() -> Self {
        TargetParams {
            optimizer: Optimizer::GaussNewton,
            steps: 3,
            lr: 0.5,
            kl_weight: 0.0625,
            weight_decay: 0.5,
            clamp: 0.75,
            chunk: 128,
        }
    }
}

impl TargetParams {
    /// Range checks TOML types cannot express; errors name the field under `table`
    /// (`lsdm.target`).
    pub fn validate(&self, table: &str) -> Result<()> {
        use crate::error::{at_least_one, non_negative, positive};
        at_least_one(&format!("{table}.steps"), self.steps)?;
        positive(&format!("{table}.lr"), self.lr)?;
        non_negative(&format!("{table}.kl_weight"), self.kl_weight)?;
        non_negative(&format!("{table}.weight_decay"), self.weight_decay)?;
        positive(&format!("{table}.clamp"), self.clamp)?;
        at_least_one(&format!("{table}.chunk"), self.chunk)
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
    let plan = InterventionPlan {
        capture: vec![Site::ResidPost(layer)],
        stop_after: Some(layer),
        ..Default::default()
    };
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
#[allow(clippy::too_many_arguments)]
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
    let chunks: Vec<Cached> = target_prompts
        .chunks(params.chunk.max(1))
        .map(|c| cache_rows(model, c, layer))
        .collect::<Result<_>>()?;
    let kl_chunks: Vec<(Cached, Tensor)> = kl_prompts
        .chunks(params.chunk.max(1))
        .map(|c| {
            let cached = cache_rows(model, c, layer)?;
            let base = model
                .forward_from_layer(
                    layer + 1,
                    &cached.resid,
                    &cached.pads,
                    &InterventionPlan::logits(LogitsRequest::LastToken),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            Ok((cached, base))
        })
        .collect::<Result<_>>()?;
    match params.optimizer {
        Optimizer::GaussNewton => {
            return gauss_newton(
                model,
                target_prompts,
                &chunks,
                &kl_chunks,
                layer,
                pronouns,
                norms,
                params,
                on_step,
            )
        }
        Optimizer::Adam => {}
    }
    let n_rows = target_prompts.len() as f64;
    let n_kl = kl_prompts.len().max(1) as f64;
    let delta = Var::zeros((n_groups, d), DType::F32, &dev)?;
    let norms_t = Tensor::from_vec(norms.to_vec(), (n_groups, 1), &dev)?;
    let (mut m, mut v) = (
        Tensor::zeros((n_groups, d), DType::F32, &dev)?,
        Tensor::zeros((n_groups, d), DType::F32, &dev)?,
    );
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
            let lp = out
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
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
                let out = model.forward_from_layer(
                    layer + 1,
                    &shifted(c, delta.as_tensor())?,
                    &c.pads,
                    &InterventionPlan::logits(LogitsRequest::LastToken),
                )?;
                let lp = out
                    .logprobs
                    .ok_or_else(|| Error::Model("no logits".into()))?;
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
        let decay =
            (delta.as_tensor().broadcast_div(&norms_t.sqr()?)? * (2.0 * params.weight_decay))?;
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
    Ok(Targets {
        delta: delta.as_tensor().detach(),
        bias_loss: bias_hist,
        kl: kl_hist,
    })
}

/// Mean KL(original ‖ shifted) over the KL prompts.
fn kl_value(
    model: &Transformer,
    kl_chunks: &[(Cached, Tensor)],
    layer: usize,
    delta: &Tensor,
    n: f64,
) -> Result<f64> {
    let mut total = 0f64;
    for (c, base) in kl_chunks {
        let lp = model
            .forward_from_layer(
                layer + 1,
                &shifted(c, delta)?,
                &c.pads,
                &InterventionPlan::logits(LogitsRequest::LastToken),
            )?
            .logprobs
            .ok_or_else(|| Error::Model("no logits".into()))?;
        total += (base.exp()? * (base - &lp)?)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(total / n.max(1.0))
}

/// Gauss-Newton on the per-prompt gaps g_i(δ) = log p(he) − log p(she): each step linearises
/// every gap around the current δ (one forward + one backward pass over all target prompts) and
/// moves each profession's δ to the least-norm change that zeroes its prompts' linearised gaps
/// (damped: (JJᵀ + ρI)⁻¹ with ρ = 1e-3·tr(JJᵀ)/n), then clamps ‖δ‖ ≤ clamp·‖h‖.
#[allow(clippy::too_many_arguments)]
fn gauss_newton(
    model: &Transformer,
    target_prompts: &[EditPrompt],
    chunks: &[Cached],
    kl_chunks: &[(Cached, Tensor)],
    layer: usize,
    pronouns: [u32; 2],
    norms: &[f32],
    params: &TargetParams,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Targets> {
    use nalgebra::{DMatrix, DVector};
    let n_groups = norms.len();
    let d = model.cfg.hidden_size;
    let dev = model.device.clone();
    let mut delta = vec![vec![0f32; d]; n_groups];
    let (mut bias_hist, mut kl_hist) = (Vec::new(), Vec::new());
    let n_rows = target_prompts.len() as f64;
    for step in 0..=params.steps {
        let flat: Vec<f32> = delta.iter().flatten().copied().collect();
        let delta_t = Tensor::from_vec(flat, (n_groups, d), &dev)?;
        // Per-row gaps and their gradients w.r.t. each row's own shift.
        let mut gaps: Vec<f64> = Vec::new();
        let mut jac: Vec<Vec<f32>> = Vec::new();
        for c in chunks {
            let rows = Var::from_tensor(&delta_t.index_select(&c.groups, 0)?)?;
            let resid = c
                .resid
                .broadcast_add(&c.onehot.broadcast_mul(&rows.as_tensor().unsqueeze(1)?)?)?;
            let lp = model
                .forward_from_layer(
                    layer + 1,
                    &resid,
                    &c.pads,
                    &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.to_vec())),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            let gap = (lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?.flatten_all()?;
            gaps.extend(gap.to_vec1::<f32>()?.into_iter().map(|x| x as f64));
            if step < params.steps {
                let g = gap.sum_all()?.backward()?;
                let gr = g
                    .get(rows.as_tensor())
                    .ok_or_else(|| Error::Numerical("no gradient reached δ".into()))?;
                jac.extend(gr.to_vec2::<f32>()?);
            }
        }
        let loss = gaps.iter().map(|g| g * g).sum::<f64>() / n_rows;
        bias_hist.push(loss);
        on_step(step, loss);
        if step == params.steps {
            break;
        }
        for (gi, dg) in delta.iter_mut().enumerate() {
            let idx: Vec<usize> = target_prompts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.group == gi)
                .map(|(i, _)| i)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let j = DMatrix::<f64>::from_fn(idx.len(), d, |r, c| jac[idx[r]][c] as f64);
            let e = DVector::<f64>::from_iterator(idx.len(), idx.iter().map(|&i| gaps[i]));
            let jjt = &j * j.transpose();
            let rho = 1e-3 * jjt.trace() / idx.len() as f64 + 1e-12;
            let a = jjt + DMatrix::<f64>::identity(idx.len(), idx.len()) * rho;
            let y = a.lu().solve(&e).ok_or_else(|| {
                Error::Numerical(format!("Gauss-Newton system of group {gi} is singular"))
            })?;
            let step_v = j.transpose() * y;
            let mut next: Vec<f64> = dg
                .iter()
                .zip(step_v.iter())
                .map(|(x, s)| *x as f64 - s)
                .collect();
            let nrm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
            let limit = params.clamp * norms[gi] as f64;
            if nrm > limit {
                next.iter_mut().for_each(|x| *x *= limit / nrm);
            }
            *dg = next.into_iter().map(|x| x as f32).collect();
        }
    }
    let flat: Vec<f32> = delta.iter().flatten().copied().collect();
    let delta_t = Tensor::from_vec(flat, (n_groups, d), &dev)?;
    if params.kl_weight > 0.0 {
        kl_hist.push(kl_value(
            model,
            kl_chunks,
            layer,
            &delta_t,
            kl_chunks.iter().map(|(c, _)| c.pads.len()).sum::<usize>() as f64,
        )?);
    }
    Ok(Targets {
        delta: delta_t,
        bias_loss: bias_hist,
        kl: kl_hist,
    })
}
