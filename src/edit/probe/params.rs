//! The probe's parameters, its report and the projections a stage edits.

use crate::model::Site;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{FitTemplates, PromptSources, ProtectSet, WordSource};

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
    /// Extra fit and protected words ([`WordSource`]). (Not written when `project`, so the
    /// cache keys and delta records of earlier probe edits stay as they were.)
    #[serde(skip_serializing_if = "WordSource::is_project")]
    pub word_source: WordSource,
    /// Templates of the fit and protected prompts ([`FitTemplates`]). (Not written when `vig`,
    /// as `word_source`.)
    #[serde(skip_serializing_if = "FitTemplates::is_vig")]
    pub fit_templates: FitTemplates,
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
            word_source: WordSource::Project,
            fit_templates: FitTemplates::Vig,
        }
    }
}

impl ProbeParams {
    /// Where this method's fit and protected prompts come from.
    pub fn sources(&self) -> PromptSources {
        PromptSources {
            prefixes: self.prefixes,
            protect_set: self.protect_set,
            word_source: self.word_source,
            fit_templates: self.fit_templates,
        }
    }

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
    pub statistics: crate::edit::corpus::CorpusCost,
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
