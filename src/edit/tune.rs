//! Gap tuning (`--method tune`): a low-rank edit of the gap probe's projections, fitted by
//! gradient descent on the pronoun gap itself, through every edited layer at once
//! (docs/method.md §4.7).
//!
//! The gap probe ([`super::probe`]) fits one linear read-out per projection in closed form, stage
//! by stage; each read-out explains 19-70% of the gap's variance and the edit saturates near −40%
//! on held-out professions (findings §6). Gap tuning keeps the probe's parts (the projections,
//! the last-token fit prompts, the protected gendered words, the corpus second moments) and
//! fits all stages jointly:
//!
//! J = mean_fit L² + α · mean_protected (L − L₀)² + β · Σ_s tr(ΔW_s C_s ΔW_sᵀ) / tr(W_s C_s W_sᵀ)
//!
//! with L = log p(he) − log p(she) at the last token, L₀ the base model's gap, C_s the corpus
//! second moment of stage s's input (the preservation prior: the mean squared change of the
//! projection's output on corpus text, relative to the output's own energy), and
//! ΔW_s = B_s (P⊥_s A_s)ᵀ of rank r, where P⊥_s removes the span of the protected words' mean
//! keys (on the base model), so those keys map to exactly zero change, as the probe's Pw = 0.
//! Adam on (A, B); each step one minibatch of fit prompts and one of protected prompts.

mod lowrank;
mod optimise;
mod params;
mod readings;

pub use lowrank::{
    head_a, head_mask, low_rank_delta, prior_energy, protect_weights, threshold_targets,
};
pub use params::{LrSchedule, TuneParams, CORPUS_GAP_TOKENS, CORPUS_GAP_WINDOWS, CORPUS_TOPK_K};

use super::context::{EditPrompt, EditSets};
use super::corpus::{corpus_chunks, corpus_moments};
use super::delta::{DeltaMeta, WeightDelta};
use super::lsdm::{record_down_delta, record_o_delta};
use super::probe::{group_means, probe_prompts, to_f64, Component, ProbePrompts, ProbeReader};
use super::probe_solve::row_space_basis;
use crate::model::stable_matmul::matmul as mm;
use crate::model::{Model, ModelConfig, Site, Transformer};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use lowrank::Stage;
use nalgebra::DMatrix;
use optimise::{optimise, Histories};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use readings::{baseline, shifts, Baseline, Readers};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What the edit did, for edit.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TuneReport {
    pub layers: Vec<usize>,
    pub stages: Vec<(usize, Component)>,
    pub n_edit_professions: usize,
    pub n_fit_prompts: usize,
    /// Fit prompts whose target is their base gap (|L₀| ≥ `keep_above`); 0 without it.
    #[serde(default)]
    pub n_fit_kept: usize,
    pub protected_words: Vec<String>,
    pub n_protected_prompts: usize,
    /// Every 10 steps and the last: (step, fit mean L², protected mean (L − L₀)², prior); with
    /// `tune.seeds` > 1, the last seed's.
    pub history: Vec<(usize, f64, f64, f64)>,
    /// With `tune.seeds` > 1: each seed's last history entry, (seed, fit mean L², protected
    /// mean (L − L₀)², prior) of its own fit before the average. Empty (not written) for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_losses: Vec<(u64, f64, f64, f64)>,
    /// Mean |L| over all fit prompts, before and after.
    pub fit_mean_abs_gap: (f64, f64),
    /// Mean |L − L₀| over all protected prompts after the edit.
    pub protected_mean_abs_shift: f64,
    /// Per stage: max |ΔW p| over the protected mean keys p (0 up to rounding).
    pub protected_max_abs: Vec<f64>,
    /// Per stage: ‖ΔW‖_F.
    pub delta_norms: Vec<f64>,
    /// Per stage: tr(ΔW C ΔWᵀ) / tr(W C Wᵀ).
    pub relative_energy: Vec<f64>,
    /// C's corpus tokens and this run's cost of gathering it.
    #[serde(flatten)]
    pub statistics: super::corpus::CorpusCost,
    /// Mean |L − L₀| over every position of the corpus gap windows after the edit (nats): how
    /// far the edit moves he vs she in ordinary text, whether or not γ is set.
    #[serde(default)]
    pub corpus_gap_mean_abs_shift: Option<f64>,
    /// Corpus positions behind it (whole windows only).
    #[serde(default)]
    pub corpus_gap_positions: usize,
    /// With γ: every 10 steps and the last, (step, corpus mean (L − L₀)² of that minibatch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corpus_gap_history: Vec<(usize, f64)>,
    /// With δ: the mean |Δ| of the centred top-k logits over every corpus position after the
    /// edit (nats), and every 10 steps and the last, (step, that minibatch's mean squared
    /// change). Without δ the base top-k is not computed (a full unembedding per position),
    /// so neither is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_topk_mean_abs_shift: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corpus_topk_history: Vec<(usize, f64)>,
    /// With ζ: the mean |Δ log p| of each fit prompt's preferred pronoun after the edit, and
    /// every 10 steps and the last, (step, that fit minibatch's mean squared change of it).
    /// Without ζ neither is computed (a full unembedding per fit prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_preferred_mean_abs_shift: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold_preferred_history: Vec<(usize, f64)>,
    /// With η: the mean |Δ log(p(he) + p(she))| over the fit prompts after the edit, and every
    /// 10 steps and the last, (step, that minibatch's mean squared change of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_mass_mean_abs_shift: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold_mass_history: Vec<(usize, f64)>,
}

