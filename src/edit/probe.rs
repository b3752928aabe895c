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

use super::context::{EditPrompt, EditSets, DEFAULT_PREFIXES};
use super::corpus::corpus_moments;
use super::delta::{DeltaMeta, WeightDelta};
use super::lsdm::{record_down_delta, record_o_delta};
use super::probe_solve::{output_direction, probe_weights, rank_one_update};
use crate::data::{vig_templates, Template};
use crate::model::{InterventionPlan, Model, Site, Transformer};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{DType, IndexOp, Tensor, Var};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How many top layers the probe edits by default (docs/method.md §4.6).
pub const DEFAULT_TOP_LAYERS: usize = 5;

/// The top [`DEFAULT_TOP_LAYERS`] layers of a model with `num_layers` layers.
pub fn default_layers(num_layers: usize) -> Vec<usize> {
    (num_layers.saturating_sub(DEFAULT_TOP_LAYERS)..num_layers).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeParams {
    /// λ: weight of wᵀCw against the fit error (both per-token means, so λ = 1 weighs corpus
    /// text like the fit prompts).
    pub lambda: f64,
    /// Multiplier on the update (1 = remove the predicted gap to first order).
    pub scale: f64,
    /// Corpus tokens (WikiText-2 valid) behind C.
    pub corpus_tokens: usize,
    pub corpus_seq_len: usize,
    /// Context prefixes per fit prompt (the first n of DEFAULT_PREFIXES).
    pub prefixes: usize,
    /// Protect each protected prompt's key (true) or only each word's mean key (false).
    pub protect_each_prompt: bool,
    /// Rows per forward/backward pass.
    pub batch: usize,
    /// Which projections of each layer to edit (attention output, MLP down, or both).
    pub components: Components,
    /// Sweeps over the layers; each stage removes its share of what the previous left.
    pub passes: usize,
    /// What each stage's probe is fitted to remove.
    pub target: StageTarget,
    /// Which gendered words are held at zero change.
    pub protect_set: ProtectSet,
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            lambda: 1.0,
            scale: 1.0,
            corpus_tokens: 16_384,
            corpus_seq_len: 128,
            // One prefix: the measured default (findings §6); three triple the readout time.
            prefixes: 1,
            protect_each_prompt: false,
            batch: 32,
            components: Components::Both,
            passes: 1,
            target: StageTarget::Share,
            protect_set: ProtectSet::Pairs,
        }
    }
}

impl ProbeParams {
    /// Range checks TOML types cannot express; errors name the field as `probe.<field>`.
    pub fn validate(&self) -> Result<()> {
        use crate::error::{at_least_one, non_negative};
        non_negative("probe.lambda", self.lambda)?;
        non_negative("probe.scale", self.scale)?;
        if self.corpus_tokens == 0 && self.lambda > 0.0 {
            return Err(Error::param(
                "probe.corpus_tokens",
                "must be > 0 when λ > 0",
            ));
        }
        at_least_one("probe.batch", self.batch)?;
        at_least_one("probe.prefixes", self.prefixes)?;
        at_least_one("probe.passes", self.passes)
    }
}

/// What the edit did, for edit.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub layers: Vec<usize>,
    /// (layer, projection) in the order edited; the per-stage vectors below follow it.
    #[serde(default)]
    pub stages: Vec<(usize, Component)>,
    pub n_edit_professions: usize,
    pub n_fit_prompts: usize,
    pub protected_words: Vec<String>,
    pub n_protected_keys: usize,
    /// Per stage: mean |L| of the fit prompts before that stage's edit.
    pub mean_abs_gap: Vec<f64>,
    /// Per stage: R² of the probe's prediction of its target on the fit prompts.
    pub fit_r2: Vec<f64>,
    /// Per stage: max |wᵀp| over the protected keys (0 up to rounding).
    pub protected_max_abs: Vec<f64>,
    /// Per stage: ‖ΔW‖_F.
    pub delta_norms: Vec<f64>,
    /// C's corpus tokens and this run's cost of gathering it.
    #[serde(flatten)]
    pub statistics: super::corpus::CorpusCost,
}

