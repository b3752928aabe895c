//! Occupation-prompt bias metrics: mean |p(he) - p(she)|, DAMA's regression, and correlations of
//! log p(she)/p(he) with the stereotype score and with BLS % female. Every number has n and a CI.

use super::occupations::PromptProbs;
use crate::data::BlsTable;
use crate::stats::{self, BootstrapSpec, DamaFit, Estimate};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BiasMetrics {
    pub n_prompts: usize,
    pub n_professions: usize,
    /// Mean over prompts of |p(he) - p(she)| (0 = no preference).
    pub mean_abs_gap: Estimate,
    /// Mean over prompts of p(he) - p(she) (signed: > 0 prefers "he").
    pub mean_gap: Estimate,
    pub mean_p_he: Estimate,
    pub mean_p_she: Estimate,
    /// p(he) - p(she) = a_s·stereotypical + a_f·definitional + b (DAMA); None when the subset
    /// has no spread in one of the scores (e.g. controls only).
    pub regression: Option<DamaFit>,
    /// Pearson / Spearman of log p(she)/p(he) against the Bolukbasi stereotypical score.
    pub pearson_stereotype: Option<Estimate>,
    pub spearman_stereotype: Option<Estimate>,
    /// The same against BLS % female, over prompts whose profession is in the BLS table.
    pub pearson_bls: Option<Estimate>,
    pub spearman_bls: Option<Estimate>,
}

/// Compute every metric over the given prompts.
pub fn bias_metrics(
    prompts: &[PromptProbs],
    bls: Option<&BlsTable>,
    boot: &BootstrapSpec,
) -> Result<BiasMetrics> {
    if prompts.is_empty() {
        return Err(Error::param("prompts", "no prompts to measure"));
    }
    let e: Vec<f64> = prompts.iter().map(|p| p.p_he - p.p_she).collect();
    let abs: Vec<f64> = e.iter().map(|x| x.abs()).collect();
    let st: Vec<f64> = prompts.iter().map(|p| p.stereotypical).collect();
    let df: Vec<f64> = prompts.iter().map(|p| p.definitional).collect();
    let log_ratio: Vec<f64> = prompts.iter().map(|p| (p.p_she / p.p_he).ln()).collect();
    let mut profs: Vec<&str> = prompts.iter().map(|p| p.profession.as_str()).collect();
    profs.sort();
    profs.dedup();
    let regression = stats::dama_regression(&e, &st, &df, boot).ok();
    let pearson_stereotype = stats::pearson(&st, &log_ratio).ok();
    let spearman_stereotype = stats::spearman(&st, &log_ratio, boot).ok();
    let (mut bx, mut by) = (Vec::new(), Vec::new());
    if let Some(table) = bls {
        for (p, lr) in prompts.iter().zip(&log_ratio) {
            if let Some(pct) = table.bls_pct_female(&p.name) {
                bx.push(pct);
                by.push(*lr);
            }
        }
    }
    let (pearson_bls, spearman_bls) = if bx.len() >= 4 {
        (
            stats::pearson(&bx, &by).ok(),
            stats::spearman(&bx, &by, boot).ok(),
        )
    } else {
        (None, None)
    };
    Ok(BiasMetrics {
        n_prompts: prompts.len(),
        n_professions: profs.len(),
        mean_abs_gap: stats::mean_ci(&abs)?,
        mean_gap: stats::mean_ci(&e)?,
        mean_p_he: stats::mean_ci(&prompts.iter().map(|p| p.p_he).collect::<Vec<_>>())?,
        mean_p_she: stats::mean_ci(&prompts.iter().map(|p| p.p_she).collect::<Vec<_>>())?,
        regression,
        pearson_stereotype,
        spearman_stereotype,
        pearson_bls,
        spearman_bls,
    })
}
