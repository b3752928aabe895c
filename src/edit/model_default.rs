//! The edit method a registry model gets when `biaslens edit` names neither `--method` nor
//! `--spec`. The choice is a data record per model, `default_edits/{alias}.toml` in the data
//! folder, made on that model's own validation split (docs/findings.md §6); a model without a
//! record (a GGUF path, a Hugging Face directory) gets [`FALLBACK`].

use super::method::Method;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The method for a model without a record: the gap probe, chosen on SmolLM2's validation split.
pub const FALLBACK: Method = Method::Probe;

/// One model's record.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaultEdit {
    pub method: Method,
    /// Where the choice was measured (a docs/findings.md section), kept beside it.
    pub chosen_on: String,
}

/// The record's path for `--model` `model`: only registry aliases have one.
pub fn record_path(data_dir: &Path, model: &str) -> Option<PathBuf> {
    crate::model::registry::KNOWN_MODELS
        .iter()
        .any(|k| k.alias == model)
        .then(|| data_dir.join("default_edits").join(format!("{model}.toml")))
}

/// The default method for `--model` `model`: its record's, else [`FALLBACK`]. A record that
/// exists but does not parse is an error naming the file.
pub fn default_method(data_dir: &Path, model: &str) -> Result<Method> {
    let Some(path) = record_path(data_dir, model).filter(|p| p.is_file()) else {
        return Ok(FALLBACK);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
    let record: ModelDefaultEdit = toml::from_str(&text)
        .map_err(|e| Error::file(&path, format!("not a default-edit record: {e}")))?;
    Ok(record.method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped records parse, and name the method each model's validation split chose.
    #[test]
    fn shipped_records_choose_per_model() {
        let data = crate::data::data_dir();
        assert_eq!(
            default_method(&data, "smollm2-135m").unwrap(),
            Method::Probe
        );
        assert_eq!(default_method(&data, "gemma-3-270m").unwrap(), Method::Tune);
        for k in crate::model::registry::KNOWN_MODELS {
            assert!(
                record_path(&data, k.alias).is_some_and(|p| p.is_file()),
                "{}: no default-edit record",
                k.alias
            );
        }
    }

    /// A path or directory is not looked up; a broken record is refused naming its file.
    #[test]
    fn paths_fall_back_and_bad_records_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            default_method(dir.path(), "x/model.gguf").unwrap(),
            FALLBACK
        );
        assert_eq!(
            default_method(dir.path(), "gemma-3-270m").unwrap(),
            FALLBACK
        );
        std::fs::create_dir(dir.path().join("default_edits")).unwrap();
        let file = dir.path().join("default_edits/gemma-3-270m.toml");
        std::fs::write(&file, "method = \"rome\"\nchosen_on = \"x\"\n").unwrap();
        let e = default_method(dir.path(), "gemma-3-270m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemma-3-270m.toml"), "{e}");
        std::fs::write(&file, "method = \"lsdm\"\nchosen_on = \"x\"\n").unwrap();
        assert_eq!(
            default_method(dir.path(), "gemma-3-270m").unwrap(),
            Method::Lsdm
        );
    }
}
