//! Model registry: aliases for the real models and how a `--model` argument is resolved.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A known model: alias (also its folder under the models directory), GGUF file name and the
/// file's sha256, checked whenever the alias is resolved.
pub struct KnownModel {
    pub alias: &'static str,
    pub file: &'static str,
    /// The same value as in harness/fetch-models.sh (a test keeps the two equal).
    pub sha256: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        alias: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        alias: "gemma-3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
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
        check_known_file(k, &path)?;
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

/// Refuse a registry alias whose file is not the registered one (another model under its file
/// name, a truncated download), naming the file and the sha256 expected. The file's hash is
/// cached (see [`super::hash_cache`]), so this costs one read of the file per change of it.
fn check_known_file(k: &KnownModel, path: &Path) -> Result<()> {
    let got = super::hash_cache::cached(
        &[path.to_path_buf()],
        super::hash_cache::Kind::Files,
        || crate::io::sha256_file(path),
    )?;
    if got != k.sha256 {
        return Err(Error::file(
            path,
            format!(
                "is not the `{}` model file: its sha256 is {got}, expected {}; fetch it again \
                 with `harness/fetch-models.sh {}`",
                k.alias, k.sha256, k.alias
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry expects the sha256 that harness/fetch-models.sh checks after a download.
    #[test]
    fn registry_hashes_match_the_fetch_script() {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/fetch-models.sh"),
        )
        .unwrap();
        for (var, alias) in [("SMOL_SHA", "smollm2-135m"), ("GEMMA_SHA", "gemma-3-270m")] {
            let line = script
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{var}=")))
                .unwrap_or_else(|| panic!("no {var}= in fetch-models.sh"));
            let k = KNOWN_MODELS.iter().find(|k| k.alias == alias).unwrap();
            assert_eq!(k.sha256, line.trim(), "{alias}");
            assert!(
                script.contains(&format!("/{alias}/{}", k.file)),
                "{alias} file name"
            );
        }
    }
}
