//! `biaslens eval` as three shard processes (request chunks dealt round-robin), merged by
//! `biaslens merge`, gives exactly the single run's metrics and per-item outputs; the merge
//! scores nothing itself and refuses an incomplete or mixed set of shards.
//! Tasks scored by separate runs join the same way from their cache (`--cache-only`).
//! SmolLM2 on the first items of COPA and Winogender.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn biaslens(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_biaslens"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .args(extra)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c.output().unwrap()
}

const EVAL: &[&str] = &[
    "eval",
    "--model",
    "smollm2-135m",
    "--tasks",
    "copa,winogender",
    "--limit",
    "10",
    // Small chunks (8 × 32 tokens), so each shard gets some of them.
    "--batch-tokens",
    "32",
];

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The parts of results.json that must not depend on sharding: per task, the metrics and the
/// scored outputs (everything except wall time and cache counters).
fn comparable(dir: &Path) -> Vec<(Value, Value, Value)> {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["task"].clone(), t["metrics"].clone(), t["output"].clone()))
        .collect()
}

/// The reference both tests compare with: EVAL in one run, no cache, into `out`.
fn single_run(out: &Path) -> PathBuf {
    ok(
        &biaslens(&[EVAL, &["--no-cache", "--out"]].concat(), &[out]),
        "single eval",
    );
    out.to_path_buf()
}

#[test]
fn three_eval_shards_merge_to_the_single_run() {
    common::ensure_model("smollm2-135m");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = |s: &str| -> PathBuf { tmp.path().join(s) };
    let single = single_run(&p("single"));
    let shards: Vec<PathBuf> = (0..3).map(|i| p(&format!("shard{i}"))).collect();
    for (i, d) in shards.iter().enumerate() {
        let s = format!("{i}/3");
        let o = biaslens(&[EVAL, &["--shard", &s, "--out"]].concat(), &[d.as_path()]);
        ok(&o, &format!("shard {s}"));
        assert!(d.join("eval-shard.json").is_file());
        assert!(!d.join("results.json").exists(), "a shard wrote results");
    }
    // Every shard scored something: the partition is not degenerate.
    for d in &shards {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("eval-shard.json")).unwrap())
                .unwrap();
        let scored: u64 = r["scored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[1].as_u64().unwrap())
            .sum();
        assert!(scored > 0, "{} scored nothing", d.display());
    }
    // Missing a shard: refused.
    let merged = p("merged");
    let o = biaslens(
        &["merge", "--out"],
        &[merged.as_path(), shards[0].as_path(), shards[1].as_path()],
    );
    assert!(!o.status.success(), "merge of 2 of 3 shards succeeded");
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard 2/3 is missing"));
    // All three: the single run's numbers, answered from the merged cache alone.
    let mut args: Vec<&Path> = vec![merged.as_path()];
    args.extend(shards.iter().map(|d| d.as_path()));
    let o = biaslens(&["merge", "--out"], &args);
    ok(&o, "merge");
    assert_eq!(comparable(&merged), comparable(&single));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("results.json")).unwrap())
            .unwrap();
    for t in r["tasks"].as_array().unwrap() {
        assert_eq!(
            t["cache"]["requests"], t["cache"]["from_cache"],
            "the merge scored requests itself"
        );
    }
}

/// Tasks scored by separate runs into one result cache join into one result with
/// `--cache-only`: the single run's metrics and outputs, nothing scored by the joining call;
/// without the cache it is refused, naming the flag.
#[test]
fn separate_task_runs_join_from_the_cache() {
    common::ensure_model("smollm2-135m");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = |s: &str| -> PathBuf { tmp.path().join(s) };
    let single = single_run(&p("single"));
    let cache = p("cache");
    let cache_arg = cache.to_str().unwrap();
    let base = [
        "eval",
        "--model",
        "smollm2-135m",
        "--limit",
        "10",
        "--batch-tokens",
        "32",
    ];
    for task in ["copa", "winogender"] {
        let out = p(task);
        let args = [&base[..], &["--tasks", task, "--cache", cache_arg, "--out"]].concat();
        ok(&biaslens(&args, &[out.as_path()]), task);
    }
    let joined = p("joined");
    let args = [EVAL, &["--cache", cache_arg, "--cache-only", "--out"]].concat();
    ok(&biaslens(&args, &[joined.as_path()]), "joining eval");
    assert_eq!(comparable(&joined), comparable(&single));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(joined.join("results.json")).unwrap())
            .unwrap();
    for t in r["tasks"].as_array().unwrap() {
        assert_eq!(t["cache"]["requests"], t["cache"]["from_cache"]);
    }
    let empty = p("empty-cache");
    let args = [
        EVAL,
        &["--cache", empty.to_str().unwrap(), "--cache-only", "--out"],
    ]
    .concat();
    let o = biaslens(&args, &[p("refused").as_path()]);
    assert!(!o.status.success(), "--cache-only scored without a cache");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cache-only scores nothing"));
    assert!(!p("refused").join("results.json").exists());
}