/// The stages of a tune edit: every component of every layer, or with `heads` the attention
/// output projection of each head's layer. Errors name `tune.heads` for a head outside the
/// model or the edited layers.
pub fn tune_stages(
    layers: &[usize],
    params: &TuneParams,
    num_heads: usize,
) -> Result<Vec<(usize, Component)>> {
    if params.heads.is_empty() {
        return Ok(layers
            .iter()
            .flat_map(|&l| params.components.list().iter().map(move |&c| (l, c)))
            .collect());
    }
    for &(l, h) in &params.heads {
        if h >= num_heads {
            return Err(Error::param(
                "tune.heads",
                format!("head {l}.{h}: the model has {num_heads} heads per layer"),
            ));
        }
        if !layers.contains(&l) {
            return Err(Error::param(
                "tune.heads",
                format!("head {l}.{h} is in layer {l}, which is not edited (layers {layers:?})"),
            ));
        }
    }
    Ok(layers
        .iter()
        .filter(|&&l| params.heads.iter().any(|&(hl, _)| hl == l))
        .map(|&l| (l, Component::Attn))
        .collect())
}

fn set_weight(tr: &mut Transformer, l: usize, comp: Component, w: Tensor) {
    match comp {
        Component::Attn => tr.layers[l].o.weight = w,
        Component::Mlp => tr.layers[l].down.weight = w,
    }
}

fn weight(tr: &Transformer, l: usize, comp: Component) -> Tensor {
    match comp {
        Component::Attn => tr.layers[l].o.weight.clone(),
        Component::Mlp => tr.layers[l].down.weight.clone(),
    }
}

/// One stage's protected words' mean keys [words, d_in] (f64, on the base model), an orthonormal
/// basis of the directions its change must map to zero, and with heads the 0/1 mask [d_in] of
/// the heads' columns.
struct ProtectedBasis {
    keys: DMatrix<f64>,
    basis: DMatrix<f64>,
    mask: Option<Vec<f64>>,
}

