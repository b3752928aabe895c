//! The command line never loses data or returns a silently wrong result (issue 17): `--force`
//! replaces only what biaslens wrote, `compare --json` never overwrites its inputs, corrupted
//! deltas are refused, output paths and arguments are checked before any work, stale staging
//! directories are cleaned up, and ordinary errors print one line without a backtrace.
//! Every run is the real binary, on the tiny reference models (no tokenizer, no fetched model).

use biaslens::edit::delta::{DeltaMeta, WeightDelta};
use biaslens::model::Model;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EDITED: [&str; 2] = [
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
];

fn tiny_llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference/tiny/llama")
}

/// Run the binary in `cwd` with a clean environment for sharding and backtraces.
fn biaslens(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .current_dir(cwd)
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run biaslens")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
}

fn fails_with(o: &Output, what: &str, needles: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what} succeeded: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: error does not mention {n:?}:\n{err}"
        );
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A small random delta on two down-projections of the tiny llama, saved at `path`.
fn write_delta(path: &Path) {
    let m = Model::load_hf_dir("tiny", &tiny_llama(), &Device::Cpu).expect("load tiny llama");
    let mut d = WeightDelta::new(DeltaMeta {
        method: "synthetic".into(),
        model_hash: m.info.sha256.clone(),
        params: serde_json::json!({}),
    });
    for n in EDITED {
        let orig = &m.weights[n];
        let dw = (Tensor::randn(0f32, 1.0, orig.dims(), &Device::Cpu).unwrap() * 0.05).unwrap();
        d.insert(n, orig, &dw).unwrap();
    }
    d.save(path).expect("save delta");
}

/// A safetensors file's header and the offset where its data starts.
fn header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// Set the first 16 bytes of tensor `key` to 0xFF (four NaNs).
fn corrupt(path: &Path, key: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let (h, start) = header(&bytes);
    let a = h[key]["data_offsets"][0].as_u64().unwrap() as usize + start;
    bytes[a..a + 16].fill(0xFF);
    std::fs::write(path, bytes).unwrap();
}

/// Rewrite a delta file as an older biaslens wrote it: only the `biaslens` metadata key.
fn drop_checksum(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let (mut h, start) = header(&bytes);
    h["__metadata__"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k == "biaslens");
    let mut text = serde_json::to_vec(&h).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[start..]);
    std::fs::write(path, out).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Item 1: `--force` replaces a directory only when biaslens wrote it, never the current
/// directory, a foreign directory or the base model.
#[test]
fn force_replaces_only_directories_biaslens_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let delta = tmp.path().join("delta.safetensors");
    write_delta(&delta);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("precious.txt"), b"keep me").unwrap();
    let model = tiny_llama();
    let apply = |out: &str, extra: &[&str]| {
        let args = [
            &[
                "apply",
                "--model",
                s(&model),
                "--delta",
                s(&delta),
                "--out",
                out,
            ][..],
            extra,
        ]
        .concat();
        biaslens(&work, &args)
    };

    let o = apply(".", &["--force"]);
    fails_with(&o, "apply --out . --force", &["current directory"]);
    let o = biaslens(
        &work,
        &[
            "edit",
            "--model",
            s(&model),
            "--layers",
            "0",
            "--out",
            ".",
            "--force",
        ],
    );
    fails_with(&o, "edit --out . --force", &["current directory"]);
    let o = apply("..", &["--force"]);
    fails_with(&o, "apply --out .. --force", &["current directory"]);
    assert_eq!(
        std::fs::read(work.join("precious.txt")).unwrap(),
        b"keep me"
    );

    // A directory that biaslens did not write.
    let foreign = work.join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("a.jpg"), b"jpg").unwrap();
    let o = apply("photos", &[]);
    fails_with(
        &o,
        "apply into an existing directory",
        &["photos", "--force"],
    );
    let o = apply("photos", &["--force"]);
    fails_with(
        &o,
        "apply --force into a foreign directory",
        &["photos", "not a biaslens output"],
    );
    assert!(foreign.join("a.jpg").is_file());

    // The base model itself.
    let o = apply(s(&model), &["--force"]);
    fails_with(&o, "apply --out BASE --force", &["base model"]);

    // A biaslens output is replaced with --force, and only with it.
    ok(&apply("edited", &[]), "apply");
    assert!(work.join("edited/edit.json").is_file());
    let o = apply("edited", &[]);
    fails_with(&o, "apply over an output without --force", &["--force"]);
    ok(
        &apply("edited", &["--force"]),
        "apply --force over its own output",
    );
    let reverted = work.join("reverted");
    let revert = |extra: &[&str]| {
        let args = [
            &[
                "revert",
                "--model",
                "edited",
                "--delta",
                "edited/delta.safetensors",
                "--out",
                s(&reverted),
            ][..],
            extra,
        ]
        .concat();
        biaslens(&work, &args)
    };
    ok(&revert(&[]), "revert");
    ok(&revert(&["--force"]), "revert --force over its own output");
    assert_eq!(
        names(&work),
        ["edited", "photos", "precious.txt", "reverted"],
        "staging or old directories left behind"
    );
}