/// Gendered nouns that are not in the profession list: Bolukbasi et al.'s equalize pairs, single
/// lower-case words only. Returned sorted, both members of each pair.
pub fn protected_words(data_dir: &Path, professions: &[String]) -> Result<Vec<String>> {
    let path = data_dir.join("bolukbasi_debiaswe/equalize_pairs.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
    let pairs: Vec<[String; 2]> = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("expected [[word, word], ...]: {e}")))?;
    let mut words: Vec<String> = pairs
        .into_iter()
        .filter(|[a, b]| [a, b].iter().all(|w| plain_word(w)))
        .flatten()
        .filter(|w| !professions.iter().any(|p| p == w))
        .collect();
    words.sort();
    words.dedup();
    if words.is_empty() {
        return Err(Error::file(&path, "no usable gendered word pairs"));
    }
    Ok(words)
}

/// Which gendered words the probe and gap tuning hold at zero change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectSet {
    /// The equalize pairs' plain words ([`protected_words`], 37 words).
    #[default]
    Pairs,
    /// Those plus the seed list's singular gendered persons
    /// (`protected/gendered_persons.json`, 87 words; fixtures/data/protected/README.md).
    Persons,
    /// Those plus gendered role nouns that are not professions (`protected/gendered_roles.json`,
    /// 56 words: hostess, policewoman, doorman, duchess, …).
    Roles,
    /// Those plus 96 more definitionally gendered persons (`protected/gendered_extended.json`:
    /// grandson, baroness, cowboy, spinster, …), for wider coverage of "gendered by definition".
    Extended,
}

impl std::str::FromStr for ProtectSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pairs" => Ok(ProtectSet::Pairs),
            "persons" => Ok(ProtectSet::Persons),
            "roles" => Ok(ProtectSet::Roles),
            "extended" => Ok(ProtectSet::Extended),
            _ => Err(Error::param(
                "protect set",
                format!("`{s}`: expected pairs, persons, roles or extended"),
            )),
        }
    }
}

/// The protected words of `set`, sorted, none of them in `professions`.
pub fn protect_set_words(
    set: ProtectSet,
    data_dir: &Path,
    professions: &[String],
) -> Result<Vec<String>> {
    let mut words = protected_words(data_dir, professions)?;
    let files: &[&str] = match set {
        ProtectSet::Pairs => &[],
        ProtectSet::Persons => &["gendered_persons.json"],
        ProtectSet::Roles => &["gendered_persons.json", "gendered_roles.json"],
        ProtectSet::Extended => &[
            "gendered_persons.json",
            "gendered_roles.json",
            "gendered_extended.json",
        ],
    };
    for file in files {
        let path = data_dir.join("protected").join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
        let extra: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("expected [word, ...]: {e}")))?;
        words.extend(extra.into_iter().filter(|w| !professions.contains(w)));
    }
    words.sort();
    words.dedup();
    Ok(words)
}

fn plain_word(w: &str) -> bool {
    !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()) && !NOT_A_PERSON.contains(&w)
}

/// Equalize-pair words that do not name one person, so "The {} said that" is no gendered
/// subject: pronouns, plurals, animals, institutions, hormones, abstractions.
const NOT_A_PERSON: &[&str] = &[
    "he",
    "she",
    "his",
    "her",
    "himself",
    "herself",
    "boys",
    "girls",
    "brothers",
    "sisters",
    "dads",
    "moms",
    "daughters",
    "sons",
    "fathers",
    "mothers",
    "females",
    "males",
    "gals",
    "dudes",
    "gentlemen",
    "ladies",
    "men",
    "women",
    "kings",
    "queens",
    "wives",
    "husbands",
    "granddaughters",
    "grandsons",
    "colt",
    "filly",
    "gelding",
    "mare",
    "convent",
    "monastery",
    "fraternity",
    "sorority",
    "estrogen",
    "testosterone",
    "fatherhood",
    "motherhood",
    "female",
    "male",
];

