//! FT-L baseline (ROME's constrained fine-tuning): Adam on the down-projection weights of the
//! same layers and the same objective as LSDM's target, projected after every step so that
//! ‖W − W₀‖∞ ≤ ε.

use super::checkpoint::{prompt_identity, Checkpoint};
use super::context::EditPrompt;
use super::delta::{DeltaMeta, WeightDelta};
use super::lsdm::{record_down_delta, EditPrompts};
use crate::model::{InterventionPlan, LogitsRequest, Model, Site, Transformer};
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// FT-L's hyperparameters: `[ft]` in `biaslens edit --spec`, `[methods.ft.params]` in a report
/// spec. Missing fields take the defaults below.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FtParams {
    /// L∞ bound on the weight change (ROME: 5e-4 for GPT-2 XL).
    pub eps: f64,
    pub steps: usize,
    pub lr: f64,
    pub kl_weight: f64,
    pub chunk: usize,
}

impl Default for FtParams {
    fn default() -> Self {
        FtParams {
            eps: 5e-3,
            steps: 20,
            lr: 1e-3,
            kl_weight: 0.0625,
            chunk: 128,
        }
    }
}

impl FtParams {
    /// Range checks TOML types cannot express; errors name the field as `ft.<field>`.
    pub fn validate(&self) -> Result<()> {
        use crate::error::{at_least_one, non_negative, positive};
        positive("ft.eps", self.eps)?;
        at_least_one("ft.steps", self.steps)?;
        positive("ft.lr", self.lr)?;
        non_negative("ft.kl_weight", self.kl_weight)?;
        at_least_one("ft.chunk", self.chunk)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FtReport {
    pub layers: Vec<usize>,
    pub bias_loss: Vec<f64>,
    pub max_abs_change: f64,
}

struct Rows {
    resid: Tensor,
    pads: Vec<usize>,
}

fn cache_input(model: &Transformer, prompts: &[EditPrompt], layer: usize) -> Result<Rows> {
    let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let plan = InterventionPlan {
        capture: vec![Site::ResidPre(layer)],
        stop_after: Some(layer),
        ..Default::default()
    };
    let out = model.forward(&rows, &plan)?;
    Ok(Rows {
        resid: out.captures[&Site::ResidPre(layer)].detach(),
        pads: out.pads,
    })
}

/// FT-L's state after a finished step (with the weights and Adam moments as tensors).
#[derive(Serialize, Deserialize)]
struct FtState {
    /// The next step to run.
    next: usize,
    /// Bias loss before each step run so far.
    bias_loss: Vec<f64>,
}

/// FT-L on `layers`. With a `cache_dir`, the state after every step is checkpointed there
/// ([`Checkpoint`]): a stopped run resumes from its last finished step and gives the same edit,
/// bit for bit. The last checkpoint is returned, not removed: the caller releases it once the
/// edit is stored, so a crash before that costs one loss pass, not the run.
pub fn ft_l(
    model: &Model,
    prompts: &EditPrompts,
    layers: &[usize],
    params: &FtParams,
    cache_dir: Option<&std::path::Path>,
    mut log: impl FnMut(&str),
) -> Result<(WeightDelta, FtReport, Checkpoint)> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let first = *layers
        .first()
        .ok_or_else(|| Error::param("layers", "empty"))?;
    let tok = model.tokenizer()?;
    let pronouns = vec![tok.single_token_id(" he")?, tok.single_token_id(" she")?];
    let base = &model.transformer;
    let mut tr = base.clone();
    let vars: Vec<(usize, Var, Tensor)> = layers
        .iter()
        .map(|&l| {
            let w0 = base.layers[l].down.weight.clone();
            Ok((l, Var::from_tensor(&w0)?, w0))
        })
        .collect::<Result<_>>()?;
    for (l, v, _) in &vars {
        tr.layers[*l].down.weight = v.as_tensor().clone();
    }
    let chunks: Vec<Rows> = prompts
        .target
        .chunks(params.chunk.max(1))
        .map(|c| cache_input(base, c, first))
        .collect::<Result<_>>()?;
    let kl: Vec<(Rows, Tensor)> = prompts
        .kl
        .chunks(params.chunk.max(1))
        .map(|c| {
            let r = cache_input(base, c, first)?;
            let lp = base
                .forward_from_layer(
                    first,
                    &r.resid,
                    &r.pads,
                    &InterventionPlan::logits(LogitsRequest::LastToken),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            Ok((r, lp))
        })
        .collect::<Result<_>>()?;
    let n = prompts.target.len() as f64;
    let n_kl = prompts.kl.len().max(1) as f64;
    let checkpoint = Checkpoint::new(
        cache_dir,
        "ft-l",
        &base.device,
        &serde_json::json!({
            "model": model.info.identity(),
            "layers": layers,
            "params": params,
            "target": prompt_identity(&prompts.target),
            "kl": prompt_identity(&prompts.kl),
        }),
    )?;
    let mut moments: Vec<(Tensor, Tensor)> = vars
        .iter()
        .map(|(_, v, _)| Ok((v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?)))
        .collect::<Result<_>>()?;
    let mut hist = Vec::new();
    let mut start = 0;
    if let Some(saved) = checkpoint.load::<FtState>(&base.device)? {
        let get = |name: String| {
            saved
                .tensors
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::Model(format!("FT-L checkpoint has no tensor `{name}`")))
        };
        for ((l, v, _), (m, s)) in vars.iter().zip(moments.iter_mut()) {
            v.set(&get(format!("w.{l}"))?)?;
            *m = get(format!("m.{l}"))?;
            *s = get(format!("s.{l}"))?;
        }
        start = saved.state.next;
        hist = saved.state.bias_loss;
        log(&format!(
            "  FT-L: resuming at step {start} of {} from {}",
            params.steps,
            checkpoint
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    for step in start..=params.steps {
        let mut grads: Vec<Tensor> = vars
            .iter()
            .map(|(_, v, _)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut total = 0f64;
        let add_grads = |loss: &Tensor, grads: &mut Vec<Tensor>| -> Result<()> {
            let g = loss.backward()?;
            for (i, (_, v, _)) in vars.iter().enumerate() {
                if let Some(gv) = g.get(v.as_tensor()) {
                    grads[i] = (&grads[i] + gv)?;
                }
            }
            Ok(())
        };
        for c in &chunks {
            let lp = tr
                .forward_from_layer(
                    first,
                    &c.resid,
                    &c.pads,
                    &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.clone())),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            let loss = ((lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?
                .sqr()?
                .sum_all()?
                / n)?;
            total += loss.to_scalar::<f32>()? as f64;
            if step < params.steps {
                add_grads(&loss, &mut grads)?;
            }
        }
        if params.kl_weight > 0.0 && step < params.steps {
            for (c, base_lp) in &kl {
                let lp = tr
                    .forward_from_layer(
                        first,
                        &c.resid,
                        &c.pads,
                        &InterventionPlan::logits(LogitsRequest::LastToken),
                    )?
                    .logprobs
                    .ok_or_else(|| Error::Model("no logits".into()))?;
                let klv = (base_lp.exp()? * (base_lp - &lp)?)?.sum_all()?;
                add_grads(&(klv * (params.kl_weight / n_kl))?, &mut grads)?;
            }
        }
        hist.push(total);
        log(&format!(
            "  FT-L step {step}/{}: bias loss {total:.4}",
            params.steps
        ));
        if step == params.steps {
            break;
        }
        let t = (step + 1) as i32;
        for (i, (_, v, w0)) in vars.iter().enumerate() {
            let (m, s) = &mut moments[i];
            *m = ((&*m * 0.9)? + (&grads[i] * 0.1)?)?;
            *s = ((&*s * 0.999)? + (grads[i].sqr()? * 0.001)?)?;
            let upd = ((&*m / (1.0 - 0.9f64.powi(t)))?
                / ((&*s / (1.0 - 0.999f64.powi(t)))?.sqrt()? + 1e-8)?)?;
            let next = (v.as_tensor() - (upd * params.lr)?)?;
            // Project back into the L∞ ball around W₀.
            let change = (&next - w0)?.clamp(-params.eps, params.eps)?;
            v.set(&(w0 + change)?)?;
        }
        let mut tensors = Vec::new();
        for ((l, v, _), (m, s)) in vars.iter().zip(&moments) {
            tensors.push((format!("w.{l}"), v.as_tensor()));
            tensors.push((format!("m.{l}"), m));
            tensors.push((format!("s.{l}"), s));
        }
        let state = FtState {
            next: step + 1,
            bias_loss: hist.clone(),
        };
        checkpoint.save(&state, &tensors)?;
    }
    let mut delta = WeightDelta::new(DeltaMeta {
        method: "ft-l".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(params)?,
    });
    let mut max_change = 0f64;
    for (l, v, w0) in &vars {
        let dw = (v.as_tensor() - w0)?.detach();
        max_change = max_change.max(dw.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64);
        record_down_delta(model, &mut delta, *l, dw)?;
    }
    Ok((
        delta,
        FtReport {
            layers,
            bias_loss: hist,
            max_abs_change: max_change,
        },
        checkpoint,
    ))
}
