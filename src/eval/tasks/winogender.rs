//! Winogender as multiple choice over llm-foundry's female and male files (the reference
//! `bl_winogender_{female,male}` tasks), with accuracy overall and per pronoun gender. The
//! vendored MC files have no neutral-pronoun items, so no neutral accuracy is reported.

use crate::eval::lm::LanguageModel;
use crate::eval::load::{LoadOptions, LoadReport, Loaded};
use crate::eval::metrics::Metric;
use crate::eval::tasks::choice::{load_choice, score_choice, summarise, ChoiceItem, ChoiceResult};
use crate::eval::tasks::winobias::Gender;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinogenderItem {
    pub gender: Gender,
    pub item: ChoiceItem,
}

/// Load `winogender_mc_female.jsonl` and `winogender_mc_male.jsonl` from `dir`; sub-sampling
/// applies to each file so both genders stay represented.
pub fn load_winogender(dir: &Path, opts: &LoadOptions) -> Result<Loaded<WinogenderItem>> {
    let mut items = Vec::new();
    let mut report = LoadReport::default();
    for (gender, file) in [
        (Gender::Female, "winogender_mc_female.jsonl"),
        (Gender::Male, "winogender_mc_male.jsonl"),
    ] {
        let loaded = load_choice(&dir.join(file), opts)?;
        report.merge(loaded.report);
        items.extend(
            loaded
                .items
                .into_iter()
                .map(|item| WinogenderItem { gender, item }),
        );
    }
    Ok(Loaded { items, report })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinogenderResult {
    pub all: ChoiceResult,
    pub female: ChoiceResult,
    pub male: ChoiceResult,
    /// acc(male) - acc(female); mixes gender with template difficulty (see PROVENANCE).
    pub acc_gap: Metric,
}

pub fn score_winogender(
    items: &[WinogenderItem],
    lm: &mut dyn LanguageModel,
) -> Result<WinogenderResult> {
    let choice_items: Vec<ChoiceItem> = items.iter().map(|w| w.item.clone()).collect();
    let all = score_choice(&choice_items, lm)?;
    let split = |g: Gender| {
        summarise(
            items
                .iter()
                .zip(&all.records)
                .filter(|(w, _)| w.gender == g)
                .map(|(_, r)| r.clone())
                .collect(),
        )
    };
    let (female, male) = (split(Gender::Female), split(Gender::Male));
    let se = match (male.acc.stderr, female.acc.stderr) {
        (Some(a), Some(b)) => Some((a * a + b * b).sqrt()),
        _ => None,
    };
    Ok(WinogenderResult {
        acc_gap: Metric {
            value: male.acc.value - female.acc.value,
            stderr: se,
        },
        all,
        female,
        male,
    })
}
