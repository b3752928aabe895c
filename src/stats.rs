//! Statistics for reporting bias and capability numbers with uncertainty: means with CIs,
//! bootstrap, OLS (and the DAMA regression), correlations and paired base-vs-edited tests.
//! Pure f64 Rust; every estimate says how its interval was made.

mod bootstrap;
mod correlation;
mod describe;
mod paired;
mod regression;
mod special;

pub use bootstrap::{bootstrap, bootstrap_many, bootstrap_stderr, percentile, BootstrapSpec};
pub use correlation::{pearson, ranks, spearman};
pub use describe::{mean, mean_ci, sample_sd, sem, wilson};
pub use paired::{mcnemar, paired_bootstrap_mean_diff, paired_t_test, McNemar, TTest};
pub use regression::{dama_regression, ols, DamaFit, OlsFit};
pub use special::{binomial_cdf, ln_gamma, reg_inc_beta, student_t_cdf, student_t_two_sided_p};

use serde::{Deserialize, Serialize};

/// A point estimate with a 95% interval; `method` names how the interval was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
    pub method: String,
}

/// `Estimate::method` of a value reported without any interval (a metric whose task gives no
/// standard error: StereoSet's LMS/SS/ICAT, perplexities): ci_low = ci_high =
/// value, and tables say "no CI" instead of showing a zero-width interval.
pub const POINT_METHOD: &str = "point (no stderr)";

/// `Estimate::method` of a value whose sample is too small for any interval (fewer than
/// [`MIN_N_FOR_CI`] items): ci_low = ci_high = value, and tables say "n too small".
pub const TOO_FEW_METHOD: &str = "none (n too small for an interval)";

/// Fewest items for an interval on a benchmark metric: with fewer, neither the normal nor the
/// Wilson interval has its nominal coverage, so none is printed.
pub const MIN_N_FOR_CI: usize = 10;

impl Estimate {
    /// A value from too few items for an interval (see [`TOO_FEW_METHOD`]).
    pub fn too_few(value: f64, n: usize) -> Estimate {
        Estimate {
            method: TOO_FEW_METHOD.into(),
            ..Estimate::point(value, n)
        }
    }

    /// A value reported without an interval (see [`POINT_METHOD`]).
    pub fn point(value: f64, n: usize) -> Estimate {
        Estimate {
            value,
            ci_low: value,
            ci_high: value,
            n,
            method: POINT_METHOD.into(),
        }
    }

    /// Whether this is a value without an interval (none given, or too few items for one).
    pub fn is_point(&self) -> bool {
        self.method == POINT_METHOD || self.method == TOO_FEW_METHOD
    }
}

/// z quantile of a two-sided 95% normal interval.
pub const Z95: f64 = 1.96;

/// Error unless every value is finite; `name` is the parameter reported.
fn check_finite(name: &str, xs: &[f64]) -> crate::Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(crate::Error::param(
            name,
            format!("value {i} is not finite ({})", xs[i]),
        )),
        None => Ok(()),
    }
}

/// Error unless the slices have equal length.
fn check_same_len(a: (&str, usize), b: (&str, usize)) -> crate::Result<()> {
    if a.1 != b.1 {
        return Err(crate::Error::param(
            b.0,
            format!("has {} values but `{}` has {}", b.1, a.0, a.1),
        ));
    }
    Ok(())
}
