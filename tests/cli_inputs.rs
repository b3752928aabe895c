//! Inputs are read the same way everywhere and never silently wrong (issue 17, items 4, 5, 7,
//! 9, 10 and 12): long prompts, byte-order marks, CRLF and non-UTF-8 data files, skipped data
//! lines, the data root, empty environment variables, model identity across apply → revert and
//! hash-checked registry aliases. Every run is the real binary, mostly on the tiny llama with a
//! word-level tokenizer written by the test (so `measure`, `eval`, `trace` and `edit` run in
//! seconds).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run the binary in `cwd` with `env` set (an empty value sets the variable to "").
fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_biaslens"));
    c.current_dir(cwd)
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("BIASLENS_DATA");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run biaslens")
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

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A data folder holding only COPA, with `lines` as copa.jsonl's bytes.
fn copa_data(root: &Path, bytes: &[u8]) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(data.join("copa")).unwrap();
    std::fs::write(data.join("copa/copa.jsonl"), bytes).unwrap();
    data
}

/// The first `n` lines of the vendored copa.jsonl.
fn copa_lines(n: usize) -> Vec<String> {
    std::fs::read_to_string(manifest().join("fixtures/data/copa/copa.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(str::to_string)
        .collect()
}

fn task_metric(results: &Value, task: &str, metric: &str) -> Value {
    results["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task)
        .and_then(|t| {
            t["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == metric)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no {task}/{metric} in results"))
}

/// Item 4: a prompt longer than the model's positions is refused before any work with an
/// error that says so (not "parameter `rows`"); prompts that fit still run.
#[test]
fn a_prompt_longer_than_the_model_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    let long = format!(
        "The {{}} said that{}\n",
        " and the man said that".repeat(20)
    );
    std::fs::write(
        tmp.path().join("templates.txt"),
        format!("The {{}} said that\n{long}"),
    )
    .unwrap();
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            s(&model),
            "--templates",
            "templates.txt",
        ],
        &[],
    );
    let err = fails_with(
        &o,
        "measure with a 100-word template",
        &[
            "64 positions",
            "tokens",
            "template 2",
            "The {} said that and the man",
        ],
    );
    assert!(!err.contains("parameter `rows`"), "{err}");

    // A template that fits (about 40 tokens per prompt) runs through the token-bounded batches.
    let fits = format!("The {{}} said that{}\n", " and the man said that".repeat(7));
    std::fs::write(tmp.path().join("fits.txt"), &fits).unwrap();
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            s(&model),
            "--templates",
            "fits.txt",
            "--batch-size",
            "512",
            "--json",
            "m.json",
        ],
        &[],
    );
    ok(&o, "measure with a 40-token template");
    let m = read_json(&tmp.path().join("m.json"));
    assert_eq!(m["prompts"].as_array().unwrap().len(), 320);
}

/// Item 5: a byte-order mark and CRLF line endings in a templates file are not part of the
/// templates.
#[test]
fn templates_with_a_bom_and_crlf_are_read_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    std::fs::write(
        tmp.path().join("templates.txt"),
        "\u{FEFF}The {} said that\r\nThe {} was a man because\r\n",
    )
    .unwrap();
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            s(&model),
            "--templates",
            "templates.txt",
            "--json",
            "m.json",
        ],
        &[],
    );
    ok(&o, "measure with a BOM/CRLF templates file");
    let m = read_json(&tmp.path().join("m.json"));
    let prompts = m["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2 * 320);
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        assert!(
            text.starts_with("The ") && !text.contains(['\u{FEFF}', '\r']),
            "prompt {text:?}"
        );
    }
}

/// Item 5: a templates file or a benchmark file that is not UTF-8 is refused, naming the file
/// and the line of the first bad byte.
#[test]
fn non_utf8_files_are_refused_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    std::fs::write(
        tmp.path().join("templates.txt"),
        b"The {} said that\nThe {} caf\xe9 that\n",
    )
    .unwrap();
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            s(&model),
            "--templates",
            "templates.txt",
        ],
        &[],
    );
    fails_with(
        &o,
        "measure with a Latin-1 templates file",
        &["templates.txt:2", "UTF-8"],
    );

    let lines = copa_lines(3);
    let mut bytes = format!("{}\n{}\n", lines[0], lines[1]).into_bytes();
    bytes.extend_from_slice(b"{\"query\": \"caf\xe9\"}\n");
    let data = copa_data(tmp.path(), &bytes);
    let o = run(
        tmp.path(),
        &[
            "eval",
            "--model",
            s(&model),
            "--tasks",
            "copa",
            "--data",
            s(&data),
            "--no-cache",
            "--skip-bad",
            "--out",
            "ev",
        ],
        &[],
    );
    fails_with(
        &o,
        "eval on a Latin-1 data file",
        &["copa.jsonl:3", "UTF-8"],
    );
}

