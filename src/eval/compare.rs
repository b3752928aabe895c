//! Base vs edited (or any list of runs) side by side: each metric of each run, its delta to the
//! first run, and a paired test on the per-item records: McNemar's exact test for 0/1 outcomes,
//! the paired t-test for real-valued per-item scores. Tests are only run when both runs scored
//! the same items (same data hashes, seed and sub-sampling, same item count).

use crate::eval::registry::TaskScores;
use crate::eval::suite::SuiteResult;
use crate::stats::{mcnemar, paired_t_test};
use crate::Result;
use serde::{Deserialize, Serialize};

/// Per-item values behind a metric.
#[derive(Debug, Clone, PartialEq)]
pub enum PerItem {
    Binary(Vec<bool>),
    Real(Vec<f64>),
}

/// The per-item series of `metric` of a task, where one is defined.
pub fn per_item(scores: &TaskScores, metric: &str) -> Option<PerItem> {
    use PerItem::{Binary, Real};
    Some(match (scores, metric) {
        (TaskScores::Choice(c), "acc") => Binary(c.records.iter().map(|r| r.correct).collect()),
        (TaskScores::Choice(c), "acc_norm") => {
            Binary(c.records.iter().map(|r| r.correct_norm).collect())
        }
        (TaskScores::Winogrande(w), "acc") => Binary(w.records.iter().map(|r| r.correct).collect()),
        (TaskScores::Lambada(l), "acc") => Binary(l.records.iter().map(|r| r.is_greedy).collect()),
        (TaskScores::Lambada(l), "perplexity") => {
            Real(l.records.iter().map(|r| r.loglik).collect())
        }
        (TaskScores::Perplexity(p), m) if m.ends_with("perplexity") || m == "bits_per_byte" => {
            Real(
                p.records
                    .iter()
                    .map(|r| r.loglik / r.tokens.max(1) as f64)
                    .collect(),
            )
        }
        (TaskScores::Lama(l), "acc") => Binary(l.records.iter().map(|r| r.correct).collect()),
        (TaskScores::WinoBias(w), m) => match m {
            "acc" => Binary(
                w.records
                    .iter()
                    .map(|r| r.pro_correct)
                    .chain(w.records.iter().map(|r| r.anti_correct))
                    .collect(),
            ),
            "acc_pro" => Binary(w.records.iter().map(|r| r.pro_correct).collect()),
            "acc_anti" => Binary(w.records.iter().map(|r| r.anti_correct).collect()),
            "delta_s" => Real(
                w.records
                    .iter()
                    .map(|r| {
                        f64::from(u8::from(r.pro_correct)) - f64::from(u8::from(r.anti_correct))
                    })
                    .collect(),
            ),
            "pro_more_likely" => Binary(
                w.records
                    .iter()
                    .map(|r| r.pro_sentence_loglik > r.anti_sentence_loglik)
                    .collect(),
            ),
            _ => return None,
        },
        (TaskScores::Winogender(w), "acc") => {
            Binary(w.all.records.iter().map(|r| r.correct).collect())
        }
        (TaskScores::Winogender(w), "acc_norm") => {
            Binary(w.all.records.iter().map(|r| r.correct_norm).collect())
        }
        (TaskScores::StereoSet(s), "ss") => Binary(
            s.records
                .iter()
                .map(|r| r.stereotype > r.anti_stereotype)
                .collect(),
        ),
        (TaskScores::Crows(c), "pct_stereotype") => Binary(
            c.records
                .iter()
                .map(|r| r.loglik_more > r.loglik_less)
                .collect(),
        ),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// "mcnemar_exact" or "paired_t".
    pub test: String,
    pub p_value: f64,
    /// McNemar: items only the base got right / only the other run; t-test: t statistic.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    pub task: String,
    pub metric: String,
    /// One value per run (None: the run lacks this task or metric).
    pub values: Vec<Option<f64>>,
    /// value - first run's value.
    pub deltas: Vec<Option<f64>>,
    /// Paired test of each run against the first (None for the first, or when not pairable).
    pub tests: Vec<Option<PairedTest>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub runs: Vec<String>,
    pub rows: Vec<CompareRow>,
    /// Why some tests were not run.
    pub notes: Vec<String>,
}

fn paired(a: &PerItem, b: &PerItem) -> Result<Option<PairedTest>> {
    Ok(match (a, b) {
        (PerItem::Binary(x), PerItem::Binary(y)) if x.len() == y.len() && !x.is_empty() => {
            let m = mcnemar(x, y)?;
            Some(PairedTest {
                test: "mcnemar_exact".into(),
                p_value: m.p_exact,
                detail: format!("base only {}, other only {}", m.base_only, m.edited_only),
            })
        }
        (PerItem::Real(x), PerItem::Real(y)) if x.len() == y.len() && x.len() > 1 => {
            let t = paired_t_test(x, y)?;
            Some(PairedTest {
                test: "paired_t".into(),
                p_value: t.p_two_sided,
                detail: format!("t = {:.3}, df = {}", t.t, t.df),
            })
        }
        _ => None,
    })
}

/// Compare runs; the first is the baseline.
pub fn compare(labels: &[String], runs: &[SuiteResult]) -> Result<Comparison> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let Some(base) = runs.first() else {
        return Ok(Comparison {
            runs: labels.to_vec(),
            rows,
            notes,
        });
    };
    let mut order: Vec<(String, String)> = Vec::new();
    for r in runs {
        for t in &r.tasks {
            for m in &t.metrics {
                let key = (t.task.clone(), m.name.clone());
                if !order.contains(&key) {
                    order.push(key);
                }
            }
        }
    }
    for (task, metric) in order {
        let value = |r: &SuiteResult| {
            r.task(&task)
                .and_then(|t| t.metrics.iter().find(|m| m.name == metric))
                .map(|m| m.value)
        };
        let values: Vec<Option<f64>> = runs.iter().map(value).collect();
        let b = values[0];
        let deltas = values.iter().map(|v| Some((*v)? - b?)).collect();
        let mut tests = vec![None];
        for (k, r) in runs.iter().enumerate().skip(1) {
            let (Some(bt), Some(rt)) = (base.task(&task), r.task(&task)) else {
                tests.push(None);
                continue;
            };
            let same = bt.data_hashes == rt.data_hashes
                && base.seed == r.seed
                && base.limit == r.limit
                && base.fraction == r.fraction;
            if !same {
                let note = format!(
                    "{task}: run {} scored different items than the baseline; no paired test",
                    labels[k]
                );
                if !notes.contains(&note) {
                    notes.push(note);
                }
                tests.push(None);
                continue;
            }
            let test = match (
                per_item(&bt.output.result, &metric),
                per_item(&rt.output.result, &metric),
            ) {
                (Some(x), Some(y)) => paired(&x, &y)?,
                _ => None,
            };
            tests.push(test);
        }
        rows.push(CompareRow {
            task,
            metric,
            values,
            deltas,
            tests,
        });
    }
    Ok(Comparison {
        runs: labels.to_vec(),
        rows,
        notes,
    })
}

/// Markdown: value per run, then delta and p-value of each run against the first.
pub fn markdown(c: &Comparison) -> String {
    let mut s = String::from("| task | metric |");
    for l in &c.runs {
        s.push_str(&format!(" {l} |"));
    }
    for l in c.runs.iter().skip(1) {
        s.push_str(&format!(" Δ {l} | p {l} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---:|".repeat(c.runs.len() + 2 * c.runs.len().saturating_sub(1)));
    s.push('\n');
    let f = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.4}"));
    for r in &c.rows {
        s.push_str(&format!("| {} | {} |", r.task, r.metric));
        for v in &r.values {
            s.push_str(&format!(" {} |", f(*v)));
        }
        for k in 1..r.values.len() {
            let p = r.tests[k].as_ref().map_or("–".to_string(), |t| {
                format!("{:.3e} ({})", t.p_value, t.test)
            });
            let d = r.deltas[k].map_or("–".to_string(), |x| format!("{x:+.4}"));
            s.push_str(&format!(" {d} | {p} |"));
        }
        s.push('\n');
    }
    for n in &c.notes {
        s.push_str(&format!("\nNote: {n}\n"));
    }
    s
}
