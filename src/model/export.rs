//! Write a model (possibly edited) as a Hugging Face directory that transformers loads.
//!
//! The directory holds config.json, generation_config.json, model.safetensors (HF tensor names,
//! f32, lm_head omitted when tied), the tokenizer files and `export.json` (which marks it as a
//! biaslens output that `--force` may replace); optionally `model.gguf` for llama.cpp.
//! Everything is written into a temporary sibling directory that is renamed into place at the
//! end ([`write_dir_atomically`]), so a crash never leaves half a model, and the base model's
//! own path is never written to.

use crate::model::config::{Activation, Arch, AttnKind, ModelConfig, NormKind};
use crate::model::weights::WeightMap;
use crate::model::Model;
use crate::{Error, Result};
use candle_core::DType;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// How an export treats an existing output and which extra formats it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Replace an existing output directory (atomically).
    pub force: bool,
    /// Also write `model.gguf` (f32) for llama.cpp.
    pub gguf: bool,
}

/// The Hugging Face `config.json` for `cfg`, chosen so that transformers builds the same
/// network and [`ModelConfig::from_hf_json`] reads back an equal config.
pub fn hf_config_json(cfg: &ModelConfig) -> Result<Value> {
    cfg.validate()?;
    let rope = |theta: Option<f64>, what: &str| {
        theta.ok_or_else(|| Error::Model(format!("config has no {what} RoPE base")))
    };
    let mut v = match cfg.arch {
        Arch::Llama => {
            check(cfg, NormKind::Rms, Activation::Silu)?;
            // ModelConfig folds Mistral (sliding window) and Qwen2 (QKV bias) into Llama.
            let sliding = cfg.layer_types.contains(&AttnKind::Sliding);
            if sliding && cfg.layer_types.contains(&AttnKind::Full) {
                return Err(Error::Model(
                    "llama-family export needs all layers full or all sliding".into(),
                ));
            }
            if cfg.qkv_bias && sliding {
                return Err(Error::Model(
                    "a sliding-window model with QKV bias has no HF model type here".into(),
                ));
            }
            let (model_type, class) = match (cfg.qkv_bias, sliding) {
                (true, _) => ("qwen2", "Qwen2ForCausalLM"),
                (false, true) => ("mistral", "MistralForCausalLM"),
                (false, false) => ("llama", "LlamaForCausalLM"),
            };
            let theta = rope(cfg.rope_theta, "global")?;
            let mut v = json!({
                "architectures": [class],
                "model_type": model_type,
                "hidden_act": "silu",
                "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size,
                "num_hidden_layers": cfg.num_layers,
                "num_attention_heads": cfg.num_heads,
                "num_key_value_heads": cfg.num_kv_heads,
                "head_dim": cfg.head_dim,
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": theta},
                "max_position_embeddings": cfg.max_positions,
                "attention_bias": cfg.qkv_bias,
                "mlp_bias": false,
                "attention_dropout": 0.0,
            });
            if model_type == "qwen2" {
                v["use_sliding_window"] = json!(false);
                v["sliding_window"] = Value::Null;
            }
            if sliding {
                v["sliding_window"] = json!(cfg.sliding_window);
            }
            v
        }
        Arch::Gemma3 => {
            check(cfg, NormKind::RmsOnePlus, Activation::GeluTanhGated)?;
            let global = rope(cfg.rope_theta, "global")?;
            let local = rope(cfg.rope_local_theta, "local")?;
            let layer_types: Vec<&str> = cfg
                .layer_types
                .iter()
                .map(|k| match k {
                    AttnKind::Full => "full_attention",
                    AttnKind::Sliding => "sliding_attention",
                })
                .collect();
            // attn_scale = query_pre_attn_scalar^-1/2; recover the scalar exactly when it is an integer.
            let qpas = 1.0 / (cfg.attn_scale * cfg.attn_scale);
            let qpas = if (qpas - qpas.round()).abs() < 1e-6 * qpas {
                json!(qpas.round() as u64)
            } else {
                json!(qpas)
            };
            json!({
                "architectures": ["Gemma3ForCausalLM"],
                "model_type": "gemma3_text",
                "hidden_activation": "gelu_pytorch_tanh",
                "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size,
                "num_hidden_layers": cfg.num_layers,
                "num_attention_heads": cfg.num_heads,
                "num_key_value_heads": cfg.num_kv_heads,
                "head_dim": cfg.head_dim,
                "rms_norm_eps": cfg.norm_eps,
                "layer_types": layer_types,
                "sliding_window": cfg.sliding_window,
                "query_pre_attn_scalar": qpas,
                // transformers < 5 reads rope_theta / rope_local_base_freq; 5 reads rope_parameters.
                "rope_theta": global,
                "rope_local_base_freq": local,
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": global},
                    "sliding_attention": {"rope_type": "default", "rope_theta": local},
                },
                "max_position_embeddings": cfg.max_positions,
                "attention_bias": false,
                "attention_dropout": 0.0,
                "attn_logit_softcapping": Value::Null,
                "final_logit_softcapping": Value::Null,
                "use_bidirectional_attention": false,
            })
        }
        Arch::Gpt2 => {
            check(cfg, NormKind::Layer, Activation::GeluTanh)?;
            if cfg.num_heads * cfg.head_dim != cfg.hidden_size || cfg.num_kv_heads != cfg.num_heads
            {
                return Err(Error::Model(
                    "GPT-2 needs num_heads * head_dim = hidden_size and no GQA".into(),
                ));
            }
            json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "activation_function": "gelu_new",
                "n_embd": cfg.hidden_size,
                "n_inner": cfg.intermediate_size,
                "n_layer": cfg.num_layers,
                "n_head": cfg.num_heads,
                "n_positions": cfg.max_positions,
                "layer_norm_epsilon": cfg.norm_eps,
                "scale_attn_weights": true,
                "scale_attn_by_inverse_layer_idx": false,
                "reorder_and_upcast_attn": false,
                "attn_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "resid_pdrop": 0.0,
            })
        }
    };
    v["vocab_size"] = json!(cfg.vocab_size);
    v["tie_word_embeddings"] = json!(cfg.tie_embeddings);
    v["bos_token_id"] = json!(cfg.bos_token_id);
    v["eos_token_id"] = json!(cfg.eos_token_id);
    v["torch_dtype"] = json!("float32");
    v["dtype"] = json!("float32");
    v["use_cache"] = json!(true);
    Ok(v)
}

