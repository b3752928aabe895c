//! Measure pronoun probabilities on the occupation prompts (professions × templates) of one
//! split and summarise them into bias metrics.

use super::bias::BiasMetrics;
use super::probs::{sequence_probs, PronounTargets};
use crate::data::{
    self, occupation_prompts, split_professions, Part, Profession, SplitSpec, Template,
    TemplateSplit,
};
use crate::model::{Model, ModelInfo};
use crate::stats::BootstrapSpec;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which professions to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    All,
    Edit,
    HeldOut,
    Controls,
    /// The edit professions set aside for choosing hyperparameters (`data::validation_professions`).
    Validation,
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Subset::All => "all",
            Subset::Edit => "edit",
            Subset::HeldOut => "held-out",
            Subset::Controls => "controls",
            Subset::Validation => "validation",
        })
    }
}

impl std::str::FromStr for Subset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Subset::All),
            "edit" => Ok(Subset::Edit),
            "held-out" => Ok(Subset::HeldOut),
            "controls" => Ok(Subset::Controls),
            "validation" => Ok(Subset::Validation),
            _ => Err(Error::param(
                "split",
                format!("`{s}`: expected all, edit, held-out, controls or validation"),
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeasureOptions {
    pub subset: Subset,
    pub split: SplitSpec,
    pub batch_size: usize,
    pub bootstrap: BootstrapSpec,
    /// Folder with bolukbasi_debiaswe/ and winogender/ (default: the vendored fixtures/data).
    pub data_dir: PathBuf,
    /// Custom templates file (one per line, each with one `{}`); default: the 17 Vig templates.
    pub templates: Option<PathBuf>,
    /// Which templates: all, fit or unseen Vig templates, Vig's validation ones, or the
    /// validation lines of the project-written templates (`TemplateSplit`).
    #[serde(default)]
    pub template_split: TemplateSplit,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            subset: Subset::All,
            split: SplitSpec::default(),
            batch_size: 256,
            bootstrap: BootstrapSpec::default(),
            data_dir: data::data_dir(),
            templates: None,
            template_split: TemplateSplit::All,
        }
    }
}

/// One prompt's pronoun probabilities.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptProbs {
    pub profession: String,
    pub name: String,
    pub template_index: usize,
    pub text: String,
    pub definitional: f64,
    pub stereotypical: f64,
    pub p_he: f64,
    pub p_she: f64,
    pub p_they: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeasureResult {
    pub biaslens_version: String,
    pub model: ModelInfo,
    pub options: MeasureOptions,
    /// The cap on professions of a [`super::MeasureJob`], when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_professions: Option<usize>,
    pub targets: PronounTargets,
    /// sha256 of every data file read.
    pub data_hashes: BTreeMap<String, String>,
    pub metrics: BiasMetrics,
    pub prompts: Vec<PromptProbs>,
    /// Against a base model's result of the same prompts (`measure --against`), when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_base: Option<super::AgainstBase>,
}

/// Occupation prompts of the chosen subset, with the hashes of the files they came from.
pub fn subset_prompts(
    opts: &MeasureOptions,
) -> Result<(Vec<data::OccupationPrompt>, BTreeMap<String, String>)> {
    let prof_path = opts.data_dir.join("bolukbasi_debiaswe/professions.json");
    let professions = Profession::load(&prof_path)?;
    let split_file = opts.template_split.file().map(|f| opts.data_dir.join(f));
    let template_file = match (&opts.templates, split_file) {
        (Some(_), _) if opts.template_split != TemplateSplit::All => return Err(Error::param(
            "template-split",
            "selects among the project's templates; it cannot be combined with a templates file",
        )),
        (Some(p), _) => Some(p.clone()),
        (None, f) => f,
    };
    let templates = match &template_file {
        Some(p) => Template::load(p)?,
        None => data::vig_templates(),
    };
    if let (Some(p), Some(_)) = (&template_file, opts.template_split.file()) {
        data::check_varied_lines(p, templates.len())?;
    }
    let mut hashes = BTreeMap::new();
    hashes.insert(rel(&prof_path), crate::io::sha256_file(&prof_path)?);
    if let Some(p) = &template_file {
        hashes.insert(rel(p), crate::io::sha256_file(p)?);
    }
    let keep = subset_professions(professions, opts.subset, &opts.split)?;
    let mut prompts = occupation_prompts(&keep, &templates);
    prompts.retain(|p| opts.template_split.contains(p.template_index));
    Ok((prompts, hashes))
}

