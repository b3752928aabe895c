//! One measure job for the CLI and the report (issue 14): `biaslens measure --json` writes the
//! bytes the library's `MeasureJob` gives, and the report's measure stage (held-out professions
//! and the definitional controls) reports the numbers `biaslens measure --split held-out` and
//! `--split controls` print, also with a cap on professions. On the tiny llama with a word-level
//! tokenizer.

mod common;

use biaslens::measure::{MeasureJob, MeasureOptions, MeasureResult, Subset};
use biaslens::model::Model;
use biaslens::report::pipeline::Pipeline;
use biaslens::report::spec::Spec;
use biaslens::report::stages::measure::{MeasureOutput, MeasureStage};
use candle_core::Device;
use std::path::Path;
use std::process::Command;

fn spec(model: &str, max_professions: Option<usize>) -> Spec {
    let cap = max_professions.map_or(String::new(), |m| format!("max_professions = {m}"));
    Spec::parse(&format!(
        r#"
name = "measure-job"
[model]
name = {model:?}
[split]
definitional_threshold = 0.5
held_out_fraction = 0.5
seed = 0
[trace]
prompts = 2
samples = 1
noise = 3.0
window = 1
kinds = ["mlp"]
seed = 0
[measure]
{cap}
[methods]
[benchmarks]
bias = []
capability = []
[run]
seeds = [0]
threads = 2
bootstrap = 1000
"#
    ))
    .unwrap()
}

/// `biaslens measure --split <split> --json <out>` with its defaults (seed 0, the job's batch).
fn cli_measure(model: &str, split: &str, out: &Path) -> Vec<u8> {
    let o = Command::new(env!("CARGO_BIN_EXE_biaslens"))
        .args(["measure", "--model", model, "--split", split, "--json"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "measure failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// The base model's measure stage run alone into `out`: its job and its output.
fn report_measure(spec: &Spec, out: &Path) -> (MeasureJob, MeasureOutput) {
    let stage = MeasureStage::new(spec, "base");
    let job = stage.job().clone();
    let mut p = Pipeline::new();
    p.push(Box::new(stage));
    let outcome = p.run(spec, out, false).unwrap();
    let o = serde_json::from_value(outcome.outputs["measure_base"].clone()).unwrap();
    (job, o)
}

#[test]
fn cli_and_report_measure_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_tok(tmp.path());
    let model_name = dir.to_str().expect("UTF-8 temp path");
    let model = Model::load(model_name, &Device::Cpu).unwrap();

    // The CLI's file is the library job's result, byte for byte.
    let cli = cli_measure(model_name, "held-out", &tmp.path().join("held.json"));
    let job = MeasureJob::new(MeasureOptions {
        subset: Subset::HeldOut,
        ..MeasureOptions::default()
    });
    let lib = tmp.path().join("lib.json");
    biaslens::io::write_json_atomic(&lib, &job.run(&model, |_| {}).unwrap()).unwrap();
    assert!(
        cli == std::fs::read(&lib).unwrap(),
        "CLI and library differ"
    );
    let held: MeasureResult = serde_json::from_slice(&cli).unwrap();
    let ctrl: MeasureResult = serde_json::from_slice(&cli_measure(
        model_name,
        "controls",
        &tmp.path().join("c.json"),
    ))
    .unwrap();

    // The report's stage runs that job and reports its numbers.
    let (report_job, o) = report_measure(&spec(model_name, None), &tmp.path().join("report"));
    assert_eq!(report_job, job);
    let m = &held.metrics;
    assert_eq!(
        (o.n_prompts, o.n_professions),
        (m.n_prompts, m.n_professions)
    );
    assert_eq!(o.mean_abs_gap, m.mean_abs_gap);
    assert_eq!(o.mean_gap, m.mean_gap);
    let fit = m.regression.as_ref();
    assert_eq!(o.a_s.as_ref(), fit.map(|r| &r.a_s));
    assert_eq!(o.r2.as_ref(), fit.map(|r| &r.r2));
    assert_eq!(o.controls_abs_gap, Some(ctrl.metrics.mean_abs_gap));
    assert_eq!(
        o.controls_toward_definitional,
        ctrl.metrics.gap_toward_definitional
    );
    assert!(o.controls_toward_definitional.is_some());
}

#[test]
fn a_capped_report_measures_the_capped_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_tok(tmp.path());
    let model_name = dir.to_str().expect("UTF-8 temp path");
    let (job, o) = report_measure(&spec(model_name, Some(3)), &tmp.path().join("report"));
    assert_eq!(job.max_professions, Some(3));
    let model = Model::load(model_name, &Device::Cpu).unwrap();
    let r = job.run(&model, |_| {}).unwrap();
    assert_eq!((o.n_professions, r.metrics.n_professions), (3, 3));
    assert_eq!(o.n_prompts, 3 * 17);
    assert_eq!(o.mean_abs_gap, r.metrics.mean_abs_gap);
    assert_eq!(
        o.a_s.as_ref(),
        r.metrics.regression.as_ref().map(|f| &f.a_s)
    );
}

/// A stop requested while a measure runs ends it at the next layer with `Error::Interrupted`
/// (the Python bindings' Ctrl-C); once withdrawn, the same job on the same model gives the
/// bytes of an uninterrupted run. A `with_weights` copy (an edited model) obeys the same flag.
#[test]
fn a_requested_stop_ends_the_job_and_a_cleared_one_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_tok(tmp.path());
    let model = Model::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let job = MeasureJob::new(MeasureOptions {
        subset: Subset::Controls,
        batch_size: 1,
        ..MeasureOptions::default()
    });
    let whole = serde_json::to_vec(&job.run(&model, |_| {}).unwrap()).unwrap();
    let total = job.prompts().unwrap().0.len();
    assert!(total > 2);

    let stop = model.stop_flag().clone();
    let mut done = 0;
    let err = job
        .run(&model, |k| {
            done += k;
            if done == 2 {
                stop.request();
            }
        })
        .unwrap_err();
    assert!(matches!(err, biaslens::Error::Interrupted), "{err}");
    assert_eq!(done, 2, "prompts kept being measured after the stop");

    let copy = model.with_weights(model.weights.clone(), "+copy").unwrap();
    assert!(matches!(
        job.run(&copy, |_| {}).unwrap_err(),
        biaslens::Error::Interrupted
    ));

    stop.clear();
    let again = serde_json::to_vec(&job.run(&model, |_| {}).unwrap()).unwrap();
    assert!(again == whole, "a cleared stop changed the result");
}

