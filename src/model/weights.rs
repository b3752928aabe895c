//! Loading weights into one map of Hugging Face tensor names and conventions.
//!
//! Whatever the source (GGUF from llama.cpp, or a Hugging Face safetensors directory), the result is
//! the tensors transformers would hold in float32: GGUF tensors are dequantised, llama q/k rows are
//! un-permuted back from llama.cpp's interleaved-RoPE order, and Gemma norm weights get llama.cpp's
//! baked-in `+1` removed. Keeping HF names and conventions makes export to HF trivial.

use super::config::{Arch, ModelConfig};
use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

pub type WeightMap = BTreeMap<String, Tensor>;

pub use super::names::gguf_to_hf_name;

/// Undo llama.cpp's permutation of q/k rows (it reorders each head for interleaved RoPE).
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Dequantise every tensor of a GGUF file to f32 with HF names (see module docs).
pub fn load_gguf(
    content: &gguf_file::Content,
    reader: &mut (impl std::io::Read + std::io::Seek),
    cfg: &ModelConfig,
    path: &Path,
    device: &Device,
) -> Result<WeightMap> {
    let mut map = WeightMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = gguf_to_hf_name(name, cfg.arch) else {
            // Tensors with no HF counterpart (e.g. rope_freqs) are not needed by the forward.
            if name.starts_with("blk.") || name.contains("embd") {
                return Err(Error::file(
                    path,
                    format!("unrecognised GGUF tensor `{name}`"),
                ));
            }
            continue;
        };
        let q = content.tensor(reader, name, device).map_err(|e| {
            Error::file(
                path,
                format!("reading tensor `{name}`: {e} (truncated file?)"),
            )
        })?;
        let mut t = q
            .dequantize(device)
            .map_err(|e| Error::file(path, format!("dequantising `{name}`: {e}")))?
            .to_dtype(DType::F32)?;
        // llama.cpp permutes q/k rows for llama and mistral, not for qwen2 (the only family with QKV bias).
        if cfg.arch == Arch::Llama && !cfg.qkv_bias {
            if hf.ends_with("q_proj.weight") {
                t = unpermute_rows(&t, cfg.num_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute_rows(&t, cfg.num_kv_heads)?;
            }
        }
        if cfg.arch == Arch::Gemma3 && hf.ends_with("norm.weight") {
            t = (t - 1.0)?;
        }
        map.insert(hf, t);
    }
    Ok(map)
}

/// Load every `*.safetensors` file of a Hugging Face directory as f32.
pub fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<WeightMap> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::file(dir, "no *.safetensors file in this directory"));
    }
    let mut map = WeightMap::new();
    for f in files {
        let tensors = candle_core::safetensors::load(&f, device)
            .map_err(|e| Error::file(&f, format!("reading safetensors: {e}")))?;
        for (k, v) in tensors {
            if k.starts_with("delta.") || k.starts_with("orig.") {
                continue;
            }
            map.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    Ok(map)
}

/// Fetch a tensor by HF name with a clear error when it is missing or has the wrong shape.
pub fn take(map: &WeightMap, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = map
        .get(name)
        .ok_or_else(|| Error::Model(format!("missing tensor `{name}`")))?;
    if t.dims() != shape {
        return Err(Error::Model(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            t.dims()
        )));
    }
    Ok(t.clone())
}
