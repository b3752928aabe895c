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

use super::context::EditSets;
use super::corpus::{corpus_chunks, corpus_moments};
use super::delta::{DeltaMeta, WeightDelta};
use super::lsdm::{record_down_delta, record_o_delta};
use super::probe::{
    group_means, probe_prompts, to_f64, Component, Components, ProbePrompts, ProbeReader,
    ProtectSet,
};
use super::probe_solve::row_space_basis;
use crate::model::stable_matmul::matmul as mm;
use crate::model::{Model, Transformer};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TuneParams {
    /// r: rank of each projection's change.
    pub rank: usize,
    /// Adam steps (one fit minibatch and one protected minibatch each).
    pub steps: usize,
    pub lr: f64,
    /// Prompts per minibatch.
    pub batch: usize,
    /// α: weight of keeping the protected words' gaps at the base model's.
    pub protect_weight: f64,
    /// β: weight of the corpus prior (relative output energy of each change).
    pub prior: f64,
    /// Corpus tokens (WikiText-2 valid) behind C.
    pub corpus_tokens: usize,
    pub corpus_seq_len: usize,
    /// Context prefixes per fit prompt (the first n of DEFAULT_PREFIXES).
    pub prefixes: usize,
    /// Which projections of each layer to edit.
    pub components: Components,
    /// Which gendered words are held at zero change.
    pub protect_set: ProtectSet,
    /// Seed of A's initialisation and of the minibatch shuffle.
    pub seed: u64,
    /// α for the protected prompts whose base gap leans he (L₀ > 0), the side an edit of
    /// he-leaning professions erodes (findings §6c: the male controls carry the loss). None: α.
    /// (Not written when None, as `keep_above`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protect_weight_he: Option<f64>,
    /// τ (nats): fit prompts whose base |L₀| is at least τ keep their gap (target L₀), the
    /// rest are pulled to zero: the hard-threshold rule of findings §6f, learnt by the edit.
    /// None: every fit prompt's target is zero. (Not written when None, so the cache keys and
    /// delta records of earlier tune edits stay as they were.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_above: Option<f64>,
    /// Attention heads as (layer, head): when given, the edit is the attention output
    /// projections of these heads' layers only, each change reading only these heads' outputs
    /// (the mediation-located heads, findings-locate.md). Every head's layer must be among the
    /// edited layers. Empty: every stage of `components`. (Not written when empty.)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<(usize, usize)>,
    /// γ: weight of keeping the gap L at every position of ordinary text at the base model's
    /// (the first [`CORPUS_GAP_TOKENS`], at most `corpus_tokens`, tokens of the prior's corpus;
    /// [`CORPUS_GAP_WINDOWS`] windows a step): a "less he everywhere" shift costs there, an
    /// occupation-specific change does not. None: no such term. (Not written when None, as
    /// `keep_above`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corpus_gap: Option<f64>,
    /// δ: weight of keeping, at every position of the same corpus windows, the base model's
    /// `corpus_topk_k` most likely next tokens in the base model's relations to each other:
    /// their logits centred on their mean (log-odds among them; the softmax normaliser
    /// cancels), as the corpus gap term keeps he vs she. Where β bounds the change's energy, this
    /// bounds what it does to the predictions that matter in text (copying a name, a fact's
    /// object: findings §6e). None: no such term. (Not written when None.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corpus_topk: Option<f64>,
    /// k of the corpus top-k term. (Not written when [`CORPUS_TOPK_K`], so the cache keys and
    /// delta records of earlier tune edits stay as they were.)
    #[serde(skip_serializing_if = "is_default_topk_k")]
    pub corpus_topk_k: usize,
}

/// The default k of the corpus top-k term.
pub const CORPUS_TOPK_K: usize = 16;

fn is_default_topk_k(k: &usize) -> bool {
    *k == CORPUS_TOPK_K
}

