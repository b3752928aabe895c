//! Measure: next-token pronoun probabilities on prompts, batched, with a progress bar.
//! The bias metrics built on them live in `crate::bias`.

use crate::model::{InterventionPlan, LogitsRequest, Transformer};
use crate::Result;

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
            .ok_or_else(|| crate::Error::Model("forward returned no log-probabilities".into()))?
            .to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(lp) {
            out[i] = row.iter().map(|&x| (x as f64).exp()).collect();
        }
        on_batch(chunk.len());
    }
    Ok(out)
}
