//! Next-token probabilities of target words after prompts, batched.

use crate::model::{InterventionPlan, LogitsRequest, Transformer};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The pronouns (or any words) whose probability is measured, with their token ids under one
/// tokenizer. Words are scored as continuations (" he"): one id when the word is one token,
/// otherwise the whole sequence (product of the token probabilities).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PronounTargets {
    pub words: Vec<String>,
    pub ids: Vec<Vec<u32>>,
}

impl PronounTargets {
    /// Tokenise each word with a leading space (as it follows a prompt); an empty encoding is an error.
    pub fn new(tok: &Tokenizer, words: &[&str]) -> Result<Self> {
        let mut ids = Vec::new();
        for w in words {
            let t = tok.encode_plain(&format!(" {w}"))?;
            if t.is_empty() {
                return Err(Error::param(
                    "pronoun",
                    format!("{w:?} tokenises to nothing"),
                ));
            }
            ids.push(t);
        }
        Ok(PronounTargets {
            words: words.iter().map(|w| w.to_string()).collect(),
            ids,
        })
    }

    pub fn he_she_they(tok: &Tokenizer) -> Result<Self> {
        Self::new(tok, &["he", "she", "they"])
    }

    pub fn all_single_token(&self) -> bool {
        self.ids.iter().all(|i| i.len() == 1)
    }
}

/// Probabilities of `target_ids` as the next token after each row, in row order: [rows][targets].
///
/// Rows are sorted by length into batches of `batch_size` so padding stays small; results are
/// returned in the caller's order. `on_batch` is called with the number of rows finished.
pub fn next_token_probs(
    model: &Transformer,
    rows: &[Vec<u32>],
    target_ids: &[u32],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].len(), i));
    let mut out = vec![Vec::new(); rows.len()];
    let plan = InterventionPlan::logits(LogitsRequest::LastTokenIds(target_ids.to_vec()));
    for chunk in order.chunks(batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
        let fwd = model.forward(&batch, &plan)?;
        let lp = fwd
            .logprobs
            .ok_or_else(|| Error::Model("forward returned no log-probabilities".into()))?
            .to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(lp) {
            out[i] = row.iter().map(|&x| (x as f64).exp()).collect();
        }
        on_batch(chunk.len());
    }
    Ok(out)
}

/// Probabilities of each target word (single- or multi-token) following each row: [rows][targets].
/// Single-token targets use one pass; multi-token targets append the word and multiply the
/// conditional probabilities of its tokens.
pub fn sequence_probs(
    model: &Transformer,
    rows: &[Vec<u32>],
    targets: &PronounTargets,
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    if targets.all_single_token() {
        let ids: Vec<u32> = targets.ids.iter().map(|i| i[0]).collect();
        return next_token_probs(model, rows, &ids, batch_size, on_batch);
    }
    let mut out = vec![vec![0.0; targets.ids.len()]; rows.len()];
    for (r0, chunk) in rows.chunks(batch_size.max(1)).enumerate() {
        for (j, word) in targets.ids.iter().enumerate() {
            let batch: Vec<Vec<u32>> = chunk
                .iter()
                .map(|r| [r.as_slice(), &word[..word.len() - 1]].concat())
                .collect();
            let positions: Vec<(usize, usize)> = chunk
                .iter()
                .enumerate()
                .flat_map(|(b, r)| (0..word.len()).map(move |k| (b, r.len() - 1 + k)))
                .collect();
            let lp = model
                .forward(
                    &batch,
                    &InterventionPlan::logits(LogitsRequest::Positions(positions)),
                )?
                .logprobs
                .ok_or_else(|| Error::Model("forward returned no log-probabilities".into()))?;
            let lp = lp.to_vec2::<f32>()?;
            for b in 0..chunk.len() {
                let s: f64 = (0..word.len())
                    .map(|k| lp[b * word.len() + k][word[k] as usize] as f64)
                    .sum();
                out[r0 * batch_size.max(1) + b][j] = s.exp();
            }
        }
        on_batch(chunk.len());
    }
    Ok(out)
}
