//! One trace run as data ([`TraceJob`]) and the one path from it to per-prompt records, shared
//! by `biaslens trace` and the report's trace stages so that both draw the same noise for the
//! same prompts (issue 14).
//!
//! Two rules fix the noise of a prompt, and neither depends on whether another prompt is skipped
//! (its occupation cannot be located in its tokens):
//! - its seed is [`noise_seed`] of the prompt's index in the *selected* list, before skipping;
//! - with [`NoiseLevel::EmbedStdTimes`] the std is measured over every selected prompt.

use super::fast::{trace_fast_batched, DEFAULT_BATCH_ROWS};
use super::prompts::{pronoun_ids, select_prompts, trace_case};
use super::run::TraceRecord;
use super::{embedding_std, sample_noise, stereotype_sign, NoiseLevel, TraceCase, TraceSettings};
use crate::data::{occupation_prompts, vig_templates, OccupationPrompt, Profession, SplitSpec};
use crate::measure::occupations::subset_professions;
use crate::measure::Subset;
use crate::model::Model;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that defines a trace run. Missing fields take [`TraceJob::default`], the one set
/// of defaults (the CLI's flags default to it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceJob {
    /// professions.json; `None`: bolukbasi_debiaswe/professions.json in `data::data_dir()`.
    pub professions: Option<PathBuf>,
    /// Which professions of `split` are traced (`all` ignores the split).
    pub subset: Subset,
    pub split: SplitSpec,
    /// Prompts drawn from the subset × the 17 Vig templates by a shuffle seeded with
    /// `settings.seed` (all of them when there are fewer).
    pub prompts: usize,
    /// Samples, window, kinds, noise level and the seed of both the draw and the noise.
    pub settings: TraceSettings,
    /// Rows per batched pass of the fast path; it changes the last bits of the probabilities
    /// (about 1e-9), so bit-identical runs need the same value.
    pub batch_rows: usize,
}

impl Default for TraceJob {
    fn default() -> Self {
        TraceJob {
            professions: None,
            subset: Subset::All,
            split: SplitSpec::default(),
            prompts: 100,
            settings: TraceSettings::default(),
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// Seed of the noise of the prompt at `index` in the selected list.
pub fn noise_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(index as u64)
}

/// A selected prompt that can be traced; `index` is its place in the selected list.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceItem {
    pub index: usize,
    pub prompt: OccupationPrompt,
    pub case: TraceCase,
}

/// A selected prompt left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedPrompt {
    pub index: usize,
    pub text: String,
    pub reason: String,
}

/// A job bound to a model: the traceable items and the absolute noise std.
pub struct PreparedTrace<'m> {
    model: &'m Model,
    settings: TraceSettings,
    batch_rows: usize,
    pub noise_std: f64,
    pub items: Vec<TraceItem>,
    pub skipped: Vec<SkippedPrompt>,
}

impl TraceJob {
    pub fn validate(&self) -> Result<()> {
        if self.prompts == 0 {
            return Err(Error::param("prompts", "must be at least 1"));
        }
        if self.batch_rows == 0 {
            return Err(Error::param("batch_rows", "must be at least 1"));
        }
        self.split.validate()?;
        self.settings.validate()
    }

    /// The selected prompts, before any is skipped.
    pub fn select(&self) -> Result<Vec<OccupationPrompt>> {
        let path = self
            .professions
            .clone()
            .unwrap_or_else(|| crate::data::data_dir().join("bolukbasi_debiaswe/professions.json"));
        let mut professions = Profession::load(&path)?;
        if self.subset != Subset::All {
            professions = subset_professions(professions, self.subset, &self.split)?;
        }
        let all = occupation_prompts(&professions, &vig_templates());
        if all.is_empty() {
            return Err(Error::param(
                "subset",
                format!("{:?} has no professions in {}", self.subset, path.display()),
            ));
        }
        Ok(select_prompts(&all, self.prompts, self.settings.seed))
    }

    /// [`TraceJob::select`], then [`TraceJob::prepare_prompts`].
    pub fn prepare<'m>(&self, model: &'m Model) -> Result<PreparedTrace<'m>> {
        self.prepare_prompts(model, self.select()?)
    }

    /// Trace cases of `selected` (skipping those whose occupation cannot be located) and the
    /// noise std; see the module doc for why both ignore the skipping.
    pub fn prepare_prompts<'m>(
        &self,
        model: &'m Model,
        selected: Vec<OccupationPrompt>,
    ) -> Result<PreparedTrace<'m>> {
        self.validate()?;
        let tok = model.tokenizer()?;
        let pronouns = pronoun_ids(tok)?;
        let noise_std = match self.settings.noise {
            NoiseLevel::Fixed(s) => s,
            NoiseLevel::EmbedStdTimes(k) => {
                let ids = selected
                    .iter()
                    .map(|p| tok.encode(&p.text))
                    .collect::<Result<Vec<_>>>()?;
                k * embedding_std(&model.transformer, &ids)?
            }
        };
        let n = selected.len();
        let (mut items, mut skipped) = (vec![], vec![]);
        for (index, prompt) in selected.into_iter().enumerate() {
            match trace_case(tok, &prompt, pronouns) {
                Ok(case) => items.push(TraceItem {
                    index,
                    prompt,
                    case,
                }),
                Err(e) => skipped.push(SkippedPrompt {
                    index,
                    text: prompt.text,
                    reason: e.to_string(),
                }),
            }
        }
        if items.is_empty() {
            return Err(Error::param(
                "prompts",
                format!("none of the {n} selected prompts can be traced"),
            ));
        }
        Ok(PreparedTrace {
            model,
            settings: self.settings.clone(),
            batch_rows: self.batch_rows,
            noise_std,
            items,
            skipped,
        })
    }
}

impl PreparedTrace<'_> {
    pub fn model(&self) -> &Model {
        self.model
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    fn item(&self, i: usize) -> Result<&TraceItem> {
        self.items.get(i).ok_or_else(|| {
            Error::param(
                "item",
                format!("{i} is not below the {} items", self.items.len()),
            )
        })
    }

    /// The embedding noise of item `i`: [samples, occupation tokens, hidden size].
    pub fn noise(&self, i: usize) -> Result<Tensor> {
        let it = self.item(i)?;
        sample_noise(
            noise_seed(self.settings.seed, it.index),
            self.settings.samples,
            it.case.subject.1 - it.case.subject.0,
            self.model.config().hidden_size,
            self.noise_std,
            &self.model.transformer.device,
        )
    }

    /// Trace item `i` with the fast path.
    pub fn run_item(&self, i: usize) -> Result<TraceRecord> {
        let it = self.item(i)?;
        let noise = self.noise(i)?;
        let result = trace_fast_batched(
            &self.model.transformer,
            &it.case,
            &noise,
            &self.settings,
            self.batch_rows,
        )?;
        Ok(TraceRecord {
            profession: it.prompt.profession.clone(),
            template_index: it.prompt.template_index,
            text: it.prompt.text.clone(),
            ids: it.case.ids.clone(),
            subject: it.case.subject,
            sign: stereotype_sign(it.prompt.stereotypical),
            result,
        })
    }
}
