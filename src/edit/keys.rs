//! Reading activations at the subject token: MLP keys, residual streams, block outputs.

use super::context::EditPrompt;
use crate::model::stable_matmul::matmul as mm;
use crate::model::{InterventionPlan, Site, Transformer};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Activations of `sites` at each prompt's last subject token: site → [prompts, width].
pub fn capture_at_subject(
    model: &Transformer,
    prompts: &[EditPrompt],
    sites: &[Site],
    batch: usize,
) -> Result<BTreeMap<Site, Tensor>> {
    if prompts.is_empty() {
        return Err(Error::param("prompts", "no prompts to read keys from"));
    }
    let stop = sites
        .iter()
        .all(|s| s.layer().is_some())
        .then(|| sites.iter().filter_map(|s| s.layer()).max())
        .flatten();
    let mut parts: BTreeMap<Site, Vec<Tensor>> = BTreeMap::new();
    for chunk in prompts.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let plan = InterventionPlan {
            capture: sites.to_vec(),
            stop_after: stop,
            ..Default::default()
        };
        let out = model.forward(&rows, &plan)?;
        for &site in sites {
            let at: Vec<Tensor> = chunk
                .iter()
                .enumerate()
                .map(|(r, p)| out.at(site, r, p.last_subject_token))
                .collect::<Result<_>>()?;
            parts.entry(site).or_default().push(Tensor::stack(&at, 0)?);
        }
    }
    parts
        .into_iter()
        .map(|(s, v)| Ok((s, Tensor::cat(&v, 0)?)))
        .collect()
}

/// Mean of rows per group: [rows, w] → [groups, w]; every group must have a row.
pub fn group_mean(x: &Tensor, groups: &[usize], n_groups: usize) -> Result<Tensor> {
    let (rows, w) = x.dims2()?;
    if rows != groups.len() {
        return Err(Error::param(
            "groups",
            format!("{} labels for {rows} rows", groups.len()),
        ));
    }
    let mut m = vec![0f32; n_groups * rows];
    let mut counts = vec![0usize; n_groups];
    for &g in groups {
        counts[g] += 1;
    }
    for (r, &g) in groups.iter().enumerate() {
        m[g * rows + r] = 1.0 / counts[g] as f32;
    }
    if let Some(g) = counts.iter().position(|&c| c == 0) {
        return Err(Error::param("groups", format!("group {g} has no prompt")));
    }
    let avg = Tensor::from_vec(m, (n_groups, rows), x.device())?;
    let _ = w;
    mm(&avg, x)
}
