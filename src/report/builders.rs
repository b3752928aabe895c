//! Tables 1-4 as pure functions of the typed stage summaries. Row order follows first
//! appearance in the input; variant columns use the fixed order base, lsdm, ft, dama, then any
//! other variant in first-appearance order, so outputs depend only on the inputs.

use super::inputs::{BiasRow, CapabilityRow, CostRow, LocalisationSummary};
use super::table::{fmt_num, Cell, Table};
use super::variant::ReportVariant;
use crate::edit::method::Method;
use crate::stats::Estimate;
use crate::{Error, Result};

/// Display names of the model variants in column headers; other names are shown as they are.
pub fn variant_label(v: &str) -> String {
    ReportVariant::from_name(v).map_or_else(|| v.to_string(), |r| r.label().to_string())
}

pub(super) fn variants<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = vec![];
    for n in names {
        if !seen.iter().any(|s| s == n) {
            seen.push(n.to_string());
        }
    }
    let rank = |v: &str| {
        ReportVariant::from_name(v).map_or(ReportVariant::ORDER.len(), ReportVariant::rank)
    };
    // Stable sort keeps first-appearance order among unknown variants.
    seen.sort_by_key(|v| rank(v));
    seen
}

/// Table 1: average indirect effect by token role × kind, with peak layers.
pub fn table1_localisation(s: &LocalisationSummary, decimals: usize) -> Table {
    let te = &s.total_effect;
    Table {
        id: "table1_localisation".into(),
        title: "Table 1: Localisation (causal tracing of the gender metric)".into(),
        caption: format!(
            "AIE = mean over prompts of the indirect effect of restoring one site, averaged over layers; \
             peak = the layer with the largest AIE. 95% CIs in brackets. Total effect of the noise: {} [{}, {}] (n = {}).",
            fmt_num(te.value, decimals),
            fmt_num(te.ci_low, decimals),
            fmt_num(te.ci_high, decimals),
            te.n
        ),
        columns: ["Token role", "Kind", "AIE (mean over layers)", "Peak layer", "AIE at peak"]
            .map(String::from)
            .to_vec(),
        rows: s
            .rows
            .iter()
            .map(|r| {
                vec![
                    Cell::text(&r.role),
                    Cell::text(&r.kind),
                    Cell::estimate(&r.aie, decimals),
                    Cell::text(r.peak_layer.to_string()),
                    Cell::estimate(&r.peak_aie, decimals),
                ]
            })
            .collect(),
    }
}

/// Pivot (variant, dataset, metric) → estimate into rows of (dataset, metric) × variant columns.
struct Pivot<'a> {
    variants: Vec<String>,
    keys: Vec<(&'a str, &'a str)>,
    cells: Vec<(&'a str, &'a str, &'a str, &'a Estimate)>,
}

fn pivot<'a>(
    table: &str,
    items: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a Estimate)> + Clone,
) -> Result<Pivot<'a>> {
    let variants = variants(items.clone().map(|i| i.0));
    let mut keys: Vec<(&str, &str)> = vec![];
    let mut cells: Vec<(&str, &str, &str, &Estimate)> = vec![];
    for it in items {
        if cells
            .iter()
            .any(|c| c.0 == it.0 && c.1 == it.1 && c.2 == it.2)
        {
            return Err(Error::param(
                table,
                format!(
                    "two rows for variant {:?}, dataset {:?}, metric {:?}",
                    it.0, it.1, it.2
                ),
            ));
        }
        if !keys.contains(&(it.1, it.2)) {
            keys.push((it.1, it.2));
        }
        cells.push(it);
    }
    Ok(Pivot {
        variants,
        keys,
        cells,
    })
}

impl Pivot<'_> {
    fn cell(&self, v: &str, d: &str, m: &str, decimals: usize) -> Cell {
        self.cells
            .iter()
            .find(|c| c.0 == v && c.1 == d && c.2 == m)
            .map_or(Cell::Missing, |c| Cell::estimate(c.3, decimals))
    }
}

