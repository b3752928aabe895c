//! Bit-exact store of per-layer weight edits: save, apply, and a guarded revert.
//!
//! A delta file is safetensors holding, for each edited tensor `name`, `delta.<name>` (ΔW) and
//! `orig.<name>` (the weights before the edit), plus JSON metadata under the `biaslens` key.
//! Keeping the original bits (not just ΔW) is what makes revert exact: (W + Δ) - Δ is not W in
//! floating point. Only F32 weights are supported; anything else is refused by name.
//!
//! Integrity: the metadata also records, under [`CHECKSUM_KEY`], the sha256 of the `biaslens`
//! metadata and of every tensor (name, shape, little-endian data, in name order). Loading
//! verifies it and refuses non-finite values, naming the file and the tensor; files written
//! before the checksum existed load with `checksum: None` (their values are still checked).

use crate::model::safetensors_bytes::tensors_to_bytes;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Provenance of an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaMeta {
    /// Editing method, e.g. "lsdm", "dama", "ft-l".
    pub method: String,
    /// Identity of the unedited model: its weights sha256 ([`crate::model::ModelInfo::identity`]);
    /// deltas written before weights hashes existed hold its file sha256.
    pub model_hash: String,
    /// Free-form method parameters (λ, μ, layers, ...).
    pub params: serde_json::Value,
}

/// One edited tensor: its original value and the change, both F32 and the same shape.
#[derive(Debug, Clone)]
pub struct DeltaEntry {
    pub orig: Tensor,
    pub delta: Tensor,
}

/// Safetensors metadata key of a delta file's checksum (see the module docs).
pub const CHECKSUM_KEY: &str = "biaslens.sha256";

/// A set of edits keyed by tensor name.
#[derive(Debug, Clone)]
pub struct WeightDelta {
    pub meta: DeltaMeta,
    pub entries: BTreeMap<String, DeltaEntry>,
    /// The checksum recorded in the file this delta was loaded from (verified on load); `None`
    /// for a delta made in memory or read from a file written before checksums existed.
    pub checksum: Option<String>,
}

/// sha256 of a delta file's content: the `biaslens` metadata, then per tensor in name order its
/// name, shape and little-endian f32 data.
struct Checksum(Sha256);

impl Checksum {
    fn new(meta_json: &str) -> Self {
        let mut h = Sha256::new();
        h.update(meta_json.as_bytes());
        Checksum(h)
    }

    fn tensor(&mut self, key: &str, shape: &[usize], data: &[u8]) {
        self.0.update(b"\0");
        self.0.update(key.as_bytes());
        self.0.update(b"\0");
        for d in shape {
            self.0.update((*d as u64).to_le_bytes());
        }
        self.0.update(data);
    }

    fn hex(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

/// The first non-finite value of `v`, as (index, value).
fn first_non_finite(v: &[f32]) -> Option<(usize, f32)> {
    v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i]))
}

impl WeightDelta {
    pub fn new(meta: DeltaMeta) -> Self {
        Self {
            meta,
            entries: BTreeMap::new(),
            checksum: None,
        }
    }

    /// Record the edit of tensor `name`: its original value and ΔW.
    pub fn insert(&mut self, name: &str, orig: &Tensor, delta: &Tensor) -> Result<()> {
        if orig.dtype() != DType::F32 || delta.dtype() != DType::F32 {
            return Err(Error::param(name, "delta store supports F32 tensors only"));
        }
        if orig.dims() != delta.dims() {
            return Err(Error::param(
                name,
                format!(
                    "delta shape {:?} differs from weight shape {:?}",
                    delta.dims(),
                    orig.dims()
                ),
            ));
        }
        let entry = DeltaEntry {
            orig: orig.clone(),
            delta: delta.clone(),
        };
        self.entries.insert(name.to_string(), entry);
        Ok(())
    }

