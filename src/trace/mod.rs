//! Causal tracing (ROME style) of the gender metric and causal mediation (Vig et al.).
//!
//! `naive` is the slow reference (one forward of 1 + samples rows per restoration, as ROME's
//! `trace_with_patch` loop); `fast` batches many restorations and resumes from the corrupted run
//! at the patched layer and token. Both return the same [`TraceResult`]; `aggregate` turns
//! per-prompt results into token-role averages with CIs and `sites_json` into [`LocatedSites`].
//! `job` is what the CLI and the report both run: prompt selection, skipping and noise.

pub mod aggregate;
pub mod fast;
pub mod job;
pub mod mediation;
pub mod mediation_summary;
pub mod naive;
pub mod noise;
pub mod prompts;
pub mod run;
pub mod sites_json;

pub use aggregate::{aggregate_roles, token_roles, RoleSummary, TokenRole};
pub use fast::trace_fast;
pub use job::{PreparedTrace, TraceJob};
pub use naive::trace_naive;
pub use noise::{embedding_std, sample_noise};
pub use sites_json::{locate_sites, LocatedSites};

use crate::model::Site;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What is restored: the residual stream after one layer, or a window of MLP / attention outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hidden,
    Mlp,
    Attn,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Hidden, Kind::Mlp, Kind::Attn];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hidden => "hidden",
            Kind::Mlp => "mlp",
            Kind::Attn => "attn",
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "hidden" => Ok(Kind::Hidden),
            "mlp" => Ok(Kind::Mlp),
            "attn" => Ok(Kind::Attn),
            _ => Err(Error::param(
                "kind",
                format!("`{s}` is not one of hidden, mlp, attn"),
            )),
        }
    }

    /// Layers restored for grid layer `l`: ROME's `range(max(0, l - w/2), min(L, l + w - w/2))`
    /// for block outputs, `l` alone for the residual stream.
    pub fn window(self, l: usize, w: usize, num_layers: usize) -> Range<usize> {
        match self {
            Kind::Hidden => l..l + 1,
            _ => l.saturating_sub(w / 2)..(l + w - w / 2).min(num_layers),
        }
    }

    /// The site restored at one layer of the window.
    pub fn site(self, layer: usize) -> Site {
        match self {
            Kind::Hidden => Site::ResidPost(layer),
            Kind::Mlp => Site::MlpOut(layer),
            Kind::Attn => Site::AttnOut(layer),
        }
    }

    /// Layer at which a batched pass for a restoration at grid layer `l` may resume: the first
    /// layer whose computation the restoration changes (the last layer for `hidden` at L - 1,
    /// so that the patch still has a layer to happen in).
    pub fn resume_layer(self, l: usize, w: usize, num_layers: usize) -> usize {
        match self {
            Kind::Hidden => (l + 1).min(num_layers.saturating_sub(1)),
            _ => self.window(l, w, num_layers).start,
        }
    }
}

/// How large the embedding noise is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseLevel {
    /// This multiple of the empirical std of the embedding output (ROME uses 3).
    EmbedStdTimes(f64),
    /// A fixed standard deviation.
    Fixed(f64),
}

/// Settings of one trace; everything that changes the numbers is here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSettings {
    pub samples: usize,
    pub window: usize,
    pub kinds: Vec<Kind>,
    pub noise: NoiseLevel,
    pub seed: u64,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            samples: 10,
            window: 10,
            kinds: Kind::ALL.to_vec(),
            noise: NoiseLevel::EmbedStdTimes(3.0),
            seed: 0,
        }
    }
}

impl TraceSettings {
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::param("samples", "must be at least 1"));
        }
        if self.window == 0 {
            return Err(Error::param("window", "must be at least 1"));
        }
        if self.kinds.is_empty() {
            return Err(Error::param(
                "kinds",
                "name at least one of hidden, mlp, attn",
            ));
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if self.kinds[..i].contains(k) {
                return Err(Error::param(
                    "kinds",
                    format!("`{}` is named twice", k.name()),
                ));
            }
        }
        let (name, x) = match self.noise {
            NoiseLevel::Fixed(s) => ("noise_std", s),
            NoiseLevel::EmbedStdTimes(k) => ("noise_times", k),
        };
        if !(x.is_finite() && x > 0.0) {
            return Err(Error::param(
                name,
                format!("must be a finite number > 0, got {x}"),
            ));
        }
        Ok(())
    }
}

