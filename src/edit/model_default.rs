//! The edit a registry model gets when `biaslens edit` names neither `--method` nor `--spec`.
//! The choice is a data record per model, `default_edits/{alias}.toml` in the data folder, made
//! on that model's own validation split (docs/findings.md §6): the method, and the
//! hyperparameters chosen for it where they differ from the library's (a `[probe]` or `[tune]`
//! table, the same fields as an edit spec's). A model without a record (a GGUF path, a Hugging
//! Face directory) gets [`FALLBACK`] with the library defaults.

use super::method::{EditSpec, Method};
use super::probe::ProbeParams;
use super::tune::TuneParams;
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
    /// The probe's validated hyperparameters; a missing table or field is the library default.
    #[serde(default)]
    pub probe: ProbeParams,
    /// Gap tuning's validated hyperparameters; a missing table or field is the library default.
    #[serde(default)]
    pub tune: TuneParams,
}

/// The record's path for `--model` `model`: only registry aliases have one.
pub fn record_path(data_dir: &Path, model: &str) -> Option<PathBuf> {
    crate::model::registry::KNOWN_MODELS
        .iter()
        .any(|k| k.alias == model)
        .then(|| data_dir.join("default_edits").join(format!("{model}.toml")))
}

/// `model`'s record, `None` where it has none. A record that does not parse, or that sets the
/// hyperparameters of a method it does not choose, is an error naming the file.
pub fn record(data_dir: &Path, model: &str) -> Result<Option<ModelDefaultEdit>> {
    let Some(path) = record_path(data_dir, model).filter(|p| p.is_file()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
    let record: ModelDefaultEdit = toml::from_str(&text)
        .map_err(|e| Error::file(&path, format!("not a default-edit record: {e}")))?;
    for (table, set, method) in [
        (
            "probe",
            record.probe != ProbeParams::default(),
            Method::Probe,
        ),
        ("tune", record.tune != TuneParams::default(), Method::Tune),
    ] {
        if set && record.method != method {
            return Err(Error::file(
                &path,
                format!(
                    "a [{table}] table, but the record's method is {}: its hyperparameters would \
                     not be read",
                    record.method.name()
                ),
            ));
        }
    }
    // Out-of-range values are refused here, naming the record: a user who passed no flag would
    // not know where `tune.corpus_topk` came from.
    let spec = spec_of(&record);
    spec.validate_params()
        .map_err(|e| Error::file(&path, e.to_string()))?;
    Ok(Some(record))
}

fn spec_of(r: &ModelDefaultEdit) -> EditSpec {
    let mut spec = EditSpec::new(r.method, Vec::new());
    spec.probe = r.probe.clone();
    spec.tune = r.tune.clone();
    spec
}

/// The default method for `--model` `model`: its record's, else [`FALLBACK`].
pub fn default_method(data_dir: &Path, model: &str) -> Result<Method> {
    Ok(record(data_dir, model)?.map_or(FALLBACK, |r| r.method))
}

/// The edit spec `biaslens edit --model model` starts from when neither `--method` nor `--spec`
/// is given: the record's method and hyperparameters, else [`FALLBACK`]'s library defaults.
/// Flags given beside it still replace its values.
pub fn default_spec(data_dir: &Path, model: &str) -> Result<EditSpec> {
    Ok(match record(data_dir, model)? {
        None => EditSpec::new(FALLBACK, Vec::new()),
        Some(r) => spec_of(&r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped records parse, and name the method (and hyperparameters) each model's
    /// validation split chose.
    #[test]
    fn shipped_records_choose_per_model() {
        let data = crate::data::data_dir();
        assert_eq!(default_method(&data, "smollm2-135m").unwrap(), Method::Tune);
        assert_eq!(default_method(&data, "gemma-3-270m").unwrap(), Method::Tune);
        // Gemma-3's record carries what its validation split chose: the corpus top-k weight
        // (§6e), WordNet's words and α = 4 (§6l); the rest are the library's.
        let gemma = default_spec(&data, "gemma-3-270m").unwrap();
        let want = TuneParams {
            corpus_topk: Some(10.0),
            word_source: crate::edit::probe::WordSource::Wordnet,
            protect_weight: 4.0,
            ..TuneParams::default()
        };
        assert_eq!(gemma.tune, want);
        // SmolLM2's: WordNet's words, 400 steps and the pronouns' mass held (η = 1; §6l); the
        // rest are the library's.
        let smol = default_spec(&data, "smollm2-135m").unwrap();
        let want = TuneParams {
            word_source: crate::edit::probe::WordSource::Wordnet,
            steps: 400,
            hold_mass: Some(1.0),
            ..TuneParams::default()
        };
        assert_eq!(smol.tune, want);
        assert_eq!(smol.probe, ProbeParams::default());
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

    /// A record's `[tune]` table reaches the spec `biaslens edit` starts from, unset fields keep
    /// the library defaults; a table for a method the record does not choose, or a value out of
    /// range, is refused naming the record.
    #[test]
    fn record_hyperparameters_reach_the_default_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("default_edits")).unwrap();
        let file = dir.path().join("default_edits/gemma-3-270m.toml");
        std::fs::write(
            &file,
            "method = \"tune\"\nchosen_on = \"x\"\n[tune]\ncorpus_topk = 1.0\n",
        )
        .unwrap();
        let spec = default_spec(dir.path(), "gemma-3-270m").unwrap();
        assert_eq!(spec.method, Method::Tune);
        assert_eq!(spec.tune.corpus_topk, Some(1.0));
        let want = TuneParams {
            corpus_topk: Some(1.0),
            ..TuneParams::default()
        };
        assert_eq!(spec.tune, want);
        assert_eq!(spec.probe, ProbeParams::default());
        // Each bad record is refused naming its file and what is wrong in it.
        let refused = |body: &str, what: &str| {
            std::fs::write(&file, body).unwrap();
            let e = default_spec(dir.path(), "gemma-3-270m")
                .unwrap_err()
                .to_string();
            assert!(e.contains("gemma-3-270m.toml") && e.contains(what), "{e}");
        };
        refused(
            "method = \"probe\"\nchosen_on = \"x\"\n[tune]\ncorpus_topk = 1.0\n",
            "[tune]",
        );
        refused(
            "method = \"tune\"\nchosen_on = \"x\"\n[tune]\ncorpus_topk = -1.0\n",
            "tune.corpus_topk",
        );
        let spec = default_spec(dir.path(), "x/model.gguf").unwrap();
        assert_eq!((spec.method, spec.tune), (FALLBACK, TuneParams::default()));
    }
}