/// `words` × `templates` × `prefixes`, read at the prompt's last token (stored in
/// `last_subject_token`, which is where [`super::keys`] reads).
pub fn last_token_prompts(
    tok: &Tokenizer,
    words: &[String],
    templates: &[Template],
    prefixes: &[&str],
) -> Result<Vec<EditPrompt>> {
    let mut out = Vec::new();
    for (g, w) in words.iter().enumerate() {
        for t in templates {
            for p in prefixes {
                let text = format!("{p}{}", t.fill(w));
                let ids = tok.encode(&text)?;
                out.push(EditPrompt {
                    group: g,
                    last_subject_token: ids.len() - 1,
                    text,
                    ids,
                });
            }
        }
    }
    Ok(out)
}

/// Which projection a probe stage edits: the attention output projection (its input is the
/// concatenated head outputs, `HeadZ`) or the MLP down-projection (its input is the MLP key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Attn,
    Mlp,
}

impl Component {
    /// The site whose last-token activation is the probe's input.
    pub fn key_site(self, l: usize) -> Site {
        match self {
            Component::Attn => Site::HeadZ(l),
            Component::Mlp => Site::MlpKey(l),
        }
    }
    /// The site the edited projection writes (before any post-norm).
    pub fn out_site(self, l: usize) -> Site {
        match self {
            Component::Attn => Site::AttnOut(l),
            Component::Mlp => Site::MlpOut(l),
        }
    }
}

/// Which projections of each edited layer the probe edits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Components {
    Mlp,
    Attn,
    /// The attention output projection, then the MLP down-projection, of each layer (the
    /// default: chosen on the validation split, findings §6).
    #[default]
    Both,
}

impl Components {
    pub fn list(self) -> &'static [Component] {
        match self {
            Components::Mlp => &[Component::Mlp],
            Components::Attn => &[Component::Attn],
            Components::Both => &[Component::Attn, Component::Mlp],
        }
    }
}

impl std::str::FromStr for Components {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mlp" => Ok(Components::Mlp),
            "attn" => Ok(Components::Attn),
            "both" => Ok(Components::Both),
            _ => Err(Error::param(
                "probe components",
                format!("`{s}`: expected mlp, attn or both"),
            )),
        }
    }
}

/// What each stage's probe is fitted to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageTarget {
    /// Its share: the gap left / the stages left (the last stage aims at all that is left).
    #[default]
    Share,
    /// All of the gap that is left, at every stage (greedy).
    Full,
}

impl StageTarget {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            StageTarget::Share => "share",
            StageTarget::Full => "full",
        }
    }
}

impl std::str::FromStr for StageTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "probe target",
            s,
            &[StageTarget::Share, StageTarget::Full],
            StageTarget::name,
        )
    }
}

/// Per prompt at one stage's last token: the probe input k, the gap L = log p(he) − log p(she)
/// and g = ∂L/∂m, m the edited projection's output.
pub struct StageReadout {
    /// [n, key width]
    pub keys: DMatrix<f64>,
    pub gaps: DVector<f64>,
    /// [n, d_model]
    pub grads: DMatrix<f64>,
}

/// Reads keys, gaps and gradients for a fixed prompt set at any layer ≥ `start`, resuming every
/// pass from the residual stream cached at `start` (edits at layers ≥ `start` leave it valid).
/// The gap needs only two unembedding rows: log p(he) − log p(she) = (u_he − u_she)·final norm.
pub struct ProbeReader {
    start: usize,
    batches: Vec<(Tensor, Vec<usize>)>,
    gap_dir: Tensor,
    n: usize,
}

impl ProbeReader {
    pub fn new(
        tr: &Transformer,
        prompts: &[EditPrompt],
        start: usize,
        pronouns: [u32; 2],
        batch: usize,
    ) -> Result<Self> {
        let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        Self::from_rows(tr, &rows, start, pronouns, batch)
    }