/// Refuse configs whose norm or activation the chosen HF class would not reproduce.
fn check(cfg: &ModelConfig, norm: NormKind, act: Activation) -> Result<()> {
    if cfg.norm != norm || cfg.activation != act {
        return Err(Error::Model(format!(
            "{:?} export expects {norm:?} norm and {act:?} activation, config has {:?} and {:?}",
            cfg.arch, cfg.norm, cfg.activation
        )));
    }
    Ok(())
}

/// `generation_config.json`: the special ids transformers' `generate` needs.
pub fn generation_config_json(cfg: &ModelConfig) -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "use_cache": true,
    })
}

/// Whether `name` is a parameter of an HF model of family `arch`. A loaded HF directory may hold
/// other tensors beside the weights (test fixtures keep expected activations there); those are
/// not part of the model and are not exported.
pub fn is_model_parameter(name: &str, arch: Arch) -> bool {
    let prefix = if arch == Arch::Gpt2 {
        "transformer."
    } else {
        "model."
    };
    name == "lm_head.weight" || name.starts_with(prefix)
}

/// Write the HF model files for `model` with `weights` into the existing directory `dir`
/// (not atomic by itself: callers go through [`write_dir_atomically`]).
pub fn write_hf_files(
    model: &Model,
    weights: &WeightMap,
    dir: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    let cfg = model.config();
    crate::io::write_json_atomic(&dir.join("config.json"), &hf_config_json(cfg)?)?;
    crate::io::write_json_atomic(
        &dir.join("generation_config.json"),
        &generation_config_json(cfg),
    )?;
    let mut tensors = HashMap::new();
    for (name, t) in weights {
        if !is_model_parameter(name, cfg.arch) || (cfg.tie_embeddings && name == "lm_head.weight") {
            continue;
        }
        if t.dtype() != DType::F32 {
            return Err(Error::param(
                name,
                format!("export expects F32 weights, got {:?}", t.dtype()),
            ));
        }
        tensors.insert(name.clone(), t.clone());
    }
    let st = dir.join("model.safetensors");
    let header = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = crate::model::safetensors_bytes::tensors_to_bytes(&tensors, &header)
        .map_err(|e| Error::file(&st, e))?;
    crate::io::write_atomic(&st, &bytes)?;
    drop(bytes);
    if let Some(tk) = &model.tokenizer {
        tk.save_hf(dir)?;
    }
    if opts.gguf {
        crate::model::gguf_export::write_gguf(model, weights, &dir.join("model.gguf"))?;
    }
    let marker = json!({
        "written_by": "biaslens",
        "biaslens_version": env!("CARGO_PKG_VERSION"),
        "source_model": model.info.name,
    });
    crate::io::write_json_atomic(&dir.join(EXPORT_MARKER), &marker)
}