/// Item 2: `compare --json` needs --force for an existing file and never overwrites an input.
#[test]
fn compare_json_needs_force_and_never_overwrites_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/results/eval-smollm2-arc-easy/results.json");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::copy(&src, d.join("results.json")).unwrap();
    }
    let original = std::fs::read(a.join("results.json")).unwrap();
    let compare = |json: &Path, force: bool| {
        let mut args = vec!["compare", "a", "b", "--json", s(json)];
        if force {
            args.push("--force");
        }
        biaslens(tmp.path(), &args)
    };
    for force in [false, true] {
        let o = compare(&a.join("results.json"), force);
        fails_with(&o, "compare --json INPUT", &["results.json", "input"]);
        let o = compare(&tmp.path().join("b/../a/results.json"), force);
        fails_with(&o, "compare --json INPUT (other spelling)", &["input"]);
    }
    assert_eq!(std::fs::read(a.join("results.json")).unwrap(), original);
    let out = tmp.path().join("cmp.json");
    std::fs::write(&out, b"mine").unwrap();
    let o = compare(&out, false);
    fails_with(&o, "compare --json EXISTING", &["cmp.json", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    ok(&compare(&out, true), "compare --json EXISTING --force");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(v.is_object());
}

/// Item 3: a corrupted delta is refused by apply and revert, naming the file; a delta without
/// a checksum (older biaslens) is still refused when it holds non-finite values.
#[test]
fn corrupted_deltas_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_llama();
    let good = dir.join("good.safetensors");
    write_delta(&good);
    ok(
        &biaslens(
            dir,
            &[
                "apply",
                "--model",
                s(&model),
                "--delta",
                "good.safetensors",
                "--out",
                "edited",
            ],
        ),
        "apply",
    );
    let bad = dir.join("bad.safetensors");
    std::fs::copy(&good, &bad).unwrap();
    corrupt(&bad, &format!("delta.{}", EDITED[1]));
    let o = biaslens(
        dir,
        &[
            "apply",
            "--model",
            s(&model),
            "--delta",
            "bad.safetensors",
            "--out",
            "bad-edit",
        ],
    );
    fails_with(
        &o,
        "apply of a corrupted delta",
        &["bad.safetensors", "checksum"],
    );
    assert!(!dir.join("bad-edit").exists());
    let o = biaslens(
        dir,
        &[
            "revert",
            "--model",
            "edited",
            "--delta",
            "bad.safetensors",
            "--out",
            "reverted",
        ],
    );
    fails_with(
        &o,
        "revert with a corrupted delta",
        &["bad.safetensors", "checksum"],
    );
    assert!(!dir.join("reverted").exists());

    // An old delta (no checksum) with NaNs: refused, naming file and tensor.
    let old = dir.join("old.safetensors");
    std::fs::copy(&good, &old).unwrap();
    drop_checksum(&old);
    ok(
        &biaslens(
            dir,
            &[
                "apply",
                "--model",
                s(&model),
                "--delta",
                "old.safetensors",
                "--out",
                "old-edit",
            ],
        ),
        "apply of a finite delta without checksum",
    );
    corrupt(&old, &format!("delta.{}", EDITED[0]));
    let o = biaslens(
        dir,
        &[
            "apply",
            "--model",
            s(&model),
            "--delta",
            "old.safetensors",
            "--out",
            "old-bad",
        ],
    );
    fails_with(
        &o,
        "apply of an old delta with NaNs",
        &["old.safetensors", EDITED[0], "non-finite", "no checksum"],
    );
    assert!(!dir.join("old-bad").exists());
}

/// Item 4: an output file path that is a directory is refused before any work, and a failed
/// atomic write leaves no temporary file.
#[test]
fn output_file_that_is_a_directory_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out.json");
    std::fs::create_dir(&dir).unwrap();
    let o = biaslens(
        tmp.path(),
        &[
            "measure",
            "--model",
            s(&tiny_llama()),
            "--json",
            "out.json",
            "--force",
        ],
    );
    fails_with(&o, "measure --json DIR", &["out.json", "is a directory"]);
    assert!(biaslens::io::write_atomic(&dir, b"{}").is_err());
    assert_eq!(
        names(tmp.path()),
        ["out.json"],
        "temporary file left behind"
    );
    assert!(names(&dir).is_empty());
}

