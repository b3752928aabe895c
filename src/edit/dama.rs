//! DAMA baseline (Limisiewicz et al., ICLR 2024), reconstructed: per edited layer, project the
//! down-projection's output away from the directions (found by PLS between the layer's values
//! W·k and the he-vs-she value difference) that carry gender: W' = (I − BBᵀ) W.
//!
//! DAMA obtains the value difference from ROME-style optimisation of a "he" and a "she" value.
//! We use its first-order stand-in: the gradient of log p(he) − log p(she) at the end of the prompt
//! with respect to the residual stream after the layer at the subject token (one backward pass
//! per batch instead of two optimisations per prompt). docs/method.md records this choice.

use super::checkpoint::{prompt_identity, Checkpoint};
use super::context::EditPrompt;
use super::dama_projection::{apply_projection, dama_projection, DamaParams};
use super::delta::{DeltaMeta, WeightDelta};
use super::keys::capture_at_subject;
use super::lsdm::{record_down_delta, EditPrompts};
use crate::model::{InterventionPlan, KvCache, LogitsRequest, Model, Resume, Site, Transformer};
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// DAMA's hyperparameters: `[dama]` in `biaslens edit --spec`, `[methods.dama.params]` in a
/// report spec. Missing fields take the defaults below.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DamaSettings {
    /// Null-space dimension (PLS components) per layer.
    pub components: usize,
    /// Prompts per forward/backward pass.
    pub batch: usize,
}

impl Default for DamaSettings {
    fn default() -> Self {
        DamaSettings {
            components: 16,
            batch: 64,
        }
    }
}

impl DamaSettings {
    /// Range checks TOML types cannot express; errors name the field as `dama.<field>`.
    pub fn validate(&self) -> Result<()> {
        crate::error::at_least_one("dama.components", self.components)?;
        crate::error::at_least_one("dama.batch", self.batch)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DamaReport {
    pub layers: Vec<usize>,
    pub components: usize,
    pub n_prompts: usize,
}

/// Gradient of Σ_rows (log p(he) − log p(she)) w.r.t. the residual after `layer` at the subject
/// token: [rows, d]. The slow reference of [`gender_gradients`]: whole rows, every token tracked
/// above `layer`.
pub fn gender_gradients_reference(
    model: &Transformer,
    prompts: &[EditPrompt],
    layer: usize,
    pronouns: &[u32],
    batch: usize,
) -> Result<Tensor> {
    let mut out = Vec::new();
    for chunk in prompts.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let plan = InterventionPlan {
            capture: vec![Site::ResidPost(layer)],
            stop_after: Some(layer),
            ..Default::default()
        };
        let fwd = model.forward(&rows, &plan)?;
        let resid = Var::from_tensor(&fwd.captures[&Site::ResidPost(layer)].detach())?;
        let lp = model
            .forward_from_layer(
                layer + 1,
                resid.as_tensor(),
                &fwd.pads,
                &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.to_vec())),
            )?
            .logprobs
            .ok_or_else(|| Error::Model("no logits".into()))?;
        let gap = (lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?.sum_all()?;
        let grads = gap.backward()?;
        let g = grads
            .get(resid.as_tensor())
            .ok_or_else(|| Error::Numerical("no gradient reached the residual stream".into()))?;
        for (r, p) in chunk.iter().enumerate() {
            out.push(g.get(r)?.get(fwd.pads[r] + p.last_subject_token)?);
        }
    }
    Ok(Tensor::stack(&out, 0)?)
}

/// Gradient of Σ_rows (log p(he) − log p(she)) w.r.t. the residual after `layer` at the subject
/// token: [rows, d], in `prompts`' order. Same as [`gender_gradients_reference`], with the
/// tracked pass (candle's composed ops and their backward) cut to the tokens the subject's state
/// can reach. By causal attention, tokens before the subject token s do not depend on it at any
/// layer. Prompts of equal s and length form batches; each batch runs whole once without
/// gradients (keeping every layer's keys and values and the residual after `layer`), then only
/// its tokens `s..` run, tracked, from `layer + 1` to the pronouns, reading the keys and values
/// of the tokens before s from that pass.
pub fn gender_gradients(
    model: &Transformer,
    prompts: &[EditPrompt],
    layer: usize,
    pronouns: &[u32],
    batch: usize,
) -> Result<Tensor> {
    let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (i, p) in prompts.iter().enumerate() {
        if p.last_subject_token == 0 || p.last_subject_token >= p.ids.len() {
            return Err(Error::param(
                "prompts",
                format!(
                    "{:?}: subject token {} out of range",
                    p.text, p.last_subject_token
                ),
            ));
        }
        groups
            .entry((p.last_subject_token, p.ids.len()))
            .or_default()
            .push(i);
    }
    let mut out: Vec<Option<Tensor>> = vec![None; prompts.len()];
    for ((s, _), members) in groups {
        for chunk in members.chunks(batch.max(1)) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].ids.clone()).collect();
            let whole = model.forward(
                &ids,
                &InterventionPlan {
                    capture: vec![Site::ResidPost(layer)],
                    capture_kv: true,
                    ..Default::default()
                },
            )?;
            let past: KvCache = whole
                .kv
                .ok_or_else(|| Error::Model("no keys and values".into()))?
                .iter()
                .map(|(k, v)| Ok((k.narrow(2, 0, s)?, v.narrow(2, 0, s)?)))
                .collect::<Result<_>>()?;
            let resid = whole.captures[&Site::ResidPost(layer)].detach();
            let tail = resid.dim(1)? - s;
            let resid = resid.narrow(1, s, tail)?;
            let subject = Var::from_tensor(&resid.narrow(1, 0, 1)?)?;
            let tracked = if tail > 1 {
                Tensor::cat(&[subject.as_tensor(), &resid.narrow(1, 1, tail - 1)?], 1)?
            } else {
                subject.as_tensor().clone()
            };
            let lp = model
                .forward_resume(
                    &Resume {
                        start_layer: layer + 1,
                        offset: s,
                        resid: tracked,
                        past: Some(past),
                    },
                    &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.to_vec())),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("no logits".into()))?;
            let gap = (lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?.sum_all()?;
            let grads = gap.backward()?;
            let g = grads.get(subject.as_tensor()).ok_or_else(|| {
                Error::Numerical("no gradient reached the residual stream".into())
            })?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = Some(g.get(r)?.get(0)?);
            }
        }
    }
    let out: Vec<Tensor> = out
        .into_iter()
        .map(|t| t.expect("every prompt is in a group"))
        .collect();
    Ok(Tensor::stack(&out, 0)?)
}

