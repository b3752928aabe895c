//! End to end through the report binary, compared with insta snapshots under snapshots/
//! (Table 4 without its wall-time columns):
//! - `snapshot_spec_matches_snapshots` (in `cargo test`): harness/snapshot.toml on SmolLM2
//!   (trace → LSDM/FT-L/DAMA edits on the located layers → held-out measurement → COPA), once;
//!   about 2 minutes (docs/performance.md, "Test suite and CI").
//! - `quick_spec_matches_snapshots_and_is_deterministic` (`--ignored`, ~10 minutes):
//!   harness/quick.toml twice into fresh folders; tables must match the `quick_*` snapshots and
//!   the two runs must give byte-identical tables.
//!
//! Needs models/smollm2-135m (fetched by the test when it is missing).

mod common;

use biaslens::report::write::build_tables;
use biaslens::report::{ReportInputs, Table};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_report(spec: &str, out: &Path) -> ReportInputs {
    common::ensure_model("smollm2-135m");
    let st = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .current_dir(root())
        .args(["report", "--spec", spec, "--out"])
        .arg(out)
        .status()
        .expect("run biaslens");
    assert!(st.success(), "biaslens report failed: {st}");
    let bytes = std::fs::read(out.join("inputs.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Table 4 without the machine-dependent time columns.
fn without_times(mut t: Table) -> Table {
    let keep: Vec<usize> = (0..t.columns.len())
        .filter(|&i| !t.columns[i].contains("time"))
        .collect();
    t.columns = keep.iter().map(|&i| t.columns[i].clone()).collect();
    t.rows = t
        .rows
        .iter()
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect();
    t
}

fn stable_tables(inputs: &ReportInputs) -> Vec<(String, String)> {
    build_tables(inputs, 4)
        .unwrap()
        .into_iter()
        .map(|t| {
            let t = if t.id == "table4_cost" {
                without_times(t)
            } else {
                t
            };
            (t.id.clone(), t.to_markdown())
        })
        .collect()
}

/// Runs `spec` into `dir/a`, checks the files and the snapshots `<prefix>_<table>_md`; with
/// `twice`, runs it again into `dir/b` and requires byte-identical tables.
fn check_spec(spec: &str, prefix: &str, twice: bool) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = run_report(spec, &dir.path().join("a"));
    let tables = stable_tables(&a);
    let ids: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
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
    for f in [
        "report.html",
        "figures/fig1_trace_heatmaps.svg",
        "figures/fig2_tradeoff.svg",
        "figures/fig3_factual.svg",
    ] {
        assert!(dir.path().join("a").join(f).is_file(), "{f} missing");
    }
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        for (id, md) in &tables {
            insta::assert_snapshot!(format!("{prefix}_{id}_md"), md);
        }
    });
    if !twice {
        return;
    }
    // A second run from scratch gives the same bytes.
    let b = run_report(spec, &dir.path().join("b"));
    assert_eq!(tables, stable_tables(&b));
    for t in ["table1_localisation", "table2_bias", "table3_capability"] {
        let read = |d: &str| {
            std::fs::read(dir.path().join(d).join("tables").join(format!("{t}.md"))).unwrap()
        };
        assert_eq!(read("a"), read("b"), "{t}.md differs between runs");
    }
}

#[test]
fn snapshot_spec_matches_snapshots() {
    check_spec("harness/snapshot.toml", "snapshot", false);
}

/// The quick spec (README's main command) twice. Ignored in `cargo test` for CI time; run with
/// `cargo test --test report_quick -- --ignored` (first run: `INSTA_UPDATE=always`,
/// then review the `.snap` files).
#[test]
#[ignore = "about 10 minutes per run of real-model work, run twice"]
fn quick_spec_matches_snapshots_and_is_deterministic() {
    check_spec("harness/quick.toml", "quick", true);
}

/// Re-derive the `quick_*` snapshots from a stored run's `inputs.json` (for instance after a
/// table is added or gains rows whose stages were rerun from the cache): set
/// BIASLENS_QUICK_INPUTS to the file (docs/results/report-quick/inputs.json is the committed
/// run's) and run with `--ignored` (and `INSTA_UPDATE=always` to rewrite, then review the diff).
#[test]
#[ignore = "needs BIASLENS_QUICK_INPUTS (a stored quick run's inputs.json)"]
fn quick_snapshots_from_stored_inputs() {
    let path = std::env::var("BIASLENS_QUICK_INPUTS")
        .expect("set BIASLENS_QUICK_INPUTS to a quick run's inputs.json");
    let inputs: ReportInputs =
        serde_json::from_slice(&std::fs::read(path).expect("read inputs.json")).unwrap();
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        for (id, md) in &stable_tables(&inputs) {
            insta::assert_snapshot!(format!("quick_{id}_md"), md);
        }
    });
}
