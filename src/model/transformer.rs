//! The instrumented decoder: Llama-family (Llama, Mistral, Qwen2), Gemma-3 and GPT-2 in one
//! plain forward. Every named site passes through `Transformer::intervene`, the only place
//! where a plan's captures and patches touch the computation.
//!
//! This file owns the [`Transformer`] struct, what a pass returns and the public entry points
//! (`forward`, `forward_tree`, `forward_resume`, `forward_from_layer`). The rest of the model is
//! split by job: `wiring` (weights to layers, dtype casting, packing), `layer` (one decoder layer
//! and the layer loop), `attention` (RoPE, both attention paths), `seam` (patches, shifts and
//! captures), `unembed` (log-probabilities) and `work` (the work counter).

pub use super::layer::{Layer, Linear};
pub use super::norm::Norm;
pub use super::unembed::{check_finite, log_softmax_accurate};
pub use super::work::{Work, WorkCounter};

use super::config::ModelConfig;
use super::layer::Layout;
use super::seam::PassState;
use super::sites::{InterventionPlan, Site};
use super::tree::{chain_parents, TreeRow};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Per-layer keys and values after RoPE, [rows, kv_heads, tokens, head_dim].
pub type KvCache = Vec<(Tensor, Tensor)>;

/// Resume a forward at `start_layer` from a given residual stream (the input of that layer) for
/// tokens `offset..`, reusing `past` keys/values for tokens `..offset` (no padding allowed).
#[derive(Debug, Clone)]
pub struct Resume {
    pub start_layer: usize,
    pub offset: usize,
    /// [rows, tokens - offset, d]
    pub resid: Tensor,
    /// Keys/values of tokens `..offset` for every layer (index = layer); required when offset > 0.
    pub past: Option<KvCache>,
}

/// Result of a forward pass. Tensors are [rows, padded tokens, width]; `pads[r]` leading
/// positions of row r are padding (rows are left-padded so every row ends at the last position).
#[derive(Debug)]
pub struct ForwardOutput {
    pub captures: BTreeMap<Site, Tensor>,
    pub logprobs: Option<Tensor>,
    pub kv: Option<KvCache>,
    pub pads: Vec<usize>,
    /// Token index of the first position held in the tensors (non-zero for resumed passes).
    pub offset: usize,
}

impl ForwardOutput {
    /// Activation of `site` at (row, token) as a `[width]` tensor.
    pub fn at(&self, site: Site, row: usize, token: usize) -> Result<Tensor> {
        let t = self
            .captures
            .get(&site)
            .ok_or_else(|| Error::param("site", format!("{site} was not captured")))?;
        let pos = self.pads[row] + token - self.offset;
        Ok(t.get(row)?.get(pos)?)
    }
}

#[derive(Debug, Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub pos_embed: Option<Tensor>,
    pub layers: Vec<Layer>,
    pub final_norm: Norm,
    pub lm_head: Tensor,
    pub device: Device,
    /// Passes and token-layers run by this transformer and its clones (shared), so cost
    /// tables report counted work.
    pub work: Arc<WorkCounter>,
    /// Checked before every layer of every pass: a requested stop ends the pass with
    /// `Error::Interrupted` (shared by clones and by `Model::with_weights` copies).
    pub stop: super::stop::StopFlag,
    /// Run the CPU eval kernels where they apply (f32 CPU, no gradients): projections through
    /// candle's matmul in one call (`model::matmul::x_wt`), fused attention
    /// (`model::matmul::fused_attention`), one-pass SwiGLU and RMS norm (`model::fused`). Off by default so edits, traces and
    /// snapshots keep candle's numbers; the eval engine turns it on (`LmOptions::fast_kernels`).
    /// On from the start in a build with the `mkl` feature, whose bits depend on the CPU anyway.
    pub fast_kernels: bool,
}

impl Transformer {
    /// Run the model on token rows (left-padded internally) under an intervention plan.
    pub fn forward(&self, rows: &[Vec<u32>], plan: &InterventionPlan) -> Result<ForwardOutput> {
        let chains: Vec<TreeRow> = rows.iter().map(|r| TreeRow::chain(r)).collect();
        self.forward_tree(&chains, plan)
    }

