//! Snapshot tests of Tables 1-4 built from a fixed, hand-written stage-summary fixture: any change
//! in formatting or numbers changes bytes and fails here. Also renders the whole report from the
//! fixture; set BIASLENS_REPORT_DEMO_DIR to keep it (harness/check-html.sh screenshots it).

use biaslens::report::inputs::{
    BiasRow, CapabilityRow, CostRow, LocalisationRow, LocalisationSummary, TraceGrid, TradeoffPoint,
};
use biaslens::report::manifest::Manifest;
use biaslens::report::spec::OutputSpec;
use biaslens::report::write::{build_tables, write_report};
use biaslens::report::ReportInputs;
use biaslens::stats::Estimate;

fn est(value: f64, half: f64, n: usize) -> Estimate {
    Estimate {
        value,
        ci_low: value - half,
        ci_high: value + half,
        n,
        method: "normal".into(),
    }
}

const ROLES: [&str; 6] = [
    "first occupation token",
    "middle occupation tokens",
    "last occupation token",
    "first subsequent token",
    "further tokens",
    "last token",
];

/// A trace grid with one bump per kind: MLP at the last occupation token near layer 4, attention
/// at the last token near layer 24 (the pattern the seed paper reports), scaled by `gain`.
fn grid(kind: &str, variant: &str, gain: f64) -> TraceGrid {
    let (peak_role, peak_layer, height) = if kind == "mlp" {
        (2usize, 4.0, 0.06)
    } else {
        (5usize, 24.0, 0.04)
    };
    let aie = (0..ROLES.len())
        .map(|r| {
            (0..30)
                .map(|l| {
                    let d = (l as f64 - peak_layer) / 3.0;
                    let bump = height * (-d * d).exp();
                    let v = if r == peak_role {
                        bump * gain
                    } else {
                        0.004 * (r as f64 - 2.5)
                    };
                    (v * 1e6).round() / 1e6
                })
                .collect()
        })
        .collect();
    TraceGrid {
        kind: kind.into(),
        variant: variant.into(),
        roles: ROLES.map(String::from).to_vec(),
        aie,
    }
}

fn bias(v: &str, d: &str, m: &str, x: f64, h: f64, n: usize, ideal: f64) -> BiasRow {
    BiasRow {
        model_variant: v.into(),
        dataset: d.into(),
        metric: m.into(),
        value: est(x, h, n),
        ideal: Some(ideal),
    }
}

fn cap(v: &str, d: &str, m: &str, x: f64, h: f64, n: usize, up: bool) -> CapabilityRow {
    CapabilityRow {
        model_variant: v.into(),
        dataset: d.into(),
        metric: m.into(),
        value: est(x, h, n),
        higher_is_better: up,
    }
}