/// Item 5: staging directories of a dead process are removed (and reported) by the next run;
/// one of a live process is kept.
#[test]
fn stale_staging_directories_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_delta(&dir.join("d.safetensors"));
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.join(format!(".out.tmp-{dead}-123456789"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 1024]).unwrap();
    let live = dir.join(format!(".out.tmp-{}-1", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let o = biaslens(
        dir,
        &[
            "apply",
            "--model",
            s(&tiny_llama()),
            "--delta",
            "d.safetensors",
            "--out",
            "out",
        ],
    );
    ok(&o, "apply");
    assert!(!stale.exists(), "stale staging directory kept");
    assert!(
        live.exists(),
        "a live process's staging directory was removed"
    );
    let name = stale.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stderr(&o).contains(&name), "not reported: {}", stderr(&o));
}

/// Item 6 (and issue item 11): invalid arguments are refused before anything is loaded or
/// written, naming the flag.
#[test]
fn invalid_arguments_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama();
    let m = s(&model);
    let cases: &[(&[&str], &str)] = &[
        (
            &["trace", "--model", m, "--noise-std=-1", "--out", "run"],
            "--noise-std",
        ),
        (
            &["trace", "--model", m, "--noise-times=0", "--out", "run"],
            "--noise-times",
        ),
        (
            &["trace", "--model", m, "--prompts", "0", "--out", "run"],
            "--prompts",
        ),
        (
            &["trace", "--model", m, "--samples", "0", "--out", "run"],
            "--samples",
        ),
        (
            &["trace", "--model", m, "--kinds", "mlp,mlp", "--out", "run"],
            "--kinds",
        ),
        (
            &["mediate", "--model", m, "--prompts", "0", "--out", "run"],
            "--prompts",
        ),
        (
            &["measure", "--model", m, "--batch-size", "0"],
            "--batch-size",
        ),
        (
            &[
                "edit",
                "--model",
                m,
                "--layers",
                "0",
                "--max-edit",
                "0",
                "--out",
                "run",
            ],
            "--max-edit",
        ),
        (
            &[
                "edit",
                "--model",
                m,
                "--layers",
                "0",
                "--lambda=-5",
                "--out",
                "run",
            ],
            "--lambda",
        ),
        (
            &[
                "edit", "--model", m, "--layers", "0", "--lambda", "NaN", "--out", "run",
            ],
            "--lambda",
        ),
        (
            &["edit", "--model", m, "--layers", "0,0", "--out", "run"],
            "--layers",
        ),
        (
            &[
                "edit",
                "--model",
                m,
                "--layers",
                "0",
                "--prefixes",
                "0",
                "--out",
                "run",
            ],
            "--prefixes",
        ),
        (
            &["eval", "--model", m, "--tasks", "copa,copa", "--out", "run"],
            "--tasks",
        ),
        (
            &[
                "eval",
                "--model",
                m,
                "--tasks",
                "copa",
                "--batch-tokens",
                "0",
                "--out",
                "run",
            ],
            "--batch-tokens",
        ),
        (
            &[
                "eval",
                "--model",
                m,
                "--tasks",
                "copa",
                "--fraction",
                "1.5",
                "--out",
                "run",
            ],
            "--fraction",
        ),
        (
            &[
                "eval", "--model", m, "--tasks", "copa", "--limit", "0", "--out", "run",
            ],
            "--limit",
        ),
    ];
    for (args, flag) in cases {
        let o = biaslens(tmp.path(), args);
        let err = fails_with(&o, &args.join(" "), &[flag]);
        assert!(
            !err.contains("tokenizer"),
            "{args:?}: the model was loaded first: {err}"
        );
        assert!(
            names(tmp.path()).is_empty(),
            "{args:?} wrote {:?}",
            names(tmp.path())
        );
    }
    // The corrected rerun is not refused as "made with different settings".
    let o = biaslens(
        tmp.path(),
        &["trace", "--model", m, "--noise-std", "0.1", "--out", "run"],
    );
    let err = stderr(&o);
    assert!(!err.contains("different settings"), "{err}");
}

/// Item 7: an ordinary error prints one line even with RUST_BACKTRACE=1, and a model without a
/// tokenizer names the missing file.
#[test]
fn errors_are_one_line_and_name_the_missing_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("garbage.gguf");
    std::fs::write(&gguf, b"not a gguf file at all").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_biaslens"))
            .current_dir(tmp.path())
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap()
    };
    let o = run(&["measure", "--model", s(&gguf)]);
    let err = fails_with(&o, "measure on a garbage GGUF", &["garbage.gguf"]);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line:\n{err}"
    );
    let o = run(&["measure", "--model", s(&tiny_llama())]);
    let err = fails_with(&o, "measure without a tokenizer", &["tokenizer.json"]);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line:\n{err}"
    );
}
