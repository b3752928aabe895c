//! Streaming uncentred second moment C = E[k kᵀ] of MLP keys over a text corpus.
//!
//! Keys arrive in batches [rows, d_ff] with a row mask (padding rows are 0). The accumulator keeps
//! Σ kkᵀ over unmasked rows and their count; C = Σ kkᵀ / count. Accumulation dtype is a choice
//! (f64 by default: corpora of 10⁵ tokens lose digits in f32). Results are cacheable as
//! safetensors with metadata naming the model, layer and corpus, because MEMIT-style statistics
//! take hours and must never be mixed up between models.

use crate::model::safetensors_bytes::tensors_to_bytes;
use crate::model::stable_matmul::matmul as mm;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where a cached second moment came from; stored as safetensors metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MomentMeta {
    /// sha256 (or other stable id) of the model weights.
    pub model_hash: String,
    /// Transformer layer whose MLP keys were accumulated.
    pub layer: usize,
    /// sha256 of the corpus text / token ids.
    pub corpus_hash: String,
    /// Number of keys (unmasked rows) accumulated.
    pub n: u64,
}

/// Running Σ kkᵀ and count over masked batches of keys.
#[derive(Debug, Clone)]
pub struct MomentAccumulator {
    sum: Tensor,
    count: u64,
    dtype: DType,
}

impl MomentAccumulator {
    /// Empty accumulator for keys of width `d_ff`, accumulating in `dtype` (F32 or F64).
    pub fn new(d_ff: usize, dtype: DType, device: &Device) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::param(
                "dtype",
                format!("accumulate in F32 or F64, not {dtype:?}"),
            ));
        }
        if d_ff == 0 {
            return Err(Error::param("d_ff", "must be > 0"));
        }
        Ok(Self {
            sum: Tensor::zeros((d_ff, d_ff), dtype, device)?,
            count: 0,
            dtype,
        })
    }

    /// Add a batch of keys `[rows, d_ff]`; `mask` `[rows]` holds 1 for real rows, 0 for padding.
    pub fn update(&mut self, keys: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        let (rows, d_ff) = keys.dims2()?;
        if d_ff != self.sum.dim(0)? {
            return Err(Error::param(
                "keys",
                format!("width {d_ff}, accumulator expects {}", self.sum.dim(0)?),
            ));
        }
        let k = keys.to_dtype(self.dtype)?;
        let (k, n) = match mask {
            Some(m) => {
                let m = m.flatten_all()?.to_dtype(self.dtype)?;
                if m.dim(0)? != rows {
                    return Err(Error::param(
                        "mask",
                        format!("{} entries for {rows} rows", m.dim(0)?),
                    ));
                }
                let vals = m.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                if vals.iter().any(|&v| v != 0.0 && v != 1.0) {
                    return Err(Error::param("mask", "entries must be 0 or 1"));
                }
                let n = vals.iter().filter(|&&v| v == 1.0).count() as u64;
                (k.broadcast_mul(&m.unsqueeze(1)?)?, n)
            }
            None => (k, rows as u64),
        };
        self.sum = (&self.sum + mm(&k.t()?, &k)?)?;
        self.count += n;
        Ok(())
    }

    /// Number of unmasked keys seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// C = Σ kkᵀ / count, in the accumulation dtype.
    pub fn moment(&self) -> Result<Tensor> {
        if self.count == 0 {
            return Err(Error::Numerical("second moment of zero keys".into()));
        }
        Ok((&self.sum / self.count as f64)?)
    }

    /// Write C and its provenance to `path` (atomically). `meta.n` is overwritten by the count.
    pub fn save(&self, path: &Path, meta: &MomentMeta) -> Result<()> {
        let c = self
            .moment()?
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?;
        let meta = MomentMeta {
            n: self.count,
            ..meta.clone()
        };
        let header = HashMap::from([("biaslens".to_string(), serde_json::to_string(&meta)?)]);
        let t = HashMap::from([("second_moment".to_string(), c)]);
        let bytes = tensors_to_bytes(&t, &header).map_err(|e| Error::file(path, e))?;
        crate::io::write_atomic(path, &bytes)
    }
}

/// Load a cached C [d_ff, d_ff] (f64) and its metadata; refuses files without biaslens metadata.
pub fn load_moment(path: &Path, device: &Device) -> Result<(Tensor, MomentMeta)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e.to_string()))?;
    let (st, meta_json, _) = crate::io::biaslens_safetensors(path, &bytes)?;
    let meta: MomentMeta = serde_json::from_str(&meta_json)
        .map_err(|e| Error::file(path, format!("bad `biaslens` metadata: {e}")))?;
    let view = st
        .tensor("second_moment")
        .map_err(|e| Error::file(path, format!("tensor `second_moment`: {e}")))?;
    if view.dtype() != safetensors::Dtype::F64 || view.shape().len() != 2 {
        return Err(Error::file(
            path,
            "`second_moment` must be a 2-d F64 tensor",
        ));
    }
    let vals: Vec<f64> = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let shape = (view.shape()[0], view.shape()[1]);
    Ok((Tensor::from_vec(vals, shape, device)?, meta))
}

/// Reference: Σ kkᵀ / count over the same batches in nalgebra f64 (mask: true = real row).
pub fn reference_moment(batches: &[(DMatrix<f64>, Option<Vec<bool>>)]) -> Result<DMatrix<f64>> {
    let d_ff = batches
        .first()
        .map(|b| b.0.ncols())
        .ok_or_else(|| Error::param("batches", "empty"))?;
    let mut sum = DMatrix::<f64>::zeros(d_ff, d_ff);
    let mut count = 0u64;
    for (keys, mask) in batches {
        if keys.ncols() != d_ff {
            return Err(Error::param("batches", "inconsistent key width"));
        }
        for i in 0..keys.nrows() {
            if mask
                .as_ref()
                .is_none_or(|m| m.get(i).copied().unwrap_or(false))
            {
                let row = keys.row(i);
                sum += row.transpose() * row;
                count += 1;
            }
        }
    }
    if count == 0 {
        return Err(Error::Numerical("second moment of zero keys".into()));
    }
    Ok(sum / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal tensors and metadata give equal bytes, whatever order the HashMaps iterate in, and
    /// the file still reads back with its metadata.
    #[test]
    fn equal_inputs_give_equal_files() {
        let build = || {
            let t: HashMap<String, Tensor> = (0..4)
                .map(|i| {
                    let v = Tensor::new(&[i as f32, 1.0, 2.0], &Device::Cpu).unwrap();
                    (format!("t{i}"), v)
                })
                .collect();
            let h: HashMap<String, String> = (0..8)
                .map(|i| (format!("key{i}"), format!("value {i}")))
                .collect();
            tensors_to_bytes(&t, &h).unwrap()
        };
        let first = build();
        for _ in 0..5 {
            assert_eq!(build(), first);
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let m = meta.metadata().as_ref().unwrap();
        assert_eq!(m["key3"], "value 3");
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("t2").unwrap().shape(), &[3]);
    }
}
