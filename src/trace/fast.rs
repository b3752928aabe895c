//! The fast path: the clean run once, the corrupted run once (keeping its per-layer inputs and
//! keys/values), then many restorations per batched pass that resume from the corrupted run at
//! the first changed layer and at the patched token, with logits of the three pronouns only at
//! the last position.

use super::{mean_probs, noise_patches, restored_sites, Grid, Kind, TraceCase, TraceResult, TraceSettings};
use crate::model::{InterventionPlan, KvCache, LogitsRequest, Patch, PatchOp, Resume, Site, Transformer};
use crate::{Error, Result};
use candle_core::Tensor;

/// Rows per batched pass (restorations × samples) unless told otherwise.
pub const DEFAULT_BATCH_ROWS: usize = 480;

/// Trace one prompt; same result as [`super::trace_naive`] up to float rounding.
pub fn trace_fast(model: &Transformer, case: &TraceCase, noise: &Tensor, settings: &TraceSettings) -> Result<TraceResult> {
    trace_fast_batched(model, case, noise, settings, DEFAULT_BATCH_ROWS)
}

struct Job {
    grid: usize,
    t: usize,
    l: usize,
    start: usize,
}

/// `n` copies along dim 0, contiguous (the attention concatenates past keys along the token
/// axis, which needs contiguous inputs to give a matmul-ready layout).
fn repeat(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.contiguous()?);
    }
    Ok(Tensor::cat(&vec![x; n], 0)?)
}

/// [`trace_fast`] with at most `max_rows` rows per pass (at least one restoration per pass).
pub fn trace_fast_batched(model: &Transformer, case: &TraceCase, noise: &Tensor, settings: &TraceSettings, max_rows: usize) -> Result<TraceResult> {
    case.validate()?;
    let (nl, t_len) = (model.cfg.num_layers, case.ids.len());
    let s = noise.dim(0)?;
    let logits = LogitsRequest::LastTokenIds(case.pronouns.to_vec());
    let no_lp = || Error::Model("no log-probabilities".into());

    let mut capture = vec![];
    for l in 0..nl {
        capture.extend([Site::ResidPost(l), Site::MlpOut(l), Site::AttnOut(l)]);
    }
    let clean_out = model.forward(&[case.ids.clone()], &InterventionPlan::logits(logits.clone()).with_capture(capture))?;
    let clean = mean_probs(clean_out.logprobs.as_ref().ok_or_else(no_lp)?, 1)?[0];

    let mut plan = InterventionPlan::logits(logits.clone())
        .with_capture((0..nl).map(Site::ResidPre))
        .with_patches(noise_patches(noise, case.subject, 0)?);
    plan.capture_kv = true;
    let corr = model.forward(&vec![case.ids.clone(); s], &plan)?;
    let corrupted = mean_probs(corr.logprobs.as_ref().ok_or_else(no_lp)?, s)?[0];
    let kv: KvCache = corr.kv.clone().ok_or_else(|| Error::Model("no keys/values captured".into()))?;

    let mut grids: Vec<Grid> = settings.kinds.iter().map(|&kind| Grid { kind, probs: vec![vec![corrupted; nl]; t_len] }).collect();
    // Tokens before the subject are untouched by the noise: restoring them is a no-op, so their
    // cells keep the corrupted probabilities.
    let per_pass = (max_rows / s).max(1);
    for t in case.subject.0..t_len {
        let mut jobs: Vec<Job> = Vec::new();
        for (g, &kind) in settings.kinds.iter().enumerate() {
            for l in 0..nl {
                jobs.push(Job { grid: g, t, l, start: kind.resume_layer(l, settings.window, nl) });
            }
        }
        jobs.sort_by_key(|j| (j.start, j.grid, j.l));
        // Passes of `per_pass` restorations in order of start layer, each resuming at its
        // smallest start: one pass per start layer would do the minimum work, but its tiny
        // matmuls run slower on CPU than a few wasted layers in large ones.
        for chunk in jobs.chunks(per_pass) {
            let probs = run_chunk(model, case, settings, &clean_out, &corr, &kv, chunk, s, &logits)?;
            for (job, p) in chunk.iter().zip(probs) {
                grids[job.grid].probs[job.t][job.l] = p;
            }
        }
    }
    Ok(TraceResult { tokens: t_len, layers: nl, clean, corrupted, grids })
}

#[allow(clippy::too_many_arguments)]
fn run_chunk(
    model: &Transformer,
    case: &TraceCase,
    settings: &TraceSettings,
    clean_out: &crate::model::ForwardOutput,
    corr: &crate::model::ForwardOutput,
    kv: &KvCache,
    chunk: &[Job],
    s: usize,
    logits: &LogitsRequest,
) -> Result<Vec<[f64; 3]>> {
    let nl = model.cfg.num_layers;
    let t_len = case.ids.len();
    let (t, s0, n) = (chunk[0].t, chunk[0].start, chunk.len());
    let input = corr.captures.get(&Site::ResidPre(s0)).ok_or_else(|| Error::Model("corrupted input not captured".into()))?;
    let resid = repeat(&input.narrow(1, t, t_len - t)?, n)?;
    let past = if t > 0 {
        let mut p = Vec::with_capacity(nl);
        for (l, (k, v)) in kv.iter().enumerate() {
            if l < s0 {
                p.push((k.clone(), v.clone())); // never read: layers below s0 are not run
            } else {
                p.push((repeat(&k.narrow(2, 0, t)?, n)?, repeat(&v.narrow(2, 0, t)?, n)?));
            }
        }
        Some(p)
    } else {
        None
    };
    let mut patches = Vec::new();
    for (i, job) in chunk.iter().enumerate() {
        let kind: Kind = settings.kinds[job.grid];
        for site in restored_sites(kind, job.l, settings.window, nl) {
            let v = clean_out.at(site, 0, t)?;
            // The pass starts at s0 = l + 1: the output of layer l is the input of layer s0.
            let site = match site {
                Site::ResidPost(l) if l < s0 => Site::ResidPre(l + 1),
                other => other,
            };
            patches.extend((0..s).map(|r| Patch { site, row: i * s + r, token: t, cols: None, op: PatchOp::Set, value: v.clone() }));
        }
    }
    let plan = InterventionPlan::logits(logits.clone()).with_patches(patches);
    let out = model.forward_resume(&Resume { start_layer: s0, offset: t, resid, past }, &plan)?;
    mean_probs(out.logprobs.as_ref().ok_or_else(|| Error::Model("no log-probabilities".into()))?, s)
}
