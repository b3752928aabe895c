//! The fast path: the clean run once, the corrupted run once (keeping its per-layer inputs and
//! keys/values), then many restorations per batched pass that resume from the corrupted run at
//! the first changed layer and at the patched token, with logits of the three pronouns only at
//! the last position.

use super::{
    mean_probs, noise_patches, restored_sites, Grid, Kind, TraceCase, TraceResult, TraceSettings,
};
use crate::model::{
    InterventionPlan, KvCache, LogitsRequest, Patch, PatchOp, Resume, Site, Transformer,
};
use crate::{Error, Result};
use candle_core::Tensor;

/// Rows per batched pass (restorations × samples) unless told otherwise.
pub const DEFAULT_BATCH_ROWS: usize = 480;

/// Trace one prompt; same result as [`super::trace_naive`] up to float rounding.
pub fn trace_fast(
    model: &Transformer,
    case: &TraceCase,
    noise: &Tensor,
    settings: &TraceSettings,
) -> Result<TraceResult> {
    trace_fast_batched(model, case, noise, settings, DEFAULT_BATCH_ROWS)
}

struct Job {
    grid: usize,
    t: usize,
    l: usize,
    start: usize,
}

/// A pass's fixed cost, in restorations' worth of rows, as [`passes`] prices it. Chosen on the
/// Xeon (docs/performance.md, "Causal tracing"): 1, 2 and 4 ran alike, 0 (one pass per start
/// layer where the limit allows) and 8 or more slower.
const PASS_OVERHEAD: usize = 2;