    /// Run the model on packed token trees (see [`TreeRow`]): each token is at its depth and
    /// attends to its ancestors, so every root-to-node path scores as if it were its own row.
    /// Outputs, captures and patches index the packed row (token i = `tokens[i]`).
    pub fn forward_tree(&self, rows: &[TreeRow], plan: &InterventionPlan) -> Result<ForwardOutput> {
        if rows.is_empty() {
            return Err(Error::param("rows", "empty batch"));
        }
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if t == 0 || rows.iter().any(|r| r.is_empty()) {
            return Err(Error::param("rows", "a row has no tokens"));
        }
        let mut positions = Vec::with_capacity(rows.len());
        let pads: Vec<usize> = rows.iter().map(|r| t - r.len()).collect();
        let mut flat = Vec::with_capacity(rows.len() * t);
        for (r, p) in rows.iter().zip(&pads) {
            r.validate()?;
            for &id in &r.tokens {
                if id as usize >= self.cfg.vocab_size {
                    return Err(Error::param(
                        "token id",
                        format!("{id} is outside the vocabulary ({})", self.cfg.vocab_size),
                    ));
                }
            }
            let depth = r.positions();
            let longest = depth.iter().max().map_or(0, |d| d + 1);
            if longest > self.cfg.max_positions {
                return Err(Error::param(
                    "rows",
                    format!(
                        "{longest} tokens exceed the model's {} positions",
                        self.cfg.max_positions
                    ),
                ));
            }
            flat.extend(std::iter::repeat_n(0u32, *p));
            flat.extend_from_slice(&r.tokens);
            positions.push(std::iter::repeat_n(0, *p).chain(depth).collect::<Vec<_>>());
        }
        let ids = Tensor::from_vec(flat, (rows.len(), t), &self.device)?;
        let mut st = PassState::new(plan, &pads, 0);
        let mut x = self
            .embed
            .embedding(&ids.flatten_all()?)?
            .reshape((rows.len(), t, ()))?;
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s)?;
        }
        x = self.intervene(Site::Embed, x, &mut st)?;
        if let Some(wpe) = &self.pos_embed {
            let pos: Vec<u32> = positions.iter().flatten().map(|&p| p as u32).collect();
            let pe = wpe.embedding(&Tensor::from_vec(pos, rows.len() * t, &self.device)?)?;
            x = (x + pe.reshape((rows.len(), t, ()))?)?;
        }
        let parents: Vec<Vec<Option<usize>>> = rows.iter().map(|r| r.parent.clone()).collect();
        let layout = Layout {
            positions: &positions,
            pads: &pads,
            parents: &parents,
        };
        self.run_layers(x, 0, layout, None, plan, st)
    }

    /// Continue a pass from the input of `resume.start_layer` (see [`Resume`]).
    pub fn forward_resume(
        &self,
        resume: &Resume,
        plan: &InterventionPlan,
    ) -> Result<ForwardOutput> {
        let (b, tq, _) = resume.resid.dims3()?;
        if resume.start_layer > self.cfg.num_layers {
            return Err(Error::param(
                "start_layer",
                format!("{} > {} layers", resume.start_layer, self.cfg.num_layers),
            ));
        }
        if resume.offset > 0 && resume.past.is_none() {
            return Err(Error::param(
                "past",
                "a resumed pass with offset > 0 needs past keys/values",
            ));
        }
        let pads = vec![0usize; b];
        let positions: Vec<Vec<usize>> = (0..b)
            .map(|_| (resume.offset..resume.offset + tq).collect())
            .collect();
        let parents = vec![chain_parents(tq); b];
        let st = PassState::new(plan, &pads, resume.offset);
        let layout = Layout {
            positions: &positions,
            pads: &pads,
            parents: &parents,
        };
        self.run_layers(
            resume.resid.clone(),
            resume.start_layer,
            layout,
            resume.past.as_ref(),
            plan,
            st,
        )
    }

    /// Continue a pass from the input of `start_layer` for whole (left-padded) rows: `resid` is
    /// [rows, padded tokens, d] as captured from a pass over the same rows. Used by the edit
    /// stage to optimise a residual-stream change with gradients flowing from the top.
    pub fn forward_from_layer(
        &self,
        start_layer: usize,
        resid: &Tensor,
        pads: &[usize],
        plan: &InterventionPlan,
    ) -> Result<ForwardOutput> {
        let (b, t, _) = resid.dims3()?;
        if pads.len() != b || pads.iter().any(|&p| p >= t) {
            return Err(Error::param(
                "pads",
                format!("{} pads for {b} rows of {t} tokens", pads.len()),
            ));
        }
        if start_layer > self.cfg.num_layers {
            return Err(Error::param(
                "start_layer",
                format!("{start_layer} > {} layers", self.cfg.num_layers),
            ));
        }
        let positions: Vec<Vec<usize>> = pads
            .iter()
            .map(|&p| (0..t).map(|i| i.saturating_sub(p)).collect())
            .collect();
        let parents: Vec<Vec<Option<usize>>> = pads.iter().map(|&p| chain_parents(t - p)).collect();
        let st = PassState::new(plan, pads, 0);
        let layout = Layout {
            positions: &positions,
            pads,
            parents: &parents,
        };
        self.run_layers(resid.clone(), start_layer, layout, None, plan, st)
    }
}
