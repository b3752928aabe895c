//! Paired comparisons of a base and an edited model on the same items: bootstrap of the mean
//! difference, the paired t-test, and McNemar's exact test for paired accuracies.

use super::bootstrap::{bootstrap, BootstrapSpec};
use super::describe::{mean, sample_sd};
use super::special::{binomial_cdf, student_t_two_sided_p};
use super::{check_finite, check_same_len, Estimate};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

fn diffs(base: &[f64], edited: &[f64]) -> Result<Vec<f64>> {
    check_same_len(("base", base.len()), ("edited", edited.len()))?;
    check_finite("base", base)?;
    check_finite("edited", edited)?;
    Ok(edited.iter().zip(base).map(|(e, b)| e - b).collect())
}

/// Mean of edited - base with a percentile-bootstrap interval, items resampled as pairs.
pub fn paired_bootstrap_mean_diff(
    base: &[f64],
    edited: &[f64],
    boot: &BootstrapSpec,
) -> Result<Estimate> {
    let d = diffs(base, edited)?;
    mean(&d)?;
    bootstrap(d.len(), boot.resamples, boot.seed, |idx| {
        idx.iter().map(|&i| d[i]).sum::<f64>() / idx.len() as f64
    })
}

/// Paired t-test of edited - base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    pub mean_diff: f64,
    pub t: f64,
    pub df: usize,
    pub p_two_sided: f64,
    pub n: usize,
}

pub fn paired_t_test(base: &[f64], edited: &[f64]) -> Result<TTest> {
    let d = diffs(base, edited)?;
    let m = mean(&d)?;
    let sd = sample_sd(&d)?;
    let n = d.len();
    let t = if sd > 0.0 {
        m / (sd / (n as f64).sqrt())
    } else if m == 0.0 {
        0.0 // identical pairs: no evidence of a difference
    } else {
        m.signum() * f64::INFINITY // constant non-zero shift
    };
    Ok(TTest {
        mean_diff: m,
        t,
        df: n - 1,
        p_two_sided: student_t_two_sided_p(t, (n - 1) as f64),
        n,
    })
}

/// McNemar's exact test: only discordant pairs count; under H0 they split Binomial(b + c, 1/2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Items right before the edit and wrong after.
    pub base_only: u64,
    /// Items wrong before the edit and right after.
    pub edited_only: u64,
    pub p_exact: f64,
    pub n: usize,
}

pub fn mcnemar(base_correct: &[bool], edited_correct: &[bool]) -> Result<McNemar> {
    check_same_len(
        ("base_correct", base_correct.len()),
        ("edited_correct", edited_correct.len()),
    )?;
    if base_correct.is_empty() {
        return Err(Error::param("base_correct", "no items"));
    }
    let base_only = base_correct
        .iter()
        .zip(edited_correct)
        .filter(|(b, e)| **b && !**e)
        .count() as u64;
    let edited_only = base_correct
        .iter()
        .zip(edited_correct)
        .filter(|(b, e)| !**b && **e)
        .count() as u64;
    let k = base_only.min(edited_only);
    let p = (2.0 * binomial_cdf(k, base_only + edited_only, 0.5)).min(1.0);
    Ok(McNemar {
        base_only,
        edited_only,
        p_exact: p,
        n: base_correct.len(),
    })
}
