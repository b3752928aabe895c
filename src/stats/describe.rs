//! Mean, sample standard deviation and the normal-approximation interval.

use super::{check_finite, Estimate, Z95};
use crate::{Error, Result};

pub fn mean(xs: &[f64]) -> Result<f64> {
    if xs.is_empty() {
        return Err(Error::param("values", "mean of an empty list"));
    }
    check_finite("values", xs)?;
    Ok(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (ddof = 1); needs at least two values.
pub fn sample_sd(xs: &[f64]) -> Result<f64> {
    if xs.len() < 2 {
        return Err(Error::param(
            "values",
            "standard deviation needs at least 2 values",
        ));
    }
    let m = mean(xs)?;
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Ok((ss / (xs.len() - 1) as f64).sqrt())
}

/// Standard error of the mean as lm-evaluation-harness reports it: sample sd / sqrt(n).
pub fn sem(xs: &[f64]) -> Result<f64> {
    Ok(sample_sd(xs)? / (xs.len() as f64).sqrt())
}

/// Mean with the normal 95% interval mean ± 1.96 · sem.
pub fn mean_ci(xs: &[f64]) -> Result<Estimate> {
    let m = mean(xs)?;
    let h = Z95 * sem(xs)?;
    Ok(Estimate {
        value: m,
        ci_low: m - h,
        ci_high: m + h,
        n: xs.len(),
        method: "normal 95% (1.96 * sample sd / sqrt(n))".into(),
    })
}
