//! `biaslens trace` as three shard processes, merged, is byte-identical to the single run
//! (settings, results, summary, sites.json and plots); a resumed run redoes nothing.
//! Uses SmolLM2 with a fixed noise std, one sample and the `mlp` kind to stay cheap.

mod common;

use std::path::Path;
use std::process::Command;

fn trace(out: &Path, shard: Option<&str>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_biaslens"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "trace",
            "--model",
            "smollm2-135m",
            "--prompts",
            "4",
            "--samples",
            "1",
            "--kinds",
            "mlp",
            "--noise-std",
            "0.4",
        ])
        .arg("--out")
        .arg(out)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    if let Some(s) = shard {
        c.args(["--shard", s]);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "trace failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "plots"] {
        let d = dir.join(sub);
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|p| {
            (
                format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            )
        }));
    }
    out
}

#[test]
fn three_shards_merge_to_the_single_run() {
    common::ensure_model("smollm2-135m");
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    trace(&single, None);
    let mut shards = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("shard{i}"));
        trace(&d, Some(&format!("{i}/3")));
        assert!(
            !d.join("summary.json").exists(),
            "a shard must not write the summary"
        );
        shards.push(d);
    }
    let merged = tmp.path().join("merged");
    let o = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .arg("merge")
        .arg("--out")
        .arg(&merged)
        .args(&shards)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "merge failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (a, b) = (files(&single), files(&merged));
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(a.iter().any(|f| f.0 == "/sites.json") && a.len() > 5);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.1 == y.1,
            "{} differs between the single run and the merge",
            x.0
        );
    }
    // Resuming a finished run redoes nothing and leaves the results as they were.
    let before = std::fs::read(single.join("results.jsonl")).unwrap();
    trace(&single, None);
    assert_eq!(before, std::fs::read(single.join("results.jsonl")).unwrap());
    // Other settings in the same directory are refused, naming the key.
    let o = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "trace",
            "--model",
            "smollm2-135m",
            "--prompts",
            "4",
            "--samples",
            "2",
            "--kinds",
            "mlp",
            "--noise-std",
            "0.4",
        ])
        .arg("--out")
        .arg(&single)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("trace.samples"));
}
