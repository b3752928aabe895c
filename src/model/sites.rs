//! Named intervention sites and the intervention plan: what a forward pass reads and overwrites.
//!
//! Site names follow TransformerLens (`blocks.{l}.hook_mlp_out`). A plan is plain data handed to
//! the forward; the model applies it in exactly one place (`Transformer::intervene`, in `seam`).

use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A place in the computation whose activation can be read or overwritten, per row and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Site {
    /// Output of the token-embedding module (Gemma: already scaled by sqrt(d); GPT-2: before
    /// position embeddings are added). Noise for causal tracing is added here, as in ROME.
    Embed,
    /// Input of layer `l` (residual stream before the block).
    ResidPre(usize),
    /// Concatenated per-head attention outputs before the output projection; a head is a column range.
    HeadZ(usize),
    /// Attention block output (after the output projection, before any post-norm).
    AttnOut(usize),
    /// Input of the MLP down-projection: the "key" that LSDM edits against.
    MlpKey(usize),
    /// MLP block output (down-projection output, before any post-norm).
    MlpOut(usize),
    /// Output of layer `l` (residual stream after the block).
    ResidPost(usize),
    /// Residual stream after the final norm (what the unembedding reads).
    FinalNorm,
}

impl Site {
    pub fn name(&self) -> String {
        match self {
            Site::Embed => "hook_embed".into(),
            Site::ResidPre(l) => format!("blocks.{l}.hook_resid_pre"),
            Site::HeadZ(l) => format!("blocks.{l}.attn.hook_z"),
            Site::AttnOut(l) => format!("blocks.{l}.hook_attn_out"),
            Site::MlpKey(l) => format!("blocks.{l}.mlp.hook_post"),
            Site::MlpOut(l) => format!("blocks.{l}.hook_mlp_out"),
            Site::ResidPost(l) => format!("blocks.{l}.hook_resid_post"),
            Site::FinalNorm => "ln_final.hook_normalized".into(),
        }
    }

