//! Table 5: each edit against Base in one row. The cut on held-out professions and a_s, the
//! share of factual gender kept and the capability cost sit in Tables 2-3 as separate rows; a
//! generalising edit has to be judged on all of them at once, so this table puts them side by
//! side, as changes relative to Base (the CIs and n stay in Tables 2-3).

use super::builders::{variant_label, variants};
use super::inputs::{BiasRow, CapabilityRow};
use super::stages::measure::{CONTROLS, DATASET, GAP, KEPT, SLOPE};
use super::table::{Cell, Table};
use super::variant::ReportVariant;

/// Accuracy losses larger than this (percentage points) are listed by task.
pub const LOSS_POINTS: f64 = 1.0;

/// Table 5, or `None` when Base has no held-out gap or no edit does.
pub fn table5_against_base(bias: &[BiasRow], capability: &[CapabilityRow]) -> Option<Table> {
    let base = ReportVariant::Base.name();
    let bias_of = |v: &str, d: &str, m: &str| {
        bias.iter()
            .find(|r| r.model_variant == v && r.dataset == d && r.metric == m)
            .map(|r| r.value.value)
    };
    let cap_of = |v: &str, d: &str, m: &str| {
        capability
            .iter()
            .find(|r| r.model_variant == v && r.dataset == d && r.metric == m)
            .map(|r| r.value.value)
    };
    bias_of(base, DATASET, GAP)?;
    let edits: Vec<String> = variants(
        bias.iter()
            .map(|r| r.model_variant.as_str())
            .chain(capability.iter().map(|r| r.model_variant.as_str())),
    )
    .into_iter()
    .filter(|v| v != base && bias_of(v, DATASET, GAP).is_some())
    .collect();
    if edits.is_empty() {
        return None;
    }
    // (dataset, metric) of every capability row, in first-appearance order.
    let mut accuracies: Vec<(&str, &str)> = vec![];
    let mut perplexities: Vec<(&str, &str)> = vec![];
    for r in capability {
        let key = (r.dataset.as_str(), r.metric.as_str());
        let list = if r.higher_is_better {
            &mut accuracies
        } else {
            &mut perplexities
        };
        if !list.contains(&key) {
            list.push(key);
        }
    }
    let relative = |x: Option<f64>, b: Option<f64>| match (x, b) {
        (Some(x), Some(b)) if b != 0.0 => Cell::number(100.0 * (x / b - 1.0), 1),
        _ => Cell::Missing,
    };
    let mut columns: Vec<String> = [
        "Edit",
        "Held-out mean |p(he) - p(she)| vs Base (%)",
        "a_s vs Base (%)",
        "Controls' gap toward their gender kept (%)",
        "Largest accuracy change (points)",
        "Accuracy tasks more than 1 point below Base",
    ]
    .map(String::from)
    .to_vec();
    columns.extend(
        perplexities
            .iter()
            .map(|(d, m)| format!("{d} {m} vs Base (%)")),
    );
    let rows = edits
        .iter()
        .map(|v| {
            let kept = match (bias_of(v, CONTROLS, KEPT), bias_of(base, CONTROLS, KEPT)) {
                (Some(x), Some(b)) if b != 0.0 => Cell::number(100.0 * x / b, 1),
                _ => Cell::Missing,
            };
            // Accuracy change in points per task both variants have.
            let changes: Vec<(&str, f64)> = accuracies
                .iter()
                .filter_map(|&(d, m)| {
                    let (x, b) = (cap_of(v, d, m)?, cap_of(base, d, m)?);
                    Some((d, 100.0 * (x - b)))
                })
                .collect();
            let largest = changes
                .iter()
                .map(|c| c.1)
                .min_by(f64::total_cmp)
                .map_or(Cell::Missing, |x| Cell::number(x, 1));
            let losses: Vec<String> = changes
                .iter()
                .filter(|c| c.1 < -LOSS_POINTS)
                .map(|(d, x)| format!("{d} {}", super::table::fmt_num(*x, 1)))
                .collect();
            let listed = match (changes.is_empty(), losses.is_empty()) {
                (true, _) => Cell::Missing,
                (false, true) => Cell::text("none"),
                (false, false) => Cell::text(losses.join(", ")),
            };
            let mut row = vec![
                Cell::text(variant_label(v)),
                relative(bias_of(v, DATASET, GAP), bias_of(base, DATASET, GAP)),
                relative(bias_of(v, DATASET, SLOPE), bias_of(base, DATASET, SLOPE)),
                kept,
                largest,
                listed,
            ];
            row.extend(
                perplexities
                    .iter()
                    .map(|&(d, m)| relative(cap_of(v, d, m), cap_of(base, d, m))),
            );
            row
        })
        .collect();
    Some(Table {
        id: "table5_against_base".into(),
        title: "Table 5: Each edit against Base".into(),
        caption: format!(
            "Changes relative to Base, from Tables 2-3 (their CIs and n are there): the held-out \
             professions' mean |p(he) - p(she)| and a_s (-100% removes them), the share of the \
             definitional controls' gap toward their own gender that the edit keeps (100% keeps \
             factual gender), the largest change of any accuracy and the tasks that lost more \
             than {LOSS_POINTS} point, and each perplexity's relative change. An edit that removes \
             the stereotype and keeps the model cuts the first two, keeps the third near 100%, \
             lists no task and leaves the perplexities near 0."
        ),
        columns,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Estimate;

    fn est(v: f64) -> Estimate {
        Estimate {
            value: v,
            ci_low: v - 0.01,
            ci_high: v + 0.01,
            n: 100,
            method: "t".into(),
        }
    }
    fn b(v: &str, d: &str, m: &str, x: f64) -> BiasRow {
        BiasRow {
            model_variant: v.into(),
            dataset: d.into(),
            metric: m.into(),
            value: est(x),
            ideal: None,
        }
    }
    fn c(v: &str, d: &str, m: &str, x: f64, up: bool) -> CapabilityRow {
        CapabilityRow {
            model_variant: v.into(),
            dataset: d.into(),
            metric: m.into(),
            value: est(x),
            higher_is_better: up,
        }
    }

    #[test]
    fn each_edit_is_one_row_of_changes_against_base() {
        let bias = vec![
            b("base", DATASET, GAP, 0.08),
            b("base", DATASET, SLOPE, 0.05),
            b("base", CONTROLS, KEPT, 0.20),
            b("tune", DATASET, GAP, 0.02),
            b("tune", DATASET, SLOPE, 0.01),
            b("tune", CONTROLS, KEPT, 0.17),
            b("lsdm", DATASET, GAP, 0.06),
            // A benchmark row is not a held-out row.
            b("lsdm", "winobias_type1", "delta_s", 0.1),
        ];
        let capability = vec![
            c("base", "boolq", "acc", 0.55, true),
            c("base", "lama_trex", "acc", 0.060, true),
            c("base", "wikitext2", "word_perplexity", 30.0, false),
            c("tune", "boolq", "acc", 0.556, true),
            c("tune", "lama_trex", "acc", 0.059, true),
            c("tune", "wikitext2", "word_perplexity", 30.6, false),
            c("lsdm", "boolq", "acc", 0.45, true),
            c("lsdm", "lama_trex", "acc", 0.017, true),
            c("lsdm", "wikitext2", "word_perplexity", 60.0, false),
        ];
        let t = table5_against_base(&bias, &capability).unwrap();
        t.check().unwrap();
        assert_eq!(t.columns.len(), 7);
        assert_eq!(t.columns[6], "wikitext2 word_perplexity vs Base (%)");
        let shown: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::display).collect())
            .collect();
        // Fixed variant order: LSDM before the other methods.
        assert_eq!(
            shown[0],
            [
                "LSDM",
                "-25.0",
                "—",
                "—",
                "-10.0",
                "boolq -10.0, lama_trex -4.3",
                "100.0"
            ]
            .map(String::from)
        );
        assert_eq!(
            shown[1],
            ["Tune", "-75.0", "-80.0", "85.0", "-0.1", "none", "2.0"].map(String::from)
        );
    }

    #[test]
    fn no_table_without_a_base_or_an_edit() {
        let capability = vec![c("base", "boolq", "acc", 0.55, true)];
        assert!(table5_against_base(&[b("tune", DATASET, GAP, 0.02)], &capability).is_none());
        assert!(table5_against_base(&[b("base", DATASET, GAP, 0.08)], &capability).is_none());
    }
}
