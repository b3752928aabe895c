//! Mediation effects over prompts: the mean (Vig et al.'s summary) and two robust ones.
//!
//! NIE = y(x, M(x'))/y(x) − 1 is a ratio of odds: when a prompt's anti-stereotypical pronoun is
//! nearly impossible, y(x) is tiny and one prompt's NIE can be in the hundreds, which sets the
//! mean of a whole layer. Beside the mean the summary gives the median (bootstrap CI) and the
//! mean log-ratio ln(1 + NIE) = ln y(x, M(x')) − ln y(x) (t interval), which weighs a doubling and
//! a halving of the odds alike.

use super::aggregate::estimate;
use super::mediation::MediationResult;
use crate::stats::{bootstrap, percentile, Estimate};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Resamples and seed of the medians' bootstrap intervals.
const MEDIAN_RESAMPLES: usize = 1000;
const MEDIAN_SEED: u64 = 0;

/// One effect over prompts, three ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Robust {
    pub mean: Estimate,
    pub median: Estimate,
    /// Mean of ln(1 + effect).
    pub log_ratio: Estimate,
}

/// Effects over prompts with 95% CIs.
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
    /// TE, and per layer the NIE of the MLP and of attention: mean, median and mean log-ratio.
    pub te_robust: Robust,
    pub nie_mlp_robust: Vec<Robust>,
    pub nie_attn_robust: Vec<Robust>,
    /// Mean log-ratio ln(1 + NIE) per layer and head.
    pub nie_head_log: Vec<Vec<Estimate>>,
}