/// The professions of `subset` under `split`, in file order (measure and trace select alike).
pub fn subset_professions(
    professions: Vec<Profession>,
    subset: Subset,
    split: &SplitSpec,
) -> Result<Vec<Profession>> {
    let parts = split_professions(&professions, split)?;
    let validation = data::validation_professions(&parts);
    Ok(professions
        .into_iter()
        .filter(|p| {
            matches!(
                (subset, parts.part_of(&p.raw)),
                (Subset::All, _)
                    | (Subset::Edit, Some(Part::Edit))
                    | (Subset::HeldOut, Some(Part::HeldOut))
                    | (Subset::Controls, Some(Part::DefinitionalControl))
            ) || (subset == Subset::Validation && validation.contains(&p.raw))
        })
        .collect())
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// p(he), p(she), p(they) after each occupation prompt (tokenised as HF does), in prompt order.
/// The one path from prompts to probabilities: `measure`, the edit record and the report use it.
pub fn prompt_probs(
    model: &Model,
    prompts: &[data::OccupationPrompt],
    batch_size: usize,
    on_progress: impl FnMut(usize),
) -> Result<(PronounTargets, Vec<PromptProbs>)> {
    let tok = model.tokenizer()?;
    let targets = PronounTargets::he_she_they(tok)?;
    let mut rows = Vec::with_capacity(prompts.len());
    for p in prompts {
        let ids = tok.encode(&p.text)?;
        if ids.is_empty() {
            return Err(Error::param(
                "profession",
                format!("{:?} gives an empty prompt", p.profession),
            ));
        }
        rows.push(ids);
    }
    // Name the template of a prompt that is too long, before any work (issue 17).
    let longest_word = targets.ids.iter().map(Vec::len).max().unwrap_or(1);
    super::probs::check_prompt_lengths(&model.transformer, &rows, longest_word - 1, |i| {
        let t: String = prompts[i].template.chars().take(60).collect();
        format!("template {} ({t:?}…)", prompts[i].template_index + 1)
    })?;
    let probs = sequence_probs(&model.transformer, &rows, &targets, batch_size, on_progress)?;
    let out = prompts
        .iter()
        .zip(&probs)
        .map(|(p, q)| PromptProbs {
            profession: p.profession.clone(),
            name: p.name.clone(),
            template_index: p.template_index,
            text: p.text.clone(),
            definitional: p.definitional,
            stereotypical: p.stereotypical,
            p_he: q[0],
            p_she: q[1],
            p_they: q[2],
        })
        .collect();
    Ok((targets, out))
}

/// Measure p(he), p(she), p(they) on every prompt of the subset and compute the bias metrics
/// ([`super::MeasureJob`] without a cap).
pub fn measure_occupations(
    model: &Model,
    opts: &MeasureOptions,
    on_progress: impl FnMut(usize),
) -> Result<MeasureResult> {
    super::MeasureJob::new(opts.clone()).run(model, on_progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{VARIED_TEMPLATES_FILE, VARIED_VALIDATION_TEMPLATES};

    /// `varied-validation` measures the chosen professions on the validation lines of the
    /// project-written templates, indexes them by line, and hashes that file; every Vig split
    /// still reads Vig's list and no templates file.
    #[test]
    fn varied_validation_reads_its_lines_of_the_varied_file() {
        let opts = MeasureOptions {
            subset: Subset::Controls,
            template_split: TemplateSplit::VariedValidation,
            ..MeasureOptions::default()
        };
        let (prompts, hashes) = subset_prompts(&opts).unwrap();
        let file = opts.data_dir.join(VARIED_TEMPLATES_FILE);
        let lines = Template::load(&file).unwrap();
        assert!(hashes.contains_key(&rel(&file)), "{hashes:?}");
        let professions: std::collections::BTreeSet<&str> =
            prompts.iter().map(|p| p.profession.as_str()).collect();
        assert_eq!(
            prompts.len(),
            professions.len() * VARIED_VALIDATION_TEMPLATES.len()
        );
        for p in &prompts {
            assert!(VARIED_VALIDATION_TEMPLATES.contains(&p.template_index));
            assert_eq!(p.template, lines[p.template_index].as_str());
        }
        let vig = subset_prompts(&MeasureOptions {
            template_split: TemplateSplit::Validation,
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(vig.1.len(), 1, "{:?}", vig.1);
        assert_eq!(vig.0.len(), professions.len() * 3);
        // A templates file and a split of the project's templates do not combine.
        let err = subset_prompts(&MeasureOptions {
            templates: Some(file),
            ..opts
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("template-split"), "{err}");
    }

    /// A data folder whose varied file lacks the validation lines fails naming the file.
    #[test]
    fn varied_validation_refuses_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::data::data_dir();
        std::fs::create_dir_all(dir.path().join("bolukbasi_debiaswe")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let prof = "bolukbasi_debiaswe/professions.json";
        std::fs::copy(src.join(prof), dir.path().join(prof)).unwrap();
        std::fs::write(dir.path().join(VARIED_TEMPLATES_FILE), "I met the {} and\n").unwrap();
        let err = subset_prompts(&MeasureOptions {
            template_split: TemplateSplit::VariedValidation,
            data_dir: dir.path().to_path_buf(),
            ..MeasureOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("varied.txt") && err.contains("at least 24"),
            "{err}"
        );
    }

    #[test]
    fn template_split_names_parse() {
        use TemplateSplit::*;
        for (s, t) in [
            ("all", All),
            ("fit", Fit),
            ("unseen", Unseen),
            ("validation", Validation),
            ("varied-validation", VariedValidation),
        ] {
            assert_eq!(s.parse::<TemplateSplit>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), s);
            assert_eq!(t.name(), s);
        }
        let err = "varied".parse::<TemplateSplit>().unwrap_err().to_string();
        assert!(err.contains("varied-validation"), "{err}");
    }
}
