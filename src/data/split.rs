//! Deterministic split of professions into the set an edit is fitted on, a held-out set for
//! checking that it generalises, and definitional controls (actress, businessman: gender that is
//! part of the word's meaning and must survive the edit).

use super::occupations::Profession;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Parameters of [`split_professions`]; stored with results so a split can be reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    /// Professions with |definitional| >= this are controls.
    pub definitional_threshold: f64,
    /// Share of the non-control professions that is held out.
    pub held_out_fraction: f64,
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            definitional_threshold: 0.5,
            held_out_fraction: 0.5,
            seed: 0,
        }
    }
}

impl SplitSpec {
    pub fn validate(&self) -> Result<()> {
        if !(self.definitional_threshold.is_finite() && self.definitional_threshold >= 0.0) {
            return Err(Error::param(
                "definitional_threshold",
                "must be a finite number >= 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.held_out_fraction) {
            return Err(Error::param("held_out_fraction", "must lie in [0, 1]"));
        }
        Ok(())
    }
}

/// Vig template indices no edit is fitted on: every method fits on the other twelve, and the
/// final tables measure on these (docs/method.md, "Protocol").
pub const UNSEEN_TEMPLATES: &[usize] = &[2, 5, 8, 11, 14];

/// Fit templates set aside when choosing hyperparameters: an edit made for validation
/// (`EditSpec::validation`) is fitted on the other nine, and judged on these with the
/// validation professions ([`validation_professions`]).
pub const VALIDATION_TEMPLATES: &[usize] = &[1, 7, 13];

/// Lines (0-based) of `templates/varied.txt` set aside when choosing hyperparameters: a
/// validation fit with `fit_templates = varied` fits on the other sixteen, and
/// [`TemplateSplit::VariedValidation`] measures on these. Every third line from the third, fixed
/// before any fit was judged on them. Why: Vig's templates share one shape, so a validation
/// score on them cannot see whether an edit carries over to other sentence shapes, which the
/// wild-check (and any user) asks of it (docs/method.md §2b).
pub const VARIED_VALIDATION_TEMPLATES: &[usize] = &[2, 5, 8, 11, 14, 17, 20, 23];

/// The project-written templates file, relative to the data folder
/// (fixtures/data/templates/README.md).
pub const VARIED_TEMPLATES_FILE: &str = "templates/varied.txt";

/// Refuse a templates file too short for [`VARIED_VALIDATION_TEMPLATES`] (a data folder whose
/// `templates/varied.txt` was edited), so neither a validation fit nor a measure silently uses
/// fewer validation lines than the protocol names.
pub fn check_varied_lines(path: &std::path::Path, n_lines: usize) -> Result<()> {
    let need = VARIED_VALIDATION_TEMPLATES
        .iter()
        .max()
        .map_or(0, |&i| i + 1);
    if n_lines < need {
        return Err(Error::file(
            path,
            format!(
                "has {n_lines} templates; the varied validation lines {VARIED_VALIDATION_TEMPLATES:?} \
                 (0-based) need at least {need}"
            ),
        ));
    }
    Ok(())
}

/// Share of the edit professions set aside for validation.
pub const VALIDATION_FRACTION: f64 = 0.25;

/// Which templates to measure on: a subset of Vig's 17, or the validation lines of the
/// project-written ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateSplit {
    #[default]
    All,
    /// The twelve templates edits are fitted on.
    Fit,
    /// [`UNSEEN_TEMPLATES`].
    Unseen,
    /// [`VALIDATION_TEMPLATES`] (a subset of the fit templates).
    Validation,
    /// [`VARIED_VALIDATION_TEMPLATES`] of [`VARIED_TEMPLATES_FILE`]: validation on sentence
    /// shapes other than Vig's.
    VariedValidation,
}

impl TemplateSplit {
    /// Whether the template at `index` (of Vig's list, or of [`Self::file`]) belongs to it.
    pub fn contains(self, index: usize) -> bool {
        match self {
            TemplateSplit::All => true,
            TemplateSplit::Fit => !UNSEEN_TEMPLATES.contains(&index),
            TemplateSplit::Unseen => UNSEEN_TEMPLATES.contains(&index),
            TemplateSplit::Validation => VALIDATION_TEMPLATES.contains(&index),
            TemplateSplit::VariedValidation => VARIED_VALIDATION_TEMPLATES.contains(&index),
        }
    }