/// Items 5 and 12: a benchmark file with a BOM and CRLF loses no item, and a line skipped with
/// --skip-bad is listed in results.md, not only in results.json.
#[test]
fn eval_reads_bom_and_crlf_and_reports_skipped_lines_in_markdown() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    let lines = copa_lines(4);
    let text = format!(
        "\u{FEFF}{}\r\n{}\r\n{{\"query\": \"broken\r\n{}\r\n{}\r\n",
        lines[0], lines[1], lines[2], lines[3]
    );
    let data = copa_data(tmp.path(), text.as_bytes());
    let o = run(
        tmp.path(),
        &[
            "eval",
            "--model",
            s(&model),
            "--tasks",
            "copa",
            "--data",
            s(&data),
            "--no-cache",
            "--skip-bad",
            "--out",
            "ev",
        ],
        &[],
    );
    ok(&o, "eval --skip-bad");
    let r = read_json(&tmp.path().join("ev/results.json"));
    assert_eq!(task_metric(&r, "copa", "acc")["n"], 4, "items lost");
    let md = std::fs::read_to_string(tmp.path().join("ev/results.md")).unwrap();
    assert!(md.contains("copa.jsonl:3"), "results.md:\n{md}");
    assert!(md.to_lowercase().contains("skipped"), "results.md:\n{md}");
}

/// Item 7: eval, trace and measure find the data from any working directory (the crate's copy
/// by default) and honour BIASLENS_DATA.
#[test]
fn every_command_resolves_the_data_root_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let args = |out: &str| {
        vec![
            "eval".to_string(),
            "--model".into(),
            s(&model).into(),
            "--tasks".into(),
            "copa".into(),
            "--no-cache".into(),
            "--out".into(),
            out.into(),
        ]
    };
    let mut a = args("ev");
    a.extend(["--limit".into(), "2".into()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&run(&elsewhere, &a, &[]), "eval from another directory");
    let o = run(
        &elsewhere,
        &[
            "trace",
            "--model",
            s(&model),
            "--prompts",
            "2",
            "--samples",
            "1",
            "--kinds",
            "mlp",
            "--noise-std",
            "0.4",
            "--out",
            "tr",
        ],
        &[],
    );
    ok(&o, "trace from another directory");

    // BIASLENS_DATA: a folder with three COPA items (eval) and two professions (measure).
    let data = copa_data(tmp.path(), (copa_lines(3).join("\n") + "\n").as_bytes());
    std::fs::create_dir_all(data.join("bolukbasi_debiaswe")).unwrap();
    std::fs::write(
        data.join("bolukbasi_debiaswe/professions.json"),
        r#"[["nurse", -0.1, 0.6], ["carpenter", 0.05, -0.4]]"#,
    )
    .unwrap();
    std::fs::create_dir_all(data.join("winogender")).unwrap();
    std::fs::copy(
        manifest().join("fixtures/data/winogender/occupations-stats.tsv"),
        data.join("winogender/occupations-stats.tsv"),
    )
    .unwrap();
    let env = [("BIASLENS_DATA", s(&data))];
    let a = args("ev-env");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&run(&elsewhere, &a, &env), "eval with BIASLENS_DATA");
    let r = read_json(&elsewhere.join("ev-env/results.json"));
    assert_eq!(
        task_metric(&r, "copa", "acc")["n"],
        3,
        "BIASLENS_DATA ignored"
    );
    let o = run(
        &elsewhere,
        &["measure", "--model", s(&model), "--json", "m.json"],
        &env,
    );
    ok(&o, "measure with BIASLENS_DATA");
    let m = read_json(&elsewhere.join("m.json"));
    assert_eq!(m["prompts"].as_array().unwrap().len(), 2 * 17);
    let o = run(
        &elsewhere,
        &[
            "trace",
            "--model",
            s(&model),
            "--prompts",
            "100",
            "--samples",
            "1",
            "--kinds",
            "mlp",
            "--noise-std",
            "0.4",
            "--out",
            "tr-env",
        ],
        &env,
    );
    ok(&o, "trace with BIASLENS_DATA");
    let settings = read_json(&elsewhere.join("tr-env/settings.json"));
    assert_eq!(settings["items"], 2 * 17, "BIASLENS_DATA ignored by trace");
}

