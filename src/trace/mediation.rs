//! Causal mediation analysis after Vig et al. (2020): set-gender interventions (the occupation
//! replaced by "man" / "woman"), odds y = p(anti-stereotypical pronoun) / p(stereotypical one),
//! TE = y(x')/y(x) - 1, and per mediator (a layer's MLP output, attention output, or one head's
//! output before o_proj, at every token)
//! NIE = y(x, M(x'))/y(x) - 1 and NDE = y(x', M(x))/y(x) - 1.

use super::aggregate::estimate;
use crate::model::{ForwardOutput, InterventionPlan, LogitsRequest, Patch, PatchOp, Resume, Site, Transformer};
use crate::stats::Estimate;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// One base prompt x and its set-gender version x' (same token count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediationCase {
    pub base: Vec<u32>,
    pub swapped: Vec<u32>,
    /// Ids of (" he", " she", " they").
    pub pronouns: [u32; 3],
    /// The profession is male-stereotyped: "she" is the anti-stereotypical pronoun.
    pub male_stereotype: bool,
}

/// Effects of one prompt; `*_head[l][h]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediationResult {
    pub y_base: f64,
    pub y_swapped: f64,
    pub te: f64,
    pub nie_mlp: Vec<f64>,
    pub nde_mlp: Vec<f64>,
    pub nie_attn: Vec<f64>,
    pub nde_attn: Vec<f64>,
    pub nie_head: Vec<Vec<f64>>,
    pub nde_head: Vec<Vec<f64>>,
}

fn odds(lp: &[f32], male_stereotype: bool) -> f64 {
    let (he, she) = ((lp[0] as f64).exp(), (lp[1] as f64).exp());
    if male_stereotype {
        she / he
    } else {
        he / she
    }
}

/// Mediators of one layer, in row order: MLP, attention, then each head.
fn mediators(l: usize, heads: usize, hd: usize) -> Vec<(Site, Option<(usize, usize)>)> {
    let mut m = vec![(Site::MlpOut(l), None), (Site::AttnOut(l), None)];
    m.extend((0..heads).map(|h| (Site::HeadZ(l), Some((h * hd, (h + 1) * hd)))));
    m
}

/// Run the analysis for one prompt pair.
pub fn mediate(model: &Transformer, case: &MediationCase) -> Result<MediationResult> {
    let t_len = case.base.len();
    if case.swapped.len() != t_len {
        return Err(Error::param("swapped", format!("{} tokens but the base prompt has {t_len}", case.swapped.len())));
    }
    let (nl, heads, hd) = (model.cfg.num_layers, model.cfg.num_heads, model.cfg.head_dim);
    let logits = LogitsRequest::LastTokenIds(case.pronouns.to_vec());
    let mut capture = Vec::new();
    for l in 0..nl {
        capture.extend([Site::ResidPre(l), Site::MlpOut(l), Site::AttnOut(l), Site::HeadZ(l)]);
    }
    let plan = InterventionPlan::logits(logits.clone()).with_capture(capture);
    let x = model.forward(&[case.base.clone()], &plan)?;
    let xs = model.forward(&[case.swapped.clone()], &plan)?;
    let lp = |o: &ForwardOutput| -> Result<Vec<Vec<f32>>> { Ok(o.logprobs.as_ref().ok_or_else(|| Error::Model("no log-probabilities".into()))?.to_vec2::<f32>()?) };
    let y_base = odds(&lp(&x)?[0], case.male_stereotype);
    let y_swapped = odds(&lp(&xs)?[0], case.male_stereotype);
    let mut r = MediationResult {
        y_base,
        y_swapped,
        te: y_swapped / y_base - 1.0,
        nie_mlp: vec![0.0; nl],
        nde_mlp: vec![0.0; nl],
        nie_attn: vec![0.0; nl],
        nde_attn: vec![0.0; nl],
        nie_head: vec![vec![0.0; heads]; nl],
        nde_head: vec![vec![0.0; heads]; nl],
    };
    for l in 0..nl {
        let meds = mediators(l, heads, hd);
        let m = meds.len();
        let input = |o: &ForwardOutput| o.captures.get(&Site::ResidPre(l)).cloned().ok_or_else(|| Error::Model("layer input not captured".into()));
        // Rows 0..m: input x with the mediator from x'; rows m..2m: input x' with it from x.
        let resid = Tensor::cat(&[&Tensor::cat(&vec![&input(&x)?; m], 0)?, &Tensor::cat(&vec![&input(&xs)?; m], 0)?], 0)?;
        let mut patches = Vec::new();
        for (i, &(site, cols)) in meds.iter().enumerate() {
            for (row, from) in [(i, &xs), (m + i, &x)] {
                for t in 0..t_len {
                    let v = from.at(site, 0, t)?;
                    let v = match cols {
                        Some((a, b)) => v.narrow(0, a, b - a)?,
                        None => v,
                    };
                    patches.push(Patch { site, row, token: t, cols, op: PatchOp::Set, value: v });
                }
            }
        }
        let out = model.forward_resume(&Resume { start_layer: l, offset: 0, resid, past: None }, &InterventionPlan::logits(logits.clone()).with_patches(patches))?;
        let ys: Vec<f64> = lp(&out)?.iter().map(|row| odds(row, case.male_stereotype) / y_base - 1.0).collect();
        r.nie_mlp[l] = ys[0];
        r.nie_attn[l] = ys[1];
        r.nde_mlp[l] = ys[m];
        r.nde_attn[l] = ys[m + 1];
        for h in 0..heads {
            r.nie_head[l][h] = ys[2 + h];
            r.nde_head[l][h] = ys[m + 2 + h];
        }
    }
    Ok(r)
}

/// Effects averaged over prompts with 95% CIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediationSummary {
    pub n_prompts: usize,
    pub te: Estimate,
    pub nie_mlp: Vec<Estimate>,
    pub nde_mlp: Vec<Estimate>,
    pub nie_attn: Vec<Estimate>,
    pub nde_attn: Vec<Estimate>,
    /// Mean NIE per layer and head (CIs in `nie_head_ci`).
    pub nie_head: Vec<Vec<f64>>,
    pub nie_head_ci: Vec<Vec<Estimate>>,
}

pub fn summarise(results: &[MediationResult]) -> Result<MediationSummary> {
    let first = results.first().ok_or_else(|| Error::param("results", "no mediation results to summarise"))?;
    let (nl, heads) = (first.nie_mlp.len(), first.nie_head.first().map_or(0, |h| h.len()));
    let per = |f: &dyn Fn(&MediationResult, usize) -> f64| -> Result<Vec<Estimate>> { (0..nl).map(|l| estimate(&results.iter().map(|r| f(r, l)).collect::<Vec<_>>())).collect() };
    let nie_head_ci: Vec<Vec<Estimate>> = (0..nl)
        .map(|l| (0..heads).map(|h| estimate(&results.iter().map(|r| r.nie_head[l][h]).collect::<Vec<_>>())).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    Ok(MediationSummary {
        n_prompts: results.len(),
        te: estimate(&results.iter().map(|r| r.te).collect::<Vec<_>>())?,
        nie_mlp: per(&|r, l| r.nie_mlp[l])?,
        nde_mlp: per(&|r, l| r.nde_mlp[l])?,
        nie_attn: per(&|r, l| r.nie_attn[l])?,
        nde_attn: per(&|r, l| r.nde_attn[l])?,
        nie_head: nie_head_ci.iter().map(|row| row.iter().map(|e| e.value).collect()).collect(),
        nie_head_ci,
    })
}