/// Corpus tokens (from the start of the prior's corpus, in windows of `corpus_seq_len`; at most
/// `corpus_tokens`) at whose every position the corpus gap term and the report's
/// `corpus_gap_mean_abs_shift` read L.
pub const CORPUS_GAP_TOKENS: usize = 4096;
/// Corpus windows in each step's corpus gap minibatch.
pub const CORPUS_GAP_WINDOWS: usize = 4;

impl Default for TuneParams {
    fn default() -> Self {
        TuneParams {
            rank: 4,
            steps: 200,
            // 3e-3 and the role nouns: the configuration chosen on the validation split
            // (findings §6e); 1e-3 had not converged in 200 steps.
            lr: 3e-3,
            batch: 64,
            protect_weight: 1.0,
            prior: 1.0,
            corpus_tokens: 16_384,
            corpus_seq_len: 128,
            prefixes: 1,
            components: Components::Both,
            protect_set: ProtectSet::Roles,
            seed: 0,
            protect_weight_he: None,
            keep_above: None,
            corpus_gap: None,
            corpus_topk: None,
            corpus_topk_k: CORPUS_TOPK_K,
            heads: vec![],
        }
    }
}

impl TuneParams {
    /// The layers of `heads`, sorted, each once: what a heads-only edit edits by default.
    pub fn head_layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self.heads.iter().map(|&(l, _)| l).collect();
        l.sort_unstable();
        l.dedup();
        l
    }

    /// Range checks TOML types cannot express; errors name the field as `tune.<field>`.
    pub fn validate(&self) -> Result<()> {
        use crate::error::{at_least_one, non_negative};
        non_negative("tune.lr", self.lr)?;
        non_negative("tune.protect_weight", self.protect_weight)?;
        non_negative("tune.prior", self.prior)?;
        at_least_one("tune.rank", self.rank)?;
        at_least_one("tune.steps", self.steps)?;
        at_least_one("tune.batch", self.batch)?;
        at_least_one("tune.prefixes", self.prefixes)?;
        if let Some(t) = self.keep_above {
            non_negative("tune.keep_above", t)?;
        }
        if let Some(w) = self.protect_weight_he {
            non_negative("tune.protect_weight_he", w)?;
        }
        if let Some(w) = self.corpus_gap {
            non_negative("tune.corpus_gap", w)?;
        }
        if let Some(w) = self.corpus_topk {
            non_negative("tune.corpus_topk", w)?;
        }
        at_least_one("tune.corpus_topk_k", self.corpus_topk_k)?;
        if let Some((i, &(l, h))) = self
            .heads
            .iter()
            .enumerate()
            .find(|(i, x)| self.heads[..*i].contains(x))
        {
            return Err(Error::param(
                "tune.heads",
                format!("head {l}.{h} is listed twice (entry {})", i + 1),
            ));
        }
        at_least_one("tune.corpus_tokens", self.corpus_tokens)
    }
}

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
    /// Every 10 steps and the last: (step, fit mean L², protected mean (L − L₀)², prior).
    pub history: Vec<(usize, f64, f64, f64)>,
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
}

/// Logits [positions, k] centred on each position's mean: the log-odds among the k tokens,
/// unchanged by anything that shifts every logit of a position alike (the normaliser).
fn centred(z: &Tensor) -> Result<Tensor> {
    Ok(z.broadcast_sub(&z.mean_keepdim(1)?)?)
}

/// ΔW = B (A − Q QᵀA)ᵀ, [d_out, d_in]: rank ≤ r, and ΔW p = 0 for every p in Q's column span.
/// `a` [d_in, r], `b` [d_out, r], `q` [d_in, m] with orthonormal columns (m may be 0).
pub fn low_rank_delta(a: &Tensor, b: &Tensor, q: Option<&Tensor>) -> Result<Tensor> {
    let a = match q {
        Some(q) => (a - mm(q, &mm(&q.t()?, a)?)?)?,
        None => a.clone(),
    };
    mm(b, &a.t()?)
}

