//! Write a model as an f32 GGUF file that llama.cpp (and `Model::load_gguf`) reads.
//!
//! This is the inverse of `model::weights::load_gguf`: HF names become llama.cpp names, llama
//! q/k rows are permuted back into llama.cpp's interleaved-RoPE order, and Gemma norm weights
//! get llama.cpp's baked-in `+1` back. Architecture metadata comes from the config; when the
//! base model was itself a GGUF, its `general.*`, `tokenizer.*` and architecture keys are copied
//! first (so the tokenizer and any keys this crate does not model survive), then the
//! architecture keys are overwritten from the config.

use crate::model::config::{Arch, AttnKind, ModelConfig};
use crate::model::weights::WeightMap;
use crate::model::Model;
use crate::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use gguf_file::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The llama.cpp architecture name for `cfg`, or an error for configs llama.cpp would misread.
pub fn gguf_arch(cfg: &ModelConfig) -> Result<&'static str> {
    match cfg.arch {
        Arch::Llama if cfg.qkv_bias || cfg.layer_types.contains(&AttnKind::Sliding) => {
            Err(Error::Model(
                "GGUF export supports plain llama (no QKV bias, no sliding window) and gemma3"
                    .into(),
            ))
        }
        Arch::Llama => Ok("llama"),
        Arch::Gemma3 => Ok("gemma3"),
        Arch::Gpt2 => Err(Error::Model("GGUF export does not support GPT-2".into())),
    }
}

pub use super::names::hf_to_gguf_name;

/// Reorder each head's q/k rows from HF's half-split RoPE layout to llama.cpp's interleaved one.
fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// The llama.cpp-convention tensors of `weights`, by GGUF name, f32 on the CPU.
pub fn gguf_tensors(cfg: &ModelConfig, weights: &WeightMap) -> Result<BTreeMap<String, Tensor>> {
    gguf_arch(cfg)?;
    let mut out = BTreeMap::new();
    for (hf, t) in weights {
        if !crate::model::export::is_model_parameter(hf, cfg.arch)
            || (cfg.tie_embeddings && hf == "lm_head.weight")
        {
            continue;
        }
        let name = hf_to_gguf_name(hf, cfg.arch)
            .ok_or_else(|| Error::param(hf, "tensor has no llama.cpp name for GGUF export"))?;
        let mut t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if cfg.arch == Arch::Llama {
            if hf.ends_with("q_proj.weight") {
                t = permute_rows(&t, cfg.num_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = permute_rows(&t, cfg.num_kv_heads)?;
            }
        }
        if cfg.arch == Arch::Gemma3 && hf.ends_with("norm.weight") {
            t = (t + 1.0)?;
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// GGUF metadata for `cfg`, on top of the copyable keys of `source` (the base model's GGUF).
pub fn gguf_metadata(
    cfg: &ModelConfig,
    name: &str,
    source: Option<&gguf_file::Content>,
) -> Result<BTreeMap<String, Value>> {
    let a = gguf_arch(cfg)?;
    let mut md = BTreeMap::new();
    if let Some(src) = source {
        for (k, v) in &src.metadata {
            let same_arch = k.starts_with(&format!("{a}."));
            let skip = matches!(
                k.as_str(),
                "general.file_type" | "general.quantization_version"
            );
            if !skip && (k.starts_with("tokenizer.") || k.starts_with("general.") || same_arch) {
                md.insert(k.clone(), v.clone());
            }
        }
    }
    let u = |x: usize| Value::U32(x as u32);
    let mut set = |k: &str, v: Value| {
        md.insert(k.to_string(), v);
    };
    set("general.architecture", Value::String(a.into()));
    set("general.name", Value::String(name.into()));
    set("general.file_type", Value::U32(0)); // all tensors F32
    set(&format!("{a}.context_length"), u(cfg.max_positions));
    set(&format!("{a}.embedding_length"), u(cfg.hidden_size));
    set(&format!("{a}.block_count"), u(cfg.num_layers));
    set(
        &format!("{a}.feed_forward_length"),
        u(cfg.intermediate_size),
    );
    set(&format!("{a}.attention.head_count"), u(cfg.num_heads));
    set(&format!("{a}.attention.head_count_kv"), u(cfg.num_kv_heads));
    set(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.norm_eps as f32),
    );
    set(&format!("{a}.attention.key_length"), u(cfg.head_dim));
    set(&format!("{a}.attention.value_length"), u(cfg.head_dim));
    set(&format!("{a}.rope.dimension_count"), u(cfg.head_dim));
    set(&format!("{a}.vocab_size"), u(cfg.vocab_size));
    if let Some(theta) = cfg.rope_theta {
        set(&format!("{a}.rope.freq_base"), Value::F32(theta as f32));
    }
    if cfg.arch == Arch::Gemma3 {
        let window = cfg
            .sliding_window
            .ok_or_else(|| Error::Model("gemma3 config has no sliding window".into()))?;
        set("gemma3.attention.sliding_window", u(window));
    }
    if source.is_none() {
        if let Some(id) = cfg.bos_token_id {
            set("tokenizer.ggml.bos_token_id", Value::U32(id));
        }
        if let Some(id) = cfg.eos_token_id {
            set("tokenizer.ggml.eos_token_id", Value::U32(id));
        }
    }
    Ok(md)
}

/// Write `weights` (HF convention) for `model`'s config as an f32 GGUF at `path`.
/// Tokenizer metadata is copied from the base model when it was a GGUF; otherwise the file
/// carries none (llama.cpp then needs a tokenizer from elsewhere).
pub fn write_gguf(model: &Model, weights: &WeightMap, path: &Path) -> Result<()> {
    let cfg = model.config();
    gguf_arch(cfg)?;
    let src_path = &model.info.path;
    let source = if src_path.is_file() {
        let mut f = std::io::BufReader::new(
            std::fs::File::open(src_path).map_err(|e| Error::file(src_path, e.to_string()))?,
        );
        let content = gguf_file::Content::read(&mut f).map_err(|e| {
            Error::file(
                src_path,
                format!("re-reading the base GGUF's metadata: {e}"),
            )
        })?;
        Some(content)
    } else {
        None
    };
    let md = gguf_metadata(cfg, &model.info.name, source.as_ref())?;
    let tensors = gguf_tensors(cfg, weights)?;
    let mut q = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        q.push((name.as_str(), QTensor::quantize(t, GgmlDType::F32)?));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (*k, v)).collect();
    let file = std::fs::File::create(path).map_err(|e| Error::file(path, e.to_string()))?;
    let mut w = std::io::BufWriter::new(file);
    gguf_file::write(&mut w, &md_refs, &t_refs)
        .map_err(|e| Error::file(path, format!("writing GGUF: {e}")))?;
    use std::io::Write;
    w.flush().map_err(|e| Error::file(path, e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_inverse_of_loader_unpermute() {
        // The loader's unpermute: reshape (heads, hd/2, 2, in), swap axes 1 and 2.
        let (heads, hd, inp) = (3, 8, 5);
        let w = Tensor::arange(0f32, (heads * hd * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, inp))
            .unwrap();
        let p = permute_rows(&w, heads).unwrap();
        let back = p
            .reshape((heads, hd / 2, 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let back = back.reshape((heads * hd, inp)).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
