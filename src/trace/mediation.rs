//! Causal mediation analysis after Vig et al. (2020): set-gender interventions (the occupation
//! replaced by "man" / "woman"), odds y = p(anti-stereotypical pronoun) / p(stereotypical one),
//! TE = y(x')/y(x) - 1, and per mediator (a layer's MLP output, attention output, or one head's
//! output before o_proj, at every token)
//! NIE = y(x, M(x'))/y(x) - 1 and NDE = y(x', M(x))/y(x) - 1.
//!
//! A profession of several tokens ("fire fighter") and its one-token replacement ("woman") give
//! prompts of different lengths. Tokens are then aligned ([`MediationCase::alignment`]): the
//! tokens before the occupation one to one, the occupation's last token with the noun's last
//! token (and so on backwards while both spans have tokens), and the tokens after it one to one.
//! A mediator is transplanted only between aligned tokens; an occupation token without a partner
//! keeps its own value. With equal spans this is the token-by-token intervention of Vig et al.

use crate::model::{
    ForwardOutput, InterventionPlan, LogitsRequest, Patch, PatchOp, Resume, Site, Transformer,
};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use super::mediation_summary::{summarise, MediationSummary};

/// One base prompt x and its set-gender version x'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediationCase {
    pub base: Vec<u32>,
    pub swapped: Vec<u32>,
    /// The occupation's tokens `[b, e)` in `base`.
    pub base_subject: (usize, usize),
    /// The replacing noun's tokens `[b, e')` in `swapped` (same start).
    pub swapped_subject: (usize, usize),
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

impl MediationCase {
    /// Pairs (token in x, token in x') that exchange mediator values, in x's order: the shared
    /// prefix, the two spans aligned from their last tokens, and the shared suffix. Errors when
    /// the prompts differ outside the spans.
    pub fn alignment(&self) -> Result<Vec<(usize, usize)>> {
        let ((b, e), (b2, e2)) = (self.base_subject, self.swapped_subject);
        let (t, t2) = (self.base.len(), self.swapped.len());
        let bad = |why: String| Err(Error::param("mediation case", why));
        if b >= e || e > t || b2 >= e2 || e2 > t2 {
            return bad(format!(
                "spans {:?} / {:?} do not fit prompts of {t} / {t2} tokens",
                self.base_subject, self.swapped_subject
            ));
        }
        if b != b2 || self.base[..b] != self.swapped[..b] {
            return bad("the prompts differ before the occupation".into());
        }
        if t - e != t2 - e2 || self.base[e..] != self.swapped[e2..] {
            return bad("the prompts differ after the occupation".into());
        }
        let span = (e - b).min(e2 - b2);
        let mut pairs: Vec<(usize, usize)> = (0..b).map(|i| (i, i)).collect();
        pairs.extend((0..span).rev().map(|i| (e - 1 - i, e2 - 1 - i)));
        pairs.extend((0..t - e).map(|i| (e + i, e2 + i)));
        Ok(pairs)
    }
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

/// Transplant patches for one layer: row `i` of a pass over `to` gets mediator `i` of `from` at
/// every aligned token `(t_to, t_from)` from the shared-prefix end on (before it, both prompts
/// have identical activations, so a transplant changes nothing).
fn transplants(
    meds: &[(Site, Option<(usize, usize)>)],
    from: &ForwardOutput,
    pairs: &[(usize, usize)],
) -> Result<Vec<Patch>> {
    let mut patches = Vec::new();
    for (row, &(site, cols)) in meds.iter().enumerate() {
        for &(t_to, t_from) in pairs {
            let v = from.at(site, 0, t_from)?;
            let v = match cols {
                Some((a, b)) => v.narrow(0, a, b - a)?,
                None => v,
            };
            patches.push(Patch {
                site,
                row,
                token: t_to,
                cols,
                op: PatchOp::Set,
                value: v,
            });
        }
    }
    Ok(patches)
}

/// Run the analysis for one prompt pair.
pub fn mediate(model: &Transformer, case: &MediationCase) -> Result<MediationResult> {
    let pairs = case.alignment()?;
    let changed = case.base_subject.0;
    // (token in x, token in x') from the first occupation token on, and the same reversed.
    let into_base: Vec<(usize, usize)> = pairs.iter().copied().filter(|p| p.0 >= changed).collect();
    let into_swapped: Vec<(usize, usize)> = into_base.iter().map(|&(a, b)| (b, a)).collect();
    let (nl, heads, hd) = (
        model.cfg.num_layers,
        model.cfg.num_heads,
        model.cfg.head_dim,
    );
    let logits = LogitsRequest::LastTokenIds(case.pronouns.to_vec());
    let mut capture = Vec::new();
    for l in 0..nl {
        capture.extend([
            Site::ResidPre(l),
            Site::MlpOut(l),
            Site::AttnOut(l),
            Site::HeadZ(l),
        ]);
    }
    let plan = InterventionPlan::logits(logits.clone()).with_capture(capture);
    let x = model.forward(std::slice::from_ref(&case.base), &plan)?;
    let xs = model.forward(std::slice::from_ref(&case.swapped), &plan)?;
    let lp = |o: &ForwardOutput| -> Result<Vec<Vec<f32>>> {
        Ok(o.logprobs
            .as_ref()
            .ok_or_else(|| Error::Model("no log-probabilities".into()))?
            .to_vec2::<f32>()?)
    };
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
        // Row i: the layer input of `on`, mediator i transplanted from `from`; relative odds.
        let effects = |on: &ForwardOutput, from: &ForwardOutput, pairs: &[(usize, usize)]| {
            let input = on
                .captures
                .get(&Site::ResidPre(l))
                .ok_or_else(|| Error::Model("layer input not captured".into()))?;
            let out = model.forward_resume(
                &Resume {
                    start_layer: l,
                    offset: 0,
                    resid: Tensor::cat(&vec![input; m], 0)?,
                    past: None,
                },
                &InterventionPlan::logits(logits.clone())
                    .with_patches(transplants(&meds, from, pairs)?),
            )?;
            Ok::<Vec<f64>, Error>(
                lp(&out)?
                    .iter()
                    .map(|row| odds(row, case.male_stereotype) / y_base - 1.0)
                    .collect(),
            )
        };
        let nie = effects(&x, &xs, &into_base)?;
        let nde = effects(&xs, &x, &into_swapped)?;
        r.nie_mlp[l] = nie[0];
        r.nie_attn[l] = nie[1];
        r.nde_mlp[l] = nde[0];
        r.nde_attn[l] = nde[1];
        r.nie_head[l].copy_from_slice(&nie[2..2 + heads]);
        r.nde_head[l].copy_from_slice(&nde[2..2 + heads]);
    }
    Ok(r)
}
