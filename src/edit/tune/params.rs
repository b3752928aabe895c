//! Gap tuning's hyperparameters: `[tune]` in `biaslens edit --spec`, `[methods.tune.params]` in a
//! report spec, a model's default-edit record. Missing fields take [`TuneParams::default`].

use crate::edit::probe::{Components, FitTemplates, PromptSources, ProtectSet, WordSource};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TuneParams {
    /// r: rank of each projection's change.
    pub rank: usize,
    /// Adam steps (one fit minibatch and one protected minibatch each).
    pub steps: usize,
    pub lr: f64,
    /// How the learning rate moves over the steps ([`LrSchedule`]). (Not written when
    /// `constant`, so the cache keys and delta records of earlier tune edits stay as they were.)
    #[serde(skip_serializing_if = "LrSchedule::is_constant")]
    pub lr_schedule: LrSchedule,
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
    /// Extra fit and protected words ([`WordSource`]). (Not written when `project`, as
    /// `keep_above`.)
    #[serde(skip_serializing_if = "WordSource::is_project")]
    pub word_source: WordSource,
    /// Templates of the fit and protected prompts ([`FitTemplates`]). (Not written when `vig`.)
    #[serde(skip_serializing_if = "FitTemplates::is_vig")]
    pub fit_templates: FitTemplates,
    /// Seed of A's initialisation and of the minibatch shuffle.
    pub seed: u64,
    /// k: fits averaged into the edit, with seeds `seed`, …, `seed + k − 1`; the edit is the
    /// mean of their changes (each of rank ≤ r, so the mean has rank ≤ k·r and still maps the
    /// protected keys to zero). Why: one fit's factual gender moves with its seed (findings
    /// §6l). (Not written when 1, so the cache keys and delta records of earlier tune edits
    /// stay as they were.)
    #[serde(skip_serializing_if = "is_one")]
    pub seeds: usize,
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
    /// ζ: weight of keeping each fit prompt's preferred pronoun (the one the base model finds
    /// more likely there) at its base log-probability, so the fit closes the gap by raising the
    /// less likely pronoun rather than lowering the likely one. Why: a change shared by every
    /// subject that takes from "he" costs a male definitional word much of its p(he), while one
    /// that adds to "she" multiplies its small p(she) and costs it little; and lowering the
    /// likely pronoun also lowers both pronouns' mass, which cuts the goal's metric without
    /// evening them out (findings §6l). None: no such term. (Not written when None.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_preferred: Option<f64>,
    /// η: weight of keeping each fit prompt's pronoun mass, log(p(he) + p(she)), at the base
    /// model's, so the fit closes the gap by moving probability from one pronoun to the other,
    /// neither taking it from both (which lowers |p(he) − p(she)| without evening them out) nor
    /// adding to both (as ζ alone does, findings §6l). None: no such term. (Not written when
    /// None.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_mass: Option<f64>,
    /// k of the corpus top-k term. (Not written when [`CORPUS_TOPK_K`], so the cache keys and
    /// delta records of earlier tune edits stay as they were.)
    #[serde(skip_serializing_if = "is_default_topk_k")]
    pub corpus_topk_k: usize,
}

/// The learning rate of each Adam step. With a constant rate a fit's last steps still move it
/// (minibatches of 64; on Gemma-3 the fit loss swings by a factor of seven over the last 50 of
/// 400 steps, findings §6l), so where it stops on the trade-off is partly its last
/// minibatches'; a rate that decays to zero lets the last steps settle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `tune.lr` at every step.
    #[default]
    Constant,
    /// Half a cosine from `tune.lr` at step 0 toward 0 after the last step:
    /// lr · (1 + cos(π · step / steps)) / 2.
    Cosine,
}

impl LrSchedule {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }

    pub fn is_constant(&self) -> bool {
        *self == LrSchedule::Constant
    }

    /// The rate of step `step` (0-based) of `steps`, from the base rate `lr`.
    pub fn at(self, lr: f64, step: usize, steps: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let x = step as f64 / steps.max(1) as f64;
                lr * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "tune.lr_schedule",
            s,
            &[LrSchedule::Constant, LrSchedule::Cosine],
            LrSchedule::name,
        )
    }
}

/// The default k of the corpus top-k term.
pub const CORPUS_TOPK_K: usize = 16;