    /// Parse a site name; the error lists the accepted forms.
    pub fn parse(s: &str) -> Result<Site> {
        let err = || {
            Error::param(
                "site",
                format!(
                    "`{s}` is not a site name (expected hook_embed, ln_final.hook_normalized or \
                     blocks.L.{{hook_resid_pre,attn.hook_z,hook_attn_out,mlp.hook_post,hook_mlp_out,hook_resid_post}})"
                ),
            )
        };
        match s {
            "hook_embed" => return Ok(Site::Embed),
            "ln_final.hook_normalized" => return Ok(Site::FinalNorm),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(err)?;
        let (l, leaf) = rest.split_once('.').ok_or_else(err)?;
        let l: usize = l.parse().map_err(|_| err())?;
        Ok(match leaf {
            "hook_resid_pre" => Site::ResidPre(l),
            "attn.hook_z" => Site::HeadZ(l),
            "hook_attn_out" => Site::AttnOut(l),
            "mlp.hook_post" => Site::MlpKey(l),
            "hook_mlp_out" => Site::MlpOut(l),
            "hook_resid_post" => Site::ResidPost(l),
            _ => return Err(err()),
        })
    }

    pub fn layer(&self) -> Option<usize> {
        match *self {
            Site::Embed | Site::FinalNorm => None,
            Site::ResidPre(l)
            | Site::HeadZ(l)
            | Site::AttnOut(l)
            | Site::MlpKey(l)
            | Site::MlpOut(l)
            | Site::ResidPost(l) => Some(l),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatchOp {
    /// Overwrite the activation.
    Set,
    /// Add to the activation (e.g. tracing noise).
    Add,
}

/// Overwrite or shift one site at one (row, token); `cols` restricts it to a column range
/// (one attention head of `HeadZ`). `value` has `cols.len()` (or the site width) elements.
#[derive(Debug, Clone)]
pub struct Patch {
    pub site: Site,
    pub row: usize,
    /// Token index within the row's own (unpadded) sequence.
    pub token: usize,
    pub cols: Option<(usize, usize)>,
    pub op: PatchOp,
    pub value: Tensor,
}

/// Which next-token log-probabilities the forward should return.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LogitsRequest {
    /// No unembedding at all (capture-only passes).
    #[default]
    None,
    /// Log-softmax over the whole vocabulary at each row's last token: [rows, vocab].
    LastToken,
    /// Log-probabilities of these ids at each row's last token: [rows, ids].
    LastTokenIds(Vec<u32>),
    /// Log-softmax over the vocabulary at these (row, token) positions: [positions, vocab].
    Positions(Vec<(usize, usize)>),
    /// Log-probabilities of these ids at these (row, token) positions: [positions, ids]
    /// (packed prompts read several positions per row; nothing vocabulary-sized is returned).
    PositionIds(Vec<(usize, usize)>, Vec<u32>),
}

/// Everything a forward pass should do beyond the plain computation.
#[derive(Debug, Clone, Default)]
pub struct InterventionPlan {
    pub capture: Vec<Site>,
    pub patches: Vec<Patch>,
    pub logits: LogitsRequest,
    /// Return each layer's post-RoPE keys and values so later passes can reuse the prefix.
    pub capture_kv: bool,
    /// Stop after this layer (captures only, no logits): statistics of bottom layers need no top.
    pub stop_after: Option<usize>,
    /// Add a [rows, width] tensor to a site at each row's last token with tensor ops, so
    /// gradients flow back to it (gradient read-outs: pass a `Var` of zeros and backpropagate).
    pub last_token_shifts: Vec<(Site, Tensor)>,
    /// Only these positions' final states are read: per row, the same number of padded-row
    /// indices (repeat one to fill). The last layer then computes keys and values at every
    /// token but queries, the output projection and the MLP at these only, and the FinalNorm
    /// capture is [rows, read positions, width]. The plan may not touch the last layer's sites,
    /// patch FinalNorm or ask for logits (`check_read_at`). The work counter still counts
    /// every token of the last layer (its keys and values run there).
    pub read_at: Option<Vec<Vec<usize>>>,
}

impl InterventionPlan {
    pub fn logits(logits: LogitsRequest) -> Self {
        InterventionPlan {
            logits,
            ..Default::default()
        }
    }
    pub fn with_capture(mut self, sites: impl IntoIterator<Item = Site>) -> Self {
        self.capture.extend(sites);
        self
    }
    /// Read the final states at these positions only (see [`InterventionPlan::read_at`]).
    pub fn reading_at(mut self, positions: Vec<Vec<usize>>) -> Self {
        self.read_at = Some(positions);
        self
    }

    /// A plan with `read_at` must leave the last layer alone: its sites run on the read
    /// positions only, so a capture or patch there would see other shapes than it asked for.
    pub fn check_read_at(&self, rows: usize, tokens: usize, layers: usize) -> Result<()> {
        let Some(read) = &self.read_at else {
            return Ok(());
        };
        let bad = |why: String| Err(Error::param("read_at", why));
        let per_row = read.first().map_or(0, Vec::len);
        if read.len() != rows || per_row == 0 || read.iter().any(|r| r.len() != per_row) {
            return bad(format!(
                "needs the same positive number of positions for each of the {rows} rows"
            ));
        }
        if let Some(&p) = read.iter().flatten().find(|&&p| p >= tokens) {
            return bad(format!(
                "position {p} is outside the {tokens} padded tokens"
            ));
        }
        let last = layers.checked_sub(1);
        let touched = self
            .capture
            .iter()
            .chain(self.patches.iter().map(|p| &p.site))
            .chain(self.last_token_shifts.iter().map(|(s, _)| s))
            .find(|s| s.layer() == last && s.layer().is_some());
        if let Some(site) = touched {
            return bad(format!(
                "{site} is in the last layer, which runs on read positions only"
            ));
        }
        if self.patches.iter().any(|p| p.site == Site::FinalNorm)
            || self
                .last_token_shifts
                .iter()
                .any(|(s, _)| *s == Site::FinalNorm)
        {
            return bad("FinalNorm holds the read positions only; it cannot be patched".into());
        }
        if self.logits != LogitsRequest::None || self.capture_kv || self.stop_after.is_some() {
            return bad(
                "reads final states only: no logits, key/value capture or early stop".into(),
            );
        }
        Ok(())
    }

    pub fn with_patches(mut self, patches: impl IntoIterator<Item = Patch>) -> Self {
        self.patches.extend(patches);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            Site::Embed,
            Site::FinalNorm,
            Site::ResidPre(3),
            Site::HeadZ(0),
            Site::AttnOut(11),
            Site::MlpKey(2),
            Site::MlpOut(29),
            Site::ResidPost(7),
        ] {
            assert_eq!(Site::parse(&s.name()).unwrap(), s);
        }
        assert!(Site::parse("blocks.x.hook_mlp_out").is_err());
        assert!(Site::parse("blocks.1.hook_nothing").is_err());
    }
}