/// Item 7: `BIASLENS_MODELS=` (empty) is the same as unset, in the registry and in
/// harness/fetch-models.sh.
#[test]
fn an_empty_biaslens_models_is_treated_as_unset() {
    common::ensure_model("smollm2-135m");
    let tmp = tempfile::tempdir().unwrap();
    let o = run(
        tmp.path(),
        &[
            "apply",
            "--model",
            "smollm2-135m",
            "--delta",
            "missing.safetensors",
            "--out",
            "out",
        ],
        &[("BIASLENS_MODELS", "")],
    );
    let err = fails_with(&o, "apply with a missing delta", &["missing.safetensors"]);
    assert!(!err.contains("not fetched"), "{err}");
    let o = Command::new("bash")
        .arg(manifest().join("harness/fetch-models.sh"))
        .arg("smollm2-135m")
        .current_dir(tmp.path())
        .env("BIASLENS_MODELS", "")
        .output()
        .unwrap();
    ok(&o, "fetch-models.sh with BIASLENS_MODELS=");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "present ({}",
            manifest().join("models/smollm2-135m").display()
        )),
        "{said}"
    );
}

/// Item 9: a model restored by `revert` is the base model again: a delta made for the base
/// applies to it. The base here is an HF directory with an extra safetensors file, so its files
/// hash differently from the export `revert` writes; the weights are the same.
#[test]
fn a_reverted_model_is_the_base_model_again() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    let dir = tmp.path();
    let o = run(
        dir,
        &[
            "edit",
            "--model",
            s(&model),
            "--method",
            "ft",
            "--layers",
            "0",
            "--max-edit",
            "2",
            "--out",
            "edited",
        ],
        &[],
    );
    ok(&o, "edit");
    let o = run(
        dir,
        &[
            "revert",
            "--model",
            "edited",
            "--delta",
            "edited/delta.safetensors",
            "--out",
            "reverted",
        ],
        &[],
    );
    ok(&o, "revert");
    let o = run(
        dir,
        &[
            "apply",
            "--model",
            "reverted",
            "--delta",
            "edited/delta.safetensors",
            "--out",
            "again",
        ],
        &[],
    );
    ok(&o, "apply to the reverted model");
    assert_eq!(
        std::fs::read(dir.join("edited/model.safetensors")).unwrap(),
        std::fs::read(dir.join("again/model.safetensors")).unwrap(),
        "apply to the reverted model gives the edited weights"
    );
    // The edit record keeps the file hash of the base beside the weights hash.
    let rec = read_json(&dir.join("edited/edit.json"));
    let base = &rec["base_model"];
    assert_eq!(base["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(base["weights_sha256"].as_str().unwrap().len(), 64);
    assert_ne!(base["sha256"], base["weights_sha256"]);
    // It also keeps the method's own report (FT-L: the bias loss per step, the largest change).
    let report = &rec["method_report"];
    assert_eq!(report["layers"], serde_json::json!([0]), "{report}");
    assert!(report["bias_loss"]
        .as_array()
        .is_some_and(|l| !l.is_empty()));
}

/// Item 10: a registry alias whose file is another model (Gemma-3 under SmolLM2's file name) is
/// refused at load, naming the file and the sha256 the registry expects.
#[test]
fn a_registry_alias_with_the_wrong_file_is_refused() {
    let gemma = common::ensure_model("gemma-3-270m");
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("models/smollm2-135m");
    std::fs::create_dir_all(&fake).unwrap();
    let file = fake.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(&gemma, &file).unwrap();
    let models = tmp.path().join("models");
    let cache = tmp.path().join("cache");
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            "smollm2-135m",
            "--templates",
            "no-such-templates.txt",
        ],
        &[
            ("BIASLENS_MODELS", s(&models)),
            ("XDG_CACHE_HOME", s(&cache)),
        ],
    );
    fails_with(
        &o,
        "measure --model smollm2-135m with Gemma's file",
        &[
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ],
    );
}