fn is_one(k: &usize) -> bool {
    *k == 1
}

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
            lr_schedule: LrSchedule::Constant,
            batch: 64,
            protect_weight: 1.0,
            prior: 1.0,
            corpus_tokens: 16_384,
            corpus_seq_len: 128,
            prefixes: 1,
            components: Components::Both,
            protect_set: ProtectSet::Roles,
            word_source: WordSource::Project,
            fit_templates: FitTemplates::Vig,
            seed: 0,
            seeds: 1,
            protect_weight_he: None,
            keep_above: None,
            corpus_gap: None,
            hold_preferred: None,
            hold_mass: None,
            corpus_topk: None,
            corpus_topk_k: CORPUS_TOPK_K,
            heads: vec![],
        }
    }
}

impl TuneParams {
    /// Where this method's fit and protected prompts come from.
    pub fn sources(&self) -> PromptSources {
        PromptSources {
            prefixes: self.prefixes,
            protect_set: self.protect_set,
            word_source: self.word_source,
            fit_templates: self.fit_templates,
        }
    }

    /// The seeds of the fits averaged into the edit: `seed`, …, `seed + seeds − 1`.
    pub fn seed_list(&self) -> impl Iterator<Item = u64> {
        let seed = self.seed;
        (0..self.seeds as u64).map(move |i| seed + i)
    }

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
        at_least_one("tune.seeds", self.seeds)?;
        if self.seed.checked_add(self.seeds as u64 - 1).is_none() {
            return Err(Error::param(
                "tune.seeds",
                format!("seed {} + {} seeds overflows u64", self.seed, self.seeds),
            ));
        }
        if let Some(t) = self.keep_above {
            non_negative("tune.keep_above", t)?;
        }
        if let Some(w) = self.protect_weight_he {
            non_negative("tune.protect_weight_he", w)?;
        }
        if let Some(w) = self.hold_preferred {
            non_negative("tune.hold_preferred", w)?;
        }
        if let Some(w) = self.hold_mass {
            non_negative("tune.hold_mass", w)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_start_at_lr_and_cosine_decays_to_near_zero() {
        let (lr, steps) = (3e-3, 400);
        for step in [0, 1, 200, 399] {
            assert_eq!(LrSchedule::Constant.at(lr, step, steps), lr);
        }
        let c = |step| LrSchedule::Cosine.at(lr, step, steps);
        assert_eq!(c(0), lr);
        assert!((c(200) - lr / 2.0).abs() < 1e-15);
        // The last step's rate: lr (1 + cos(399π/400)) / 2 = lr sin²(π/800).
        let last = lr * (std::f64::consts::PI / 800.0).sin().powi(2);
        assert!((c(399) - last).abs() < 1e-18 && c(399) < lr * 1e-4);
        assert!((1..steps).all(|s| c(s) < c(s - 1)), "strictly decreasing");
    }

    #[test]
    fn the_schedule_is_named_and_only_written_when_not_constant() {
        for s in [LrSchedule::Constant, LrSchedule::Cosine] {
            assert_eq!(s.name().parse::<LrSchedule>().unwrap(), s);
        }
        let e = "linear".parse::<LrSchedule>().unwrap_err().to_string();
        assert!(
            e.contains("tune.lr_schedule") && e.contains("constant or cosine"),
            "{e}"
        );
        let p = TuneParams::default();
        assert!(!serde_json::to_string(&p).unwrap().contains("lr_schedule"));
        let cos = TuneParams {
            lr_schedule: LrSchedule::Cosine,
            ..p
        };
        let j = serde_json::to_string(&cos).unwrap();
        assert!(j.contains("\"lr_schedule\":\"cosine\""), "{j}");
        let back: TuneParams = toml::from_str("lr_schedule = \"cosine\"").unwrap();
        assert_eq!(back.lr_schedule, LrSchedule::Cosine);
    }

    #[test]
    fn hold_terms_are_only_written_when_set_and_must_not_be_negative() {
        let p = TuneParams::default();
        assert!(!serde_json::to_string(&p)
            .unwrap()
            .contains("hold_preferred"));
        let back: TuneParams = toml::from_str("hold_preferred = 2.0").unwrap();
        assert_eq!(back.hold_preferred, Some(2.0));
        assert!(serde_json::to_string(&back)
            .unwrap()
            .contains("\"hold_preferred\":2.0"));
        let bad = TuneParams {
            hold_preferred: Some(-1.0),
            ..p
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("tune.hold_preferred"), "{e}");
        let default = serde_json::to_string(&TuneParams::default()).unwrap();
        assert!(!default.contains("hold_mass"));
        let bad = TuneParams {
            hold_mass: Some(-1.0),
            ..TuneParams::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("tune.hold_mass"), "{e}");
    }
}