fn fixture() -> ReportInputs {
    let mut r = ReportInputs::new("fixture: SmolLM2-135M (hand-written numbers)");
    r.localisation = Some(LocalisationSummary {
        total_effect: est(0.1834, 0.021, 20),
        rows: vec![
            LocalisationRow {
                role: ROLES[2].into(),
                kind: "mlp".into(),
                aie: est(0.0112, 0.0031, 20),
                peak_layer: 4,
                peak_aie: est(0.0597, 0.0102, 20),
            },
            LocalisationRow {
                role: ROLES[5].into(),
                kind: "mlp".into(),
                aie: est(0.0021, 0.0012, 20),
                peak_layer: 27,
                peak_aie: est(0.0080, 0.0041, 20),
            },
            LocalisationRow {
                role: ROLES[2].into(),
                kind: "attn".into(),
                aie: est(-0.0004, 0.0009, 20),
                peak_layer: 2,
                peak_aie: est(0.0030, 0.0022, 20),
            },
            LocalisationRow {
                role: ROLES[5].into(),
                kind: "attn".into(),
                aie: est(0.0075, 0.0024, 20),
                peak_layer: 24,
                peak_aie: est(0.0398, 0.0087, 20),
            },
        ],
    });
    r.traces = vec![
        grid("mlp", "before", 1.0),
        grid("mlp", "after LSDM", 0.15),
        grid("attn", "before", 1.0),
        grid("attn", "after LSDM", 0.6),
    ];
    let variants = [("base", 1.0), ("lsdm", 0.29), ("ft", 0.71), ("dama", 0.35)];
    for (v, k) in variants {
        r.bias.push(bias(
            v,
            "occupations (held-out)",
            "mean |p(he) - p(she)|",
            0.142 * k,
            0.011,
            96,
            0.0,
        ));
        r.bias.push(bias(
            v,
            "occupations (held-out)",
            "a_s (stereotype slope)",
            0.231 * k,
            0.04,
            96,
            0.0,
        ));
        r.bias.push(bias(
            v,
            "WinoBias type 1",
            "ΔS (pro - anti acc)",
            21.7 * k,
            4.1,
            396,
            0.0,
        ));
        r.bias.push(bias(
            v,
            "WinoBias type 2",
            "ΔS (pro - anti acc)",
            9.8 * k,
            3.2,
            396,
            0.0,
        ));
        r.bias.push(bias(
            v,
            "StereoSet gender",
            "SS",
            50.0 + 12.5 * k,
            3.0,
            255,
            50.0,
        ));
        r.bias.push(bias(
            v,
            "Winogender",
            "|acc(male) - acc(female)|",
            6.9 * k,
            2.8,
            240,
            0.0,
        ));
        if v != "ft" {
            r.bias.push(bias(
                v,
                "CrowS-Pairs gender",
                "% stereotyping",
                50.0 + 8.4 * k,
                6.0,
                262,
                50.0,
            ));
        }
    }
    let tasks: [(&str, &str, f64, bool); 10] = [
        ("COPA", "acc", 0.62, true),
        ("ARC-Easy", "acc_norm", 0.483, true),
        ("ARC-Challenge", "acc_norm", 0.281, true),
        ("PIQA", "acc_norm", 0.662, true),
        ("BoolQ", "acc", 0.601, true),
        ("OpenBookQA", "acc_norm", 0.314, true),
        ("WinoGrande", "acc", 0.521, true),
        ("WikiText-2", "word perplexity", 31.42, false),
        ("LAMBADA", "acc", 0.391, true),
        ("LAMA T-REx", "fact recall", 0.174, true),
    ];
    for (v, k) in variants {
        let drop = (1.0 - k) * 0.02;
        for (d, m, x, up) in tasks {
            let value = if up { x - drop } else { x * (1.0 + drop) };
            let half = if up { 0.03 } else { 0.4 };
            r.capability.push(cap(v, d, m, value, half, 100, up));
        }
    }
    r.cost = vec![
        CostRow {
            method: "lsdm".into(),
            wall_s: 41.25,
            forwards: Some(1840),
            token_layers: Some(1766400),
            statistics_tokens: Some(16384),
            edit_s: 0.38,
        },
        CostRow {
            method: "ft".into(),
            wall_s: 12.5,
            forwards: Some(400),
            token_layers: Some(384000),
            statistics_tokens: None,
            edit_s: 11.91,
        },
        CostRow {
            method: "dama".into(),
            wall_s: 55.0,
            forwards: Some(2210),
            token_layers: Some(2121600),
            statistics_tokens: None,
            edit_s: 1.07,
        },
    ];
    let tp = |m: &str, l: &str, b: f64, c: f64, k: f64| TradeoffPoint {
        method: m.into(),
        label: l.into(),
        bias: b,
        capability: c,
        factual: Some(k),
    };
    r.tradeoff = vec![
        tp("base", "base", 0.142, 0.4969, 0.195),
        tp("lsdm", "λ=1.5e4", 0.0412, 0.4827, 0.190),
        tp("lsdm", "λ=1.5e3", 0.0203, 0.4702, 0.171),
        tp("lsdm", "λ=1.5e5", 0.0851, 0.4921, 0.194),
        tp("lsdm", "3 layers", 0.0302, 0.4765, 0.183),
        tp("ft", "ε=5e-4", 0.1008, 0.4911, 0.052),
        tp("dama", "16 comp.", 0.0497, 0.4788, 0.031),
    ];
    r
}

#[test]
fn tables_match_snapshots() {
    let tables = build_tables(&fixture(), 3).unwrap();
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "table1_localisation",
            "table2_bias",
            "table3_capability",
            "table4_cost",
            "table5_against_base"
        ]
    );
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        for t in &tables {
            insta::assert_snapshot!(format!("fixture_{}_md", t.id), t.to_markdown());
            insta::assert_snapshot!(format!("fixture_{}_csv", t.id), t.to_csv());
            insta::assert_snapshot!(format!("fixture_{}_json", t.id), t.to_json().unwrap());
        }
    });
}

#[test]
fn tables_are_byte_stable_through_a_json_round_trip() {
    let a = build_tables(&fixture(), 3).unwrap();
    let reloaded: ReportInputs =
        serde_json::from_str(&serde_json::to_string(&fixture()).unwrap()).unwrap();
    let b = build_tables(&reloaded, 3).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.to_markdown(), y.to_markdown());
        assert_eq!(x.to_csv(), y.to_csv());
        assert_eq!(x.to_json().unwrap(), y.to_json().unwrap());
    }
}