/// A data folder under `root` with only the protected word lists (the probe's pairs and tune's
/// roles), and a junk `root/junk.gguf` whose load fails: an error about it means the word
/// files were checked after the model load began.
fn protected_words_only(root: &Path) -> PathBuf {
    let data = root.join("data");
    let src = manifest().join("fixtures/data");
    for f in [
        "bolukbasi_debiaswe/equalize_pairs.json",
        "protected/gendered_persons.json",
        "protected/gendered_roles.json",
    ] {
        std::fs::create_dir_all(data.join(f).parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), data.join(f)).unwrap();
    }
    std::fs::write(root.join("junk.gguf"), b"not a gguf file").unwrap();
    data
}

/// A data folder without, or with a malformed, `wordnet/words.json` is refused by
/// `edit --word-source wordnet` before any model is loaded, naming the file: the model here is
/// a file of junk bytes that fails to load, so an error about the word file proves the check
/// came first.
#[test]
fn a_missing_word_source_file_is_refused_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = protected_words_only(tmp.path());
    let src = manifest().join("fixtures/data");
    let args = [
        "edit",
        "--model",
        "junk.gguf",
        "--method",
        "tune",
        "--protect-set",
        "roles",
        "--word-source",
        "wordnet",
        "--out",
        "out",
    ];
    let env = [("BIASLENS_DATA", s(&data))];
    let err = fails_with(
        &run(tmp.path(), &args, &env),
        "edit without wordnet/words.json",
        &["wordnet/words.json"],
    );
    assert!(!err.contains("junk.gguf"), "{err}");
    std::fs::create_dir_all(data.join("wordnet")).unwrap();
    std::fs::write(data.join("wordnet/words.json"), "[\"not the shape\"]").unwrap();
    let err = fails_with(
        &run(tmp.path(), &args, &env),
        "edit with a malformed wordnet/words.json",
        &["wordnet/words.json", "occupations"],
    );
    assert!(!err.contains("junk.gguf"), "{err}");
    // So is `--fit-templates varied` without templates/varied.txt (the word lists now parse).
    std::fs::copy(
        src.join("wordnet/words.json"),
        data.join("wordnet/words.json"),
    )
    .unwrap();
    let mut varied = args.to_vec();
    varied.splice(
        varied.len() - 2..varied.len() - 2,
        ["--fit-templates", "varied"],
    );
    let err = fails_with(
        &run(tmp.path(), &varied, &env),
        "edit without templates/varied.txt",
        &["templates/varied.txt"],
    );
    assert!(!err.contains("junk.gguf"), "{err}");
    // And a varied.txt too short for the validation lines, for a --validation fit.
    std::fs::create_dir_all(data.join("templates")).unwrap();
    std::fs::write(data.join("templates/varied.txt"), "I met the {} and\n").unwrap();
    varied.insert(varied.len() - 2, "--validation");
    let err = fails_with(
        &run(tmp.path(), &varied, &env),
        "a validation edit with a short templates/varied.txt",
        &["templates/varied.txt", "at least 24"],
    );
    assert!(!err.contains("junk.gguf"), "{err}");
    // Without the extra inputs the same folder passes this check and the edit fails on the model.
    let plain: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--word-source" && *a != "wordnet")
        .collect();
    fails_with(
        &run(tmp.path(), &plain, &env),
        "edit of a junk model",
        &["junk.gguf"],
    );
}