/// Each stage's [`ProtectedBasis`]. A choice of heads that cannot keep the protected words is
/// refused here, before the corpus statistics are computed.
fn protected_bases(
    base: &Transformer,
    reader: &ProbeReader,
    protect: &[EditPrompt],
    n_words: usize,
    stages: &[(usize, Component)],
    params: &TuneParams,
    cfg: &ModelConfig,
) -> Result<Vec<ProtectedBasis>> {
    stages
        .iter()
        .map(|&(l, comp)| {
            let keys = reader.keys(base, l, comp)?;
            let protected = group_means(&keys, protect, n_words);
            // With heads: the change reads only their columns, so only those columns of the
            // protected keys need to map to zero (ΔW p = ΔW (mask ⊙ p)).
            let mask: Option<Vec<f64>> = (!params.heads.is_empty()).then(|| {
                let hs: Vec<usize> = params
                    .heads
                    .iter()
                    .filter(|&&(hl, _)| hl == l)
                    .map(|&(_, h)| h)
                    .collect();
                head_mask(&hs, cfg.num_heads, cfg.head_dim)
            });
            let basis = match &mask {
                Some(m) => {
                    let mut restricted = protected.clone();
                    for mut row in restricted.row_iter_mut() {
                        row.component_mul_assign(&nalgebra::RowDVector::from_row_slice(m));
                    }
                    row_space_basis(&restricted)
                }
                None => row_space_basis(&protected),
            };
            // Heads of 64 columns cannot hold 136 protected keys at zero and still change: the
            // keys would span every column the change may read, and the edit would be null.
            if let Some(m) = &mask {
                let free = m.iter().filter(|&&x| x > 0.0).count();
                if basis.ncols() >= free {
                    return Err(Error::param(
                        "tune.heads",
                        format!(
                            "the {n_words} protected words' keys span all {free} columns of the \
                             chosen heads in layer {l}, so no change can keep them at zero: \
                             protect fewer words (--protect-set pairs) or choose more heads"
                        ),
                    ));
                }
            }
            Ok(ProtectedBasis {
                keys: protected,
                basis,
                mask,
            })
        })
        .collect()
}