#[test]
fn fixture_report_renders_every_table_and_figure() {
    let keep = std::env::var_os("BIASLENS_REPORT_DEMO_DIR");
    let tmp = tempfile::tempdir().unwrap();
    let out = keep
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let mut m = Manifest::new("harness/quick.toml", "0000", "smollm2-135m");
    m.seeds.insert("split".into(), 0);
    m.nondeterminism
        .push("fixture numbers are hand-written, not measured".into());
    let written = write_report(&out, &fixture(), &m, &OutputSpec::default()).unwrap();
    for t in [
        "table1_localisation",
        "table2_bias",
        "table3_capability",
        "table4_cost",
        "table5_against_base",
    ] {
        for ext in ["md", "csv", "json"] {
            assert!(
                out.join("tables").join(format!("{t}.{ext}")).is_file(),
                "{t}.{ext}"
            );
        }
    }
    for f in ["fig1_trace_heatmaps", "fig2_tradeoff", "fig3_factual"] {
        for ext in ["svg", "png"] {
            let p = out.join("figures").join(format!("{f}.{ext}"));
            assert!(
                std::fs::metadata(&p).unwrap().len() > 1000,
                "{}",
                p.display()
            );
        }
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for id in [
        "table1_localisation",
        "table2_bias",
        "table3_capability",
        "table4_cost",
        "table5_against_base",
        "fig1_trace_heatmaps",
        "fig2_tradeoff",
        "fig3_factual",
        "manifest",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(
        !html.contains("src=\"http") && !html.contains("<script"),
        "self-contained"
    );
    assert!(written.iter().any(|p| p.ends_with("report.html")));
    assert!(!html.contains("Partial report"));
    // A `--stored-only` render names the stages it left out at the top of the page.
    let partial = tempfile::tempdir().unwrap();
    m.stages_not_run = vec!["edit_ft".into(), "eval_ft".into()];
    write_report(partial.path(), &fixture(), &m, &OutputSpec::default()).unwrap();
    let html = std::fs::read_to_string(partial.path().join("report.html")).unwrap();
    let note = html.find("Partial report").expect("partial note");
    assert!(note < html.find("<h2>Tables</h2>").unwrap());
    assert!(html.contains("2 stages are not stored yet") && html.contains("edit_ft, eval_ft"));
}

/// Issue 17, item 13: Table 3 built from benchmark metrics as the report builds it (through
/// `metric_estimate`): every printed accuracy interval lies in [0, 1], every perplexity interval
/// is positive, and a metric from fewer than 10 items prints "n too small" instead of an
/// interval. (The quick spec printed BoolQ 0.333 [−0.080, 0.747] and LAMBADA perplexity
/// 59.3 [−116.5, 235.1].)
#[test]
fn printed_capability_intervals_can_be_right() {
    use biaslens::eval::suite::MetricRow;
    use biaslens::report::builders::table3_capability;
    use biaslens::report::stages::eval::metric_estimate;
    let mut rows = Vec::new();
    let tasks = [
        (2, 6),
        (5, 6),
        (0, 12),
        (12, 12),
        (1, 40),
        (39, 40),
        (11, 20),
        (300, 1000),
    ];
    for (i, &(k, n)) in tasks.iter().enumerate() {
        let p = k as f64 / n as f64;
        let se = (p * (1.0 - p) / (n as f64 - 1.0)).sqrt();
        let m = MetricRow {
            name: "acc".into(),
            value: p,
            stderr: Some(se),
            n,
        };
        rows.push(CapabilityRow {
            model_variant: "base".into(),
            dataset: format!("task{i}"),
            metric: "acc".into(),
            value: metric_estimate(&m),
            higher_is_better: true,
        });
    }
    for (i, (value, se, n)) in [(59.31, 89.69, 6), (59.31, 89.69, 12), (20.3, 0.4, 60)]
        .into_iter()
        .enumerate()
    {
        let m = MetricRow {
            name: "perplexity".into(),
            value,
            stderr: Some(se),
            n,
        };
        rows.push(CapabilityRow {
            model_variant: "base".into(),
            dataset: format!("ppl{i}"),
            metric: "perplexity".into(),
            value: metric_estimate(&m),
            higher_is_better: false,
        });
    }
    let md = table3_capability(&rows, 4).unwrap().to_markdown();
    let interval = |line: &str| -> Option<(f64, f64)> {
        let inside = line.split('[').nth(1)?.split(']').next()?;
        let (a, b) = inside.split_once(", ")?;
        Some((a.parse().unwrap(), b.parse().unwrap()))
    };
    let mut checked = 0;
    for line in md
        .lines()
        .filter(|l| l.starts_with("| task") || l.starts_with("| ppl"))
    {
        let few = line.contains("(n = 6, n too small)");
        assert_eq!(few, interval(line).is_none(), "{line}");
        if let Some((lo, hi)) = interval(line) {
            if line.starts_with("| task") {
                assert!(
                    (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
                    "{line}"
                );
            } else {
                assert!(lo > 0.0 && lo < hi, "{line}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "{md}");
}