/// Export `model` with `weights` as a Hugging Face directory at `out` (see module docs).
pub fn write_hf_dir(
    model: &Model,
    weights: &WeightMap,
    out: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    write_dir_atomically(out, &model.info.path, opts.force, |dir| {
        write_hf_files(model, weights, dir, opts)
    })
}

/// Files whose presence marks a directory as a model biaslens wrote, which `--force` may
/// replace: `export.json` (every export) and `edit.json` (edits, also those written before
/// `export.json` existed).
pub const MODEL_DIR_MARKERS: &[&str] = &[EXPORT_MARKER, "edit.json"];

/// The small record every exported model directory carries (see [`MODEL_DIR_MARKERS`]).
pub const EXPORT_MARKER: &str = "export.json";

/// Create directory `out` by letting `fill` write into a temporary sibling, then renaming it
/// into place. The rules of [`crate::io::check_output_dir`] apply, with `base` (the model being
/// exported) protected and [`MODEL_DIR_MARKERS`] marking what `force` may replace; the old
/// directory is swapped out and then deleted. On any error from `fill` the temporary directory
/// is removed and `out` is left as it was.
pub fn write_dir_atomically(
    out: &Path,
    base: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    crate::io::check_output_dir(out, force, MODEL_DIR_MARKERS, &[base])?;
    let out_abs = crate::io::absolute(out)?;
    let parent = out_abs
        .parent()
        .ok_or_else(|| Error::file(out, "has no parent directory"))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e.to_string()))?;
    let tmp = crate::io::staging_dir(&out_abs)?;
    std::fs::create_dir(&tmp).map_err(|e| Error::file(&tmp, e.to_string()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if !out_abs.exists() {
        return std::fs::rename(&tmp, &out_abs).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            Error::file(out, e.to_string())
        });
    }
    // Replace: move the old one aside, move the new one in, then delete the old one.
    let tmp_name = tmp.file_name().unwrap_or_default().to_string_lossy();
    let old = parent.join(tmp_name.replacen(".tmp-", ".old-", 1));
    if let Err(e) = std::fs::rename(&out_abs, &old) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::file(
            out,
            format!("moving the old directory aside: {e}"),
        ));
    }
    if let Err(e) = std::fs::rename(&tmp, &out_abs) {
        let _ = std::fs::rename(&old, &out_abs);
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::file(out, e.to_string()));
    }
    std::fs::remove_dir_all(&old)
        .map_err(|e| Error::file(&old, format!("removing the replaced directory: {e}")))
}