/// The median with a percentile-bootstrap interval (no interval below 2 values).
pub fn median(xs: &[f64]) -> Result<Estimate> {
    let med = |idx: &[usize]| {
        let mut v: Vec<f64> = idx.iter().map(|&i| xs[i]).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    if xs.len() < 2 {
        let all: Vec<usize> = (0..xs.len()).collect();
        return Ok(Estimate {
            method: "n < 2: no interval".into(),
            ..Estimate::point(if xs.is_empty() { 0.0 } else { med(&all) }, xs.len())
        });
    }
    bootstrap(xs.len(), MEDIAN_RESAMPLES, MEDIAN_SEED, med)
}

/// ln(1 + x) of every effect whose log-ratio exists. An effect of −1 or below means the patched
/// odds underflowed to zero; such prompts are left out of the log-ratio (its `n` says how many
/// remain) rather than failing the summary of a finished run.
fn log_ratios(xs: &[f64]) -> Vec<f64> {
    xs.iter()
        .filter(|&&x| x > -1.0 && x.is_finite())
        .map(|&x| x.ln_1p())
        .collect()
}

pub fn robust(xs: &[f64]) -> Result<Robust> {
    Ok(Robust {
        mean: estimate(xs)?,
        median: median(xs)?,
        log_ratio: estimate(&log_ratios(xs))?,
    })
}

pub fn summarise(results: &[MediationResult]) -> Result<MediationSummary> {
    let first = results
        .first()
        .ok_or_else(|| Error::param("results", "no mediation results to summarise"))?;
    let (nl, heads) = (
        first.nie_mlp.len(),
        first.nie_head.first().map_or(0, |h| h.len()),
    );
    let column =
        |f: &dyn Fn(&MediationResult) -> f64| -> Vec<f64> { results.iter().map(f).collect() };
    let per = |f: &dyn Fn(&MediationResult, usize) -> f64| -> Result<Vec<Estimate>> {
        (0..nl).map(|l| estimate(&column(&|r| f(r, l)))).collect()
    };
    let per_robust = |f: &dyn Fn(&MediationResult, usize) -> f64| -> Result<Vec<Robust>> {
        (0..nl).map(|l| robust(&column(&|r| f(r, l)))).collect()
    };
    let per_head = |g: &dyn Fn(&[f64]) -> Result<Estimate>| -> Result<Vec<Vec<Estimate>>> {
        (0..nl)
            .map(|l| {
                (0..heads)
                    .map(|h| g(&column(&|r| r.nie_head[l][h])))
                    .collect::<Result<Vec<_>>>()
            })
            .collect()
    };
    let nie_head_ci = per_head(&|xs| estimate(xs))?;
    Ok(MediationSummary {
        n_prompts: results.len(),
        te: estimate(&column(&|r| r.te))?,
        nie_mlp: per(&|r, l| r.nie_mlp[l])?,
        nde_mlp: per(&|r, l| r.nde_mlp[l])?,
        nie_attn: per(&|r, l| r.nie_attn[l])?,
        nde_attn: per(&|r, l| r.nde_attn[l])?,
        nie_head: nie_head_ci
            .iter()
            .map(|row| row.iter().map(|e| e.value).collect())
            .collect(),
        nie_head_ci,
        te_robust: robust(&column(&|r| r.te))?,
        nie_mlp_robust: per_robust(&|r, l| r.nie_mlp[l])?,
        nie_attn_robust: per_robust(&|r, l| r.nie_attn[l])?,
        nie_head_log: per_head(&|xs| estimate(&log_ratios(xs)))?,
    })
}

fn cell(e: &Estimate) -> String {
    format!("{:.3} [{:.3}, {:.3}]", e.value, e.ci_low, e.ci_high)
}

impl MediationSummary {
    /// The layer table (MLP and attention NIE: mean, median, mean log-ratio, each with its 95%
    /// CI) and the `top_heads` heads with the largest mean log-ratio, as markdown.
    pub fn markdown(&self, top_heads: usize) -> String {
        let mut s = format!(
            "n = {} prompt pairs. TE: mean {}, median {}, mean ln(1 + TE) {}.\n\n",
            self.n_prompts,
            cell(&self.te_robust.mean),
            cell(&self.te_robust.median),
            cell(&self.te_robust.log_ratio)
        );
        s.push_str(
            "| layer | MLP NIE mean | MLP median | MLP mean ln(1 + NIE) | attention NIE mean \
             | attention median | attention mean ln(1 + NIE) |\n|---:|---|---|---|---|---|---|\n",
        );
        for (l, (m, a)) in self
            .nie_mlp_robust
            .iter()
            .zip(&self.nie_attn_robust)
            .enumerate()
        {
            s.push_str(&format!(
                "| {l} | {} | {} | {} | {} | {} | {} |\n",
                cell(&m.mean),
                cell(&m.median),
                cell(&m.log_ratio),
                cell(&a.mean),
                cell(&a.median),
                cell(&a.log_ratio)
            ));
        }
        let mut heads: Vec<(usize, usize, &Estimate)> = self
            .nie_head_log
            .iter()
            .enumerate()
            .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, e)| (l, h, e)))
            .collect();
        heads.sort_by(|a, b| b.2.value.total_cmp(&a.2.value));
        s.push_str(&format!(
            "\nHeads with the largest mean ln(1 + NIE) (top {top_heads}):\n\n\
             | layer | head | mean ln(1 + NIE) | NIE mean |\n|---:|---:|---|---|\n"
        ));
        for (l, h, e) in heads.into_iter().take(top_heads) {
            s.push_str(&format!(
                "| {l} | {h} | {} | {} |\n",
                cell(e),
                cell(&self.nie_head_ci[l][h])
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outlier_moves_the_mean_not_the_median_or_log_ratio() {
        let mut xs = vec![0.1, 0.2, 0.15, 0.05, 0.12, 0.18, 0.1, 0.08, 0.11, 0.14];
        let calm = robust(&xs).unwrap();
        xs[0] = 238.0;
        let wild = robust(&xs).unwrap();
        assert!(wild.mean.value > 20.0 * calm.mean.value);
        assert!((wild.median.value - calm.median.value).abs() < 0.02);
        // One prompt's ln(239) ≈ 5.5 over 10 prompts: the log-ratio moves by ~0.55, the mean
        // by ~24.
        assert!(wild.log_ratio.value - calm.log_ratio.value < 0.6);
        assert!(
            wild.median.ci_low <= wild.median.value && wild.median.value <= wild.median.ci_high
        );
    }

    #[test]
    fn log_ratio_is_ln_of_the_odds_ratio() {
        // NIE = 1 doubles the odds and NIE = -0.5 halves them: their log-ratios cancel.
        let r = robust(&[1.0, -0.5]).unwrap();
        assert!(r.log_ratio.value.abs() < 1e-12);
        assert!((r.mean.value - 0.25).abs() < 1e-12);
        // Zero patched odds (effect −1): left out of the log-ratio, kept in mean and median.
        let z = robust(&[-1.0, 0.5, 1.0]).unwrap();
        assert_eq!((z.log_ratio.n, z.mean.n, z.median.n), (2, 3, 3));
        assert!((z.log_ratio.value - (1.5f64.ln() + 2f64.ln()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]).unwrap().value, 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]).unwrap().value, 2.5);
        assert_eq!(median(&[7.0]).unwrap().value, 7.0);
    }
}