/// `biaslens report` makes the same check when it builds its stages: a spec whose gap tuning
/// reads WordNet's words, given a data folder without them, is refused naming the file before
/// any stage runs (the model is junk bytes, so an error about it would mean a stage ran).
#[test]
fn a_report_with_a_missing_word_file_is_refused_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    // The probe variant's protected pairs are there; only gap tuning's WordNet words are not.
    let data = protected_words_only(tmp.path());
    let sites = manifest().join("docs/results/trace-smollm2-100/sites.json");
    let spec = std::fs::read_to_string(manifest().join("harness/mitigation-smollm2.toml"))
        .unwrap()
        .replace("name = \"smollm2-135m\"", "name = \"junk.gguf\"")
        .replace(
            "\"docs/results/trace-smollm2-100/sites.json\"",
            &format!("{:?}", s(&sites)),
        );
    assert!(spec.contains("word_source = \"wordnet\"") && spec.contains("junk.gguf"));
    std::fs::write(tmp.path().join("spec.toml"), spec).unwrap();
    let args = ["report", "--spec", "spec.toml", "--out", "out"];
    let env = [("BIASLENS_DATA", s(&data))];
    let err = fails_with(
        &run(tmp.path(), &args, &env),
        "report without wordnet/words.json",
        &["wordnet/words.json"],
    );
    assert!(!err.contains("report [1/"), "a stage ran: {err}");
    assert!(!tmp.path().join("out/stages").exists(), "{err}");
}

