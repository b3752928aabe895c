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

/// Most rows × padded tokens in one forward pass of [`next_token_probs`] and
/// [`sequence_probs`]: batches are bounded by tokens, not only by prompts, so memory follows
/// the work. 64 occupation prompts of up to 128 tokens still make one batch (the default
/// batching of short prompts is unchanged); a 5,000-token prompt gets a pass of its own instead
/// of 64 of them asking for tens of GB.
pub const MAX_BATCH_TOKENS: usize = 8192;

/// Split `order` (row indices, in the order they are scored) into consecutive batches of at
/// most `batch_size` rows whose rows × longest row stays within `max_tokens`; a row longer than
/// `max_tokens` forms a batch of its own. Returns ranges into `order`.
pub fn token_batches(
    order: &[usize],
    len: impl Fn(usize) -> usize,
    batch_size: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    let batch_size = batch_size.max(1);
    let mut out = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (k, &i) in order.iter().enumerate() {
        let l = len(i);
        let rows = k - start + 1;
        if k > start && (rows > batch_size || rows * longest.max(l) > max_tokens) {
            out.push(start..k);
            start = k;
            longest = l;
        } else {
            longest = longest.max(l);
        }
    }
    if start < order.len() {
        out.push(start..order.len());
    }
    out
}

/// Refuse, before any work, a row that needs more positions than the model has (`extra`
/// tokens are appended when scoring, e.g. all but the last token of a multi-token target).
/// `describe(i)` names row i in the error (a caller that knows the prompt's template should
/// name it).
pub fn check_prompt_lengths(
    model: &Transformer,
    rows: &[Vec<u32>],
    extra: usize,
    describe: impl Fn(usize) -> String,
) -> Result<()> {
    let max = model.cfg.max_positions;
    match rows.iter().position(|r| r.len() + extra > max) {
        Some(i) => Err(Error::Model(format!(
            "{} is {} tokens long, more than the {max} positions the model takes; shorten it \
             (or its template)",
            describe(i),
            rows[i].len() + extra
        ))),
        None => Ok(()),
    }
}

/// How [`sequence_probs`] names a row it refuses: its position among the prompts.
fn nth_prompt(n: usize) -> impl Fn(usize) -> String {
    move |i| format!("prompt {} of {n}", i + 1)
}

/// Probabilities of `target_ids` as the next token after each row, in row order: [rows][targets].
///
/// Rows are sorted by length into batches of at most `batch_size` rows and
/// [`MAX_BATCH_TOKENS`] padded tokens, so padding stays small and a long prompt cannot make a
/// batch that does not fit in memory; results are returned in the caller's order. `on_batch`
/// is called with the number of rows finished.
pub fn next_token_probs(
    model: &Transformer,
    rows: &[Vec<u32>],
    target_ids: &[u32],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    check_prompt_lengths(model, rows, 0, nth_prompt(rows.len()))?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].len(), i));
    let mut out = vec![Vec::new(); rows.len()];
    let plan = InterventionPlan::logits(LogitsRequest::LastTokenIds(target_ids.to_vec()));
    for range in token_batches(&order, |i| rows[i].len(), batch_size, MAX_BATCH_TOKENS) {
        let chunk = &order[range];
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
/// conditional probabilities of its tokens. Batches keep the rows' order and are bounded like
/// [`next_token_probs`]'s.
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
    let longest_word = targets.ids.iter().map(Vec::len).max().unwrap_or(1);
    check_prompt_lengths(model, rows, longest_word - 1, nth_prompt(rows.len()))?;
    let mut out = vec![vec![0.0; targets.ids.len()]; rows.len()];
    let order: Vec<usize> = (0..rows.len()).collect();
    let len = |i: usize| rows[i].len() + longest_word - 1;
    for range in token_batches(&order, len, batch_size, MAX_BATCH_TOKENS) {
        let chunk = &rows[range.clone()];
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
                out[range.start + b][j] = s.exp();
            }
        }
        on_batch(chunk.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches hold at most `batch_size` rows and `max_tokens` padded tokens (a longer row goes
    /// alone), cover every row once in order, and short rows batch as before (by count only).
    #[test]
    fn batches_are_bounded_by_tokens() {
        let lens = [5, 6, 7, 8, 9, 3000, 6000, 6000, 40, 41];
        let order: Vec<usize> = (0..lens.len()).collect();
        let batches = token_batches(&order, |i| lens[i], 4, 100);
        let flat: Vec<usize> = batches
            .iter()
            .flat_map(|r| order[r.clone()].to_vec())
            .collect();
        assert_eq!(flat, order);
        for r in &batches {
            let rows = r.len();
            let longest = order[r.clone()].iter().map(|&i| lens[i]).max().unwrap();
            assert!(rows <= 4);
            assert!(rows == 1 || rows * longest <= 100, "{r:?}");
        }
        assert_eq!(batches, vec![0..4, 4..5, 5..6, 6..7, 7..8, 8..10]);
        // Short prompts: only the row count splits (17 Vig templates × 64 rows of ~10 tokens).
        let short: Vec<usize> = (0..200).collect();
        let b = token_batches(&short, |i| 8 + i % 5, 64, MAX_BATCH_TOKENS);
        assert_eq!(b, vec![0..64, 64..128, 128..192, 192..200]);
        assert!(token_batches(&[], |_| 1, 64, 10).is_empty());
    }
}
