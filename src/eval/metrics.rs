//! Aggregates as lm-evaluation-harness computes them: means with the standard error
//! `sample_stddev / sqrt(n)` (sample stddev with n - 1).

use serde::{Deserialize, Serialize};

/// A metric value with its standard error (None where no per-item error is defined).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub value: f64,
    pub stderr: Option<f64>,
}

impl Metric {
    /// Mean of per-item scores with lm-eval's `mean_stderr`.
    pub fn mean_of(xs: &[f64]) -> Metric {
        Metric {
            value: mean(xs),
            stderr: mean_stderr(xs),
        }
    }
    /// Mean of 0/1 outcomes.
    pub fn accuracy(correct: impl IntoIterator<Item = bool>) -> Metric {
        let xs: Vec<f64> = correct
            .into_iter()
            .map(|c| f64::from(u8::from(c)))
            .collect();
        Metric::mean_of(&xs)
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n - 1 denominator); None for fewer than two values.
pub fn sample_stddev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Some((ss / (xs.len() - 1) as f64).sqrt())
}

/// lm-eval `mean_stderr`: sample stddev / sqrt(n).
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    sample_stddev(xs).map(|s| s / (xs.len() as f64).sqrt())
}

/// Index of the largest value; the first one on ties (numpy `argmax`).
pub fn argmax(xs: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        match best {
            Some(b) if xs[b] >= x => {}
            _ => best = Some(i),
        }
    }
    best
}
