//! Next-token probabilities of target words after prompts, batched.

use crate::model::{InterventionPlan, LogitsRequest, Transformer, TreeRow};
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

/// Most tokens in one packed tree of [`next_token_probs`]. Prompts that share a prefix ("The
/// nurse said that", "The nurse ran because") are packed into one tree whose shared tokens run
/// once; 64 tokens hold a profession's 17 Vig templates and keep attention over the packed row
/// (masked, quadratic in its length) small.
pub const MAX_TREE_TOKENS: usize = 64;

/// Prompts packed into trees: each tree with the (prompt index, node of its last token) of
/// every prompt in it. Prompts (none empty) are taken in `order`, consecutive ones sharing a
/// tree while it stays within `max_tokens` tokens and `max_prompts` prompts (a longer prompt
/// gets a tree of its own).
pub fn pack_prompts(
    rows: &[Vec<u32>],
    order: &[usize],
    max_tokens: usize,
    max_prompts: usize,
) -> Vec<(TreeRow, Vec<(usize, usize)>)> {
    let mut out: Vec<(TreeRow, Vec<(usize, usize)>)> = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let flush = |group: &mut Vec<usize>, out: &mut Vec<(TreeRow, Vec<(usize, usize)>)>| {
        if group.is_empty() {
            return;
        }
        let seqs: Vec<&[u32]> = group.iter().map(|&i| rows[i].as_slice()).collect();
        let (tree, nodes) = TreeRow::pack(&seqs);
        let last = group
            .iter()
            .zip(&nodes)
            .map(|(&i, path)| (i, path[path.len() - 1]))
            .collect();
        out.push((tree, last));
        group.clear();
    };
    // Tokens of the current group's trie: a prompt adds the tokens past its longest common
    // prefix with a member.
    let mut size = 0;
    for &i in order {
        let shared = group
            .iter()
            .map(|&j| common_prefix(&rows[i], &rows[j]))
            .max()
            .unwrap_or(0);
        let grown = size + rows[i].len() - shared;
        if !group.is_empty() && (grown > max_tokens || group.len() >= max_prompts) {
            flush(&mut group, &mut out);
            size = rows[i].len();
        } else {
            size = grown;
        }
        group.push(i);
    }
    flush(&mut group, &mut out);
    out
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Probabilities of `target_ids` as the next token after each row, in row order: `[rows][targets]`.
///
/// Rows are sorted, packed into prefix trees ([`pack_prompts`], each path scores exactly as its
/// own row would) and the trees grouped into passes of at most `batch_size` prompts and
/// [`MAX_BATCH_TOKENS`] padded tokens, so a long prompt cannot make a batch that does not fit
/// in memory; results are returned in the caller's order. `on_batch` is called with the number
/// of rows finished.
pub fn next_token_probs(
    model: &Transformer,
    rows: &[Vec<u32>],
    target_ids: &[u32],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    check_prompt_lengths(model, rows, 0, nth_prompt(rows.len()))?;
    if let Some(i) = rows.iter().position(Vec::is_empty) {
        return Err(Error::param(
            "rows",
            format!("{} has no tokens", nth_prompt(rows.len())(i)),
        ));
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].cmp(&rows[b]).then(a.cmp(&b)));
    let trees = pack_prompts(rows, &order, MAX_TREE_TOKENS, batch_size);
    let mut out = vec![Vec::new(); rows.len()];
    let mut start = 0;
    while start < trees.len() {
        // Whole trees (each of at most `batch_size` prompts), up to `batch_size` prompts and the
        // token budget.
        let (mut end, mut prompts, mut longest) = (start, 0, 0);
        while end < trees.len() {
            let (tree, reads) = &trees[end];
            let width = longest.max(tree.len());
            let fits = prompts + reads.len() <= batch_size
                && (end - start + 1) * width <= MAX_BATCH_TOKENS;
            if end > start && !fits {
                break;
            }
            prompts += reads.len();
            longest = width;
            end += 1;
        }
        let chunk = &trees[start..end];
        let batch: Vec<TreeRow> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let positions: Vec<(usize, usize)> = chunk
            .iter()
            .enumerate()
            .flat_map(|(r, (_, reads))| reads.iter().map(move |&(_, node)| (r, node)))
            .collect();
        let plan =
            InterventionPlan::logits(LogitsRequest::PositionIds(positions, target_ids.to_vec()));
        let lp = model
            .forward_tree(&batch, &plan)?
            .logprobs
            .ok_or_else(|| Error::Model("forward returned no log-probabilities".into()))?
            .to_vec2::<f32>()?;
        let prompts_in = chunk
            .iter()
            .flat_map(|(_, reads)| reads.iter().map(|&(i, _)| i));
        for (i, row) in prompts_in.zip(lp) {
            out[i] = row.iter().map(|&x| (x as f64).exp()).collect();
        }
        on_batch(prompts);
        start = end;
    }
    Ok(out)
}

/// Probabilities of each target word (single- or multi-token) following each row: `[rows][targets]`.
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
    use proptest::prelude::*;

    proptest! {
        /// Every prompt lands in exactly one tree, its path there spells its tokens (so it
        /// scores as its own row), and trees keep to both limits unless one prompt alone
        /// exceeds the token limit.
        #[test]
        fn packed_prompts_keep_their_tokens_and_the_limits(
            rows in prop::collection::vec(prop::collection::vec(0u32..4, 1..7), 1..40),
            max_tokens in 1usize..30, max_prompts in 1usize..10,
        ) {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by(|&a, &b| rows[a].cmp(&rows[b]).then(a.cmp(&b)));
            let trees = pack_prompts(&rows, &order, max_tokens, max_prompts);
            let mut seen = vec![0; rows.len()];
            for (tree, reads) in &trees {
                prop_assert!(reads.len() <= max_prompts);
                prop_assert!(tree.len() <= max_tokens || reads.len() == 1);
                for &(i, node) in reads {
                    seen[i] += 1;
                    let mut path = vec![tree.tokens[node]];
                    let mut at = tree.parent[node];
                    while let Some(p) = at {
                        path.push(tree.tokens[p]);
                        at = tree.parent[p];
                    }
                    path.reverse();
                    prop_assert_eq!(&path, &rows[i]);
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }

    /// The 17 Vig templates of one profession share "The nurse" in one tree.
    #[test]
    fn a_profession_s_templates_share_their_prefix() {
        let rows: Vec<Vec<u32>> = (0..17).map(|t| vec![1, 7, 100 + t, 200]).collect();
        let order: Vec<usize> = (0..17).collect();
        let trees = pack_prompts(&rows, &order, MAX_TREE_TOKENS, 64);
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].0.len(), 2 + 17 * 2);
    }

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
