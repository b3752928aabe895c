//! The cross-checks, run on `$BIASLENS_DEVICE` (default cpu; `cuda`/`cuda:N` in `--features cuda`
//! builds): tiny-model forwards against HF and against the CPU, the resumed (fast-tracing) forward
//! against the full one, SmolLM2 occupation probabilities against the HF reference, reduced-
//! precision weights against f32, and the LSDM solve against the nalgebra f64 reference.
//!
//! Every check prints one `GPUCHECK|name|metric|max deviation|tolerance|PASS/FAIL` line (read by
//! harness/gpu-check.sh with `--nocapture`) and then asserts it, so nothing passes silently. On a
//! CPU run the same code runs with the CPU as the device (device-vs-CPU deviations are then 0).

mod common;
use biaslens::device::{device_name, test_device};
use biaslens::edit::reference::{reference_update, LsqProblemF64, PriorF64};
use biaslens::measure::next_token_probs;
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Resume, Site};
use candle_core::{DType, Device, Tensor, D};
use nalgebra::DMatrix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde_json::Value;

/// Report one deviation and assert it is within tolerance (NaN fails).
fn check(name: &str, metric: &str, dev: f64, tol: f64) {
    let ok = dev <= tol;
    println!(
        "GPUCHECK|{name}|{metric}|{dev:.3e}|{tol:.0e}|{}",
        if ok { "PASS" } else { "FAIL" }
    );
    assert!(ok, "{name} {metric}: max deviation {dev:e} > {tol:e}");
}

fn to_cpu_f32(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(&to_cpu_f32(a), &to_cpu_f32(b)) as f64
}

fn tiny_forward(arch: &str) {
    let dev = test_device();
    let dir = common::reference("tiny").join(arch);
    let on_dev = Model::load_hf_dir(arch, &dir, &dev).expect("load tiny model on the device");
    let on_cpu = Model::load_hf_dir(arch, &dir, &Device::Cpu).expect("load tiny model on the CPU");
    let exp =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let n = on_dev.config().num_layers;
    let (sites, plan) = common::every_site_plan(n, ids.len(), ids[0].len());
    let a = on_dev.transformer.forward(&ids, &plan).unwrap();
    let b = on_cpu.transformer.forward(&ids, &plan).unwrap();
    let mut vs_cpu = 0f64;
    for s in &sites {
        vs_cpu = vs_cpu.max(max_abs(&a.captures[s], &b.captures[s]));
    }
    let (lp_dev, lp_cpu) = (a.logprobs.unwrap(), b.logprobs.unwrap());
    vs_cpu = vs_cpu.max(max_abs(&lp_dev, &lp_cpu));
    let want = candle_nn::ops::log_softmax(&exp["logits"].to_dtype(DType::F32).unwrap(), D::Minus1)
        .unwrap();
    let vs_hf = max_abs(&to_cpu_f32(&lp_dev).reshape(want.dims()).unwrap(), &want);
    let name = format!("tiny-{arch}@{}", device_name(&dev));
    check(&name, "activations+logprobs vs cpu", vs_cpu, 1e-4);
    check(&name, "logprobs vs HF", vs_hf, 1e-4);
}

#[test]
fn tiny_llama() {
    tiny_forward("llama");
}
#[test]
fn tiny_mistral() {
    tiny_forward("mistral");
}
#[test]
fn tiny_qwen2() {
    tiny_forward("qwen2");
}
#[test]
fn tiny_gemma3() {
    tiny_forward("gemma3");
}
#[test]
fn tiny_gpt2() {
    tiny_forward("gpt2");
}

/// Fast tracing resumes a pass from a layer's input with cached keys/values; on the device the
/// resumed pass must reproduce the full pass (the naive path) at every start layer.
#[test]
fn resumed_forward_matches_full() {
    let dev = test_device();
    let dir = common::reference("tiny").join("llama");
    let m = Model::load_hf_dir("llama", &dir, &dev).unwrap();
    let ids = vec![vec![3u32, 17, 42, 5, 99, 8, 64]];
    let n = m.config().num_layers;
    let sites: Vec<Site> = (0..n).map(Site::ResidPre).collect();
    let mut plan = InterventionPlan::logits(LogitsRequest::LastToken).with_capture(sites);
    plan.capture_kv = true;
    let full = m.transformer.forward(&ids, &plan).unwrap();
    let want = full.logprobs.as_ref().unwrap();
    let kv = full.kv.clone().unwrap();
    let split = 4; // tokens ..split come from the cache, split.. are recomputed
    let mut worst = 0f64;
    for l in 0..n {
        let resid = full.captures[&Site::ResidPre(l)]
            .narrow(1, split, ids[0].len() - split)
            .unwrap();
        let past: Vec<(Tensor, Tensor)> = kv
            .iter()
            .map(|(k, v)| {
                (
                    k.narrow(2, 0, split).unwrap(),
                    v.narrow(2, 0, split).unwrap(),
                )
            })
            .collect();
        let resume = Resume {
            start_layer: l,
            offset: split,
            resid,
            past: Some(past),
        };
        let got = m
            .transformer
            .forward_resume(&resume, &InterventionPlan::logits(LogitsRequest::LastToken))
            .unwrap();
        worst = worst.max(max_abs(got.logprobs.as_ref().unwrap(), want));
    }
    check(
        &format!("resume-vs-full@{}", device_name(&dev)),
        "logprobs",
        worst,
        1e-5,
    );
}

