//! Seeded percentile bootstrap over items: resample item indices with replacement and read the
//! 2.5% / 97.5% quantiles of the statistic.

use super::Estimate;
use crate::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How many resamples and which seed; stored with results for reproducibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapSpec {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        BootstrapSpec {
            resamples: 1000,
            seed: 0,
        }
    }
}

/// Linear-interpolation quantile (numpy's default) of sorted values, q in [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile bootstrap of one statistic of items `0..n`; `stat` receives the item indices
/// of a sample (the identity sample gives the point estimate).
pub fn bootstrap<F: Fn(&[usize]) -> f64>(
    n: usize,
    resamples: usize,
    seed: u64,
    stat: F,
) -> Result<Estimate> {
    let spec = BootstrapSpec { resamples, seed };
    let mut out = bootstrap_many(n, &spec, 1, |idx| vec![stat(idx)])?;
    Ok(out.remove(0))
}

/// Bootstrap of `k` statistics computed from the same resamples. Resamples where a statistic is
/// not finite (e.g. a constant resample) are dropped for that statistic; more than 10% dropped
/// is an error, because the interval would then describe a different population.
pub fn bootstrap_many<F: Fn(&[usize]) -> Vec<f64>>(
    n: usize,
    spec: &BootstrapSpec,
    k: usize,
    stat: F,
) -> Result<Vec<Estimate>> {
    if n == 0 {
        return Err(Error::param("n", "bootstrap over zero items"));
    }
    if spec.resamples < 10 {
        return Err(Error::param(
            "resamples",
            "need at least 10 bootstrap resamples",
        ));
    }
    let identity: Vec<usize> = (0..n).collect();
    let point = stat(&identity);
    if point.len() != k {
        return Err(Error::param(
            "stat",
            format!("returned {} values, expected {k}", point.len()),
        ));
    }
    let draws = resample(n, spec, k, &stat)?;
    let mut out = Vec::with_capacity(k);
    for (j, mut d) in draws.into_iter().enumerate() {
        d.sort_by(f64::total_cmp);
        out.push(Estimate {
            value: point[j],
            ci_low: percentile(&d, 0.025),
            ci_high: percentile(&d, 0.975),
            n,
            method: format!(
                "percentile bootstrap 95% ({} of {} resamples, seed {})",
                d.len(),
                spec.resamples,
                spec.seed
            ),
        });
    }
    Ok(out)
}

/// The finite values of `k` statistics over `spec.resamples` seeded resamples of items `0..n`;
/// an error when more than 10% of a statistic's resamples are not finite.
fn resample<F: Fn(&[usize]) -> Vec<f64>>(
    n: usize,
    spec: &BootstrapSpec,
    k: usize,
    stat: &F,
) -> Result<Vec<Vec<f64>>> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(spec.resamples); k];
    let mut idx = vec![0usize; n];
    for _ in 0..spec.resamples {
        for i in idx.iter_mut() {
            *i = rng.gen_range(0..n);
        }
        for (d, v) in draws.iter_mut().zip(stat(&idx)) {
            if v.is_finite() {
                d.push(v);
            }
        }
    }
    for (j, d) in draws.iter().enumerate() {
        if (d.len() as f64) < 0.9 * spec.resamples as f64 {
            return Err(Error::Numerical(format!(
                "bootstrap statistic {j}: only {} of {} resamples were finite",
                d.len(),
                spec.resamples
            )));
        }
    }
    Ok(draws)
}

/// Bootstrap standard errors of `k` statistics of items `0..n`: the sample standard deviation
/// of each over seeded resamples. For aggregates without a per-item standard error (ratios of
/// sums such as perplexity, means over groups such as StereoSet's per-term scores), so that
/// tables can give them the same `value ± 1.96·se` interval as everything else.
pub fn bootstrap_stderr<F: Fn(&[usize]) -> Vec<f64>>(
    n: usize,
    spec: &BootstrapSpec,
    k: usize,
    stat: F,
) -> Result<Vec<f64>> {
    if n < 2 {
        return Err(Error::param(
            "n",
            "bootstrap standard error needs two items",
        ));
    }
    if spec.resamples < 10 {
        return Err(Error::param(
            "resamples",
            "need at least 10 bootstrap resamples",
        ));
    }
    let draws = resample(n, spec, k, &stat)?;
    draws
        .iter()
        .map(|d| super::describe::sample_sd(d))
        .collect()
}
