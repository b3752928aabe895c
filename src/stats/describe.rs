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

/// Wilson score 95% interval of a proportion `p` observed on `n` trials: inside [0, 1] for
/// every p and n (the normal p ± 1.96·se is not, and has zero width at p = 0 or 1). `None`
/// for n = 0 or p outside [0, 1].
pub fn wilson(p: f64, n: usize) -> Option<(f64, f64)> {
    if n == 0 || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let n = n as f64;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // The interval always holds p (exactly 0 or 1 at the ends); the clamps keep rounding
    // (2.8e-17 at p = 0) from saying otherwise.
    Some(((centre - half).clamp(0.0, p), (centre + half).clamp(p, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: 2/6 → centre (1/3 + 0.32013)/1.64027 = 0.39839, half 0.30162.
    #[test]
    fn wilson_matches_hand_computed_values() {
        let (lo, hi) = wilson(2.0 / 6.0, 6).unwrap();
        assert!(
            (lo - 0.0968).abs() < 5e-5 && (hi - 0.7000).abs() < 5e-5,
            "{lo} {hi}"
        );
        // 0/10: [0, z²/(n + z²)] = [0, 0.2775]; 10/10 mirrors it.
        let (lo, hi) = wilson(0.0, 10).unwrap();
        assert!(lo == 0.0 && (hi - 0.27753).abs() < 5e-5, "{lo} {hi}");
        let (lo, hi) = wilson(1.0, 10).unwrap();
        assert!((lo - 0.72247).abs() < 5e-5 && hi == 1.0, "{lo} {hi}");
        // 12/20 (COPA in the quick spec): [0.3866, 0.7812].
        let (lo, hi) = wilson(0.6, 20).unwrap();
        assert!(
            (lo - 0.3866).abs() < 5e-5 && (hi - 0.7812).abs() < 5e-5,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0.5, 0), None);
        assert_eq!(wilson(1.5, 10), None);
    }

    #[test]
    fn wilson_stays_in_the_unit_interval_and_covers_the_estimate() {
        for n in 1..=200 {
            for k in 0..=n {
                let p = k as f64 / n as f64;
                let (lo, hi) = wilson(p, n).unwrap();
                assert!(
                    (0.0..=p).contains(&lo) && (p..=1.0).contains(&hi),
                    "{k}/{n}"
                );
            }
        }
    }
}