fn occupation_rows() -> Vec<Value> {
    let path = common::reference("smollm2-135m").join("occupation_probs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 256 prompts spread over all professions and templates.
    (0..256).map(|i| all[i * all.len() / 256].clone()).collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_dp(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

const PRONOUNS: [u32; 3] = [384, 1041, 502]; // " he", " she", " they" (meta.json)

fn smollm2(dev: &Device) -> Model {
    common::ensure_model("smollm2-135m");
    Model::load("smollm2-135m", dev).unwrap_or_else(|e| panic!("cannot load smollm2-135m: {e}"))
}

/// p(he), p(she), p(they) on 256 prompts: device vs CPU vs HF transformers (float32).
#[test]
fn smollm2_occupation_probs() {
    let dev = test_device();
    let rows = occupation_rows();
    let ids: Vec<Vec<u32>> = rows.iter().map(ids_of).collect();
    let hf: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            ["p_he", "p_she", "p_they"]
                .iter()
                .map(|k| r[*k].as_f64().unwrap())
                .collect()
        })
        .collect();
    let got = next_token_probs(&smollm2(&dev).transformer, &ids, &PRONOUNS, 64, |_| {}).unwrap();
    let name = format!("smollm2-occupations@{}", device_name(&dev));
    if !dev.is_cpu() {
        let cpu = next_token_probs(
            &smollm2(&Device::Cpu).transformer,
            &ids,
            &PRONOUNS,
            64,
            |_| {},
        )
        .unwrap();
        check(&name, "p vs cpu", max_dp(&got, &cpu), 1e-4);
    }
    check(&name, "p vs HF", max_dp(&got, &hf), 1e-4);
}

/// Measured max |Δp| of reduced-precision weights vs the f32 path (documented in docs/cuda.md).
const BF16_TOL: f64 = 2e-2;
const F16_TOL: f64 = 5e-3;

/// BF16/F16 projection weights (f32 accumulation for norms, softmax and the metric) against the
/// f32 path on the same 256 prompts. A deviation of exactly 0 would mean the cast did nothing.
#[test]
fn smollm2_reduced_precision_weights() {
    let dev = test_device();
    let m = smollm2(&dev);
    let ids: Vec<Vec<u32>> = occupation_rows().iter().map(ids_of).collect();
    let f32_probs = next_token_probs(&m.transformer, &ids, &PRONOUNS, 64, |_| {}).unwrap();
    for (dtype, tol) in [(DType::BF16, BF16_TOL), (DType::F16, F16_TOL)] {
        let low = m.transformer.with_weight_dtype(dtype).unwrap();
        assert_eq!(low.layers[0].down.weight.dtype(), dtype);
        assert_eq!(low.lm_head.dtype(), DType::F32, "the unembedding stays f32");
        let p = next_token_probs(&low, &ids, &PRONOUNS, 64, |_| {}).unwrap();
        let d = max_dp(&p, &f32_probs);
        check(
            &format!("smollm2-{dtype:?}-weights@{}", device_name(&dev)),
            "p vs f32 weights",
            d,
            tol,
        );
        assert!(
            d > 0.0,
            "{dtype:?}: identical to f32, the weights were not cast"
        );
    }
    assert!(m.transformer.with_weight_dtype(DType::U32).is_err());
}

fn randn(rng: &mut StdRng, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.sample::<f64, _>(StandardNormal))
}

fn solve_on(p: &LsqProblemF64, dev: &Device) -> DMatrix<f64> {
    common::candle_solve(p, dev)
}

/// LSDM's f32 candle solve on the device against the nalgebra f64 reference, for the three
/// priors (real SmolLM2 width for the moment prior), plus device vs CPU solve.
#[test]
fn lsdm_solve_matches_f64_reference() {
    let dev = test_device();
    let mut rng = StdRng::seed_from_u64(11);
    let mut problems = Vec::new();
    let d_ff = 1536;
    let x = randn(&mut rng, 4 * d_ff, d_ff);
    let moment = x.transpose() * &x / (4 * d_ff) as f64;
    problems.push(LsqProblemF64 {
        keys: randn(&mut rng, 50, d_ff),
        residuals: randn(&mut rng, 50, 576),
        prior: PriorF64::Moment(moment),
        lambda: 100.0,
        preserved: None,
        mu: 0.0,
    });
    for (seed, prior) in [
        (1u64, PriorF64::Identity),
        (2, PriorF64::Zero),
        (3, PriorF64::Identity),
    ] {
        let mut rng = StdRng::seed_from_u64(seed);
        problems.push(LsqProblemF64 {
            keys: randn(&mut rng, 24, 128),
            residuals: randn(&mut rng, 24, 32),
            prior,
            lambda: 0.5,
            preserved: Some(randn(&mut rng, 6, 128)),
            mu: 2.0,
        });
    }
    let (mut vs_ref, mut vs_cpu) = (0f64, 0f64);
    for p in &problems {
        let want = reference_update(p).unwrap();
        let got = solve_on(p, &dev);
        vs_ref = vs_ref.max((&got - &want).norm() / want.norm());
        if !dev.is_cpu() {
            let cpu = solve_on(p, &Device::Cpu);
            vs_cpu = vs_cpu.max((&got - &cpu).norm() / cpu.norm());
        }
    }
    let name = format!("lsdm-solve@{}", device_name(&dev));
    check(&name, "rel. Frobenius vs f64 reference", vs_ref, 1e-3);
    if !dev.is_cpu() {
        check(&name, "rel. Frobenius vs cpu solve", vs_cpu, 1e-3);
    }
}
