//! Models: where weights come from (GGUF or HF directory), the config, the tokenizer and the
//! instrumented transformer. `Model::load("smollm2-135m")` is the entry point.

pub mod config;
pub mod fused;
pub mod matmul;
pub mod norm;
pub mod registry;
pub mod sites;
pub mod stable_matmul;
pub mod transformer;
pub mod tree;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use norm::Norm;
pub use registry::{resolve_model, ModelSource};
pub use sites::{InterventionPlan, LogitsRequest, Patch, PatchOp, Site};
pub use transformer::{ForwardOutput, KvCache, Resume, Transformer, Work};
pub use tree::TreeRow;

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a loaded model came from, recorded in every result for reproducibility.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// Registry alias or the path the user gave.
    pub name: String,
    pub path: PathBuf,
    /// sha256 of the GGUF file, or of the weight files of an HF directory.
    pub sha256: String,
    pub arch: Arch,
    pub num_layers: usize,
    pub hidden_size: usize,
}

/// A loaded model: the transformer (dense f32), its tokenizer, and provenance.
pub struct Model {
    pub info: ModelInfo,
    pub transformer: Transformer,
    pub tokenizer: Option<Tokenizer>,
    /// HF-named tensors the transformer was built from (used by edits and export).
    pub weights: weights::WeightMap,
}

impl Model {
    /// Load by registry alias (`smollm2-135m`, `gemma-3-270m`), GGUF path or HF directory.
    pub fn load(spec: &str, device: &Device) -> Result<Model> {
        let source = resolve_model(spec)?;
        match &source {
            ModelSource::Gguf(path) => Self::load_gguf(spec, path, device),
            ModelSource::HfDir(dir) => Self::load_hf_dir(spec, dir, device),
        }
    }

    pub fn load_gguf(name: &str, path: &Path, device: &Device) -> Result<Model> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e.to_string()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::file(path, format!("not a readable GGUF file: {e}")))?;
        let cfg = ModelConfig::from_gguf(&content, path)?;
        let tokenizer = Tokenizer::from_gguf(&content, path)?;
        let w = weights::load_gguf(&content, &mut file, &cfg, path, device)?;
        let transformer = Transformer::from_weights(cfg.clone(), &w, device)
            .map_err(|e| Error::file(path, e.to_string()))?;
        let sha256 = crate::io::sha256_file(path)?;
        Ok(Model {
            info: ModelInfo {
                name: name.to_string(),
                path: path.to_path_buf(),
                sha256,
                arch: cfg.arch,
                num_layers: cfg.num_layers,
                hidden_size: cfg.hidden_size,
            },
            transformer,
            tokenizer: Some(tokenizer),
            weights: w,
        })
    }

    /// Load an HF directory: config.json + *.safetensors (+ tokenizer.json when present).
    pub fn load_hf_dir(name: &str, dir: &Path, device: &Device) -> Result<Model> {
        let cfg = ModelConfig::from_hf_json(&dir.join("config.json"))?;
        let w = weights::load_safetensors_dir(dir, device)?;
        let transformer = Transformer::from_weights(cfg.clone(), &w, device)
            .map_err(|e| Error::file(dir, e.to_string()))?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_hf_dir(dir)?)
        } else {
            None
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "safetensors")
                    && !p.ends_with("delta.safetensors")
            })
            .collect();
        files.sort();
        let mut hashes = String::new();
        for f in &files {
            hashes.push_str(&crate::io::sha256_file(f)?);
        }
        Ok(Model {
            info: ModelInfo {
                name: name.to_string(),
                path: dir.to_path_buf(),
                sha256: crate::io::sha256_bytes(hashes.as_bytes()),
                arch: cfg.arch,
                num_layers: cfg.num_layers,
                hidden_size: cfg.hidden_size,
            },
            transformer,
            tokenizer,
            weights: w,
        })
    }

    /// A copy of this model with `weights` replaced (e.g. after an edit); `suffix` marks the name.
    pub fn with_weights(&self, weights: weights::WeightMap, suffix: &str) -> Result<Model> {
        let transformer =
            Transformer::from_weights(self.config().clone(), &weights, &self.transformer.device)?;
        let mut info = self.info.clone();
        info.name = format!("{}{suffix}", info.name);
        let mut bytes = Vec::new();
        for (k, t) in &weights {
            bytes.extend_from_slice(k.as_bytes());
            bytes.extend_from_slice(
                crate::io::sha256_bytes(
                    &t.flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>(),
                )
                .as_bytes(),
            );
        }
        info.sha256 = crate::io::sha256_bytes(&bytes);
        Ok(Model {
            info,
            transformer,
            tokenizer: self.tokenizer.clone(),
            weights,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.transformer.cfg
    }

    /// The tokenizer, or an error for tokenizer-less models (tiny test models).
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Model(format!("model `{}` has no tokenizer", self.info.name)))
    }
}
