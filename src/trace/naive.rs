//! The slow reference: one forward of 1 + samples rows per restoration, as ROME's
//! `trace_with_patch` loop (row 0 clean, rows 1.. noised, clean values copied into the noised rows).

use super::{mean_probs, noise_patches, restored_sites, Grid, TraceCase, TraceResult, TraceSettings};
use crate::model::{InterventionPlan, LogitsRequest, Patch, PatchOp, Site, Transformer};
use crate::{Error, Result};
use candle_core::Tensor;

/// Trace one prompt with `noise` [samples, e - b, d]; see the module doc.
pub fn trace_naive(model: &Transformer, case: &TraceCase, noise: &Tensor, settings: &TraceSettings) -> Result<TraceResult> {
    case.validate()?;
    let (nl, t_len) = (model.cfg.num_layers, case.ids.len());
    let s = noise.dim(0)?;
    let logits = LogitsRequest::LastTokenIds(case.pronouns.to_vec());
    let mut capture = vec![];
    for l in 0..nl {
        capture.extend([Site::ResidPost(l), Site::MlpOut(l), Site::AttnOut(l)]);
    }
    let clean_out = model.forward(&[case.ids.clone()], &InterventionPlan::logits(logits.clone()).with_capture(capture))?;
    let lp = clean_out.logprobs.as_ref().ok_or_else(|| Error::Model("no log-probabilities".into()))?;
    let clean = mean_probs(lp, 1)?[0];
    let rows = vec![case.ids.clone(); s + 1];
    let noise_p = noise_patches(noise, case.subject, 1)?;
    let run = |extra: Vec<Patch>| -> Result<[f64; 3]> {
        let plan = InterventionPlan::logits(logits.clone()).with_patches(noise_p.iter().cloned()).with_patches(extra);
        let out = model.forward(&rows, &plan)?;
        let lp = out.logprobs.ok_or_else(|| Error::Model("no log-probabilities".into()))?;
        Ok(mean_probs(&lp.narrow(0, 1, s)?, s)?[0])
    };
    let corrupted = run(vec![])?;
    let mut grids = Vec::new();
    for &kind in &settings.kinds {
        let mut probs = vec![vec![[0f64; 3]; nl]; t_len];
        for (t, row) in probs.iter_mut().enumerate() {
            for (l, cell) in row.iter_mut().enumerate() {
                let mut patches = Vec::new();
                for site in restored_sites(kind, l, settings.window, nl) {
                    let v = clean_out.at(site, 0, t)?;
                    patches.extend((1..=s).map(|r| Patch { site, row: r, token: t, cols: None, op: PatchOp::Set, value: v.clone() }));
                }
                *cell = run(patches)?;
            }
        }
        grids.push(Grid { kind, probs });
    }
    Ok(TraceResult { tokens: t_len, layers: nl, clean, corrupted, grids })
}