    /// The same reader over token rows that are not edit prompts (corpus windows: gap tuning's
    /// corpus gap term reads every position of them, [`Self::batch_gaps_all`]).
    pub fn from_rows(
        tr: &Transformer,
        rows: &[Vec<u32>],
        start: usize,
        pronouns: [u32; 2],
        batch: usize,
    ) -> Result<Self> {
        if start >= tr.cfg.num_layers {
            return Err(Error::param(
                "start layer",
                format!("{start} >= {} layers", tr.cfg.num_layers),
            ));
        }
        let mut batches = Vec::new();
        for rows in rows.chunks(batch.max(1)) {
            let plan = InterventionPlan {
                capture: vec![Site::ResidPre(start)],
                stop_after: Some(start),
                ..Default::default()
            };
            let out = tr.forward(rows, &plan)?;
            batches.push((out.captures[&Site::ResidPre(start)].detach(), out.pads));
        }
        let row = |id: u32| tr.lm_head.i(id as usize);
        let gap_dir = (row(pronouns[0])? - row(pronouns[1])?)?.unsqueeze(1)?;
        Ok(ProbeReader {
            start,
            batches,
            gap_dir,
            n: rows.len(),
        })
    }

    fn check(&self, l: usize) -> Result<()> {
        if l < self.start {
            return Err(Error::param(
                "layer",
                format!("{l} is below the cached layer {}", self.start),
            ));
        }
        Ok(())
    }

