//! One trace job for the CLI and the report (issue 14): `biaslens trace --split edit` and the
//! report's trace stage, given the same prompts, seed and settings, trace with the same noise:
//! the CLI's per-prompt records equal the library's bit for bit, and the report's heatmaps,
//! total effect, noise std and located sites equal the CLI's. A skipped prompt changes neither
//! the noise nor the effects of the others. All on the tiny llama with a word-level tokenizer.

mod common;

use biaslens::model::Model;
use biaslens::report::pipeline::Pipeline;
use biaslens::report::spec::Spec;
use biaslens::report::stages::trace::{TraceOutput, TraceStage};
use biaslens::trace::run::{TraceRecord, TraceSummary};
use biaslens::trace::{LocatedSites, NoiseLevel, TraceJob, TraceSettings};
use candle_core::Device;
use std::path::Path;
use std::process::Command;

fn spec(model: &Path) -> Spec {
    let text = format!(
        r#"
name = "trace-job"
[model]
name = {model:?}
[split]
definitional_threshold = 0.5
held_out_fraction = 0.5
seed = 0
[trace]
prompts = 6
samples = 2
noise = 3.0
window = 2
kinds = ["hidden", "mlp", "attn"]
seed = 7
[methods]
[benchmarks]
bias = []
capability = []
[run]
seeds = [0]
threads = 2
bootstrap = 100
"#,
        model = model.to_str().expect("UTF-8 temp path")
    );
    Spec::parse(&text).unwrap()
}

/// `biaslens trace` with the flags that match [`spec`]'s trace section.
fn cli_trace(model: &Path, out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .args(["trace", "--model"])
        .arg(model)
        .args(["--split", "edit", "--prompts", "6", "--samples", "2"])
        .args(["--window", "2", "--kinds", "hidden,mlp,attn", "--seed", "7"])
        .args(["--noise-times", "3"])
        .arg("--out")
        .arg(out)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trace failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> T {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn records(dir: &Path) -> Vec<TraceRecord> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(v["record"].take()).unwrap()
        })
        .collect()
}

#[test]
fn cli_and_report_trace_the_same_prompts_with_the_same_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_tok(tmp.path());
    let spec = spec(&model_dir);

    let cli = tmp.path().join("cli");
    cli_trace(&model_dir, &cli);

    let stage = TraceStage::new(&spec, "base");
    let job = stage.job().clone();
    let mut p = Pipeline::new();
    p.push(Box::new(stage));
    let outcome = p.run(&spec, &tmp.path().join("report"), false).unwrap();
    let report: TraceOutput = serde_json::from_value(outcome.outputs["trace"].clone()).unwrap();

    // The CLI's records are the library's, bit for bit.
    let model = Model::load(model_dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let prepared = job.prepare(&model).unwrap();
    let lib: Vec<TraceRecord> = (0..prepared.items.len())
        .map(|i| prepared.run_item(i).unwrap())
        .collect();
    let got = records(&cli);
    assert_eq!(got.len(), 6);
    assert_eq!(got, lib, "CLI records differ from the library's");

    // The report aggregates the same records with the same noise std.
    let settings: serde_json::Value = read_json(&cli.join("settings.json"));
    assert_eq!(settings["noise_std"].as_f64(), Some(report.noise_std));
    assert_eq!(report.noise_std, prepared.noise_std);
    let summary: TraceSummary = read_json(&cli.join("summary.json"));
    assert_eq!(report.n_prompts, summary.n_prompts);
    assert_eq!(report.localisation.total_effect, summary.te);
    let mut cells = 0;
    for g in &report.grids {
        for (role, aie) in g.roles.iter().zip(&g.aie) {
            let s = summary
                .roles
                .iter()
                .find(|s| s.kind.name() == g.kind && s.role.label() == role)
                .unwrap_or_else(|| panic!("{} / {role} missing from the CLI summary", g.kind));
            let cli_aie: Vec<f64> = s.ie.iter().map(|e| e.value).collect();
            assert_eq!(aie, &cli_aie, "{} / {role}", g.kind);
            cells += aie.len();
        }
    }
    assert!(cells >= 3 * 3, "too few heatmap cells compared: {cells}");
    let sites: LocatedSites = read_json(&cli.join("sites.json"));
    assert_eq!(report.sites.as_ref(), Some(&sites));
}

#[test]
fn a_skipped_prompt_leaves_the_noise_of_the_others_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Model::load(common::tiny_tok(tmp.path()).to_str().unwrap(), &Device::Cpu).unwrap();
    let job = TraceJob {
        prompts: 4,
        settings: TraceSettings {
            samples: 2,
            window: 2,
            seed: 3,
            ..TraceSettings::default()
        },
        ..TraceJob::default()
    };
    let selected = job.select().unwrap();
    let full = job.prepare_prompts(&model, selected.clone()).unwrap();
    assert!(full.skipped.is_empty());
    // Same text (so the same noise std), but no slot in which to find the occupation.
    let mut broken = selected;
    broken[1].template = "no slot here".into();
    let part = job.prepare_prompts(&model, broken).unwrap();
    assert_eq!(part.skipped.len(), 1);
    assert_eq!(part.skipped[0].index, 1);
    let kept: Vec<usize> = part.items.iter().map(|it| it.index).collect();
    assert_eq!(kept, [0, 2, 3]);
    assert_eq!(part.noise_std.to_bits(), full.noise_std.to_bits());
    let noise = |p: &biaslens::trace::PreparedTrace, i: usize| {
        p.noise(i).unwrap().to_vec3::<f32>().unwrap()
    };
    for (i, it) in part.items.iter().enumerate() {
        let j = it.index; // no earlier prompt of `full` is skipped
        assert_eq!(noise(&part, i), noise(&full, j), "noise of prompt {j}");
        assert_eq!(
            part.run_item(i).unwrap(),
            full.run_item(j).unwrap(),
            "effects of prompt {j}"
        );
    }
    assert_ne!(
        noise(&full, 0),
        noise(&full, 1),
        "every prompt draws its own noise"
    );
}

#[test]
fn a_job_reads_from_partial_json_with_the_defaults_and_names_unknown_fields() {
    let job: TraceJob = serde_json::from_str(r#"{"prompts": 5}"#).unwrap();
    assert_eq!(job.prompts, 5);
    assert_eq!(job.settings, TraceSettings::default());
    assert_eq!(job.settings.noise, NoiseLevel::EmbedStdTimes(3.0));
    let back: TraceJob = serde_json::from_value(serde_json::to_value(&job).unwrap()).unwrap();
    assert_eq!(back, job);
    let e = serde_json::from_str::<TraceJob>(r#"{"promtps": 5}"#).unwrap_err();
    assert!(e.to_string().contains("promtps"), "{e}");
    let e = TraceJob {
        batch_rows: 0,
        ..TraceJob::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("batch_rows"), "{e}");
}
