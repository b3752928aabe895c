//! Weights wiring: building a [`Transformer`] from HF-named tensors (GPT-2's Conv1D layout
//! included), and the weight form the eval paths use: reduced-precision projections.

use super::config::{Arch, ModelConfig, NormKind};
use super::layer::{Layer, Linear};
use super::norm::Norm;
use super::transformer::Transformer;
use super::weights::{take, WeightMap};
use crate::{Error, Result};
use candle_core::{DType, Device};
use std::sync::Arc;

impl Transformer {
    /// Build the model from HF-named f32 tensors.
    pub fn from_weights(cfg: ModelConfig, w: &WeightMap, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let (h, kvh, hd, ff) = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let eps = cfg.norm_eps;
        let norm = |name: &str, width: usize| -> Result<Norm> {
            let bias = if cfg.norm == NormKind::Layer {
                Some(take(w, &format!("{name}.bias"), &[width])?)
            } else {
                None
            };
            Norm::new(
                take(w, &format!("{name}.weight"), &[width])?,
                bias,
                cfg.norm,
                eps,
            )
        };
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: take(w, &format!("{name}.weight"), &[out, inp])?,
                bias: if bias {
                    Some(take(w, &format!("{name}.bias"), &[out])?)
                } else {
                    None
                },
                bf16x3: None,
            })
        };
        // GPT-2 stores Conv1D weights as [in, out]; transpose to HF Linear layout.
        let conv1d = |name: &str, inp: usize, out: usize| -> Result<Linear> {
            Ok(Linear {
                weight: take(w, &format!("{name}.weight"), &[inp, out])?
                    .t()?
                    .contiguous()?,
                bias: Some(take(w, &format!("{name}.bias"), &[out])?),
                bf16x3: None,
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let (embed, pos_embed, final_norm, lm_head);
        match cfg.arch {
            Arch::Gpt2 => {
                embed = take(w, "transformer.wte.weight", &[cfg.vocab_size, d])?;
                pos_embed = Some(take(w, "transformer.wpe.weight", &[cfg.max_positions, d])?);
                for l in 0..cfg.num_layers {
                    let p = format!("transformer.h.{l}");
                    let qkv = conv1d(&format!("{p}.attn.c_attn"), d, 3 * d)?;
                    let bias = qkv
                        .bias
                        .clone()
                        .ok_or_else(|| Error::Model("c_attn bias".into()))?;
                    let part = |i: usize| -> Result<Linear> {
                        Ok(Linear {
                            weight: qkv.weight.narrow(0, i * d, d)?.contiguous()?,
                            bias: Some(bias.narrow(0, i * d, d)?.contiguous()?),
                            bf16x3: None,
                        })
                    };
                    layers.push(Layer {
                        attn_norm: norm(&format!("{p}.ln_1"), d)?,
                        q: part(0)?,
                        k: part(1)?,
                        v: part(2)?,
                        o: conv1d(&format!("{p}.attn.c_proj"), d, d)?,
                        q_norm: None,
                        k_norm: None,
                        post_attn_norm: None,
                        mlp_norm: norm(&format!("{p}.ln_2"), d)?,
                        gate: None,
                        up: conv1d(&format!("{p}.mlp.c_fc"), d, ff)?,
                        down: conv1d(&format!("{p}.mlp.c_proj"), ff, d)?,
                        post_mlp_norm: None,
                    });
                }
                final_norm = norm("transformer.ln_f", d)?;
                lm_head = match w.get("lm_head.weight") {
                    Some(t) if !cfg.tie_embeddings => t.clone(),
                    _ => embed.clone(),
                };
            }
            Arch::Llama | Arch::Gemma3 => {
                embed = take(w, "model.embed_tokens.weight", &[cfg.vocab_size, d])?;
                pos_embed = None;
                let gemma = cfg.arch == Arch::Gemma3;
                for l in 0..cfg.num_layers {
                    let p = format!("model.layers.{l}");
                    let b = cfg.qkv_bias;
                    layers.push(Layer {
                        attn_norm: norm(&format!("{p}.input_layernorm"), d)?,
                        q: linear(&format!("{p}.self_attn.q_proj"), h * hd, d, b)?,
                        k: linear(&format!("{p}.self_attn.k_proj"), kvh * hd, d, b)?,
                        v: linear(&format!("{p}.self_attn.v_proj"), kvh * hd, d, b)?,
                        o: linear(&format!("{p}.self_attn.o_proj"), d, h * hd, false)?,
                        q_norm: if cfg.qk_norm {
                            Some(norm(&format!("{p}.self_attn.q_norm"), hd)?)
                        } else {
                            None
                        },
                        k_norm: if cfg.qk_norm {
                            Some(norm(&format!("{p}.self_attn.k_norm"), hd)?)
                        } else {
                            None
                        },
                        post_attn_norm: if gemma {
                            Some(norm(&format!("{p}.post_attention_layernorm"), d)?)
                        } else {
                            None
                        },
                        mlp_norm: if gemma {
                            norm(&format!("{p}.pre_feedforward_layernorm"), d)?
                        } else {
                            norm(&format!("{p}.post_attention_layernorm"), d)?
                        },
                        gate: Some(linear(&format!("{p}.mlp.gate_proj"), ff, d, false)?),
                        up: linear(&format!("{p}.mlp.up_proj"), ff, d, false)?,
                        down: linear(&format!("{p}.mlp.down_proj"), d, ff, false)?,
                        post_mlp_norm: if gemma {
                            Some(norm(&format!("{p}.post_feedforward_layernorm"), d)?)
                        } else {
                            None
                        },
                    });
                }
                final_norm = norm("model.norm", d)?;
                lm_head = match w.get("lm_head.weight") {
                    Some(t) if !cfg.tie_embeddings => t.clone(),
                    Some(t) if t.dims() == [cfg.vocab_size, d] && !cfg.tie_embeddings => t.clone(),
                    _ => embed.clone(),
                };
            }
        }
        Ok(Transformer {
            cfg,
            embed,
            pos_embed,
            layers,
            final_norm,
            lm_head,
            device: device.clone(),
            work: Arc::default(),
            stop: Default::default(),
            // An `mkl` build has given up machine-independent bits already (model::mkl), so it
            // runs the fused kernels everywhere; the default build only on the eval path.
            fast_kernels: cfg!(feature = "mkl"),
        })
    }
}

// --- Reduced-precision weights (issue 7, item 4) ---------------------------------------------
impl Transformer {
    /// The same model with every projection (q, k, v, o, gate, up, down) stored in `dtype`
    /// (BF16 or F16 halves their memory). Embeddings, norms, the unembedding, softmax and the
    /// metric stay f32, so only the projections' matmuls lose precision; docs/cuda.md records the
    /// measured deviation from the f32 path. Apply weight edits before casting.
    pub fn with_weight_dtype(&self, dtype: DType) -> Result<Transformer> {
        if !matches!(dtype, DType::BF16 | DType::F16 | DType::F32) {
            return Err(Error::param(
                "weight dtype",
                format!("{dtype:?}: expected bf16, f16 or f32"),
            ));
        }
        let cast = |l: &Linear| -> Result<Linear> {
            Ok(Linear {
                weight: l.weight.to_dtype(dtype)?,
                bias: l.bias.clone(),
                bf16x3: None,
            })
        };
        let mut out = self.clone();
        for layer in &mut out.layers {
            for lin in layer.linears_mut() {
                *lin = cast(lin)?;
            }
        }
        Ok(out)
    }
}

// --- Compensated bf16 products (issue 13) ----------------------------------------------------
impl Transformer {
    /// Split every f32 CPU projection weight for the compensated bf16 products
    /// (`model::bf16x3`; the `mkl` feature): the eval path (`fast_kernels`) then runs q, k, v,
    /// o, gate, up and down as three bf16 products with f32 accumulation (about 2⁻¹⁸ relative
    /// error per product instead of f32's 2⁻²⁴), which AMX runs faster than f32. The
    /// unembedding keeps f32. Returns how many weights were split; a weight replaced later is
    /// read in f32 again (the split remembers its source tensor).
    pub fn use_bf16x3_products(&mut self) -> Result<usize> {
        let mut n = 0;
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                lin.bf16x3 = super::bf16x3::SplitWeight::new(&lin.weight)?.map(std::sync::Arc::new);
                n += usize::from(lin.bf16x3.is_some());
            }
        }
        Ok(n)
    }
}