/// The stages with their factors initialised: A random (N(0, 1/d_in), from `rng`), B zero, so
/// the edit starts at ΔW = 0.
fn init_stages(
    base: &Transformer,
    stages: &[(usize, Component)],
    bases: Vec<ProtectedBasis>,
    moments: &BTreeMap<Site, Tensor>,
    rank: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<Vec<Stage>> {
    let device = Device::Cpu;
    let mut out = Vec::new();
    for (&(l, comp), pb) in stages.iter().zip(bases) {
        let w0 = weight(base, l, comp);
        let (d_out, d_in) = w0.dims2()?;
        let dtype = w0.dtype();
        let qm = &pb.basis;
        let q = if qm.ncols() == 0 {
            None
        } else {
            let v: Vec<f64> = (0..d_in)
                .flat_map(|i| (0..qm.ncols()).map(move |j| (i, j)))
                .map(|(i, j)| qm[(i, j)])
                .collect();
            Some(Tensor::from_vec(v, (d_in, qm.ncols()), &device)?.to_dtype(dtype)?)
        };
        let c = moments[&comp.key_site(l)].to_dtype(dtype)?;
        let energy0 = (mm(&w0, &c)? * &w0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let normal = Normal::new(0.0, 1.0 / (d_in as f64).sqrt())
            .map_err(|e| Error::param("tune", e.to_string()))?;
        let init: Vec<f64> = (0..d_in * rank).map(|_| normal.sample(rng)).collect();
        let a = Var::from_tensor(&Tensor::from_vec(init, (d_in, rank), &device)?.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&Tensor::zeros((d_out, rank), dtype, &device)?)?;
        let mask = pb
            .mask
            .map(|m| Tensor::from_vec(m, (d_in, 1), &device)?.to_dtype(dtype))
            .transpose()?;
        out.push(Stage {
            layer: l,
            comp,
            w0,
            a,
            b,
            q,
            mask,
            c,
            energy0,
            protected: pb.keys,
        });
    }
    Ok(out)
}

/// One seed's fit: the prompts and readers it was fitted on (the shuffle is the seed's), the
/// base model's readings and the stages with their fitted factors.
struct SeedFit {
    layers: Vec<usize>,
    stages_list: Vec<(usize, Component)>,
    words: Vec<String>,
    n_fit: usize,
    n_protect: usize,
    readers: Readers,
    baseline: Baseline,
    stages: Vec<Stage>,
    hist: Histories,
    fit_before: f64,
    statistics: super::corpus::CorpusCost,
}

/// Run gap tuning on `layers`; returns the delta (HF names) and a report. With `tune.seeds`
/// k > 1 the fit runs k times, with seeds `seed`, …, `seed + k − 1`, and the delta is the mean
/// of their changes (docs/method.md §4.7: the fit's factual gender moves with its seed).
#[allow(clippy::too_many_arguments)]
pub fn tune(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    params: &TuneParams,
    data_dir: &Path,
    corpus: &Path,
    cache_dir: Option<&Path>,
    mut log: impl FnMut(&str),
) -> Result<(WeightDelta, TuneReport)> {
    params.validate()?;
    // Before any work: k cannot exceed the vocabulary.
    if params.corpus_topk.is_some() && params.corpus_topk_k > model.config().vocab_size {
        return Err(Error::param(
            "tune.corpus_topk_k",
            format!(
                "{} is larger than the model's vocabulary of {}",
                params.corpus_topk_k,
                model.config().vocab_size
            ),
        ));
    }
    let mut sum: Option<Vec<Tensor>> = None;
    let mut seed_losses = Vec::new();
    let mut last: Option<SeedFit> = None;
    let mut statistics = None;
    for seed in params.seed_list() {
        // Only the last fit is kept (the report reads its prompts): free the one before first,
        // so k seeds need one fit's memory.
        drop(last.take());
        if params.seeds > 1 {
            log(&format!(
                "gap tuning: seed {seed} ({} of {})",
                seed - params.seed + 1,
                params.seeds
            ));
        }
        let fit = fit_seed(
            model, sets, layers, params, seed, data_dir, corpus, cache_dir, &mut log,
        )?;
        let dws = fit
            .stages
            .iter()
            .map(|s| Ok(s.delta()?.detach()))
            .collect::<Result<Vec<_>>>()?;
        sum = Some(match sum {
            None => dws,
            Some(acc) => acc
                .iter()
                .zip(&dws)
                .map(|(a, b)| Ok((a + b)?))
                .collect::<Result<Vec<_>>>()?,
        });
        if let Some(&(_, f, p, r)) = fit.hist.main.last() {
            seed_losses.push((seed, f, p, r));
        }
        // Every seed's cost: the later ones read the cached statistics, or recompute them.
        let cost: &mut super::corpus::CorpusCost = statistics.get_or_insert(Default::default());
        cost.statistics_tokens = fit.statistics.statistics_tokens;
        cost.statistics_passes += fit.statistics.statistics_passes;
        cost.statistics_token_layers += fit.statistics.statistics_token_layers;
        last = Some(fit);
    }
    let (Some(sum), Some(fit)) = (sum, last) else {
        return Err(Error::param("tune.seeds", "no seed to fit"));
    };
    let dws = if params.seeds == 1 {
        sum
    } else {
        sum.iter()
            .map(|t| Ok((t / params.seeds as f64)?))
            .collect::<Result<Vec<_>>>()?
    };
    let mut report = finish(model, sets, params, &fit, &dws, &mut log)?;
    report.statistics = statistics.unwrap_or(fit.statistics);
    if params.seeds > 1 {
        report.seed_losses = seed_losses;
    }
    let mut delta = WeightDelta::new(DeltaMeta {
        method: "tune".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(params)?,
    });
    for (s, dw) in fit.stages.iter().zip(dws) {
        match s.comp {
            Component::Mlp => record_down_delta(model, &mut delta, s.layer, dw)?,
            Component::Attn => record_o_delta(model, &mut delta, s.layer, dw)?,
        }
    }
    Ok((delta, report))
}

/// One seed's fit of gap tuning: prompts shuffled and factors initialised from `seed`.
#[allow(clippy::too_many_arguments)]
fn fit_seed(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    params: &TuneParams,
    seed: u64,
    data_dir: &Path,
    corpus: &Path,
    cache_dir: Option<&Path>,
    log: &mut impl FnMut(&str),
) -> Result<SeedFit> {
    let ProbePrompts {
        layers,
        pronouns,
        mut fit,
        words,
        protect: protect_ordered,
    } = probe_prompts(model, sets, layers, params.sources(), data_dir)?;
    let tok = model.tokenizer()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Shuffled so that every minibatch mixes professions and templates.
    fit.shuffle(&mut rng);
    let mut protect = protect_ordered.clone();
    protect.shuffle(&mut rng);

    let cfg = model.config();
    let stages_list = tune_stages(&layers, params, cfg.num_heads)?;
    let base: &Transformer = &model.transformer;

    // The lowest edited stage: the layers below it are cached once.
    let start = stages_list.first().map_or(layers[0], |s| s.0);
    let fit_reader = ProbeReader::new(base, &fit, start, pronouns, params.batch)?;
    let protect_reader = ProbeReader::new(base, &protect, start, pronouns, params.batch)?;
    let ordered_reader = ProbeReader::new(base, &protect_ordered, start, pronouns, params.batch)?;
    let bases = protected_bases(
        base,
        &ordered_reader,
        &protect_ordered,
        words.len(),
        &stages_list,
        params,
        cfg,
    )?;
    let work_before = base.work.read();
    let mut sites: Vec<_> = stages_list.iter().map(|&(l, c)| c.key_site(l)).collect();
    sites.sort();
    sites.dedup();
    let (moments, statistics_tokens) = corpus_moments(
        base,
        &model.info.sha256,
        tok,
        corpus,
        params.corpus_seq_len,
        params.corpus_tokens,
        &sites,
        cache_dir,
        &mut *log,
    )?;
    let statistics_work = base.work.read() - work_before;
    // Ordinary text at every position: the corpus gap term (γ) and the report's shift there.
    let gap_tokens = CORPUS_GAP_TOKENS.min(params.corpus_tokens);
    let (mut windows, _) = corpus_chunks(tok, corpus, params.corpus_seq_len, gap_tokens)?;
    // Only whole windows: a shorter last one would be left-padded in its batch, and the reader
    // reads every position, padding included.
    let width = windows[0].len();
    windows.retain(|w| w.len() == width);
    let readers = Readers {
        fit: fit_reader,
        protect: protect_reader,
        corpus: ProbeReader::from_rows(base, &windows, start, pronouns, CORPUS_GAP_WINDOWS)?,
    };
    let baseline = baseline(base, &readers, params)?;
    let fit_before_values: Vec<f64> = baseline
        .fit
        .iter()
        .map(|t| Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let stages = init_stages(base, &stages_list, bases, &moments, params.rank, &mut rng)?;

    let fit_before =
        fit_before_values.iter().map(|x| x.abs()).sum::<f64>() / fit.len().max(1) as f64;
    log(&format!(
        "gap tuning: {} stages, rank {}, {} fit prompts ({} keep their gap), {} protected \
         prompts; fit mean |gap| {:.3}",
        stages.len(),
        params.rank,
        fit.len(),
        baseline.n_fit_kept,
        protect.len(),
        fit_before
    ));

    let mut tr = base.clone();
    let hist = optimise(&mut tr, &stages, &readers, &baseline, params, &mut *log)?;
    Ok(SeedFit {
        layers,
        stages_list,
        words,
        n_fit: fit.len(),
        n_protect: protect.len(),
        readers,
        baseline,
        stages,
        hist,
        fit_before,
        statistics: super::corpus::CorpusCost::new(statistics_tokens, statistics_work),
    })
}

/// The report of the edit `dws` (one change per stage of `fit`), read on `fit`'s prompts with the
/// changes applied to the base model.
fn finish(
    model: &Model,
    sets: &EditSets,
    params: &TuneParams,
    fit: &SeedFit,
    dws: &[Tensor],
    log: &mut impl FnMut(&str),
) -> Result<TuneReport> {
    let mut tr = model.transformer.clone();
    let (mut protected_max_abs, mut delta_norms, mut relative_energy) =
        (Vec::new(), Vec::new(), Vec::new());
    for (s, dw) in fit.stages.iter().zip(dws) {
        set_weight(&mut tr, s.layer, s.comp, (&s.w0 + dw)?);
        let dw64 = to_f64(dw)?;
        protected_max_abs.push((&dw64 * s.protected.transpose()).amax());
        delta_norms.push(dw64.norm());
        relative_energy.push(s.relative_energy_of(dw)?);
    }
    let after = shifts(&tr, &fit.readers, &fit.baseline, fit.n_fit, fit.n_protect)?;
    if let Some(shift) = after.corpus_topk {
        log(&format!(
            "gap tuning: corpus top-{} centred logits mean |shift| {shift:.3}",
            params.corpus_topk_k
        ));
    }
    if let Some(shift) = after.fit_mass {
        log(&format!(
            "gap tuning: fit prompts' pronoun mass mean |Δ log(p(he) + p(she))| {shift:.3}"
        ));
    }
    if let Some(shift) = after.fit_preferred {
        log(&format!(
            "gap tuning: fit prompts' preferred pronoun mean |Δ log p| {shift:.3}"
        ));
    }
    log(&format!(
        "gap tuning: fit mean |gap| {:.3} -> {:.3}, protected mean |shift| {:.3}, \
         corpus mean |shift| {:.3} ({} positions)",
        fit.fit_before,
        after.fit_after,
        after.protected,
        after.corpus,
        fit.baseline.corpus_positions
    ));
    Ok(TuneReport {
        layers: fit.layers.clone(),
        stages: fit.stages_list.clone(),
        n_edit_professions: sets.edit.len(),
        n_fit_prompts: fit.n_fit,
        n_fit_kept: fit.baseline.n_fit_kept,
        protected_words: fit.words.clone(),
        n_protected_prompts: fit.n_protect,
        history: fit.hist.main.clone(),
        seed_losses: vec![],
        fit_mean_abs_gap: (fit.fit_before, after.fit_after),
        protected_mean_abs_shift: after.protected,
        protected_max_abs,
        delta_norms,
        relative_energy,
        statistics: fit.statistics,
        corpus_gap_mean_abs_shift: Some(after.corpus),
        corpus_gap_positions: fit.baseline.corpus_positions,
        corpus_gap_history: fit.hist.corpus_gap.clone(),
        corpus_topk_mean_abs_shift: after.corpus_topk,
        corpus_topk_history: fit.hist.corpus_topk.clone(),
        fit_preferred_mean_abs_shift: after.fit_preferred,
        hold_preferred_history: fit.hist.fit_preferred.clone(),
        fit_mass_mean_abs_shift: after.fit_mass,
        hold_mass_history: fit.hist.fit_mass.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_stages_are_the_heads_layers_and_bad_heads_name_the_field() {
        let p = |heads: Vec<(usize, usize)>| TuneParams {
            heads,
            ..TuneParams::default()
        };
        let all = tune_stages(&[3, 4], &p(vec![]), 4).unwrap();
        assert_eq!(
            all,
            [
                (3, Component::Attn),
                (3, Component::Mlp),
                (4, Component::Attn),
                (4, Component::Mlp)
            ]
        );
        let heads = tune_stages(&[2, 3, 4], &p(vec![(4, 1), (2, 0), (4, 3)]), 4).unwrap();
        assert_eq!(heads, [(2, Component::Attn), (4, Component::Attn)]);
        for bad in [vec![(3, 4)], vec![(5, 0)]] {
            let e = tune_stages(&[3, 4], &p(bad), 4).unwrap_err().to_string();
            assert!(e.contains("tune.heads"), "{e}");
        }
        assert_eq!(head_mask(&[1], 3, 2), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(p(vec![(14, 3), (9, 2), (14, 1)]).head_layers(), [9, 14]);
        let twice = p(vec![(9, 2), (14, 3), (9, 2)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("tune.heads") && twice.contains("9.2"),
            "{twice}"
        );
        // Absent from records that do not set it.
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("heads").is_none());
    }

    #[test]
    fn seeds_count_from_seed_and_bad_counts_name_the_field() {
        let p = |seed, seeds| TuneParams {
            seed,
            seeds,
            ..TuneParams::default()
        };
        assert_eq!(p(3, 2).seed_list().collect::<Vec<_>>(), [3, 4]);
        assert_eq!(p(0, 1).seed_list().collect::<Vec<_>>(), [0]);
        for bad in [p(0, 0), p(u64::MAX, 2)] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("tune.seeds"), "{e}");
        }
        assert!(p(u64::MAX, 1).validate().is_ok());
        // One seed is not written, so earlier records and cache keys stay as they were.
        let v = serde_json::to_value(p(0, 1)).unwrap();
        assert!(v.get("seeds").is_none());
        assert_eq!(serde_json::to_value(p(0, 3)).unwrap()["seeds"], 3);
    }
}
