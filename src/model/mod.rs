//! Models: where weights come from (GGUF or HF directory), the config, the tokenizer and the
//! instrumented transformer. `Model::load("smollm2-135m")` is the entry point.

pub mod bf16x3;
pub mod config;
pub mod export;
pub mod fused;
pub mod gguf_export;
pub mod hash_cache;
pub mod matmul;
#[cfg(feature = "mkl")]
pub mod mkl;
pub mod names;
pub mod norm;
pub mod registry;
pub mod safetensors_bytes;
pub mod sites;
pub mod stable_matmul;
pub mod stop;
pub mod transformer;
pub mod tree;
pub mod weights;

// The transformer's parts, one job each; their public items are re-exported by `transformer`.
mod attention;
mod layer;
mod seam;
mod unembed;
mod wiring;
mod work;

pub use config::{Arch, ModelConfig};
pub use norm::Norm;
pub use registry::{resolve_model, ModelSource};
pub use sites::{InterventionPlan, LogitsRequest, Patch, PatchOp, Site};
pub use stop::StopFlag;
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
    /// sha256 of the weights as loaded ([`weights_sha256`]): the model's identity for deltas
    /// and edit records. Unlike `sha256` it survives an export, so a model restored by
    /// `revert` is its base model again. Empty in results written before it existed.
    #[serde(default)]
    pub weights_sha256: String,
    pub arch: Arch,
    pub num_layers: usize,
    pub hidden_size: usize,
}

impl ModelInfo {
    /// The identity a new delta records: the weights hash.
    pub fn identity(&self) -> &str {
        if self.weights_sha256.is_empty() {
            &self.sha256
        } else {
            &self.weights_sha256
        }
    }

    /// Whether a delta's (or an edit record's) model hash names this model: its weights hash,
    /// or its file hash, which deltas written before weights hashes existed record.
    pub fn identifies(&self, hash: &str) -> bool {
        !hash.is_empty() && (hash == self.weights_sha256 || hash == self.sha256)
    }
}

/// sha256 of a model's weights: for each parameter in name order, its name, dtype, shape and
/// little-endian bytes. Tensors that are not parameters (the test fixtures' expected
/// activations) and a tied `lm_head.weight` are left out, as an export leaves them out, so the
/// same weights give the same hash whether they come from a GGUF file, an HF directory or a
/// biaslens export of either.
pub fn weights_sha256(weights: &weights::WeightMap, cfg: &ModelConfig) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(1 << 16);
    for (name, t) in weights {
        if !export::is_model_parameter(name, cfg.arch)
            || (cfg.tie_embeddings && name == "lm_head.weight")
        {
            continue;
        }
        h.update(name.as_bytes());
        h.update(format!("\0{:?}\0", t.dtype()).as_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::Model(format!("tensor `{name}` is not contiguous")))?;
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(values)) = &*storage else {
            return Err(Error::param(
                name,
                format!("weights hash expects F32 weights, got {:?}", t.dtype()),
            ));
        };
        for chunk in values[start..end].chunks(1 << 14) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
            h.update(&buf);
        }
    }
    Ok(format!("{:x}", h.finalize()))
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
        // Buffered: the metadata is read a few bytes at a time (each vocabulary string is a
        // length and its bytes), about 250,000 reads for SmolLM2's, one system call each unbuffered.
        let mut file = std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| Error::file(path, e.to_string()))?,
        );
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::file(path, format!("not a readable GGUF file: {e}")))?;
        let cfg = ModelConfig::from_gguf(&content, path)?;
        let tokenizer = Tokenizer::from_gguf(&content, path)?;
        let w = weights::load_gguf(&content, &mut file, &cfg, path, device)?;
        let transformer = Transformer::from_weights(cfg.clone(), &w, device)
            .map_err(|e| Error::file(path, e.to_string()))?;
        let files = [path.to_path_buf()];
        let sha256 = hash_cache::cached(&files, hash_cache::Kind::Files, || {
            crate::io::sha256_file(path)
        })?;
        let weights_sha256 = hash_cache::cached(&files, hash_cache::Kind::Weights, || {
            weights_sha256(&w, &cfg)
        })?;
        Ok(Model {
            info: ModelInfo {
                name: name.to_string(),
                path: path.to_path_buf(),
                sha256,
                weights_sha256,
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
        // The cache key also covers config.json: which tensors the weights hash includes
        // depends on the architecture and on tied embeddings.
        let stamped: Vec<PathBuf> = files
            .iter()
            .cloned()
            .chain([dir.join("config.json")])
            .collect();
        let sha256 = hash_cache::cached(&stamped, hash_cache::Kind::Files, || {
            let mut hashes = String::new();
            for f in &files {
                hashes.push_str(&crate::io::sha256_file(f)?);
            }
            Ok(crate::io::sha256_bytes(hashes.as_bytes()))
        })?;
        let weights_sha256 = hash_cache::cached(&stamped, hash_cache::Kind::Weights, || {
            weights_sha256(&w, &cfg)
        })?;
        Ok(Model {
            info: ModelInfo {
                name: name.to_string(),
                path: dir.to_path_buf(),
                sha256,
                weights_sha256,
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
        let mut transformer =
            Transformer::from_weights(self.config().clone(), &weights, &self.transformer.device)?;
        // The copy stops when this model is asked to (an edit measures its edited model).
        transformer.stop = self.transformer.stop.clone();
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
        info.weights_sha256 = weights_sha256(&weights, self.config())?;
        Ok(Model {
            info,
            transformer,
            tokenizer: self.tokenizer.clone(),
            weights,
        })
    }

    /// The flag that stops this model's passes (and those of its `with_weights` copies).
    pub fn stop_flag(&self) -> &StopFlag {
        &self.transformer.stop
    }

    /// This model, stopped by `flag` (one the caller already holds) instead of its own.
    pub fn with_stop_flag(mut self, flag: StopFlag) -> Model {
        self.transformer.stop = flag;
        self
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
