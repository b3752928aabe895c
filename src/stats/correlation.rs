//! Pearson (Fisher z interval) and Spearman (average ranks for ties, bootstrap interval).

use super::bootstrap::{bootstrap, BootstrapSpec};
use super::{check_finite, check_same_len, Estimate, Z95};
use crate::{Error, Result};

/// Plain Pearson r; NaN when either side is constant.
fn pearson_r(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

fn check_pair(x: &[f64], y: &[f64], min_n: usize) -> Result<()> {
    check_same_len(("x", x.len()), ("y", y.len()))?;
    check_finite("x", x)?;
    check_finite("y", y)?;
    if x.len() < min_n {
        return Err(Error::param(
            "x",
            format!("need at least {min_n} pairs, got {}", x.len()),
        ));
    }
    Ok(())
}

/// Pearson correlation with the Fisher z 95% interval tanh(atanh r ± 1.96 / sqrt(n - 3)).
pub fn pearson(x: &[f64], y: &[f64]) -> Result<Estimate> {
    check_pair(x, y, 4)?;
    let r = pearson_r(x, y);
    if r.is_nan() {
        return Err(Error::param(
            "x",
            "correlation undefined: a variable is constant",
        ));
    }
    let z = r.atanh();
    let h = Z95 / ((x.len() - 3) as f64).sqrt();
    Ok(Estimate {
        value: r,
        ci_low: (z - h).tanh(),
        ci_high: (z + h).tanh(),
        n: x.len(),
        method: "Fisher z 95%".into(),
    })
}

/// 1-based ranks; tied values share the average of the ranks they span.
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rho (Pearson on average ranks) with a percentile-bootstrap interval over pairs.
pub fn spearman(x: &[f64], y: &[f64], boot: &BootstrapSpec) -> Result<Estimate> {
    check_pair(x, y, 4)?;
    let rho = pearson_r(&ranks(x), &ranks(y));
    if rho.is_nan() {
        return Err(Error::param(
            "x",
            "correlation undefined: a variable is constant",
        ));
    }
    let mut est = bootstrap(x.len(), boot.resamples, boot.seed, |idx| {
        let xs: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
        let ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        pearson_r(&ranks(&xs), &ranks(&ys))
    })?;
    est.value = rho;
    Ok(est)
}
