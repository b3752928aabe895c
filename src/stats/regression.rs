//! Ordinary least squares with an intercept (nalgebra SVD), and the DAMA occupation regression
//! e = a_s · stereotypical + a_f · definitional + b with bootstrap intervals over prompts.

use super::bootstrap::{bootstrap_many, BootstrapSpec};
use super::{check_finite, check_same_len, Estimate};
use crate::{Error, Result};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// Fit of y = X · coefficients + intercept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OlsFit {
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub r2: f64,
    pub n: usize,
}

/// OLS of `y` on the columns `x` (each of length n) plus an intercept. Errors on rank-deficient
/// designs (e.g. a constant column) instead of returning arbitrary coefficients.
pub fn ols(x: &[&[f64]], y: &[f64]) -> Result<OlsFit> {
    let n = y.len();
    check_finite("y", y)?;
    for (j, col) in x.iter().enumerate() {
        check_same_len(("y", n), (&format!("x[{j}]"), col.len()))?;
        check_finite(&format!("x[{j}]"), col)?;
    }
    let p = x.len() + 1;
    if n <= p {
        return Err(Error::param(
            "y",
            format!("OLS with {p} parameters needs more than {p} rows, got {n}"),
        ));
    }
    let design = DMatrix::from_fn(n, p, |i, j| if j < x.len() { x[j][i] } else { 1.0 });
    let target = DVector::from_column_slice(y);
    let svd = design.clone().svd(true, true);
    let smax = svd.singular_values.max();
    let smin = svd.singular_values.min();
    if smin.is_nan() || smin <= 1e-10 * smax {
        return Err(Error::Numerical(format!(
            "OLS design is rank-deficient (singular values {smin:.3e} .. {smax:.3e})"
        )));
    }
    let beta = svd
        .solve(&target, 0.0)
        .map_err(|e| Error::Numerical(e.to_string()))?;
    let resid = &target - &design * &beta;
    let ybar = target.mean();
    let sst: f64 = y.iter().map(|v| (v - ybar) * (v - ybar)).sum();
    let r2 = if sst > 0.0 {
        1.0 - resid.norm_squared() / sst
    } else {
        f64::NAN
    };
    Ok(OlsFit {
        coefficients: beta.iter().take(x.len()).copied().collect(),
        intercept: beta[x.len()],
        r2,
        n,
    })
}

/// DAMA's occupation regression with percentile-bootstrap intervals (prompts resampled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DamaFit {
    pub a_s: Estimate,
    pub a_f: Estimate,
    pub b: Estimate,
    pub r2: Estimate,
    pub n: usize,
}

/// Regress e = p(he) - p(she) on the stereotypical and definitional scores of each prompt.
pub fn dama_regression(
    e: &[f64],
    stereotypical: &[f64],
    definitional: &[f64],
    boot: &BootstrapSpec,
) -> Result<DamaFit> {
    let fit = ols(&[stereotypical, definitional], e)?;
    if !fit.r2.is_finite() {
        return Err(Error::param("e", "all values are equal; R² is undefined"));
    }
    let stat = |idx: &[usize]| {
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let (ys, ss, ds) = (pick(e), pick(stereotypical), pick(definitional));
        match ols(&[&ss, &ds], &ys) {
            Ok(f) => vec![f.coefficients[0], f.coefficients[1], f.intercept, f.r2],
            Err(_) => vec![f64::NAN; 4],
        }
    };
    let mut est = bootstrap_many(e.len(), boot, 4, stat)?.into_iter();
    let mut next = || {
        est.next()
            .ok_or_else(|| Error::Numerical("bootstrap returned too few estimates".into()))
    };
    Ok(DamaFit {
        a_s: next()?,
        a_f: next()?,
        b: next()?,
        r2: next()?,
        n: e.len(),
    })
}