/// DAMA's state after a finished layer (with each finished layer's new weight as a tensor).
#[derive(Serialize, Deserialize)]
struct DamaState {
    done: Vec<usize>,
}

/// DAMA on `layers`, bottom up, each layer's projection fitted on the model with the layers
/// below already projected. With a `cache_dir`, the state after every layer is checkpointed
/// there ([`Checkpoint`]): a stopped run resumes from its last finished layer and gives the same
/// edit, bit for bit. The last checkpoint is returned, not removed: the caller releases it once
/// the edit is stored.
pub fn dama(
    model: &Model,
    prompts: &EditPrompts,
    layers: &[usize],
    settings: &DamaSettings,
    cache_dir: Option<&std::path::Path>,
    mut log: impl FnMut(&str),
) -> Result<(WeightDelta, DamaReport, Checkpoint)> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let tok = model.tokenizer()?;
    let pronouns = [tok.single_token_id(" he")?, tok.single_token_id(" she")?];
    let mut tr = model.transformer.clone();
    let mut delta = WeightDelta::new(DeltaMeta {
        method: "dama".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(settings)?,
    });
    let checkpoint = Checkpoint::new(
        cache_dir,
        "dama",
        &tr.device,
        &serde_json::json!({
            "model": model.info.identity(),
            "layers": layers,
            "settings": settings,
            "keys": prompt_identity(&prompts.keys),
        }),
    )?;
    let mut done: Vec<usize> = Vec::new();
    let mut finished: Vec<(usize, Tensor)> = Vec::new();
    if let Some(saved) = checkpoint.load::<DamaState>(&tr.device)? {
        for &l in &saved.state.done {
            let w = saved
                .tensors
                .get(&format!("w.{l}"))
                .ok_or_else(|| Error::Model(format!("DAMA checkpoint has no tensor `w.{l}`")))?;
            finished.push((l, w.clone()));
        }
        done = saved.state.done;
        log(&format!(
            "DAMA: resuming after layers {done:?} from {}",
            checkpoint
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    for &l in &layers {
        let w = tr.layers[l].down.weight.clone();
        let new_w = match finished.iter().find(|(d, _)| *d == l) {
            Some((_, saved)) => saved.clone(),
            None => {
                let keys =
                    capture_at_subject(&tr, &prompts.keys, &[Site::MlpKey(l)], settings.batch)?
                        .remove(&Site::MlpKey(l))
                        .ok_or_else(|| Error::Model("no keys".into()))?;
                let diffs = gender_gradients(&tr, &prompts.keys, l, &pronouns, settings.batch)?;
                let proj = dama_projection(
                    &keys,
                    &w,
                    &diffs,
                    &DamaParams {
                        components: settings.components,
                        ..Default::default()
                    },
                )?;
                apply_projection(&proj.projection, &w)?
            }
        };
        let dw = (&new_w - &w)?;
        log(&format!(
            "DAMA layer {l}: |ΔW| {:.4}",
            dw.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?
        ));
        tr.layers[l].down.weight = new_w.clone();
        record_down_delta(model, &mut delta, l, dw)?;
        if !done.contains(&l) {
            done.push(l);
            finished.push((l, new_w));
            let tensors: Vec<(String, &Tensor)> = finished
                .iter()
                .map(|(d, t)| (format!("w.{d}"), t))
                .collect();
            checkpoint.save(&DamaState { done: done.clone() }, &tensors)?;
        }
    }
    Ok((
        delta,
        DamaReport {
            layers,
            components: settings.components,
            n_prompts: prompts.keys.len(),
        },
        checkpoint,
    ))
}