/// One prompt to trace: token ids, the occupation tokens `[b, e)`, and the ids of
/// (" he", " she", " they").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceCase {
    pub ids: Vec<u32>,
    pub subject: (usize, usize),
    pub pronouns: [u32; 3],
}

impl TraceCase {
    pub fn validate(&self) -> Result<()> {
        let (b, e) = self.subject;
        if b >= e || e > self.ids.len() {
            return Err(Error::param(
                "subject",
                format!(
                    "[{b}, {e}) is not a token range of a {}-token prompt",
                    self.ids.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Mean probabilities of (he, she, they) over the noised rows, per kind: `probs[t][l]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub kind: Kind,
    pub probs: Vec<Vec<[f64; 3]>>,
}

/// Everything one trace measured, as probabilities; effects are derived (see [`Effects`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceResult {
    pub tokens: usize,
    pub layers: usize,
    pub clean: [f64; 3],
    pub corrupted: [f64; 3],
    pub grids: Vec<Grid>,
}

impl TraceResult {
    pub fn grid(&self, kind: Kind) -> Option<&Grid> {
        self.grids.iter().find(|g| g.kind == kind)
    }

    /// Total and indirect effects of m = sign · (p(he) - p(she)); `sign` = +1 for a
    /// male-stereotyped profession, -1 for a female-stereotyped one.
    pub fn effects(&self, sign: f64) -> Effects {
        let m = |p: &[f64; 3]| sign * (p[0] - p[1]);
        let mc = m(&self.corrupted);
        Effects {
            te: m(&self.clean) - mc,
            te_pronoun: [0, 1, 2].map(|i| self.clean[i] - self.corrupted[i]),
            ie: self
                .grids
                .iter()
                .map(|g| {
                    (
                        g.kind,
                        g.probs
                            .iter()
                            .map(|row| row.iter().map(|p| m(p) - mc).collect())
                            .collect(),
                    )
                })
                .collect(),
        }
    }
}

/// TE and `IE[kind][t][l]` of the signed gender metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    pub te: f64,
    /// Clean minus corrupted probability of (he, she, they).
    pub te_pronoun: [f64; 3],
    pub ie: Vec<(Kind, Vec<Vec<f64>>)>,
}

/// +1 toward "he" for male-stereotyped (stereotypical score >= 0) professions, else -1.
pub fn stereotype_sign(stereotypical: f64) -> f64 {
    if stereotypical >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// Sites restored by a (kind, layer) restoration with window `w`.
pub fn restored_sites(kind: Kind, l: usize, w: usize, num_layers: usize) -> Vec<Site> {
    kind.window(l, w, num_layers)
        .map(|x| kind.site(x))
        .collect()
}

/// Mean of exp(log-prob) over consecutive groups of `group` rows: [[rows/group][3]].
pub(crate) fn mean_probs(logprobs: &candle_core::Tensor, group: usize) -> Result<Vec<[f64; 3]>> {
    let lp = logprobs.to_vec2::<f32>()?;
    if lp.first().is_some_and(|r| r.len() != 3) {
        return Err(Error::Model(
            "expected log-probabilities of three pronouns".into(),
        ));
    }
    Ok(lp
        .chunks(group)
        .map(|rows| {
            let mut acc = [0f64; 3];
            for r in rows {
                for i in 0..3 {
                    acc[i] += (r[i] as f64).exp();
                }
            }
            acc.map(|x| x / rows.len() as f64)
        })
        .collect())
}

/// Embedding noise as patches: rows `first_row..first_row + samples` get `noise[s]` added at the
/// subject tokens. `noise` is [samples, e - b, d].
pub(crate) fn noise_patches(
    noise: &candle_core::Tensor,
    subject: (usize, usize),
    first_row: usize,
) -> Result<Vec<crate::model::Patch>> {
    let (s, n, _) = noise.dims3()?;
    if n != subject.1 - subject.0 {
        return Err(Error::param(
            "noise",
            format!(
                "has {n} tokens but the subject spans {}",
                subject.1 - subject.0
            ),
        ));
    }
    let mut out = Vec::with_capacity(s * n);
    for r in 0..s {
        let nr = noise.get(r)?;
        for j in 0..n {
            out.push(crate::model::Patch {
                site: Site::Embed,
                row: first_row + r,
                token: subject.0 + j,
                cols: None,
                op: crate::model::PatchOp::Add,
                value: nr.get(j)?,
            });
        }
    }
    Ok(out)
}