    /// Keys, gaps and gradients of `component` at layer `l` on the model `tr`.
    pub fn readout(
        &self,
        tr: &Transformer,
        l: usize,
        component: Component,
    ) -> Result<StageReadout> {
        self.check(l)?;
        let d = tr.cfg.hidden_size;
        let (mut keys, mut grads, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        for (resid, pads) in &self.batches {
            let (b, t, _) = resid.dims3()?;
            let shift = Var::zeros((b, d), resid.dtype(), resid.device())?;
            let plan = InterventionPlan {
                capture: vec![component.key_site(l), Site::FinalNorm],
                last_token_shifts: vec![(component.out_site(l), shift.as_tensor().clone())],
                ..Default::default()
            };
            let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
            let last = out.captures[&Site::FinalNorm].i((.., t - 1, ..))?;
            let gap = crate::model::stable_matmul::matmul(&last, &self.gap_dir)?.squeeze(1)?;
            let g = gap.sum_all()?.backward()?;
            let gd = g.get(shift.as_tensor()).ok_or_else(|| {
                Error::Model(format!("probe: no gradient at {}", component.out_site(l)))
            })?;
            grads.extend(gd.to_dtype(DType::F64)?.to_vec2::<f64>()?);
            keys.extend(last_token_rows(&out.captures[&component.key_site(l)])?);
            gaps.extend(gap.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(StageReadout {
            keys: rows_to_matrix(&keys),
            gaps: DVector::from_vec(gaps),
            grads: rows_to_matrix(&grads),
        })
    }

    /// How many batches the prompts were cached in (the constructor's `batch` rows each).
    pub fn n_batches(&self) -> usize {
        self.batches.len()
    }

    /// The gaps L = log p(he) − log p(she) of batch `i` on `tr`, [rows], differentiable in
    /// `tr`'s weights above the cached layer (gap tuning backpropagates through it).
    pub fn batch_gaps(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let (resid, pads) = self
            .batches
            .get(i)
            .ok_or_else(|| Error::param("batch", format!("{i} >= {}", self.batches.len())))?;
        let t = resid.dim(1)?;
        let plan = InterventionPlan {
            capture: vec![Site::FinalNorm],
            ..Default::default()
        };
        let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
        let last = out.captures[&Site::FinalNorm].i((.., t - 1, ..))?;
        Ok(crate::model::stable_matmul::matmul(&last, &self.gap_dir)?.squeeze(1)?)
    }

    /// The gaps of batch `i` at every position of its rows, [rows, tokens] (left padding
    /// included: meaningful only for rows of equal length, as corpus windows are), differentiable
    /// like [`Self::batch_gaps`]. Log-probabilities share one normaliser per position, so the
    /// gap is still (u_he − u_she)·final norm.
    pub fn batch_gaps_all(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let (states, (b, t)) = self.batch_states_all(tr, i)?;
        Ok(crate::model::stable_matmul::matmul(&states, &self.gap_dir)?.reshape((b, t))?)
    }

    /// The final-norm states of batch `i` at every position, [rows · tokens, width], and the
    /// batch's (rows, tokens).
    fn batch_states_all(&self, tr: &Transformer, i: usize) -> Result<(Tensor, (usize, usize))> {
        let (resid, pads) = self
            .batches
            .get(i)
            .ok_or_else(|| Error::param("batch", format!("{i} >= {}", self.batches.len())))?;
        let (b, t, d) = resid.dims3()?;
        let plan = InterventionPlan {
            capture: vec![Site::FinalNorm],
            ..Default::default()
        };
        let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
        Ok((out.captures[&Site::FinalNorm].reshape((b * t, d))?, (b, t)))
    }

    /// The token ids of the `k` largest logits at every position of batch `i` on `tr`,
    /// [rows · tokens, k] (u32, largest first): the full unembedding, a few rows at a time so
    /// that a 262k vocabulary never sits whole in memory for every position.
    pub fn batch_top_ids(&self, tr: &Transformer, i: usize, k: usize) -> Result<Tensor> {
        let states = self.batch_states_all(tr, i)?.0.detach();
        let (p, _) = states.dims2()?;
        let vocab = tr.lm_head.dim(0)?;
        if k == 0 || k > vocab {
            return Err(Error::param(
                "top-k",
                format!("{k} is not between 1 and the vocabulary's {vocab}"),
            ));
        }
        let mut ids = Vec::with_capacity(p * k);
        let unembed = tr.lm_head.t()?;
        for start in (0..p).step_by(32) {
            let n = 32.min(p - start);
            let logits =
                crate::model::stable_matmul::matmul(&states.narrow(0, start, n)?, &unembed)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
            for row in logits {
                let mut order: Vec<u32> = (0..vocab as u32).collect();
                let by_logit = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
                order.select_nth_unstable_by(k - 1, by_logit);
                order.truncate(k);
                order.sort_by(by_logit);
                ids.extend(order);
            }
        }
        Ok(Tensor::from_vec(ids, (p, k), states.device())?)
    }

    /// The logits of each position's own token ids at every position of batch `i` on `tr`,
    /// [rows · tokens, k], for `ids` [rows · tokens, k] (u32): k rows of the unembedding per
    /// position instead of the vocabulary, differentiable like [`Self::batch_gaps`] (gap
    /// tuning's corpus top-k term).
    pub fn batch_logits_at(&self, tr: &Transformer, i: usize, ids: &Tensor) -> Result<Tensor> {
        let (states, _) = self.batch_states_all(tr, i)?;
        let (p, d) = states.dims2()?;
        let (pi, k) = ids.dims2()?;
        if pi != p {
            return Err(Error::param(
                "top-k ids",
                format!("{pi} rows for a batch of {p} positions"),
            ));
        }
        let rows = tr
            .lm_head
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((p, k, d))?;
        Ok(rows.broadcast_mul(&states.unsqueeze(1)?)?.sum(2)?)
    }

    /// Only the probe inputs of `component` at layer `l` (a forward that stops after `l`).
    pub fn keys(&self, tr: &Transformer, l: usize, component: Component) -> Result<DMatrix<f64>> {
        self.check(l)?;
        let mut keys = Vec::with_capacity(self.n);
        for (resid, pads) in &self.batches {
            let plan = InterventionPlan {
                capture: vec![component.key_site(l)],
                stop_after: Some(l),
                ..Default::default()
            };
            let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
            keys.extend(last_token_rows(&out.captures[&component.key_site(l)])?);
        }
        Ok(rows_to_matrix(&keys))
    }
}

/// The last token of each row of a [rows, tokens, width] capture (rows are left-padded, so
/// every prompt ends at the last position), in f64.
fn last_token_rows(x: &Tensor) -> Result<Vec<Vec<f64>>> {
    let t = x.dim(1)?;
    Ok(x.i((.., t - 1, ..))?
        .detach()
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?)
}

fn rows_to_matrix(rows: &[Vec<f64>]) -> DMatrix<f64> {
    let c = rows.first().map_or(0, |r| r.len());
    DMatrix::from_fn(rows.len(), c, |i, j| rows[i][j])
}

pub(super) fn to_f64(t: &Tensor) -> Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(DMatrix::from_row_slice(r, c, &v))
}

pub(super) fn to_tensor(m: &DMatrix<f64>, like: &Tensor) -> Result<Tensor> {
    let v: Vec<f64> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    Ok(Tensor::from_vec(v, (m.nrows(), m.ncols()), like.device())?.to_dtype(like.dtype())?)
}

/// Mean key per group: [groups, d_ff].
pub(super) fn group_means(
    keys: &DMatrix<f64>,
    prompts: &[EditPrompt],
    groups: usize,
) -> DMatrix<f64> {
    let mut out = DMatrix::<f64>::zeros(groups, keys.ncols());
    let mut count = vec![0usize; groups];
    for (r, p) in prompts.iter().enumerate() {
        let mut row = out.row_mut(p.group);
        row += keys.row(r);
        count[p.group] += 1;
    }
    for (g, &c) in count.iter().enumerate() {
        if c > 0 {
            out.row_mut(g).scale_mut(1.0 / c as f64);
        }
    }
    out
}

/// What the probe and gap tuning share: checked layers, the pronoun ids, the fit prompts (edit
/// professions × fit templates × prefixes, last token) and the protected words' prompts.
pub struct ProbePrompts {
    /// Sorted, unique, each below the model's layer count.
    pub layers: Vec<usize>,
    pub pronouns: [u32; 2],
    pub fit: Vec<EditPrompt>,
    pub words: Vec<String>,
    /// `words` × the same templates and prefixes; `group` indexes `words`.
    pub protect: Vec<EditPrompt>,
}

pub fn probe_prompts(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    prefixes: usize,
    protect_set: ProtectSet,
    data_dir: &Path,
) -> Result<ProbePrompts> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let n_layers = model.config().num_layers;
    if layers.is_empty() || layers.iter().any(|&l| l >= n_layers) {
        return Err(Error::param(
            "layers",
            format!("{layers:?} must be a non-empty subset of 0..{n_layers}"),
        ));
    }
    let tok = model.tokenizer()?;
    let pronouns = [tok.single_token_id(" he")?, tok.single_token_id(" she")?];
    let all = vig_templates();
    let templates: Vec<Template> = sets
        .edit_templates
        .iter()
        .map(|&i| all[i].clone())
        .collect();
    let prefixes = &DEFAULT_PREFIXES[..prefixes.min(DEFAULT_PREFIXES.len())];
    let fit = last_token_prompts(tok, &sets.edit, &templates, prefixes)?;
    let professions: Vec<String> =
        crate::data::Profession::load(&data_dir.join("bolukbasi_debiaswe/professions.json"))?
            .into_iter()
            .map(|p| p.raw)
            .collect();
    let words = protect_set_words(protect_set, data_dir, &professions)?;
    let protect = last_token_prompts(tok, &words, &templates, prefixes)?;
    Ok(ProbePrompts {
        layers,
        pronouns,
        fit,
        words,
        protect,
    })
}

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
    } = probe_prompts(
        model,
        sets,
        layers,
        params.prefixes,
        params.protect_set,
        data_dir,
    )?;

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
