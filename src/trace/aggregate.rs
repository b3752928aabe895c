//! Token roles (ROME's figure rows) and the average indirect effect per role and layer over
//! prompts, with 95% CIs and n.

use super::{Kind, TraceResult};
use crate::stats::{mean_ci, Estimate};
use crate::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    FirstSubject,
    MiddleSubject,
    LastSubject,
    FirstSubsequent,
    Further,
    Last,
}

impl TokenRole {
    pub const ALL: [TokenRole; 6] = [
        TokenRole::FirstSubject,
        TokenRole::MiddleSubject,
        TokenRole::LastSubject,
        TokenRole::FirstSubsequent,
        TokenRole::Further,
        TokenRole::Last,
    ];
    pub fn label(self) -> &'static str {
        match self {
            TokenRole::FirstSubject => "first occupation token",
            TokenRole::MiddleSubject => "middle occupation tokens",
            TokenRole::LastSubject => "last occupation token",
            TokenRole::FirstSubsequent => "first subsequent token",
            TokenRole::Further => "further tokens",
            TokenRole::Last => "last token",
        }
    }
}

/// Roles of token `t` in a prompt of `len` tokens with occupation `[b, e)`. A token can hold two
/// roles (a one-token occupation is first and last). The last token is only `Last`; tokens
/// before the occupation have none.
pub fn token_roles(t: usize, subject: (usize, usize), len: usize) -> Vec<TokenRole> {
    let (b, e) = subject;
    if t + 1 == len {
        return vec![TokenRole::Last];
    }
    let mut r = Vec::new();
    if t == b {
        r.push(TokenRole::FirstSubject);
    }
    if t > b && t + 1 < e {
        r.push(TokenRole::MiddleSubject);
    }
    if t + 1 == e {
        r.push(TokenRole::LastSubject);
    }
    if t == e {
        r.push(TokenRole::FirstSubsequent);
    }
    if t > e {
        r.push(TokenRole::Further);
    }
    r
}

/// Average IE per layer for one kind and role; `ie[l]` is over the prompts having that role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSummary {
    pub kind: Kind,
    pub role: TokenRole,
    pub ie: Vec<Estimate>,
}

/// A mean with its 95% interval; n < 2 gives a degenerate interval that says so.
pub fn estimate(xs: &[f64]) -> Result<Estimate> {
    if xs.len() < 2 {
        let v = xs.first().copied().unwrap_or(0.0);
        return Ok(Estimate { value: v, ci_low: v, ci_high: v, n: xs.len(), method: "n < 2: no interval".into() });
    }
    mean_ci(xs)
}

/// One traced prompt as the aggregation needs it.
pub struct Traced<'a> {
    pub result: &'a TraceResult,
    pub subject: (usize, usize),
    pub sign: f64,
}

/// Per kind and role: the per-prompt mean of IE over the role's tokens, then mean ± CI over prompts.
pub fn aggregate_roles(items: &[Traced]) -> Result<Vec<RoleSummary>> {
    let mut out = Vec::new();
    let Some(first) = items.first() else { return Ok(out) };
    let nl = first.result.layers;
    for g in &first.result.grids {
        let kind = g.kind;
        for role in TokenRole::ALL {
            let mut per_layer: Vec<Vec<f64>> = vec![Vec::new(); nl];
            for it in items {
                let eff = it.result.effects(it.sign);
                let Some((_, ie)) = eff.ie.iter().find(|(k, _)| *k == kind) else { continue };
                let toks: Vec<usize> = (0..it.result.tokens).filter(|&t| token_roles(t, it.subject, it.result.tokens).contains(&role)).collect();
                if toks.is_empty() {
                    continue;
                }
                for (l, acc) in per_layer.iter_mut().enumerate() {
                    acc.push(toks.iter().map(|&t| ie[t][l]).sum::<f64>() / toks.len() as f64);
                }
            }
            if per_layer[0].is_empty() {
                continue;
            }
            let ie = per_layer.iter().map(|xs| estimate(xs)).collect::<Result<Vec<_>>>()?;
            out.push(RoleSummary { kind, role, ie });
        }
    }
    Ok(out)
}