/// Packed prompts score as their own rows: `next_token_probs` (prefix trees, several read
/// positions per row, `LogitsRequest::PositionIds`) against one plain row per prompt
/// through the composed ops (`LastTokenIds`, no fused kernels): bit for bit on the stable path,
/// within float rounding with the fused CPU kernels (fused attention, the one-pass normaliser
/// `fused::token_log_probs`) or MKL.
#[test]
fn packed_prompts_score_as_their_own_rows() {
    use biaslens::measure::next_token_probs;
    use biaslens::model::{InterventionPlan, LogitsRequest};
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_tok(tmp.path());
    let model = Model::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let job = MeasureJob::new(MeasureOptions {
        subset: Subset::Controls,
        ..MeasureOptions::default()
    });
    let tok = model.tokenizer().unwrap();
    let rows: Vec<Vec<u32>> = job
        .prompts()
        .unwrap()
        .0
        .iter()
        .map(|p| tok.encode(&p.text).unwrap())
        .collect();
    assert!(rows.len() > 40);
    let ids = [3u32, 5, 8];
    // An empty prompt is an error naming it, not a panic in the packing.
    let mut with_empty = rows.clone();
    with_empty[2].clear();
    let err = next_token_probs(&model.transformer, &with_empty, &ids, 7, |_| {}).unwrap_err();
    assert!(err.to_string().contains("prompt 3 of"), "{err}");
    // The reference: one plain row per prompt through the composed ops (no fused kernels:
    // candle's attention and the vocabulary-sized log-softmax).
    let mut reference = model.transformer.clone();
    reference.fast_kernels = false;
    let plan = InterventionPlan::logits(LogitsRequest::LastTokenIds(ids.to_vec()));
    let own: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| {
            reference
                .forward(std::slice::from_ref(row), &plan)
                .unwrap()
                .logprobs
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()[0]
                .iter()
                .map(|&x| (x as f64).exp())
                .collect()
        })
        .collect();
    for fast in [false, true] {
        let mut t = model.transformer.clone();
        t.fast_kernels = fast;
        // Batches of 7 prompts: several trees per pass, trees cut by the prompt limit.
        let packed = next_token_probs(&t, &rows, &ids, 7, |_| {}).unwrap();
        for (i, (p, o)) in packed.iter().zip(&own).enumerate() {
            for (a, b) in p.iter().zip(o) {
                // An mkl build's products depend on the batch's shape: no bit promise there.
                if fast || cfg!(feature = "mkl") {
                    assert!((a - b).abs() <= 1e-6, "fast {fast}, prompt {i}: {a} vs {b}");
                } else {
                    assert_eq!(a, b, "prompt {i}");
                }
            }
        }
    }
}