/// Rows of (dataset, metric) × variant estimates, with one extra column after Metric whose cell
/// `extra(dataset, metric)` gives (Table 2's Ideal, Table 3's Better).
fn variant_rows<'a>(
    kind: &str,
    entries: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a Estimate)> + Clone,
    extra_header: &str,
    extra: impl Fn(&str, &str) -> Cell,
    decimals: usize,
) -> Result<(Vec<String>, Vec<Vec<Cell>>)> {
    let p = pivot(kind, entries)?;
    let mut columns: Vec<String> = ["Dataset", "Metric", extra_header]
        .map(String::from)
        .to_vec();
    columns.extend(p.variants.iter().map(|v| variant_label(v)));
    let rows = p
        .keys
        .iter()
        .map(|&(d, m)| {
            let mut row = vec![Cell::text(d), Cell::text(m), extra(d, m)];
            row.extend(p.variants.iter().map(|v| p.cell(v, d, m, decimals)));
            row
        })
        .collect();
    Ok((columns, rows))
}

/// Table 2: bias metrics before and after each edit.
pub fn table2_bias(rows: &[BiasRow], decimals: usize) -> Result<Table> {
    let (columns, out_rows) = variant_rows(
        "bias",
        rows.iter().map(|r| {
            (
                r.model_variant.as_str(),
                r.dataset.as_str(),
                r.metric.as_str(),
                &r.value,
            )
        }),
        "Ideal",
        |d, m| {
            rows.iter()
                .find(|r| r.dataset == d && r.metric == m)
                .and_then(|r| r.ideal)
                .map_or(Cell::Missing, |x| Cell::number(x, decimals))
        },
        decimals,
    )?;
    // The gap probe and gap tuning edit other layers than the located sites LSDM, FT-L and
    // DAMA share: say so only where they are columns, so the other reports keep their caption.
    let top_layer_methods = rows.iter().any(|r| {
        matches!(
            ReportVariant::from_name(&r.model_variant),
            Some(ReportVariant::Method(Method::Probe | Method::Tune))
        )
    });
    let edits = if top_layer_methods {
        "LSDM, FT-L and DAMA edit the located layers, the gap probe and gap tuning the top \
         layers' projections at the last token, each fitted on the edit split"
    } else {
        "LSDM, FT-L and DAMA edit the same layers on the edit split"
    };
    Ok(Table {
        id: "table2_bias".into(),
        title: "Table 2: Bias before and after editing".into(),
        caption: format!(
            "Each cell: estimate [95% CI] (benchmark accuracies: Wilson; no interval from \
             fewer than 10 items: n too small). Closer to the Ideal column is less biased. \
             Base is the unedited model; {edits}."
        ),
        columns,
        rows: out_rows,
    })
}

/// Table 3: capability benchmarks for the same variants.
pub fn table3_capability(rows: &[CapabilityRow], decimals: usize) -> Result<Table> {
    let (columns, out_rows) = variant_rows(
        "capability",
        rows.iter().map(|r| {
            (
                r.model_variant.as_str(),
                r.dataset.as_str(),
                r.metric.as_str(),
                &r.value,
            )
        }),
        "Better",
        |d, m| {
            let up = rows
                .iter()
                .find(|r| r.dataset == d && r.metric == m)
                .is_some_and(|r| r.higher_is_better);
            Cell::text(if up { "↑" } else { "↓" })
        },
        decimals,
    )?;
    Ok(Table {
        id: "table3_capability".into(),
        title: "Table 3: Capabilities before and after editing".into(),
        caption: "Each cell: estimate [95% CI] (accuracies: Wilson; perplexities: \
                  exp(mean NLL ± 1.96 se); no interval from fewer than 10 items: n too small); \
                  ↑ higher is better, ↓ lower is better. \
                  An edit that preserves the model keeps every row within the Base CI."
            .into(),
        columns,
        rows: out_rows,
    })
}

