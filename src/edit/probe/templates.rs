//! Which templates the probe and gap tuning fit on and protect with.

use crate::data::{
    check_varied_lines, Template, TemplateSplit, VARIED_TEMPLATES_FILE, VIG_TEMPLATES,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The templates of fit and protected prompts. Vig et al.'s fit templates share one shape
/// (`"The {} <verb> that/because"`), so an edit fitted on them alone may learn that shape; the
/// controls then keep less of their gap on templates the edit never saw (findings §6l).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FitTemplates {
    /// The edit split's Vig templates only.
    #[default]
    Vig,
    /// Also the 24 project-written templates of `templates/varied.txt`
    /// (fixtures/data/templates/README.md), which no held-out number reads; a validation fit
    /// leaves out [`crate::data::VARIED_VALIDATION_TEMPLATES`], which validation measures on.
    Varied,
}

impl FitTemplates {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            FitTemplates::Vig => "vig",
            FitTemplates::Varied => "varied",
        }
    }

    pub fn is_vig(&self) -> bool {
        *self == FitTemplates::Vig
    }

    /// The file this choice reads, if any.
    pub fn file(self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            FitTemplates::Vig => None,
            FitTemplates::Varied => Some(data_dir.join(VARIED_TEMPLATES_FILE)),
        }
    }

    /// `vig_fit` (the edit split's Vig templates) followed by this choice's extra templates,
    /// without [`crate::data::VARIED_VALIDATION_TEMPLATES`] for a `validation` fit. An extra
    /// template that is one of Vig's 17 is refused: those are measured, never fitted beyond the
    /// split.
    pub fn templates(
        self,
        vig_fit: Vec<Template>,
        data_dir: &Path,
        validation: bool,
    ) -> Result<Vec<Template>> {
        let Some(path) = self.file(data_dir) else {
            return Ok(vig_fit);
        };
        let mut extra = Template::load(&path)?;
        if let Some(t) = extra.iter().find(|t| VIG_TEMPLATES.contains(&t.as_str())) {
            return Err(Error::file(
                &path,
                format!("{:?} is one of Vig et al.'s templates", t.as_str()),
            ));
        }
        if validation {
            // Exactly the lines `TemplateSplit::VariedValidation` measures on.
            check_varied_lines(&path, extra.len())?;
            extra = extra
                .into_iter()
                .enumerate()
                .filter(|&(i, _)| !TemplateSplit::VariedValidation.contains(i))
                .map(|(_, t)| t)
                .collect();
        }
        let mut out = vig_fit;
        out.extend(extra);
        Ok(out)
    }
}

impl std::str::FromStr for FitTemplates {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "fit templates",
            s,
            &[FitTemplates::Vig, FitTemplates::Varied],
            FitTemplates::name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::VARIED_VALIDATION_TEMPLATES;

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data")
    }

    /// A data folder holding only a `templates/varied.txt` with `text`.
    fn data_with_varied(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join(VARIED_TEMPLATES_FILE), text).unwrap();
        dir
    }

    #[test]
    fn vig_adds_nothing_and_varied_adds_the_file() {
        let base = vec![Template::new("The {} said that").unwrap()];
        assert_eq!(
            FitTemplates::Vig
                .templates(base.clone(), &data(), true)
                .unwrap(),
            base
        );
        let all = FitTemplates::Varied
            .templates(base.clone(), &data(), false)
            .unwrap();
        assert_eq!(all.len(), 1 + 24);
        assert_eq!(all[0], base[0]);
    }

    /// A validation fit leaves out exactly the lines `--template-split varied-validation`
    /// measures.
    #[test]
    fn a_validation_fit_leaves_out_the_varied_validation_lines() {
        let file = Template::load(&data().join(VARIED_TEMPLATES_FILE)).unwrap();
        let fit = FitTemplates::Varied
            .templates(Vec::new(), &data(), true)
            .unwrap();
        assert_eq!(fit.len(), 24 - VARIED_VALIDATION_TEMPLATES.len());
        for (i, t) in file.iter().enumerate() {
            assert_eq!(
                fit.contains(t),
                !VARIED_VALIDATION_TEMPLATES.contains(&i),
                "line {i}: {:?}",
                t.as_str()
            );
        }
    }

    /// A varied file too short for the validation lines is refused for a validation fit,
    /// naming the file; a final fit uses whatever lines it has.
    #[test]
    fn a_short_varied_file_is_refused_for_validation() {
        let dir = data_with_varied("I met the {} and\nThe {} phoned to say that\n");
        let err = FitTemplates::Varied
            .templates(Vec::new(), dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("varied.txt") && err.contains("at least 24"),
            "{err}"
        );
        let fit = FitTemplates::Varied.templates(Vec::new(), dir.path(), false);
        assert_eq!(fit.unwrap().len(), 2);
    }

    #[test]
    fn a_vig_template_in_the_file_is_refused() {
        let dir = data_with_varied("I met the {} and\nThe {} said that\n");
        let err = FitTemplates::Varied
            .templates(Vec::new(), dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("varied.txt") && err.contains("Vig"), "{err}");
    }

    /// `vig` is not written, so earlier edits' cache keys and records stay valid; `varied` is
    /// written and read back.
    #[test]
    fn names_round_trip_and_vig_is_not_written() {
        use crate::edit::probe::ProbeParams;
        use crate::edit::tune::TuneParams;
        for t in [FitTemplates::Vig, FitTemplates::Varied] {
            assert_eq!(t.name().parse::<FitTemplates>().unwrap(), t);
        }
        assert!("vague".parse::<FitTemplates>().is_err());
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("fit_templates").is_none(), "{v}");
        let v = serde_json::to_value(ProbeParams::default()).unwrap();
        assert!(v.get("fit_templates").is_none(), "{v}");
        let tune = TuneParams {
            fit_templates: FitTemplates::Varied,
            ..TuneParams::default()
        };
        let w = serde_json::to_value(&tune).unwrap();
        assert_eq!(w["fit_templates"], "varied");
        assert_eq!(serde_json::from_value::<TuneParams>(w).unwrap(), tune);
    }
}