    /// The spelling on the command line and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            TemplateSplit::All => "all",
            TemplateSplit::Fit => "fit",
            TemplateSplit::Unseen => "unseen",
            TemplateSplit::Validation => "validation",
            TemplateSplit::VariedValidation => "varied-validation",
        }
    }

    /// The templates file this split indexes (relative to the data folder), when it is not
    /// Vig's list.
    pub const fn file(self) -> Option<&'static str> {
        match self {
            TemplateSplit::VariedValidation => Some(VARIED_TEMPLATES_FILE),
            _ => None,
        }
    }
}

impl std::str::FromStr for TemplateSplit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        use TemplateSplit::*;
        crate::error::parse_named(
            "template-split",
            s,
            &[All, Fit, Unseen, Validation, VariedValidation],
            TemplateSplit::name,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    Edit,
    HeldOut,
    DefinitionalControl,
}

/// The raw profession names in each part, each list sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub spec: SplitSpec,
    pub edit: Vec<String>,
    pub held_out: Vec<String>,
    pub controls: Vec<String>,
}

impl Split {
    pub fn part_of(&self, raw: &str) -> Option<Part> {
        let has = |v: &[String]| v.binary_search_by(|s| s.as_str().cmp(raw)).is_ok();
        if has(&self.edit) {
            Some(Part::Edit)
        } else if has(&self.held_out) {
            Some(Part::HeldOut)
        } else if has(&self.controls) {
            Some(Part::DefinitionalControl)
        } else {
            None
        }
    }
}

/// The edit professions set aside for validation: the [`VALIDATION_FRACTION`] of `split.edit`
/// ranked first by a second hash, sorted. Hyperparameters are chosen on these (with
/// [`VALIDATION_TEMPLATES`]), never on the held-out professions.
pub fn validation_professions(split: &Split) -> Vec<String> {
    let mut ranked: Vec<([u8; 32], &String)> = split
        .edit
        .iter()
        .map(|r| (hash_key(split.spec.seed ^ 0x7661_6c69_6461_7465, r), r))
        .collect();
    ranked.sort();
    let n = (VALIDATION_FRACTION * ranked.len() as f64).round() as usize;
    let mut out: Vec<String> = ranked[..n].iter().map(|(_, r)| r.to_string()).collect();
    out.sort();
    out
}

/// Platform-independent key of a profession under a seed: sha256(seed LE bytes ‖ raw name).
fn hash_key(seed: u64, raw: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(raw.as_bytes());
    h.finalize().into()
}

/// Split `professions`. Non-controls are ranked by `hash_key` and the first
/// round(fraction · count) are held out, so the result depends only on the set of names and the
/// spec, never on list order or platform.
pub fn split_professions(professions: &[Profession], spec: &SplitSpec) -> Result<Split> {
    spec.validate()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(p) = professions.iter().find(|p| !seen.insert(p.raw.as_str())) {
        return Err(Error::param(
            "professions",
            format!("duplicate profession `{}`", p.raw),
        ));
    }
    let mut controls = Vec::new();
    let mut rest: Vec<([u8; 32], &str)> = Vec::new();
    for p in professions {
        if p.definitional.abs() >= spec.definitional_threshold {
            controls.push(p.raw.clone());
        } else {
            rest.push((hash_key(spec.seed, &p.raw), &p.raw));
        }
    }
    rest.sort();
    let n_held = (spec.held_out_fraction * rest.len() as f64).round() as usize;
    let mut held_out: Vec<String> = rest[..n_held].iter().map(|(_, r)| r.to_string()).collect();
    let mut edit: Vec<String> = rest[n_held..].iter().map(|(_, r)| r.to_string()).collect();
    controls.sort();
    held_out.sort();
    edit.sort();
    Ok(Split {
        spec: spec.clone(),
        edit,
        held_out,
        controls,
    })
}