    /// Write the delta file atomically, with its checksum. Refuses non-finite values.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (name, e) in &self.entries {
            tensors.insert(format!("orig.{name}"), e.orig.clone());
            tensors.insert(format!("delta.{name}"), e.delta.clone());
        }
        let meta_json = serde_json::to_string(&self.meta)?;
        let mut sum = Checksum::new(&meta_json);
        for (key, t) in &tensors {
            let v = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some((i, x)) = first_non_finite(&v) {
                return Err(Error::file(
                    path,
                    format!("not saving tensor `{key}`: element {i} is {x} (not finite)"),
                ));
            }
            let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            sum.tensor(key, t.dims(), &data);
        }
        let header = HashMap::from([
            ("biaslens".to_string(), meta_json),
            (CHECKSUM_KEY.to_string(), sum.hex()),
        ]);
        let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
        let bytes = tensors_to_bytes(&tensors, &header).map_err(|e| Error::file(path, e))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Read a delta file; every `delta.<name>` needs a matching `orig.<name>` and vice versa.
    /// The recorded checksum must match and every value must be finite.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e.to_string()))?;
        let (st, meta_json, entries) = crate::io::biaslens_safetensors(path, &bytes)?;
        let meta: DeltaMeta = serde_json::from_str(&meta_json)
            .map_err(|e| Error::file(path, format!("bad `biaslens` metadata: {e}")))?;
        let recorded = entries.get(CHECKSUM_KEY).cloned();
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(want) = &recorded {
            let mut sum = Checksum::new(&meta_json);
            for (key, view) in &views {
                sum.tensor(key, view.shape(), view.data());
            }
            let got = sum.hex();
            if &got != want {
                return Err(Error::file(
                    path,
                    format!(
                        "checksum mismatch: the file records sha256 {want} but its content hashes \
                         to {got}; the delta is corrupted, refusing to use it"
                    ),
                ));
            }
        }
        for (key, view) in &views {
            if view.dtype() != safetensors::Dtype::F32 {
                continue; // refused by name below
            }
            let bad = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .enumerate()
                .find(|(_, x)| !x.is_finite());
            if let Some((i, x)) = bad {
                let why = match recorded {
                    Some(_) => "the checksum matches, so it was written that way",
                    None => {
                        "this delta records no checksum (written by an older biaslens), \
                             so it may be corrupted"
                    }
                };
                return Err(Error::file(
                    path,
                    format!("tensor `{key}` holds a non-finite value ({x}) at element {i}; {why}; refusing to use it"),
                ));
            }
        }
        let mut out = WeightDelta::new(meta);
        out.checksum = recorded;
        for (key, view) in views {
            let Some(name) = key.strip_prefix("delta.") else {
                if !key.starts_with("orig.") {
                    return Err(Error::file(path, format!("unexpected tensor `{key}`")));
                }
                let name = &key["orig.".len()..];
                if st.tensor(&format!("delta.{name}")).is_err() {
                    return Err(Error::file(path, format!("`{key}` has no `delta.{name}`")));
                }
                continue;
            };
            let orig = st
                .tensor(&format!("orig.{name}"))
                .map_err(|_| Error::file(path, format!("`{key}` has no `orig.{name}`")))?;
            let delta = view_to_tensor(&view, device).map_err(|e| Error::file(path, e))?;
            let orig = view_to_tensor(&orig, device).map_err(|e| Error::file(path, e))?;
            out.insert(name, &orig, &delta)
                .map_err(|e| Error::file(path, e.to_string()))?;
        }
        Ok(out)
    }
}

/// Replace each edited tensor by orig + Δ. Refuses (changing nothing) unless every current
/// tensor exists, has the stored shape and dtype, and equals the stored original bit for bit.
pub fn apply(weights: &mut HashMap<String, Tensor>, delta: &WeightDelta) -> Result<()> {
    for (name, e) in &delta.entries {
        let cur = current(weights, name, e)?;
        if bits(cur)? != bits(&e.orig)? {
            return Err(Error::param(
                name,
                "current weights are not the delta's original weights (already edited?)",
            ));
        }
    }
    for (name, e) in &delta.entries {
        let dev = weights[name].device().clone();
        let edited = (&e.orig + &e.delta)?.to_device(&dev)?;
        weights.insert(name.clone(), edited);
    }
    Ok(())
}

/// Restore the original bits of each edited tensor. Refuses (changing nothing) unless every
/// current tensor matches orig + Δ within `tol` (|cur - (orig+Δ)| <= tol·(1 + |orig+Δ|)).
pub fn revert(weights: &mut HashMap<String, Tensor>, delta: &WeightDelta, tol: f32) -> Result<()> {
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(Error::param(
            "tol",
            format!("must be finite and >= 0, got {tol}"),
        ));
    }
    for (name, e) in &delta.entries {
        let cur = current(weights, name, e)?
            .to_device(&Device::Cpu)?
            .flatten_all()?;
        let expected = (&e.orig + &e.delta)?
            .to_device(&Device::Cpu)?
            .flatten_all()?;
        let (cur, expected) = (cur.to_vec1::<f32>()?, expected.to_vec1::<f32>()?);
        let bad = cur.iter().zip(&expected).position(|(c, x)| {
            let close = (c - x).abs() <= tol * (1.0 + x.abs()); // false for NaN
            !close
        });
        if let Some(i) = bad {
            return Err(Error::param(
                name,
                format!(
                    "current weights are not original + delta (element {i}: {} vs {}); refusing to revert",
                    cur[i], expected[i]
                ),
            ));
        }
    }
    for (name, e) in &delta.entries {
        let dev = weights[name].device().clone();
        weights.insert(name.clone(), e.orig.to_device(&dev)?);
    }
    Ok(())
}

/// The current tensor `name`, checked against the entry's shape and dtype.
fn current<'a>(
    weights: &'a HashMap<String, Tensor>,
    name: &str,
    e: &DeltaEntry,
) -> Result<&'a Tensor> {
    let cur = weights
        .get(name)
        .ok_or_else(|| Error::param(name, "tensor named in the delta is not in the model"))?;
    if cur.dims() != e.orig.dims() || cur.dtype() != e.orig.dtype() {
        return Err(Error::param(
            name,
            format!(
                "model tensor is {:?} {:?}, delta expects {:?} {:?}",
                cur.dtype(),
                cur.dims(),
                e.orig.dtype(),
                e.orig.dims()
            ),
        ));
    }
    Ok(cur)
}

/// The u32 bit patterns of an F32 tensor (for exact comparisons).
pub fn bits(t: &Tensor) -> Result<Vec<u32>> {
    let v = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.into_iter().map(f32::to_bits).collect())
}

fn view_to_tensor(
    view: &safetensors::tensor::TensorView,
    device: &Device,
) -> std::result::Result<Tensor, String> {
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(format!("tensor dtype {:?}, expected F32", view.dtype()));
    }
    let vals: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(vals, view.shape().to_vec(), device).map_err(|e| e.to_string())
}
