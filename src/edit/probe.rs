//! The gap probe: a rank-one edit of MLP down-projections at the prompt's last token that
//! subtracts a ridge probe's prediction of the pronoun gap (docs/method.md §4.6).
//!
//! LSDM edits each profession's key at the occupation token, so it changes the professions it
//! was fitted on and little else (a knowledge edit). This method acts where the pronoun is
//! predicted, on a direction shared by every input:
//!
//! 1. fit prompts = edit professions × fit templates × context prefixes; protected prompts = the
//!    same templates filled with gendered words that are not professions (uncle, grandma, …,
//!    from Bolukbasi et al.'s equalize pairs), so the definitional controls stay unseen;
//! 2. at each edited layer l, read per prompt the MLP key k at the last token, the gap
//!    L = log p(he) − log p(she) there, and g = ∂L/∂m, m the down-projection's output (through
//!    Gemma's post-MLP norm when there is one);
//! 3. u = ḡ/‖ḡ‖² (adding −c·u to m lowers the gap by about c), and the probe w of
//!    [`super::probe_solve::probe_weights`]: wᵀk ≈ L / (layers left) on the fit prompts, small on
//!    corpus text (λ, C = the corpus second moment of keys), exactly 0 on protected words;
//! 4. ΔW = −scale · u wᵀ; layers are edited bottom-up, each on the model the previous left.

mod params;
mod prompts;
mod reader;
mod templates;
mod words;

pub use params::{
    default_layers, Component, Components, ProbeParams, ProbeReport, StageTarget,
    DEFAULT_TOP_LAYERS,
};
pub use prompts::{last_token_prompts, probe_prompts, ProbePrompts, PromptSources};
pub(super) use reader::{group_means, to_f64, to_tensor};
pub use reader::{ProbeReader, StageReadout};
pub use templates::FitTemplates;
pub use words::{
    extra_words, protect_set_words, protected_words, ExtraWords, ProtectSet, WordSource,
};

use super::context::EditSets;
use super::corpus::corpus_moments;
use super::delta::{DeltaMeta, WeightDelta};
use super::lsdm::{record_down_delta, record_o_delta};
use super::probe_solve::{output_direction, probe_weights, rank_one_update};
use crate::model::{Model, Site, Transformer};
use crate::Result;
use candle_core::Tensor;
use std::path::Path;

/// Run the gap probe on `layers`; returns the delta (HF names) and a report.
#[allow(clippy::too_many_arguments)]
pub fn probe(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    params: &ProbeParams,
    data_dir: &Path,
    corpus: &Path,
    cache_dir: Option<&Path>,
    mut log: impl FnMut(&str),
) -> Result<(WeightDelta, ProbeReport)> {
    params.validate()?;
    let ProbePrompts {
        layers,
        pronouns,
        fit,
        words,
        protect,
    } = probe_prompts(model, sets, layers, params.sources(), data_dir)?;

    let tok = model.tokenizer()?;
    let stages: Vec<(usize, Component)> = (0..params.passes)
        .flat_map(|_| layers.iter())
        .flat_map(|&l| params.components.list().iter().map(move |&c| (l, c)))
        .collect();
    let mut tr: Transformer = model.transformer.clone();
    let work_before = tr.work.read();
    let mut statistics_tokens = 0u64;
    let moments = if params.lambda > 0.0 {
        let mut sites: Vec<Site> = stages.iter().map(|&(l, c)| c.key_site(l)).collect();
        sites.sort();
        sites.dedup();
        let (m, tokens) = corpus_moments(
            &tr,
            &model.info.sha256,
            tok,
            corpus,
            params.corpus_seq_len,
            params.corpus_tokens,
            &sites,
            cache_dir,
            &mut log,
        )?;
        statistics_tokens = tokens;
        Some(m)
    } else {
        None
    };
    let statistics_work = tr.work.read() - work_before;

    let mut delta = WeightDelta::new(DeltaMeta {
        method: "probe".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(params)?,
    });
    let mut report = ProbeReport {
        layers: layers.clone(),
        stages: stages.clone(),
        n_edit_professions: sets.edit.len(),
        n_fit_prompts: fit.len(),
        protected_words: words.clone(),
        n_protected_keys: 0,
        mean_abs_gap: Vec::new(),
        fit_r2: Vec::new(),
        protected_max_abs: Vec::new(),
        delta_norms: Vec::new(),
        statistics: super::corpus::CorpusCost::new(statistics_tokens, statistics_work),
    };
    // Every pass resumes from the residual stream below the lowest edited layer.
    let start = layers[0];
    let fit_reader = ProbeReader::new(&tr, &fit, start, pronouns, params.batch)?;
    let protect_reader = ProbeReader::new(&tr, &protect, start, pronouns, params.batch)?;
    // Accumulated change per edited weight, recorded once at the end.
    let mut changes: Vec<((usize, Component), Tensor)> = Vec::new();
    for (i, &(l, comp)) in stages.iter().enumerate() {
        log(&format!(
            "stage {}/{}: layer {l} {comp:?}: reading keys, gaps and gradients",
            i + 1,
            stages.len()
        ));
        let r = fit_reader.readout(&tr, l, comp)?;
        let pk = protect_reader.keys(&tr, l, comp)?;
        let protected = if params.protect_each_prompt {
            pk
        } else {
            group_means(&pk, &protect, words.len())
        };
        let targets = match params.target {
            StageTarget::Share => &r.gaps / (stages.len() - i) as f64,
            StageTarget::Full => r.gaps.clone(),
        };
        let c = match &moments {
            Some(m) => Some(to_f64(&m[&comp.key_site(l)])?),
            None => None,
        };
        let w = probe_weights(
            &r.keys,
            &targets,
            c.as_ref(),
            params.lambda,
            Some(&protected),
        )?;
        let u = output_direction(&r.grads)?;
        let dw = rank_one_update(&u, &w, params.scale);
        let pred = &r.keys * &w;
        let mean_t = targets.mean();
        let ss_tot: f64 = targets.iter().map(|t| (t - mean_t).powi(2)).sum();
        let ss_res: f64 = (&pred - &targets).iter().map(|e| e * e).sum();
        report.mean_abs_gap.push(r.gaps.abs().mean());
        report.fit_r2.push(1.0 - ss_res / ss_tot.max(1e-300));
        report.protected_max_abs.push((&protected * &w).amax());
        report.delta_norms.push(dw.norm());
        report.n_protected_keys = protected.nrows();
        let proj = match comp {
            Component::Attn => &mut tr.layers[l].o,
            Component::Mlp => &mut tr.layers[l].down,
        };
        let dw_t = to_tensor(&dw, &proj.weight)?;
        proj.weight = (&proj.weight + &dw_t)?;
        match changes.iter_mut().find(|(k, _)| *k == (l, comp)) {
            Some((_, acc)) => *acc = (&*acc + &dw_t)?,
            None => changes.push(((l, comp), dw_t)),
        }
        log(&format!(
            "layer {l} {comp:?}: mean |gap| {:.3} nats, probe R² {:.3}, |ΔW| {:.4}",
            report.mean_abs_gap[i], report.fit_r2[i], report.delta_norms[i]
        ));
    }
    for ((l, comp), dw) in changes {
        match comp {
            Component::Mlp => record_down_delta(model, &mut delta, l, dw)?,
            Component::Attn => record_o_delta(model, &mut delta, l, dw)?,
        }
    }
    Ok((delta, report))
}
