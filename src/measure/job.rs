//! One bias measurement as data ([`MeasureJob`]): the options and an optional cap on the
//! professions. `biaslens measure`, the edit command's checks and the report's measure stages
//! all run it, so a subset is measured one way everywhere.

use super::against_base::{against_base, AgainstBase};
use super::bias::bias_metrics;
use super::occupations::{prompt_probs, subset_prompts, MeasureOptions, MeasureResult};
use crate::data::{BlsTable, OccupationPrompt};
use crate::model::Model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureJob {
    pub options: MeasureOptions,
    /// Keep this many professions, evenly spaced over the subset (a cheaper report); `None`: all.
    #[serde(default)]
    pub max_professions: Option<usize>,
}

impl MeasureJob {
    /// Every profession of the options' subset.
    pub fn new(options: MeasureOptions) -> Self {
        MeasureJob {
            options,
            max_professions: None,
        }
    }

    /// Check, before any work, that `base` (a base model's result) measured the prompts this
    /// job measures, so that [`MeasureResult::against`] can pair them: the same subset, split,
    /// template split and profession cap (batch size and bootstrap may differ), and the same
    /// data by content: every file this job reads (data folder, `--templates`) has its sha256
    /// among the base's `data_hashes`, wherever the files sit, and the prompt counts agree.
    pub fn check_base(&self, base: &MeasureResult) -> Result<()> {
        same_flags(&self.options, self.max_professions, base)?;
        let (prompts, hashes) = self.prompts()?;
        if let Some((path, _)) = hashes
            .iter()
            .find(|(_, h)| !base.data_hashes.values().any(|b| b == *h))
        {
            return Err(Error::param(
                "against",
                format!(
                    "the base result read data files with other contents: none of them has \
                     the sha256 of {path}; measure the base model with the same data"
                ),
            ));
        }
        if prompts.len() != base.prompts.len() {
            return Err(Error::param(
                "against",
                format!(
                    "the base result has {} prompts, this run {}: measure the base model with \
                     the same flags and data",
                    base.prompts.len(),
                    prompts.len()
                ),
            ));
        }
        Ok(())
    }

    /// The measured prompts (profession-major) and the sha256 of the files they came from.
    pub fn prompts(&self) -> Result<(Vec<OccupationPrompt>, BTreeMap<String, String>)> {
        if self.max_professions == Some(0) {
            return Err(Error::param("max_professions", "must be at least 1"));
        }
        let (prompts, hashes) = subset_prompts(&self.options)?;
        Ok((keep_professions(prompts, self.max_professions), hashes))
    }

    /// p(he), p(she), p(they) on every prompt and the bias metrics (BLS correlations included).
    pub fn run(&self, model: &Model, on_progress: impl FnMut(usize)) -> Result<MeasureResult> {
        let opts = &self.options;
        let (prompts, mut data_hashes) = self.prompts()?;
        if prompts.is_empty() {
            return Err(Error::param(
                "split",
                format!("the {} subset has no prompts", opts.subset),
            ));
        }
        let (targets, out) = prompt_probs(model, &prompts, opts.batch_size, on_progress)?;
        let bls_path = opts.data_dir.join("winogender/occupations-stats.tsv");
        let bls = BlsTable::load(&bls_path)?;
        data_hashes.insert(
            bls_path.to_string_lossy().into_owned(),
            crate::io::sha256_file(&bls_path)?,
        );
        let metrics = bias_metrics(&out, Some(&bls), &opts.bootstrap)?;
        Ok(MeasureResult {
            biaslens_version: env!("CARGO_PKG_VERSION").to_string(),
            model: model.info.clone(),
            options: opts.clone(),
            max_professions: self.max_professions,
            targets,
            data_hashes,
            metrics,
            prompts: out,
            against_base: None,
        })
    }
}

/// The options that decide which prompts a result holds (subset, split, template split,
/// whether custom templates, profession cap) agree with `base`'s.
fn same_flags(options: &MeasureOptions, cap: Option<usize>, base: &MeasureResult) -> Result<()> {
    let comparable = |o: &MeasureOptions| MeasureOptions {
        batch_size: 0,
        bootstrap: Default::default(),
        data_dir: Default::default(),
        templates: o.templates.as_ref().map(|_| Default::default()),
        ..o.clone()
    };
    if comparable(&base.options) != comparable(options) || base.max_professions != cap {
        return Err(Error::param(
            "against",
            format!(
                "the base result measured split {} with template split {} (templates {}, \
                 split seed {}); this run measures split {} with template split {} \
                 (templates {}, split seed {}): measure the base model with the same flags",
                base.options.subset,
                base.options.template_split.name(),
                templates_name(&base.options),
                base.options.split.seed,
                options.subset,
                options.template_split.name(),
                templates_name(options),
                options.split.seed,
            ),
        ));
    }
    Ok(())
}

fn templates_name(o: &MeasureOptions) -> String {
    o.templates
        .as_ref()
        .map_or_else(|| "Vig's".into(), |p| p.display().to_string())
}

impl MeasureResult {
    /// This (edited) model against `base`'s result of the same prompts ([`AgainstBase`]):
    /// the shares of mean |gap| and of the controls' gap toward their gender, with intervals
    /// that resample professions (this result's bootstrap settings).
    pub fn against(&self, base: &MeasureResult) -> Result<AgainstBase> {
        same_flags(&self.options, self.max_professions, base)?;
        // The same data files, wherever their folder is: the hashes, not the paths.
        fn hashes(r: &MeasureResult) -> Vec<&String> {
            let mut h: Vec<&String> = r.data_hashes.values().collect();
            h.sort();
            h
        }
        if hashes(base) != hashes(self) {
            return Err(Error::param(
                "against",
                "the base result read data files with other contents (its data_hashes differ): \
                 measure the base model with the same data",
            ));
        }
        let mut r = against_base(
            &base.prompts,
            &self.prompts,
            self.options.split.definitional_threshold,
            &self.options.bootstrap,
        )?;
        r.base_model = Some(base.model.clone());
        Ok(r)
    }
}

/// Keep `m` professions evenly spaced over the (profession-major) prompt list.
pub fn keep_professions(prompts: Vec<OccupationPrompt>, m: Option<usize>) -> Vec<OccupationPrompt> {
    let mut names: Vec<String> = vec![];
    for p in &prompts {
        if names.last() != Some(&p.profession) {
            names.push(p.profession.clone());
        }
    }
    let n = names.len();
    let Some(m) = m.filter(|&m| m < n) else {
        return prompts;
    };
    let keep: Vec<&String> = (0..m).map(|i| &names[i * n / m]).collect();
    prompts
        .into_iter()
        .filter(|p| keep.contains(&&p.profession))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(prof: &str, t: usize) -> OccupationPrompt {
        OccupationPrompt {
            profession: prof.into(),
            name: prof.into(),
            template_index: t,
            template: "{}".into(),
            text: prof.into(),
            definitional: 0.0,
            stereotypical: 0.0,
        }
    }

    #[test]
    fn keeps_whole_professions_evenly_spaced() {
        let all: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .flat_map(|p| (0..3).map(move |t| prompt(p, t)))
            .collect();
        let kept = keep_professions(all.clone(), Some(2));
        let profs: Vec<&str> = kept.iter().map(|p| p.profession.as_str()).collect();
        assert_eq!(profs, ["a", "a", "a", "c", "c", "c"]);
        assert_eq!(keep_professions(all.clone(), None).len(), 12);
        assert_eq!(keep_professions(all, Some(9)).len(), 12);
    }
}