/// tr(ΔW C ΔWᵀ) for ΔW = B Ãᵀ, computed as Σ (B (ÃᵀCÃ)) ⊙ B without forming ΔW C.
pub fn prior_energy(a: &Tensor, b: &Tensor, q: Option<&Tensor>, c: &Tensor) -> Result<Tensor> {
    let a = match q {
        Some(q) => (a - mm(q, &mm(&q.t()?, a)?)?)?,
        None => a.clone(),
    };
    let m = mm(&a.t()?, &mm(c, &a)?)?;
    Ok((mm(b, &m)? * b)?.sum_all()?)
}

/// Which prompts keep their gap under the hard threshold: |L₀| ≥ τ, compared in `base`'s dtype
/// (u8 mask). The one definition behind [`threshold_targets`] and the kept count.
fn keeps_gap(base: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(base.abs()?.ge(tau)?)
}

/// The hard-threshold targets: 0 where |L₀| < τ, else L₀ (same shape and dtype as `base`).
pub fn threshold_targets(base: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(keeps_gap(base, tau)?.where_cond(base, &base.zeros_like()?)?)
}

/// Per-prompt weights of the protected loss: `he` where the base gap leans he (L₀ > 0), else
/// `other` (same shape and dtype as `base`).
pub fn protect_weights(base: &Tensor, he: f64, other: f64) -> Result<Tensor> {
    let he_t = (base.ones_like()? * he)?;
    let other_t = (base.ones_like()? * other)?;
    Ok(base.gt(0.0)?.where_cond(&he_t, &other_t)?)
}

struct Stage {
    layer: usize,
    comp: Component,
    w0: Tensor,
    a: Var,
    b: Var,
    q: Option<Tensor>,
    /// [d_in, 1] 0/1: the input coordinates the change may read (the chosen heads' columns);
    /// None: all of them.
    mask: Option<Tensor>,
    c: Tensor,
    /// tr(W₀ C W₀ᵀ)
    energy0: f64,
    /// Protected mean keys [words, d_in] (f64), for the report's exactness check.
    protected: DMatrix<f64>,
}

impl Stage {
    fn delta(&self) -> Result<Tensor> {
        match &self.mask {
            None => low_rank_delta(self.a.as_tensor(), self.b.as_tensor(), self.q.as_ref()),
            Some(m) => mm(
                self.b.as_tensor(),
                &head_a(self.a.as_tensor(), self.q.as_ref(), m)?.t()?,
            ),
        }
    }
    fn relative_energy(&self) -> Result<Tensor> {
        let e = match &self.mask {
            None => prior_energy(
                self.a.as_tensor(),
                self.b.as_tensor(),
                self.q.as_ref(),
                &self.c,
            )?,
            Some(m) => {
                let a = head_a(self.a.as_tensor(), self.q.as_ref(), m)?;
                prior_energy(&a, self.b.as_tensor(), None, &self.c)?
            }
        };
        Ok((e / self.energy0)?)
    }
}

/// Ã = M (A − Q Qᵀ M A) for a head-restricted change ΔW = B Ãᵀ: M the 0/1 `mask` [d_in, 1] of
/// the heads' columns, Q [d_in, m] an orthonormal basis of the protected keys' head columns (M p).
/// ΔW reads only the heads' columns (exact zeros elsewhere) and ΔW p = B Aᵀ M (I − QQᵀ) M p = 0
/// for every protected key p, whatever p holds outside the heads.
pub fn head_a(a: &Tensor, q: Option<&Tensor>, mask: &Tensor) -> Result<Tensor> {
    let a = a.broadcast_mul(mask)?;
    let a = match q {
        Some(q) => (&a - mm(q, &mm(&q.t()?, &a)?)?)?,
        None => a,
    };
    Ok(a.broadcast_mul(mask)?)
}

