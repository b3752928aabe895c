//! What an edit was (`edit.json`) and the one transaction that writes an edited model:
//! the HF directory, `delta.safetensors` and `edit.json` appear together or not at all.
//! Also the guarded apply / revert of a stored delta against a loaded model.

use crate::edit::delta::{self, WeightDelta};
use crate::model::export::{write_dir_atomically, write_hf_files, ExportOptions};
use crate::model::weights::WeightMap;
use crate::model::Model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The unedited model an edit starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModelRef {
    pub name: String,
    pub path: PathBuf,
    /// sha256 of the base model's file(s).
    pub sha256: String,
    /// sha256 of its weights (its identity, see [`crate::model::ModelInfo::weights_sha256`]);
    /// absent in records written before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub weights_sha256: String,
}

impl BaseModelRef {
    /// Whether a delta's model hash names this base model (its weights or, for older deltas,
    /// its file hash).
    pub fn identifies(&self, hash: &str) -> bool {
        !hash.is_empty() && (hash == self.weights_sha256 || hash == self.sha256)
    }
}

/// Everything needed to reproduce and judge an edit; written as `edit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRecord {
    /// "lsdm", "ft-l", "dama", ...
    pub method: String,
    /// Edited layers.
    pub layers: Vec<usize>,
    /// Every hyperparameter of the method (λ, steps, learning rate, ...).
    pub hyperparameters: serde_json::Value,
    pub base_model: BaseModelRef,
    /// sha256 of every data file the edit read, by path.
    pub data_hashes: BTreeMap<String, String>,
    pub seed: u64,
    pub biaslens_version: String,
    /// Metrics on the edit prompts before and after the edit (filled by the method).
    pub metrics_before: serde_json::Value,
    pub metrics_after: serde_json::Value,
    /// Wall time of each stage, in seconds.
    pub wall_times_s: BTreeMap<String, f64>,
    /// The method's own report (per-stage fit R², the fit history, ΔW norms, the protected
    /// keys' residual change, …): `EditOutcome::report`. Null for a delta applied with
    /// `biaslens apply`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub method_report: serde_json::Value,
}

impl EditRecord {
    /// A record for `method` on `model` with this crate's version; the rest starts empty.
    pub fn new(method: &str, model: &Model) -> Self {
        EditRecord {
            method: method.to_string(),
            layers: Vec::new(),
            hyperparameters: serde_json::Value::Null,
            base_model: BaseModelRef {
                name: model.info.name.clone(),
                path: model.info.path.clone(),
                sha256: model.info.sha256.clone(),
                weights_sha256: model.info.weights_sha256.clone(),
            },
            data_hashes: BTreeMap::new(),
            seed: 0,
            biaslens_version: env!("CARGO_PKG_VERSION").to_string(),
            metrics_before: serde_json::Value::Null,
            metrics_after: serde_json::Value::Null,
            wall_times_s: BTreeMap::new(),
            method_report: serde_json::Value::Null,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("not an edit record: {e}")))
    }
}

/// Write the edited model at `out`: HF files for `weights_after`, `delta.safetensors` and
/// `edit.json`, all in one temp-then-rename transaction. The record, the delta and the model
/// must all name the same base model.
pub fn write_edit_outputs(
    model: &Model,
    weights_after: &WeightMap,
    delta: &WeightDelta,
    record: &EditRecord,
    out: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    let base = &model.info.sha256;
    if !model.info.identifies(&delta.meta.model_hash) {
        return Err(Error::param(
            "delta",
            format!(
                "made for model {}, not {} (weights sha256)",
                delta.meta.model_hash,
                model.info.identity()
            ),
        ));
    }
    if &record.base_model.sha256 != base {
        return Err(Error::param(
            "record",
            format!("names base model {}, not {base}", record.base_model.sha256),
        ));
    }
    write_dir_atomically(out, &model.info.path, opts.force, |dir| {
        write_hf_files(model, weights_after, dir, opts)?;
        delta.save(&dir.join("delta.safetensors"))?;
        crate::io::write_json_atomic(&dir.join("edit.json"), record)
    })
}

/// The base model's weights with `delta` applied. Errors unless the delta was made for this
/// model (its weights sha256, or the file sha256 older deltas record) and every edited tensor
/// still holds the delta's original bits.
pub fn apply_delta(model: &Model, delta: &WeightDelta) -> Result<WeightMap> {
    if !model.info.identifies(&delta.meta.model_hash) {
        return Err(Error::param(
            "delta",
            format!(
                "was made for the model with sha256 {}, but `{}` has weights sha256 {} (file \
                 sha256 {})",
                delta.meta.model_hash,
                model.info.name,
                model.info.weights_sha256,
                model.info.sha256
            ),
        ));
    }
    let mut w: HashMap<String, _> = model.weights.clone().into_iter().collect();
    delta::apply(&mut w, delta)?;
    Ok(w.into_iter().collect())
}

/// The edited model's weights with `delta` reverted, bit for bit the base weights. When the
/// edited directory carries an `edit.json`, its base model hash must match the delta's.
pub fn revert_delta(
    edited: &Model,
    delta: &WeightDelta,
    record: Option<&EditRecord>,
) -> Result<WeightMap> {
    if let Some(r) = record {
        if !r.base_model.identifies(&delta.meta.model_hash) {
            return Err(Error::param(
                "delta",
                format!(
                    "was made for base model {}, but the edited model's edit.json names {}",
                    delta.meta.model_hash, r.base_model.sha256
                ),
            ));
        }
    }
    let mut w: HashMap<String, _> = edited.weights.clone().into_iter().collect();
    // Tolerance 0: the edited weights must be exactly orig + Δ as `apply` computed them.
    delta::revert(&mut w, delta, 0.0)?;
    Ok(w.into_iter().collect())
}