/// Restorations sorted by start layer, cut into passes of at most `max` that each resume at their
/// first start: the cut that minimises Σ (restorations + `overhead`) × layers run (dynamic
/// programming over the cut points). One pass per start layer would do the least work, but small
/// passes run their matmuls slower, which `overhead` prices.
fn passes(
    starts: &[usize],
    max: usize,
    layers: usize,
    overhead: usize,
) -> Vec<std::ops::Range<usize>> {
    let (m, max) = (starts.len(), max.max(1));
    let mut best = vec![usize::MAX; m + 1];
    let mut cut = vec![0; m + 1];
    best[0] = 0;
    for j in 1..=m {
        for i in j.saturating_sub(max)..j {
            let cost = best[i] + (j - i + overhead) * (layers - starts[i].min(layers));
            if cost < best[j] {
                (best[j], cut[j]) = (cost, i);
            }
        }
    }
    let mut out = Vec::new();
    let mut j = m;
    while j > 0 {
        out.push(cut[j]..j);
        j = cut[j];
    }
    out.reverse();
    out
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
pub fn trace_fast_batched(
    model: &Transformer,
    case: &TraceCase,
    noise: &Tensor,
    settings: &TraceSettings,
    max_rows: usize,
) -> Result<TraceResult> {
    case.validate()?;
    let (nl, t_len) = (model.cfg.num_layers, case.ids.len());
    let s = noise.dim(0)?;
    let logits = LogitsRequest::LastTokenIds(case.pronouns.to_vec());
    let no_lp = || Error::Model("no log-probabilities".into());

    let mut capture = vec![];
    for l in 0..nl {
        capture.extend([Site::ResidPost(l), Site::MlpOut(l), Site::AttnOut(l)]);
    }
    let clean_out = model.forward(
        std::slice::from_ref(&case.ids),
        &InterventionPlan::logits(logits.clone()).with_capture(capture),
    )?;
    let clean = mean_probs(clean_out.logprobs.as_ref().ok_or_else(no_lp)?, 1)?[0];

    let mut plan = InterventionPlan::logits(logits.clone())
        .with_capture((0..nl).map(Site::ResidPre))
        .with_patches(noise_patches(noise, case.subject, 0)?);
    plan.capture_kv = true;
    let corr = model.forward(&vec![case.ids.clone(); s], &plan)?;
    let corrupted = mean_probs(corr.logprobs.as_ref().ok_or_else(no_lp)?, s)?[0];
    let kv: KvCache = corr
        .kv
        .clone()
        .ok_or_else(|| Error::Model("no keys/values captured".into()))?;

    let mut grids: Vec<Grid> = settings
        .kinds
        .iter()
        .map(|&kind| Grid {
            kind,
            probs: vec![vec![corrupted; nl]; t_len],
        })
        .collect();
    // Tokens before the subject are untouched by the noise: restoring them is a no-op, so their
    // cells keep the corrupted probabilities.
    let per_pass = (max_rows / s).max(1);
    for t in case.subject.0..t_len {
        let mut jobs: Vec<Job> = Vec::new();
        for (g, &kind) in settings.kinds.iter().enumerate() {
            for l in 0..nl {
                jobs.push(Job {
                    grid: g,
                    t,
                    l,
                    start: kind.resume_layer(l, settings.window, nl),
                });
            }
        }
        jobs.sort_by_key(|j| (j.start, j.grid, j.l));
        let starts: Vec<usize> = jobs.iter().map(|j| j.start).collect();
        for range in passes(&starts, per_pass, nl, PASS_OVERHEAD) {
            let chunk = &jobs[range];
            let probs = run_chunk(
                model, case, settings, &clean_out, &corr, &kv, chunk, s, &logits,
            )?;
            for (job, p) in chunk.iter().zip(probs) {
                grids[job.grid].probs[job.t][job.l] = p;
            }
        }
    }
    Ok(TraceResult {
        tokens: t_len,
        layers: nl,
        clean,
        corrupted,
        grids,
    })
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
    let input = corr
        .captures
        .get(&Site::ResidPre(s0))
        .ok_or_else(|| Error::Model("corrupted input not captured".into()))?;
    let resid = repeat(&input.narrow(1, t, t_len - t)?, n)?;
    let past = if t > 0 {
        let mut p = Vec::with_capacity(nl);
        for (l, (k, v)) in kv.iter().enumerate() {
            if l < s0 {
                p.push((k.clone(), v.clone())); // never read: layers below s0 are not run
            } else {
                p.push((
                    repeat(&k.narrow(2, 0, t)?, n)?,
                    repeat(&v.narrow(2, 0, t)?, n)?,
                ));
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
            patches.extend((0..s).map(|r| Patch {
                site,
                row: i * s + r,
                token: t,
                cols: None,
                op: PatchOp::Set,
                value: v.clone(),
            }));
        }
    }
    let plan = InterventionPlan::logits(logits.clone()).with_patches(patches);
    let out = model.forward_resume(
        &Resume {
            start_layer: s0,
            offset: t,
            resid,
            past,
        },
        &plan,
    )?;
    mean_probs(
        out.logprobs
            .as_ref()
            .ok_or_else(|| Error::Model("no log-probabilities".into()))?,
        s,
    )
}

#[cfg(test)]
mod tests {
    use super::passes;

    /// Σ (restorations + overhead) × layers run, the quantity `passes` minimises.
    fn cost(starts: &[usize], cuts: &[std::ops::Range<usize>], layers: usize, o: usize) -> usize {
        cuts.iter()
            .map(|r| (r.len() + o) * (layers - starts[r.start]))
            .sum()
    }

    /// Every cut into passes of at most `max`, by enumeration: the slow reference.
    fn every_cut(m: usize, max: usize) -> Vec<Vec<std::ops::Range<usize>>> {
        if m == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for first in 1..=max.min(m) {
            for rest in every_cut(m - first, max) {
                let mut cut = Vec::with_capacity(m);
                cut.push(0..first);
                cut.extend(rest.into_iter().map(|r| r.start + first..r.end + first));
                out.push(cut);
            }
        }
        out
    }

    /// The passes cover every restoration once, in order, none longer than the limit, and cost
    /// exactly the least any cut costs (every cut enumerated), never more than plain chunks.
    #[test]
    fn passes_are_the_least_cost_cut() {
        let layers: usize = 12;
        let starts: Vec<usize> = vec![0, 0, 0, 1, 2, 2, 3, 5, 6, 6, 8, 9, 11];
        for o in [0, 1, 2, 4, 1000] {
            for max in [1, 3, 5, 13] {
                let cuts = passes(&starts, max, layers, o);
                assert_eq!(cuts.first().map(|r| r.start), Some(0));
                assert_eq!(cuts.last().map(|r| r.end), Some(starts.len()));
                assert!(cuts.windows(2).all(|w| w[0].end == w[1].start));
                assert!(cuts.iter().all(|r| !r.is_empty() && r.len() <= max));
                let least = every_cut(starts.len(), max)
                    .iter()
                    .map(|c| cost(&starts, c, layers, o))
                    .min();
                assert_eq!(
                    Some(cost(&starts, &cuts, layers, o)),
                    least,
                    "o {o} max {max}"
                );
                let plain: Vec<_> = (0..starts.len())
                    .step_by(max)
                    .map(|i| i..(i + max).min(starts.len()))
                    .collect();
                assert!(cost(&starts, &cuts, layers, o) <= cost(&starts, &plain, layers, o));
            }
        }
    }
}