/// Table 4: cost per method.
pub fn table4_cost(rows: &[CostRow]) -> Result<Table> {
    for (i, r) in rows.iter().enumerate() {
        if !(r.wall_s.is_finite() && r.wall_s >= 0.0 && r.edit_s.is_finite() && r.edit_s >= 0.0) {
            return Err(Error::param(
                format!("cost[{i}]"),
                "times must be finite and >= 0",
            ));
        }
        if rows[..i].iter().any(|o| o.method == r.method) {
            return Err(Error::param(
                format!("cost[{i}]"),
                format!("method {:?} listed twice", r.method),
            ));
        }
    }
    let order = variants(rows.iter().map(|r| r.method.as_str()));
    let out_rows = order
        .iter()
        .filter_map(|m| rows.iter().find(|r| &r.method == m))
        .map(|r| {
            vec![
                Cell::text(variant_label(&r.method)),
                Cell::number(r.wall_s, 1),
                Cell::text(
                    r.forwards
                        .map_or_else(|| "not counted".to_string(), |f| f.to_string()),
                ),
                Cell::text(
                    r.token_layers
                        .map_or_else(|| "not counted".to_string(), |f| f.to_string()),
                ),
                Cell::text(
                    r.statistics_tokens
                        .map_or_else(|| "—".to_string(), |n| n.to_string()),
                ),
                Cell::number(r.edit_s, 2),
            ]
        })
        .collect();
    Ok(Table {
        id: "table4_cost".into(),
        title: "Table 4: Cost of each method".into(),
        caption: "Edit time is the method itself (targets, keys, statistics and the weight update); wall time \
                  adds loading the model, measuring the edit prompts before and after, and writing the delta; \
                  passes counts the model passes the method ran (forward, resumed or from a layer) and \
                  token-layers the rows × tokens × layers they covered, both counted by the transformer. \
                  Passes over the corpus for cached statistics (LSDM's C = E[kkᵀ], computed once per model \
                  and layer, as MEMIT does) are not in those counts, so they do not depend on the cache; \
                  statistics tokens is the corpus size behind C. \
                  Times vary between machines and are not part of the snapshot."
            .into(),
        columns: ["Method", "Wall time (s)", "Passes", "Token-layers", "Statistics tokens", "Edit time (s)"].map(String::from).to_vec(),
        rows: out_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(v: f64) -> Estimate {
        Estimate {
            value: v,
            ci_low: v - 0.1,
            ci_high: v + 0.1,
            n: 10,
            method: "t".into(),
        }
    }
    fn b(v: &str, d: &str, m: &str, x: f64) -> BiasRow {
        BiasRow {
            model_variant: v.into(),
            dataset: d.into(),
            metric: m.into(),
            value: est(x),
            ideal: Some(0.0),
        }
    }

    #[test]
    fn bias_pivot_orders_variants_and_marks_missing() {
        let rows = vec![
            b("dama", "wb", "ΔS", 1.0),
            b("zz", "wb", "ΔS", 4.0),
            b("base", "wb", "ΔS", 2.0),
            b("base", "ss", "SS", 3.0),
        ];
        let t = table2_bias(&rows, 1).unwrap();
        t.check().unwrap();
        assert_eq!(
            t.columns,
            vec!["Dataset", "Metric", "Ideal", "Base", "DAMA", "zz"]
        );
        assert_eq!(t.rows[0][3].display(), "2.0 [1.9, 2.1]");
        assert_eq!(t.rows[0][4].display(), "1.0 [0.9, 1.1]");
        assert_eq!(t.rows[1][0].display(), "ss");
        assert_eq!(t.rows[1][4], Cell::Missing);
    }

    /// The caption says which layers the columns edit: the top-layer methods only where present.
    #[test]
    fn bias_caption_names_the_top_layer_methods_only_where_they_are_columns() {
        let located = table2_bias(&[b("base", "wb", "ΔS", 1.0), b("lsdm", "wb", "ΔS", 2.0)], 1)
            .unwrap()
            .caption;
        assert!(located.ends_with("LSDM, FT-L and DAMA edit the same layers on the edit split."));
        let with_tune = table2_bias(&[b("base", "wb", "ΔS", 1.0), b("tune", "wb", "ΔS", 2.0)], 1)
            .unwrap()
            .caption;
        assert!(
            with_tune.contains("gap tuning the top layers"),
            "{with_tune}"
        );
    }

    #[test]
    fn duplicates_are_errors() {
        let rows = vec![b("base", "wb", "ΔS", 1.0), b("base", "wb", "ΔS", 2.0)];
        assert!(table2_bias(&rows, 1)
            .unwrap_err()
            .to_string()
            .contains("two rows"));
        let c = CostRow {
            method: "lsdm".into(),
            wall_s: 1.0,
            forwards: Some(3),
            token_layers: Some(2880),
            statistics_tokens: None,
            edit_s: 0.5,
        };
        assert!(table4_cost(&[c.clone(), c]).is_err());
    }

    #[test]
    fn cost_rows_follow_method_order() {
        let c = |m: &str| CostRow {
            method: m.into(),
            wall_s: 1.0,
            forwards: Some(3),
            token_layers: Some(2880),
            statistics_tokens: None,
            edit_s: 0.5,
        };
        let t = table4_cost(&[c("dama"), c("lsdm")]).unwrap();
        assert_eq!(t.rows[0][0].display(), "LSDM");
        assert_eq!(t.rows[1][0].display(), "DAMA");
    }
}
