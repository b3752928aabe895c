//! Serialising tensors to safetensors bytes that depend on the inputs only (sorted header keys),
//! for the model export, the edit deltas and the cached corpus statistics.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Serialise CPU tensors (F32 or F64) with a string metadata map to safetensors bytes.
pub fn tensors_to_bytes(
    tensors: &HashMap<String, Tensor>,
    header: &HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu).map_err(|e| e.to_string())?;
        let flat = t.flatten_all().map_err(|e| e.to_string())?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                flat.to_vec1::<f32>()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            DType::F64 => (
                safetensors::Dtype::F64,
                flat.to_vec1::<f64>()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            other => return Err(format!("tensor `{name}`: unsupported dtype {other:?}")),
        };
        owned.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, &Some(header.clone())).map_err(|e| e.to_string())?;
    canonical_header(bytes)
}

/// The same file with the JSON header's object keys in sorted order (the `__metadata__` map is
/// a HashMap, written in a per-process random order): equal inputs give equal bytes. Sorting
/// keeps the compact JSON's length, so the header is rewritten in place, padding kept.
fn canonical_header(mut bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let short = || "safetensors file shorter than its header".to_string();
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .ok_or_else(short)?
        .try_into()
        .map_err(|_| short())?;
    let n = u64::from_le_bytes(len_bytes) as usize;
    let raw = bytes.get(8..8 + n).ok_or_else(short)?;
    let text = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(text.trim_end()).map_err(|e| e.to_string())?;
    let sorted = serde_json::to_string(&sort_keys(value)).map_err(|e| e.to_string())?;
    if sorted.len() > n {
        return Err(format!(
            "sorted header is {} bytes, the slot {n}",
            sorted.len()
        ));
    }
    let slot = &mut bytes[8..8 + n];
    slot.fill(b' ');
    slot[..sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(bytes)
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}
