//! End to end: `biaslens report --spec harness/snapshot.toml` on SmolLM2 (trace → LSDM/FT-L/DAMA
//! edits on the located layers → held-out measurement → COPA), twice into fresh folders. The
//! Markdown tables must match the insta snapshots under snapshots/ (Table 4 without its
//! wall-time columns) and the two runs must give byte-identical tables.
//!
//! Needs models/smollm2-135m (harness/fetch-models.sh). About 2-3 minutes on 2 idle cores.

use biaslens::report::write::build_tables;
use biaslens::report::{ReportInputs, Table};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_report(out: &Path) -> ReportInputs {
    let st = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .current_dir(root())
        .args(["report", "--spec", "harness/snapshot.toml", "--out"])
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

/// Runs harness/snapshot.toml twice end to end (trace, three edits, held-out measurement, COPA).
/// Ignored in `cargo test`: on the 2-core machine it has not yet finished inside the CI budget and
/// its snapshots have not been reviewed. Run it with
/// `cargo test --test report_quick -- --ignored` (first run: `INSTA_UPDATE=always`, then review).
#[test]
#[ignore = "minutes of real-model work; snapshots pending review (see doc comment)"]
fn snapshot_spec_end_to_end_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let a = run_report(&dir.path().join("a"));
    let tables = stable_tables(&a);
    let ids: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        ids,
        [
            "table1_localisation",
            "table2_bias",
            "table3_capability",
            "table4_cost"
        ]
    );
    for f in [
        "report.html",
        "figures/fig1_trace_heatmaps.svg",
        "figures/fig2_tradeoff.svg",
    ] {
        assert!(dir.path().join("a").join(f).is_file(), "{f} missing");
    }
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        for (id, md) in &tables {
            insta::assert_snapshot!(format!("snapshot_{id}_md"), md);
        }
    });
    // A second run from scratch gives the same bytes.
    let b = run_report(&dir.path().join("b"));
    assert_eq!(tables, stable_tables(&b));
    for t in ["table1_localisation", "table2_bias", "table3_capability"] {
        let read = |d: &str| {
            std::fs::read(dir.path().join(d).join("tables").join(format!("{t}.md"))).unwrap()
        };
        assert_eq!(read("a"), read("b"), "{t}.md differs between runs");
    }
}