/// A report's manifest names the data it read by one hash of the data folder: the crate's own
/// folder and a copy elsewhere (`BIASLENS_DATA`) give the same hash, a changed file another.
/// `--stored-only` into an empty folder runs no stage, so no model is needed.
#[test]
fn a_report_manifest_hashes_the_data_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = manifest().join("harness/mitigation-smollm2.toml");
    let render_with_stderr = |out: &str, env: &[(&str, &str)]| -> (Value, String) {
        let o = run(
            &manifest(),
            &[
                "report",
                "--spec",
                s(&spec),
                "--out",
                s(&tmp.path().join(out)),
                "--stored-only",
            ],
            env,
        );
        ok(&o, "report --stored-only");
        (
            read_json(&tmp.path().join(out).join("manifest.json"))["data_sha256"].clone(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let render = |out: &str, env: &[(&str, &str)]| render_with_stderr(out, env).0;
    let own = render("own", &[]);
    let expected = biaslens::io::sha256_folder(&manifest().join("fixtures/data")).unwrap();
    assert_eq!(own["fixtures/data (folder)"], expected.as_str(), "{own}");
    let copy = tmp.path().join("data");
    let status = Command::new("cp")
        .args(["-r", s(&manifest().join("fixtures/data")), s(&copy)])
        .status()
        .unwrap();
    assert!(status.success());
    let same = render("copy", &[("BIASLENS_DATA", s(&copy))]);
    let values: Vec<&Value> = same.as_object().unwrap().values().collect();
    assert_eq!(values, [&Value::from(expected.clone())], "{same}");
    std::fs::write(copy.join("templates/varied.txt"), "The {} said that\n").unwrap();
    let changed = render("changed", &[("BIASLENS_DATA", s(&copy))]);
    assert_ne!(
        changed.as_object().unwrap().values().next().unwrap(),
        &Value::from(expected)
    );
    // Stage keys hold the data folder's path, not its content: a rerun into a folder whose last
    // manifest saw other data says so (once; the new manifest records the new hash).
    let warning = "warning: the data folder";
    let (_, err) = render_with_stderr("copy", &[("BIASLENS_DATA", s(&copy))]);
    assert!(err.contains(warning) && err.contains("--force"), "{err}");
    let (_, err) = render_with_stderr("copy", &[("BIASLENS_DATA", s(&copy))]);
    assert!(!err.contains(warning), "{err}");
}

/// `--stored-only` into a folder whose report lists stages, none of which this spec's settings
/// find (they were stored by another spec or version), refuses and writes nothing: the report
/// there is not replaced by an empty one. An empty folder still gets its (empty) render.
#[test]
fn a_stored_only_render_that_finds_nothing_keeps_the_report_there() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let spec = manifest().join("harness/mitigation-smollm2.toml");
    let args = [
        "report",
        "--spec",
        s(&spec),
        "--out",
        s(&out),
        "--stored-only",
    ];
    ok(
        &run(&manifest(), &args, &[]),
        "stored-only render into an empty folder",
    );
    // The folder now holds a report; make its manifest list a stage this spec does not have.
    let path = out.join("manifest.json");
    let mut m = read_json(&path);
    m["stages"] = serde_json::json!([{"name": "measure_base", "key": "from another spec"}]);
    let written = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(&path, &written).unwrap();
    let html = std::fs::read(out.join("report.html")).unwrap();
    fails_with(
        &run(&manifest(), &args, &[]),
        "stored-only render that finds no stage",
        &["--stored-only", "nothing was written", "lists 1"],
    );
    assert_eq!(std::fs::read(&path).unwrap(), written, "manifest replaced");
    assert_eq!(std::fs::read(out.join("report.html")).unwrap(), html);
}

/// `measure --against BASE_JSON`: a base result of other prompts is refused before the model
/// loads, naming the file; the same prompts give shares with profession-resampled intervals
/// (a model against itself keeps everything: 1 with a zero-width interval), in the table and
/// the JSON.
#[test]
fn measure_against_a_base_result_checks_it_first_and_pairs_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_tok(tmp.path());
    let base = ["measure", "--model", s(&model), "--split", "controls"];
    // `measure` on the tiny model's controls with these extra flags.
    let measure = |extra: &[&str]| run(tmp.path(), &[&base[..], extra].concat(), &[]);
    ok(&measure(&["--json", "base.json"]), "base measure");
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            "no-such-model",
            "--split",
            "held-out",
            "--against",
            "base.json",
        ],
        &[],
    );
    let err = fails_with(
        &o,
        "--against a result of other prompts",
        &[
            "--against base.json",
            "split controls",
            "split held-out",
            "same flags",
        ],
    );
    assert!(
        !err.contains("no-such-model"),
        "checked after the model: {err}"
    );
    let o = measure(&["--against", "base.json", "--json", "m.json"]);
    ok(&o, "measure against itself");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("controls' gap kept   100.0% [100.0, 100.0]"),
        "{table}"
    );
    assert!(
        table.contains("|gap| at base mass   +0.0% [+0.0, +0.0]")
            && table.contains("p(he) + p(she)       +0.0% [+0.0, +0.0]"),
        "{table}"
    );
    let m = read_json(&tmp.path().join("m.json"));
    let a = &m["against_base"];
    let professions = read_json(&tmp.path().join("base.json"))["metrics"]["n_professions"].clone();
    assert_eq!(a["n_professions"], professions);
    assert_eq!(a["definitional_kept"]["n"], professions);
    for e in [
        &a["abs_gap_ratio"],
        &a["definitional_kept"],
        &a["pronoun_mass_ratio"],
        &a["abs_gap_ratio_at_base_mass"],
    ] {
        assert_eq!(
            (e["value"].as_f64(), e["ci_high"].as_f64()),
            (Some(1.0), Some(1.0))
        );
    }
    // A base read from data files with other contents is refused (hashes, not paths).
    let mut other = read_json(&tmp.path().join("base.json"));
    let hashes = other["data_hashes"].as_object_mut().unwrap();
    let first = hashes.keys().next().unwrap().clone();
    hashes.insert(first, serde_json::json!("0".repeat(64)));
    std::fs::write(
        tmp.path().join("other-data.json"),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    fails_with(
        &measure(&["--against", "other-data.json"]),
        "--against a base of other data",
        &["other-data.json", "other contents"],
    );
    // Custom templates are compared by content before the model loads: the same file by
    // another path is the same prompts, another file is refused naming it.
    std::fs::write(tmp.path().join("t.txt"), "The {} said that\n").unwrap();
    std::fs::write(tmp.path().join("u.txt"), "The {} wrote that\n").unwrap();
    ok(
        &measure(&["--templates", "t.txt", "--json", "base-t.json"]),
        "base measure on custom templates",
    );
    let abs = tmp.path().join("t.txt");
    ok(
        &measure(&["--templates", s(&abs), "--against", "base-t.json"]),
        "the same templates by an absolute path",
    );
    let o = run(
        tmp.path(),
        &[
            "measure",
            "--model",
            "no-such-model",
            "--split",
            "controls",
            "--templates",
            "u.txt",
            "--against",
            "base-t.json",
        ],
        &[],
    );
    let err = fails_with(
        &o,
        "--against with other templates",
        &["u.txt", "other contents"],
    );
    assert!(
        !err.contains("no-such-model"),
        "checked after the model: {err}"
    );
    // A JSON that is not a measure result is named too.
    std::fs::write(tmp.path().join("other.json"), "{}").unwrap();
    fails_with(
        &measure(&["--against", "other.json"]),
        "--against a file that is not a result",
        &["other.json", "not a `biaslens measure --json` result"],
    );
}
