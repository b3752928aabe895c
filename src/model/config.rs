//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.
//!
//! One config struct covers every supported family; the few places where families differ are
//! explicit fields (norm kind, activation, sandwich norms, QK-norm, per-layer attention kind).

use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Model family. Llama also covers Mistral and Qwen2 (same block, optional QKV bias and window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    Llama,
    Gemma3,
    Gpt2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanhGated,
    /// Plain two-layer MLP with tanh-approximated GELU (GPT-2's `gelu_new`).
    GeluTanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    /// x / rms(x) * w.
    Rms,
    /// x / rms(x) * (1 + w), computed in f32 (Gemma).
    RmsOnePlus,
    /// LayerNorm with bias (GPT-2).
    Layer,
}

/// Whether a layer attends to every earlier token or only to a trailing window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttnKind {
    Full,
    Sliding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub norm: NormKind,
    pub activation: Activation,
    /// RoPE base for full-attention layers; `None` for learned absolute positions (GPT-2).
    pub rope_theta: Option<f64>,
    /// RoPE base for sliding-window layers when it differs (Gemma-3: 10,000).
    pub rope_local_theta: Option<f64>,
    /// Number of keys a sliding layer sees, including the query token itself.
    pub sliding_window: Option<usize>,
    pub layer_types: Vec<AttnKind>,
    /// Multiplier of q·k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar^-1/2).
    pub attn_scale: f64,
    /// Multiplier of the embedding output (Gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f64>,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// Gemma's extra norms after the attention and MLP blocks.
    pub sandwich_norm: bool,
    pub tie_embeddings: bool,
    pub max_positions: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Check shapes that the forward relies on; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |n: &str, m: String| Err(Error::Model(format!("config field `{n}`: {m}")));
        if self.num_layers == 0 {
            return bad("num_layers", "must be > 0".into());
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_kv_heads",
                format!(
                    "{} does not divide num_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            );
        }
        if self.layer_types.len() != self.num_layers {
            return bad(
                "layer_types",
                format!(
                    "has {} entries for {} layers",
                    self.layer_types.len(),
                    self.num_layers
                ),
            );
        }
        if self.layer_types.contains(&AttnKind::Sliding) && self.sliding_window.is_none() {
            return bad("sliding_window", "sliding layers need a window".into());
        }
        Ok(())
    }

    /// Read the config from GGUF metadata (llama and gemma3 architectures).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(key)
                .ok_or_else(|| Error::file(path, format!("GGUF metadata key `{key}` is missing")))
        };
        let u = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| Error::file(path, format!("GGUF key `{key}`: {e}")))
        };
        let f = |key: &str| -> Result<f64> {
            let v = get(key)?;
            v.to_f32()
                .map(|x| x as f64)
                .or_else(|_| v.to_f64())
                .map_err(|e| Error::file(path, format!("GGUF key `{key}`: {e}")))
        };
        let arch_name = get("general.architecture")?
            .to_string()
            .map_err(|e| Error::file(path, format!("general.architecture: {e}")))?
            .clone();
        let a = arch_name.as_str();
        let hidden = u(&format!("{a}.embedding_length"))?;
        let layers = u(&format!("{a}.block_count"))?;
        let heads = u(&format!("{a}.attention.head_count"))?;
        let kv_heads = u(&format!("{a}.attention.head_count_kv")).unwrap_or(heads);
        let ff = u(&format!("{a}.feed_forward_length"))?;
        let eps = f(&format!("{a}.attention.layer_norm_rms_epsilon"))?;
        let theta = f(&format!("{a}.rope.freq_base")).unwrap_or(10_000.0);
        let ctx = u(&format!("{a}.context_length")).unwrap_or(2048);
        let bos = u("tokenizer.ggml.bos_token_id").ok().map(|x| x as u32);
        let eos = u("tokenizer.ggml.eos_token_id").ok().map(|x| x as u32);
        let vocab = match md.get("tokenizer.ggml.tokens") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::file(path, format!("tokenizer.ggml.tokens: {e}")))?
                .len(),
            None => u(&format!("{a}.vocab_size"))?,
        };
        let cfg = match a {
            "llama" | "mistral" | "qwen2" => {
                let head_dim = hidden / heads;
                ModelConfig {
                    arch: Arch::Llama,
                    vocab_size: vocab,
                    hidden_size: hidden,
                    intermediate_size: ff,
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim,
                    norm_eps: eps,
                    norm: NormKind::Rms,
                    activation: Activation::Silu,
                    rope_theta: Some(theta),
                    rope_local_theta: None,
                    sliding_window: None,
                    layer_types: vec![AttnKind::Full; layers],
                    attn_scale: 1.0 / (head_dim as f64).sqrt(),
                    embed_scale: None,
                    qkv_bias: a == "qwen2",
                    qk_norm: false,
                    sandwich_norm: false,
                    tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
                    max_positions: ctx,
                    bos_token_id: bos,
                    eos_token_id: eos,
                }
            }
            "gemma3" => {
                let head_dim = u("gemma3.attention.key_length")?;
                let window = u("gemma3.attention.sliding_window")?;
                // Gemma-3 interleaves five sliding-window layers with one global layer.
                let pattern = 6;
                let layer_types = (0..layers)
                    .map(|i| if (i + 1) % pattern == 0 { AttnKind::Full } else { AttnKind::Sliding })
                    .collect();
                ModelConfig {
                    arch: Arch::Gemma3,
                    vocab_size: vocab,
                    hidden_size: hidden,
                    intermediate_size: ff,
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim,
                    norm_eps: eps,
                    norm: NormKind::RmsOnePlus,
                    activation: Activation::GeluTanhGated,
                    rope_theta: Some(theta),
                    rope_local_theta: Some(10_000.0),
                    sliding_window: Some(window),
                    layer_types,
                    // query_pre_attn_scalar equals head_dim for every released Gemma-3 size.
                    attn_scale: 1.0 / (head_dim as f64).sqrt(),
                    embed_scale: Some((hidden as f32).sqrt() as f64),
                    qkv_bias: false,
                    qk_norm: true,
                    sandwich_norm: true,
                    tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
                    max_positions: ctx,
                    bos_token_id: bos,
                    eos_token_id: eos,
                }
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("unsupported GGUF architecture `{other}` (supported: llama, mistral, qwen2, gemma3)"),
                ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a Hugging Face `config.json` (llama, mistral, qwen2, gemma3_text, gpt2).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        let u = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::file(path, format!("missing or non-integer field `{k}`")))
        };
        let fo = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let id = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
        let model_type = v
            .get("model_type")
            .and_then(|x| x.as_str())
            .ok_or_else(|| Error::file(path, "missing field `model_type`"))?;
        let rope_theta = |kind: &str| -> Option<f64> {
            let rp = v.get("rope_parameters");
            rp.and_then(|r| r.get(kind))
                .and_then(|r| r.get("rope_theta"))
                .and_then(|x| x.as_f64())
                .or_else(|| {
                    rp.and_then(|r| r.get("rope_theta"))
                        .and_then(|x| x.as_f64())
                })
                .or_else(|| fo("rope_theta"))
        };
        let tie = v.get("tie_word_embeddings").and_then(|x| x.as_bool());
        let cfg = match model_type {
            "llama" | "mistral" | "qwen2" => {
                let hidden = u("hidden_size")?;
                let heads = u("num_attention_heads")?;
                let layers = u("num_hidden_layers")?;
                let head_dim = u("head_dim").unwrap_or(hidden / heads);
                let window = v.get("sliding_window").and_then(|x| x.as_u64()).map(|x| x as usize);
                let use_window = match model_type {
                    "mistral" => window.is_some(),
                    "qwen2" => v.get("use_sliding_window").and_then(|x| x.as_bool()).unwrap_or(false),
                    _ => false,
                };
                ModelConfig {
                    arch: Arch::Llama,
                    vocab_size: u("vocab_size")?,
                    hidden_size: hidden,
                    intermediate_size: u("intermediate_size")?,
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: u("num_key_value_heads").unwrap_or(heads),
                    head_dim,
                    norm_eps: fo("rms_norm_eps").unwrap_or(1e-6),
                    norm: NormKind::Rms,
                    activation: Activation::Silu,
                    rope_theta: Some(rope_theta("full_attention").unwrap_or(10_000.0)),
                    rope_local_theta: None,
                    sliding_window: if use_window { window } else { None },
                    layer_types: vec![if use_window { AttnKind::Sliding } else { AttnKind::Full }; layers],
                    attn_scale: 1.0 / (head_dim as f64).sqrt(),
                    embed_scale: None,
                    qkv_bias: model_type == "qwen2",
                    qk_norm: false,
                    sandwich_norm: false,
                    tie_embeddings: tie.unwrap_or(false),
                    max_positions: u("max_position_embeddings").unwrap_or(4096),
                    bos_token_id: id("bos_token_id"),
                    eos_token_id: id("eos_token_id"),
                }
            }
            "gemma3_text" | "gemma3" => {
                let hidden = u("hidden_size")?;
                let layers = u("num_hidden_layers")?;
                let heads = u("num_attention_heads")?;
                let head_dim = u("head_dim")?;
                let layer_types = match v.get("layer_types").and_then(|x| x.as_array()) {
                    Some(a) => a
                        .iter()
                        .map(|t| match t.as_str() {
                            Some("sliding_attention") => Ok(AttnKind::Sliding),
                            Some("full_attention") => Ok(AttnKind::Full),
                            other => Err(Error::file(path, format!("unknown layer type {other:?}"))),
                        })
                        .collect::<Result<Vec<_>>>()?,
                    None => {
                        let p = u("sliding_window_pattern").or_else(|_| u("_sliding_window_pattern")).unwrap_or(6);
                        (0..layers)
                            .map(|i| if (i + 1) % p == 0 { AttnKind::Full } else { AttnKind::Sliding })
                            .collect()
                    }
                };
                let qpas = fo("query_pre_attn_scalar").unwrap_or(head_dim as f64);
                ModelConfig {
                    arch: Arch::Gemma3,
                    vocab_size: u("vocab_size")?,
                    hidden_size: hidden,
                    intermediate_size: u("intermediate_size")?,
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: u("num_key_value_heads").unwrap_or(heads),
                    head_dim,
                    norm_eps: fo("rms_norm_eps").unwrap_or(1e-6),
                    norm: NormKind::RmsOnePlus,
                    activation: Activation::GeluTanhGated,
                    rope_theta: Some(rope_theta("full_attention").unwrap_or(1_000_000.0)),
                    rope_local_theta: Some(
                        rope_theta("sliding_attention").or(fo("rope_local_base_freq")).unwrap_or(10_000.0),
                    ),
                    sliding_window: Some(u("sliding_window")?),
                    layer_types,
                    attn_scale: 1.0 / qpas.sqrt(),
                    embed_scale: Some((hidden as f32).sqrt() as f64),
                    qkv_bias: false,
                    qk_norm: true,
                    sandwich_norm: true,
                    tie_embeddings: tie.unwrap_or(true),
                    max_positions: u("max_position_embeddings").unwrap_or(32768),
                    bos_token_id: id("bos_token_id"),
                    eos_token_id: id("eos_token_id"),
                }
            }
            "gpt2" => {
                let hidden = u("n_embd")?;
                let heads = u("n_head")?;
                let layers = u("n_layer")?;
                ModelConfig {
                    arch: Arch::Gpt2,
                    vocab_size: u("vocab_size")?,
                    hidden_size: hidden,
                    intermediate_size: v.get("n_inner").and_then(|x| x.as_u64()).map(|x| x as usize).unwrap_or(4 * hidden),
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: heads,
                    head_dim: hidden / heads,
                    norm_eps: fo("layer_norm_epsilon").unwrap_or(1e-5),
                    norm: NormKind::Layer,
                    activation: Activation::GeluTanh,
                    rope_theta: None,
                    rope_local_theta: None,
                    sliding_window: None,
                    layer_types: vec![AttnKind::Full; layers],
                    attn_scale: 1.0 / ((hidden / heads) as f64).sqrt(),
                    embed_scale: None,
                    qkv_bias: true,
                    qk_norm: false,
                    sandwich_norm: false,
                    tie_embeddings: tie.unwrap_or(true),
                    max_positions: u("n_positions")?,
                    bos_token_id: id("bos_token_id"),
                    eos_token_id: id("eos_token_id"),
                }
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("unsupported model_type `{other}` (supported: llama, mistral, qwen2, gemma3_text, gpt2)"),
                ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
