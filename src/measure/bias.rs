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
    /// Mean of p(he) − p(she) signed toward each prompt's definitional gender (+ for male
    /// words), over prompts that have one: how much factual gender the model keeps (the
    /// definitional controls should stay at the base model's value). None when no prompt has one.
    #[serde(default)]
    pub gap_toward_definitional: Option<Estimate>,
}

/// Mean of p(he) − p(she) · sign(definitional) over the prompts with a definitional gender;
/// None when fewer than two have one (no CI).
pub fn gap_toward_definitional(prompts: &[PromptProbs]) -> Result<Option<Estimate>> {
    let toward: Vec<f64> = prompts
        .iter()
        .filter(|p| p.definitional != 0.0)
        .map(|p| (p.p_he - p.p_she) * p.definitional.signum())
        .collect();
    if toward.len() < 2 {
        return Ok(None);
    }
    Ok(Some(stats::mean_ci(&toward)?))
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
        gap_toward_definitional: gap_toward_definitional(prompts)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(definitional: f64, p_he: f64, p_she: f64) -> PromptProbs {
        PromptProbs {
            profession: "x".into(),
            name: "x".into(),
            template_index: 0,
            text: "The x said that".into(),
            definitional,
            stereotypical: 0.0,
            p_he,
            p_she,
            p_they: 0.0,
        }
    }

    /// A male word preferring "he" and a female word preferring "she" both count as kept
    /// gender; prompts without a definitional gender are left out.
    #[test]
    fn gap_toward_definitional_signs_by_word_gender() {
        let ps = [
            prompt(0.8, 0.5, 0.1),
            prompt(-0.9, 0.1, 0.3),
            prompt(0.0, 0.9, 0.0),
        ];
        let e = gap_toward_definitional(&ps).unwrap().unwrap();
        assert_eq!(e.n, 2);
        assert!((e.value - 0.3).abs() < 1e-12, "{}", e.value);
        // Female words preferring "he" count against.
        let against = [prompt(-0.9, 0.4, 0.1), prompt(-0.5, 0.3, 0.2)];
        let e = gap_toward_definitional(&against).unwrap().unwrap();
        assert!((e.value + 0.2).abs() < 1e-12, "{}", e.value);
        // Fewer than two definitional prompts: no estimate.
        assert!(gap_toward_definitional(&ps[..1]).unwrap().is_none());
    }
}