/// The 0/1 mask [d_in] over the concatenated head outputs of one layer that keeps `heads`'
/// columns (head h: columns h·head_dim .. (h+1)·head_dim).
pub fn head_mask(heads: &[usize], num_heads: usize, head_dim: usize) -> Vec<f64> {
    (0..num_heads * head_dim)
        .map(|i| f64::from(u8::from(heads.contains(&(i / head_dim)))))
        .collect()
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

/// Mean of `f(batch gaps, batch index)` over every batch of `reader`, without gradients.
fn mean_over(
    reader: &ProbeReader,
    tr: &Transformer,
    mut f: impl FnMut(&[f64], usize) -> f64,
    n: usize,
) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..reader.n_batches() {
        let g = reader
            .batch_gaps(tr, i)?
            .detach()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        total += f(&g, i);
    }
    Ok(total / n.max(1) as f64)
}

/// Run gap tuning on `layers`; returns the delta (HF names) and a report.
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
    let ProbePrompts {
        layers,
        pronouns,
        mut fit,
        words,
        protect: protect_ordered,
    } = probe_prompts(
        model,
        sets,
        layers,
        params.prefixes,
        params.protect_set,
        data_dir,
    )?;
    let tok = model.tokenizer()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
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
    // Each stage's protected basis first: a choice of heads that cannot keep the protected words
    // is refused before the corpus statistics are computed.
    let bases = stages_list
        .iter()
        .map(|&(l, comp)| {
            let keys = ordered_reader.keys(base, l, comp)?;
            let protected = group_means(&keys, &protect_ordered, words.len());
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
            let qm = match &mask {
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
                if qm.ncols() >= free {
                    return Err(Error::param(
                        "tune.heads",
                        format!(
                            "the {} protected words' keys span all {free} columns of the chosen \
                             heads in layer {l}, so no change can keep them at zero: protect fewer \
                             words (--protect-set pairs) or choose more heads",
                            words.len()
                        ),
                    ));
                }
            }
            Ok((protected, qm, mask))
        })
        .collect::<Result<Vec<_>>>()?;
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
        &mut log,
    )?;
    let statistics_work = base.work.read() - work_before;
    // Ordinary text at every position: the corpus gap term (γ) and the report's shift there.
    let gap_tokens = CORPUS_GAP_TOKENS.min(params.corpus_tokens);
    let (mut windows, _) = corpus_chunks(tok, corpus, params.corpus_seq_len, gap_tokens)?;
    // Only whole windows: a shorter last one would be left-padded in its batch, and the reader
    // reads every position, padding included.
    let width = windows[0].len();
    windows.retain(|w| w.len() == width);
    let corpus_reader =
        ProbeReader::from_rows(base, &windows, start, pronouns, CORPUS_GAP_WINDOWS)?;
    let base_corpus: Vec<Tensor> = (0..corpus_reader.n_batches())
        .map(|i| Ok(corpus_reader.batch_gaps_all(base, i)?.detach()))
        .collect::<Result<_>>()?;
    let corpus_positions: usize = base_corpus.iter().map(|t| t.elem_count()).sum();
    // δ: each corpus position's k most likely tokens on the base model and their centred
    // logits, computed once.
    let base_topk: Vec<(Tensor, Tensor)> = match params.corpus_topk {
        None => Vec::new(),
        Some(_) => (0..corpus_reader.n_batches())
            .map(|i| {
                let ids = corpus_reader.batch_top_ids(base, i, params.corpus_topk_k)?;
                let z = centred(&corpus_reader.batch_logits_at(base, i, &ids)?)?.detach();
                Ok((ids, z))
            })
            .collect::<Result<_>>()?,
    };
    let base_protect: Vec<Tensor> = (0..protect_reader.n_batches())
        .map(|i| Ok(protect_reader.batch_gaps(base, i)?.detach()))
        .collect::<Result<_>>()?;
    // α per protected prompt (α_he where L₀ > 0), or one α for all.
    let alpha = params.protect_weight;
    let protect_alpha: Option<Vec<Tensor>> = params
        .protect_weight_he
        .map(|he| {
            base_protect
                .iter()
                .map(|g| protect_weights(g, he, alpha))
                .collect()
        })
        .transpose()?;
    // The base model's gap on every fit batch, computed once: the "before" figure and the
    // gap-size targets (None: zero for every prompt).
    let base_fit: Vec<Tensor> = (0..fit_reader.n_batches())
        .map(|i| Ok(fit_reader.batch_gaps(base, i)?.detach()))
        .collect::<Result<_>>()?;
    let base_fit_values: Vec<f64> = base_fit
        .iter()
        .map(|t| Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let fit_targets: Option<Vec<Tensor>> = params
        .keep_above
        .map(|tau| base_fit.iter().map(|g| threshold_targets(g, tau)).collect())
        .transpose()?;
    // Counted by the rule `threshold_targets` applies.
    let n_fit_kept = match params.keep_above {
        None => 0,
        Some(tau) => base_fit
            .iter()
            .map(|g| {
                Ok(keeps_gap(g, tau)?
                    .to_dtype(DType::F64)?
                    .sum_all()?
                    .to_scalar::<f64>()?)
            })
            .sum::<Result<f64>>()? as usize,
    };

    let device = Device::Cpu;
    let mut stages = Vec::new();
    for (&(l, comp), (protected, qm, mask)) in stages_list.iter().zip(bases) {
        let w0 = weight(base, l, comp);
        let (d_out, d_in) = w0.dims2()?;
        let dtype = w0.dtype();
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
        let init: Vec<f64> = (0..d_in * params.rank)
            .map(|_| normal.sample(&mut rng))
            .collect();
        let a = Var::from_tensor(
            &Tensor::from_vec(init, (d_in, params.rank), &device)?.to_dtype(dtype)?,
        )?;
        let b = Var::from_tensor(&Tensor::zeros((d_out, params.rank), dtype, &device)?)?;
        let mask = mask
            .map(|m| Tensor::from_vec(m, (d_in, 1), &device)?.to_dtype(dtype))
            .transpose()?;
        stages.push(Stage {
            layer: l,
            comp,
            w0,
            a,
            b,
            q,
            mask,
            c,
            energy0,
            protected,
        });
    }

    let fit_before = base_fit_values.iter().map(|x| x.abs()).sum::<f64>() / fit.len().max(1) as f64;
    log(&format!(
        "gap tuning: {} stages, rank {}, {} fit prompts ({} keep their gap), {} protected \
         prompts; fit mean |gap| {:.3}",
        stages.len(),
        params.rank,
        fit.len(),
        n_fit_kept,
        protect.len(),
        fit_before
    ));

    let mut tr = base.clone();
    let vars: Vec<Var> = stages
        .iter()
        .flat_map(|s| [s.a.clone(), s.b.clone()])
        .collect();
    let mut adam: Vec<(Tensor, Tensor)> = vars
        .iter()
        .map(|v| Ok((v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?)))
        .collect::<Result<_>>()?;
    let mut history = Vec::new();
    let mut corpus_gap_history = Vec::new();
    let mut corpus_topk_history = Vec::new();
    let (nf, np) = (fit_reader.n_batches(), protect_reader.n_batches());
    for step in 0..params.steps {
        for s in &stages {
            set_weight(&mut tr, s.layer, s.comp, (&s.w0 + s.delta()?)?);
        }
        let i = step % nf;
        let fit_gaps = fit_reader.batch_gaps(&tr, i)?;
        let fit_loss = match &fit_targets {
            None => fit_gaps.sqr()?.mean_all()?,
            Some(t) => (fit_gaps - &t[i])?.sqr()?.mean_all()?,
        };
        let j = step % np;
        let prot_sq = (protect_reader.batch_gaps(&tr, j)? - &base_protect[j])?.sqr()?;
        let prot_loss = prot_sq.mean_all()?;
        // The weighted term that is optimised; `prot_loss` (unweighted) is what history logs.
        let prot_term = match &protect_alpha {
            None => (&prot_loss * alpha)?,
            Some(w) => (prot_sq * &w[j])?.mean_all()?,
        };
        let mut prior = Tensor::zeros((), fit_loss.dtype(), &device)?;
        for s in &stages {
            prior = (prior + s.relative_energy()?)?;
        }
        let mut total = ((&fit_loss + &prot_term)? + (&prior * params.prior)?)?;
        let corpus_loss = match params.corpus_gap {
            Some(gamma) => {
                let k = step % base_corpus.len();
                let sq = (corpus_reader.batch_gaps_all(&tr, k)? - &base_corpus[k])?.sqr()?;
                let loss = sq.mean_all()?;
                total = (total + (&loss * gamma)?)?;
                Some(loss)
            }
            None => None,
        };
        let topk_loss = match params.corpus_topk {
            Some(weight) => {
                let k = step % base_topk.len();
                let (ids, z0) = &base_topk[k];
                let z = centred(&corpus_reader.batch_logits_at(&tr, k, ids)?)?;
                let loss = (z - z0)?.sqr()?.mean_all()?;
                total = (total + (&loss * weight)?)?;
                Some(loss)
            }
            None => None,
        };
        if step % 10 == 0 || step + 1 == params.steps {
            let v = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
            let row = (step, v(&fit_loss)?, v(&prot_loss)?, v(&prior)?);
            // An optional term's minibatch loss: into its history and the log line.
            let note = |loss: &Option<Tensor>,
                        history: &mut Vec<(usize, f64)>,
                        label: &str|
             -> Result<String> {
                let Some(c) = loss else {
                    return Ok(String::new());
                };
                let c = v(c)?;
                history.push((step, c));
                Ok(format!(", {label} {c:.4}"))
            };
            let corpus_note = note(&corpus_loss, &mut corpus_gap_history, "corpus (L−L₀)²")?;
            let topk_note = note(&topk_loss, &mut corpus_topk_history, "corpus top-k Δz²")?;
            log(&format!(
                "  step {step}: fit L² {:.4}, protected (L−L₀)² {:.4}, prior {:.5}{corpus_note}{topk_note}",
                row.1, row.2, row.3
            ));
            history.push(row);
        }
        let grads = total.backward()?;
        let t = (step + 1) as i32;
        for (v, (m, s)) in vars.iter().zip(adam.iter_mut()) {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            *m = ((&*m * 0.9)? + (g * 0.1)?)?;
            *s = ((&*s * 0.999)? + (g.sqr()? * 0.001)?)?;
            let upd = ((&*m / (1.0 - 0.9f64.powi(t)))?
                / ((&*s / (1.0 - 0.999f64.powi(t)))?.sqrt()? + 1e-8)?)?;
            v.set(&(v.as_tensor() - (upd * params.lr)?)?)?;
        }
    }

    let mut delta = WeightDelta::new(DeltaMeta {
        method: "tune".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(params)?,
    });
    let (mut protected_max_abs, mut delta_norms, mut relative_energy) =
        (Vec::new(), Vec::new(), Vec::new());
    for s in &stages {
        let dw = s.delta()?.detach();
        set_weight(&mut tr, s.layer, s.comp, (&s.w0 + &dw)?);
        let dw64 = to_f64(&dw)?;
        protected_max_abs.push((&dw64 * s.protected.transpose()).amax());
        delta_norms.push(dw64.norm());
        relative_energy.push(
            s.relative_energy()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?,
        );
        match s.comp {
            Component::Mlp => record_down_delta(model, &mut delta, s.layer, dw)?,
            Component::Attn => record_o_delta(model, &mut delta, s.layer, dw)?,
        }
    }
    let fit_after = mean_over(
        &fit_reader,
        &tr,
        |g, _| g.iter().map(|x| x.abs()).sum(),
        fit.len(),
    )?;
    let base_vecs: Vec<Vec<f64>> = base_protect
        .iter()
        .map(|t| Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect::<Result<_>>()?;
    let protected_shift = mean_over(
        &protect_reader,
        &tr,
        |g, i| {
            g.iter()
                .zip(&base_vecs[i])
                .map(|(x, y)| (x - y).abs())
                .sum()
        },
        protect.len(),
    )?;
    let mut corpus_shift = 0.0;
    for (k, base_gaps) in base_corpus.iter().enumerate() {
        corpus_shift += (corpus_reader.batch_gaps_all(&tr, k)?.detach() - base_gaps)?
            .abs()?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let corpus_shift = corpus_shift / corpus_positions.max(1) as f64;
    let corpus_topk_shift = if base_topk.is_empty() {
        None
    } else {
        let mut sum = 0.0;
        let mut count = 0;
        for (k, (ids, z0)) in base_topk.iter().enumerate() {
            let z = centred(&corpus_reader.batch_logits_at(&tr, k, ids)?)?.detach();
            count += z.elem_count();
            sum += (z - z0)?
                .abs()?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Some(sum / count.max(1) as f64)
    };
    if let Some(shift) = corpus_topk_shift {
        log(&format!(
            "gap tuning: corpus top-{} centred logits mean |shift| {shift:.3}",
            params.corpus_topk_k
        ));
    }
    log(&format!(
        "gap tuning: fit mean |gap| {fit_before:.3} -> {fit_after:.3}, protected mean |shift| \
         {protected_shift:.3}, corpus mean |shift| {corpus_shift:.3} ({corpus_positions} positions)"
    ));
    let report = TuneReport {
        layers,
        stages: stages_list,
        n_edit_professions: sets.edit.len(),
        n_fit_prompts: fit.len(),
        n_fit_kept,
        protected_words: words,
        n_protected_prompts: protect.len(),
        history,
        fit_mean_abs_gap: (fit_before, fit_after),
        protected_mean_abs_shift: protected_shift,
        protected_max_abs,
        delta_norms,
        relative_energy,
        statistics: super::corpus::CorpusCost::new(statistics_tokens, statistics_work),
        corpus_gap_mean_abs_shift: Some(corpus_shift),
        corpus_gap_positions: corpus_positions,
        corpus_gap_history,
        corpus_topk_mean_abs_shift: corpus_topk_shift,
        corpus_topk_history,
    };
    Ok((delta, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = Normal::new(0.0, 1.0).unwrap();
        DMatrix::from_fn(rows, cols, |_, _| n.sample(&mut rng))
    }

    fn tensor(m: &DMatrix<f64>) -> Tensor {
        let v: Vec<f32> = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
            .collect();
        Tensor::from_vec(v, (m.nrows(), m.ncols()), &Device::Cpu).unwrap()
    }

    #[test]
    fn threshold_targets_zero_small_gaps_and_keep_large_ones() {
        let base = [-3.0f32, -2.4, -2.39, 0.0, 1.0, 2.4, 5.0];
        let t = threshold_targets(&Tensor::new(&base[..], &Device::Cpu).unwrap(), 2.4)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(t, vec![-3.0, -2.4, 0.0, 0.0, 0.0, 2.4, 5.0]);
        // No key for the default, so earlier records read and hash as before.
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("keep_above").is_none());
        let p: TuneParams = serde_json::from_value(v).unwrap();
        assert_eq!(p, TuneParams::default());
    }

    #[test]
    fn protect_weights_pick_the_he_side() {
        let base = Tensor::new(&[-2.0f32, 0.0, 0.5, 3.0][..], &Device::Cpu).unwrap();
        let w = protect_weights(&base, 4.0, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(w, vec![1.0, 1.0, 4.0, 4.0]);
        // Absent from records that do not set it, as `keep_above`.
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("protect_weight_he").is_none());
    }

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// With heads: ΔW = B (P⊥ M A)ᵀ, P⊥ the complement of the protected keys' head columns
        /// (M p), reads only the heads' columns, maps every whole protected key p to zero and
        /// matches the f64 formula.
        #[test]
        fn head_delta_reads_only_its_heads_and_protects_whole_keys(
            heads in 1usize..4, head_dim in 1usize..5, pick in 0usize..4, r in 1usize..3,
            d_out in 2usize..8, m in 0usize..3, seed in 0u64..1000,
        ) {
            let pick = pick % heads;
            let d_in = heads * head_dim;
            let mask = head_mask(&[pick], heads, head_dim);
            let m = m.min(head_dim - 1);
            let a = mat(d_in, r, seed);
            let b = mat(d_out, r, seed + 1);
            let p = mat(m, d_in, seed + 2);
            let mdiag = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(mask.clone()));
            let q = row_space_basis(&(&p * &mdiag));
            let proj = DMatrix::<f64>::identity(d_in, d_in) - &q * q.transpose();
            let want = &b * (&proj * &mdiag * &a).transpose();
            let mask_t = Tensor::from_vec(
                mask.iter().map(|&x| x as f32).collect::<Vec<_>>(), (d_in, 1), &Device::Cpu,
            ).unwrap();
            let qt = (q.ncols() > 0).then(|| tensor(&q));
            let at = head_a(&tensor(&a), qt.as_ref(), &mask_t).unwrap();
            let got = to_f64(&mm(&tensor(&b), &at.t().unwrap()).unwrap()).unwrap();
            let scale = want.amax().max(1.0);
            prop_assert!((&got - &want).amax() < 1e-4 * scale);
            for (j, _) in mask.iter().enumerate().filter(|(_, &x)| x == 0.0) {
                prop_assert!(got.column(j).amax() == 0.0, "column {j} outside the head");
            }
            if m > 0 {
                prop_assert!((&got * p.transpose()).amax() < 1e-4 * scale * p.amax().max(1.0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// f32 candle ΔW equals the f64 formula B (I − QQᵀ) A)ᵀ, maps every protected key to
        /// zero, has rank ≤ r, and the prior equals tr(ΔW C ΔWᵀ) computed directly.
        #[test]
        fn delta_protects_keys_has_rank_r_and_matches_f64(
            d_in in 3usize..24, d_out in 2usize..16, r in 1usize..4, m in 0usize..3,
            seed in 0u64..1000,
        ) {
            let m = m.min(d_in - 1);
            let a = mat(d_in, r, seed);
            let b = mat(d_out, r, seed + 1);
            let p = mat(m, d_in, seed + 2);
            let q = row_space_basis(&p);
            let qt = (q.ncols() > 0).then(|| tensor(&q));
            let x = mat(d_in, d_in + 2, seed + 3);
            let c = &x * x.transpose() / (d_in + 2) as f64;
            let proj = DMatrix::<f64>::identity(d_in, d_in) - &q * q.transpose();
            let want = &b * (&proj * &a).transpose();
            let got = to_f64(&low_rank_delta(&tensor(&a), &tensor(&b), qt.as_ref()).unwrap()).unwrap();
            let scale = want.amax().max(1.0);
            prop_assert!((&got - &want).amax() < 1e-4 * scale);
            if m > 0 {
                prop_assert!((&want * p.transpose()).amax() < 1e-9 * scale * p.amax().max(1.0));
                prop_assert!((&got * p.transpose()).amax() < 1e-4 * scale * p.amax().max(1.0));
            }
            let sv = want.clone().svd(false, false).singular_values;
            let top = sv.amax();
            prop_assert!(sv.iter().filter(|&&s| s > 1e-9 * top.max(1e-300)).count() <= r);
            let energy_want = (&want * &c * want.transpose()).trace();
            let energy_got = prior_energy(&tensor(&a), &tensor(&b), qt.as_ref(), &tensor(&c))
                .unwrap().to_scalar::<f32>().unwrap() as f64;
            prop_assert!((energy_got - energy_want).abs() < 1e-4 * energy_want.abs().max(1.0));
        }
    }
}
