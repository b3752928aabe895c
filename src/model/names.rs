//! The one table between llama.cpp's (GGUF) tensor names and Hugging Face's, read one way by
//! the loader ([`super::weights::load_gguf`]) and the other by the GGUF writer
//! ([`super::gguf_export`]).

use super::config::Arch;

/// Whole-model tensors: (GGUF, Hugging Face).
const MODEL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer modules: (GGUF, Hugging Face, the one architecture the row is for, or every one).
/// Rows for one architecture come first: Gemma-3's `ffn_norm` is the norm before the MLP, which
/// llama calls `post_attention_layernorm`, a name Gemma-3 uses for the norm after attention.
const LAYER: &[(&str, &str, Option<Arch>)] = &[
    ("ffn_norm", "pre_feedforward_layernorm", Some(Arch::Gemma3)),
    (
        "post_attention_norm",
        "post_attention_layernorm",
        Some(Arch::Gemma3),
    ),
    (
        "post_ffw_norm",
        "post_feedforward_layernorm",
        Some(Arch::Gemma3),
    ),
    ("attn_norm", "input_layernorm", None),
    ("attn_q", "self_attn.q_proj", None),
    ("attn_k", "self_attn.k_proj", None),
    ("attn_v", "self_attn.v_proj", None),
    ("attn_output", "self_attn.o_proj", None),
    ("attn_q_norm", "self_attn.q_norm", None),
    ("attn_k_norm", "self_attn.k_norm", None),
    ("ffn_norm", "post_attention_layernorm", None),
    ("ffn_gate", "mlp.gate_proj", None),
    ("ffn_up", "mlp.up_proj", None),
    ("ffn_down", "mlp.down_proj", None),
];

const GGUF_LAYER: &str = "blk.";
const HF_LAYER: &str = "model.layers.";

fn rows(arch: Arch) -> impl Iterator<Item = (&'static str, &'static str)> {
    LAYER
        .iter()
        .filter(move |r| r.2.is_none_or(|a| a == arch))
        .map(|r| (r.0, r.1))
}

/// `prefix{layer}.{module}.{kind}` → (layer, module, kind).
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str, &'a str)> {
    let (layer, leaf) = name.strip_prefix(prefix)?.split_once('.')?;
    let (module, kind) = leaf.rsplit_once('.')?;
    Some((layer.parse().ok()?, module, kind))
}

/// A llama.cpp tensor name as Hugging Face names it for `arch`.
pub fn gguf_to_hf_name(name: &str, arch: Arch) -> Option<String> {
    if let Some(&(_, hf)) = MODEL.iter().find(|r| r.0 == name) {
        return Some(hf.into());
    }
    let (layer, module, kind) = split_layer(name, GGUF_LAYER)?;
    let (_, hf) = rows(arch).find(|r| r.0 == module)?;
    Some(format!("{HF_LAYER}{layer}.{hf}.{kind}"))
}

/// A Hugging Face tensor name as llama.cpp names it for `arch` (the inverse).
pub fn hf_to_gguf_name(name: &str, arch: Arch) -> Option<String> {
    if let Some(&(gguf, _)) = MODEL.iter().find(|r| r.1 == name) {
        return Some(gguf.into());
    }
    let (layer, module, kind) = split_layer(name, HF_LAYER)?;
    let (gguf, _) = rows(arch).find(|r| r.1 == module)?;
    Some(format!("{GGUF_LAYER}{layer}.{gguf}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_architecture_reads_the_table_one_to_one() {
        // Every name either side of the table that an architecture can meet maps across and
        // back to itself: a row shadowed wrongly by another (same GGUF or HF name, the
        // architecture rows first) would send one of them elsewhere.
        for arch in [Arch::Llama, Arch::Gemma3] {
            for (gguf, hf) in rows(arch) {
                let g = format!("blk.7.{gguf}.weight");
                let h = format!("model.layers.7.{hf}.weight");
                let there = gguf_to_hf_name(&g, arch).unwrap_or_else(|| panic!("{g}"));
                assert_eq!(hf_to_gguf_name(&there, arch).as_deref(), Some(g.as_str()));
                let back = hf_to_gguf_name(&h, arch).unwrap_or_else(|| panic!("{h}"));
                assert_eq!(gguf_to_hf_name(&back, arch).as_deref(), Some(h.as_str()));
            }
        }
    }

    #[test]
    fn names_round_trip_both_ways() {
        for arch in [Arch::Llama, Arch::Gemma3] {
            let mut gguf: Vec<String> = MODEL.iter().map(|r| r.0.to_string()).collect();
            gguf.extend(rows(arch).map(|r| format!("blk.3.{}.bias", r.0)));
            for n in gguf {
                let hf = gguf_to_hf_name(&n, arch).unwrap_or_else(|| panic!("{n}: no HF name"));
                assert_eq!(
                    hf_to_gguf_name(&hf, arch).as_deref(),
                    Some(n.as_str()),
                    "{arch:?}"
                );
            }
        }
        // Gemma-3's own norms have no llama name, and llama's ffn_norm is Gemma's pre-MLP norm.
        let g = "model.layers.0.post_feedforward_layernorm.weight";
        assert_eq!(hf_to_gguf_name(g, Arch::Llama), None);
        assert_eq!(
            gguf_to_hf_name("blk.0.ffn_norm.weight", Arch::Gemma3).as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.ffn_norm.weight", Arch::Llama).as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(gguf_to_hf_name("blk.x.attn_q.weight", Arch::Llama), None);
    }
}
