//! Model registry: aliases for the real models and how a `--model` argument is resolved.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A known model: alias, folder under the models directory, GGUF file name.
pub struct KnownModel {
    pub alias: &'static str,
    pub file: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        alias: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    KnownModel {
        alias: "gemma-3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
    },
];

/// The weights to load: one GGUF file, or a Hugging Face directory.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

/// Directory holding fetched models: `$BIASLENS_MODELS` (an empty value counts as unset, as in
/// harness/fetch-models.sh), else `./models`, else the crate's `models/`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BIASLENS_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Resolve `--model`: an alias, a `.gguf` path, or a directory with config.json.
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    if let Some(k) = KNOWN_MODELS.iter().find(|k| k.alias == spec) {
        let path = models_dir().join(k.alias).join(k.file);
        if !path.is_file() {
            return Err(Error::file(
                &path,
                format!("model `{spec}` is not fetched; run `harness/fetch-models.sh {spec}` (or set BIASLENS_MODELS)"),
            ));
        }
        return Ok(ModelSource::Gguf(path));
    }
    let p = Path::new(spec);
    if p.is_dir() {
        if !p.join("config.json").is_file() {
            return Err(Error::file(
                p,
                "directory has no config.json (expected a Hugging Face model directory)",
            ));
        }
        return Ok(ModelSource::HfDir(p.to_path_buf()));
    }
    if p.is_file() {
        return Ok(ModelSource::Gguf(p.to_path_buf()));
    }
    let known: Vec<_> = KNOWN_MODELS.iter().map(|k| k.alias).collect();
    Err(Error::param(
        "model",
        format!(
            "`{spec}` is neither a known alias ({}) nor an existing file or directory",
            known.join(", ")
        ),
    ))
}
