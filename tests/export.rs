//! Edited-model export: HF config round trip, HF directory and GGUF export that reload to the
//! same logits, delta apply → export → revert restoring the base bit for bit, and the guards
//! (no overwrite without force, never into the base model, atomic on failure).

mod common;
use biaslens::edit::delta::{bits, DeltaMeta, WeightDelta};
use biaslens::edit::record::{apply_delta, revert_delta, write_edit_outputs, EditRecord};
use biaslens::eval::cache::model_cache_path;
use biaslens::model::export::{hf_config_json, write_dir_atomically, write_hf_dir, ExportOptions};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, ModelConfig, Transformer};
use biaslens::Error;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use std::path::Path;

const ARCHS: [&str; 5] = ["llama", "gemma3", "gpt2", "mistral", "qwen2"];
const PROMPTS: [&str; 5] = [
    "The nurse said that",
    "The engineer said that",
    "The secretary said that",
    "The carpenter said that",
    "The librarian said that",
];

fn tiny(arch: &str) -> Model {
    let dir = common::reference("tiny").join(arch);
    Model::load_hf_dir(arch, &dir, &Device::Cpu).expect("load tiny model")
}

/// Last-token log-probabilities over the vocabulary, [rows, vocab], as f32 rows.
fn last_logprobs(t: &Transformer, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let plan = InterventionPlan::logits(LogitsRequest::LastToken);
    let out = t.forward(rows, &plan).expect("forward");
    out.logprobs
        .expect("logprobs")
        .to_vec2::<f32>()
        .expect("to_vec2")
}

fn tiny_rows() -> Vec<Vec<u32>> {
    vec![
        vec![3, 17, 42, 5, 99, 7],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        vec![120, 64],
    ]
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn write_cfg(cfg: &ModelConfig, dir: &Path) -> ModelConfig {
    let p = dir.join("config.json");
    let v = hf_config_json(cfg).expect("config json");
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    ModelConfig::from_hf_json(&p).expect("read back")
}

#[test]
fn hf_config_round_trips_for_every_arch() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let cfg =
            ModelConfig::from_hf_json(&common::reference("tiny").join(arch).join("config.json"))
                .unwrap();
        assert_eq!(write_cfg(&cfg, tmp.path()), cfg, "{arch}");
    }
    for alias in ["smollm2-135m", "gemma-3-270m"] {
        let path = common::ensure_model(alias);
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let cfg = ModelConfig::from_gguf(&content, &path).unwrap();
        assert_eq!(write_cfg(&cfg, tmp.path()), cfg, "{alias}");
    }
}

#[test]
fn tiny_models_export_and_reload_to_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let m = tiny(arch);
        let out = tmp.path().join(arch);
        write_hf_dir(&m, &m.weights, &out, &ExportOptions::default()).unwrap();
        let back = Model::load_hf_dir(arch, &out, &Device::Cpu).unwrap();
        assert_eq!(back.config(), m.config(), "{arch}");
        let (a, b) = (
            last_logprobs(&m.transformer, &tiny_rows()),
            last_logprobs(&back.transformer, &tiny_rows()),
        );
        assert_eq!(max_diff(&a, &b), 0.0, "{arch}: logits changed by export");
        assert_eq!(
            back.info.weights_sha256, m.info.weights_sha256,
            "{arch}: an export has the weights hash of its model"
        );
        assert_ne!(back.info.sha256, m.info.sha256, "{arch}: other files");
        // So an evaluation of the export reads the scored requests of its model's.
        let cache = Path::new("cache");
        assert_eq!(
            model_cache_path(cache, &back.info, "", "copa"),
            model_cache_path(cache, &m.info, "", "copa"),
            "{arch}: one evaluation cache for the same weights"
        );
        let other = tiny(if arch == "llama" { "gemma3" } else { "llama" });
        assert_ne!(
            model_cache_path(cache, &other.info, "", "copa"),
            model_cache_path(cache, &m.info, "", "copa")
        );
        let names: Vec<_> =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect();
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !m.config().tie_embeddings,
            "{arch}: lm_head iff untied"
        );
        // Exactly the model's parameters: the fixture's expected activations stay behind.
        let mut want: Vec<_> = m
            .weights
            .keys()
            .filter(|n| biaslens::model::export::is_model_parameter(n, m.config().arch))
            .cloned()
            .collect();
        want.retain(|n| !(m.config().tie_embeddings && n == "lm_head.weight"));
        let mut names = names;
        names.sort();
        assert_eq!(names, want, "{arch}");
        assert!(!names.contains(&"logits".to_string()));
        assert!(out.join("generation_config.json").is_file());
    }
}

/// A random, non-trivial delta on two MLP down-projections of a tiny model.
fn synthetic_delta(m: &Model, names: &[&str]) -> WeightDelta {
    let meta = DeltaMeta {
        method: "synthetic".into(),
        model_hash: m.info.identity().to_string(),
        params: serde_json::json!({"scale": 0.05}),
    };
    let mut d = WeightDelta::new(meta);
    for n in names {
        let orig = &m.weights[*n];
        let delta = (Tensor::randn(0f32, 1.0, orig.dims(), &Device::Cpu).unwrap() * 0.05).unwrap();
        d.insert(n, orig, &delta).unwrap();
    }
    d
}

#[test]
fn delta_apply_export_reload_revert_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, names) in [
        (
            "llama",
            [
                "model.layers.0.mlp.down_proj.weight",
                "model.layers.1.mlp.down_proj.weight",
            ],
        ),
        (
            "gpt2",
            [
                "transformer.h.0.mlp.c_proj.weight",
                "transformer.h.2.mlp.c_proj.weight",
            ],
        ),
    ] {
        let base = tiny(arch);
        let delta = synthetic_delta(&base, &names);
        let edited_w = apply_delta(&base, &delta).unwrap();
        let mut record = EditRecord::new("synthetic", &base);
        record.layers = vec![0, 1];
        let out = tmp.path().join(format!("{arch}-edited"));
        write_edit_outputs(
            &base,
            &edited_w,
            &delta,
            &record,
            &out,
            &ExportOptions::default(),
        )
        .unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "delta.safetensors",
            "edit.json",
        ] {
            assert!(out.join(f).is_file(), "{arch}: {f} missing");
        }
        let edited = Model::load_hf_dir("edited", &out, &Device::Cpu).unwrap();
        let rebuilt =
            Transformer::from_weights(base.config().clone(), &edited_w, &Device::Cpu).unwrap();
        let rows = tiny_rows();
        assert_eq!(
            max_diff(
                &last_logprobs(&edited.transformer, &rows),
                &last_logprobs(&rebuilt, &rows)
            ),
            0.0
        );
        assert!(
            max_diff(
                &last_logprobs(&edited.transformer, &rows),
                &last_logprobs(&base.transformer, &rows)
            ) > 1e-4,
            "{arch}: edit had no effect"
        );
        // The edited model is not the delta's base: applying again is refused.
        assert!(apply_delta(&edited, &delta).is_err());
        let rec = EditRecord::load(&out.join("edit.json")).unwrap();
        assert_eq!(rec, record);
        let stored = WeightDelta::load(&out.join("delta.safetensors"), &Device::Cpu).unwrap();
        let restored_w = revert_delta(&edited, &stored, Some(&rec)).unwrap();
        let back_dir = tmp.path().join(format!("{arch}-reverted"));
        write_hf_dir(&edited, &restored_w, &back_dir, &ExportOptions::default()).unwrap();
        let back = Model::load_hf_dir("reverted", &back_dir, &Device::Cpu).unwrap();
        let params: Vec<_> = base
            .weights
            .iter()
            .filter(|(n, _)| biaslens::model::export::is_model_parameter(n, base.config().arch))
            .collect();
        assert_eq!(back.weights.len(), params.len());
        for (n, t) in params {
            assert_eq!(
                bits(&back.weights[n]).unwrap(),
                bits(t).unwrap(),
                "{arch}: {n} not restored bit for bit"
            );
        }
        // The restored model is the base model again: the delta applies to it.
        assert_eq!(back.info.weights_sha256, base.info.weights_sha256, "{arch}");
        let again = apply_delta(&back, &stored).expect("the delta applies to the reverted model");
        for n in names {
            assert_eq!(
                bits(&again[n]).unwrap(),
                bits(&edited_w[n]).unwrap(),
                "{arch}: {n}"
            );
        }
        // A record naming another base model is refused.
        let mut wrong = rec.clone();
        wrong.base_model.sha256 = "0".repeat(64);
        wrong.base_model.weights_sha256 = "0".repeat(64);
        assert!(revert_delta(&edited, &stored, Some(&wrong)).is_err());
    }
}

#[test]
fn delta_for_another_model_is_refused() {
    let base = tiny("llama");
    let mut delta = synthetic_delta(&base, &["model.layers.0.mlp.down_proj.weight"]);
    delta.meta.model_hash = "f".repeat(64);
    let err = apply_delta(&base, &delta).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let rec = EditRecord::new("synthetic", &base);
    assert!(write_edit_outputs(
        &base,
        &base.weights,
        &delta,
        &rec,
        &tmp.path().join("x"),
        &ExportOptions::default()
    )
    .is_err());
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn refuses_overwrite_without_force_and_replaces_with_force() {
    let m = tiny("llama");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("marker"), b"old").unwrap();
    let err = write_hf_dir(&m, &m.weights, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(out.join("marker").is_file() && !out.join("config.json").exists());
    let force = ExportOptions {
        force: true,
        gguf: false,
    };
    // Even with force, a directory biaslens did not write is kept.
    let err = write_hf_dir(&m, &m.weights, &out, &force).unwrap_err();
    assert!(err.to_string().contains("not a biaslens output"), "{err}");
    assert!(out.join("marker").is_file() && !out.join("config.json").exists());
    // A biaslens output (it carries edit.json or export.json) is replaced.
    std::fs::write(out.join("edit.json"), b"{}").unwrap();
    write_hf_dir(&m, &m.weights, &out, &force).unwrap();
    assert!(!out.join("marker").exists() && out.join("model.safetensors").is_file());
    assert!(out.join("export.json").is_file());
    write_hf_dir(&m, &m.weights, &out, &force).unwrap();
    assert_eq!(
        siblings(tmp.path()),
        vec!["out".to_string()],
        "temporary or old directories left behind"
    );
}

#[test]
fn refuses_to_write_into_the_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    write_hf_dir(
        &tiny("llama"),
        &tiny("llama").weights,
        &base_dir,
        &ExportOptions::default(),
    )
    .unwrap();
    let m = Model::load_hf_dir("base", &base_dir, &Device::Cpu).unwrap();
    let force = ExportOptions {
        force: true,
        gguf: false,
    };
    for out in [
        base_dir.clone(),
        base_dir.join("sub"),
        tmp.path().to_path_buf(),
        base_dir.join("..").join("base"),
    ] {
        let err = write_hf_dir(&m, &m.weights, &out, &force).unwrap_err();
        assert!(
            err.to_string().contains("base model"),
            "{}: {err}",
            out.display()
        );
    }
    assert!(!base_dir.join("sub").exists());
}

fn siblings(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn failure_mid_write_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("elsewhere");
    let out = tmp.path().join("out");
    let err = write_dir_atomically(&out, &base, false, |dir| {
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        Err(Error::Model("injected failure".into()))
    })
    .unwrap_err();
    assert!(err.to_string().contains("injected"));
    assert!(
        siblings(tmp.path()).is_empty(),
        "left: {:?}",
        siblings(tmp.path())
    );
    // A failing replacement keeps the old directory (a biaslens output) as it was.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("marker"), b"old").unwrap();
    std::fs::write(out.join("export.json"), b"{}").unwrap();
    assert!(
        write_dir_atomically(&out, &base, true, |_| Err(Error::Model("injected".into()))).is_err()
    );
    assert_eq!(siblings(tmp.path()), vec!["out".to_string()]);
    assert_eq!(std::fs::read(out.join("marker")).unwrap(), b"old");
    // A real export that fails after the HF files are written (GPT-2 has no GGUF export).
    let m = tiny("gpt2");
    let out2 = tmp.path().join("gpt2");
    assert!(write_hf_dir(
        &m,
        &m.weights,
        &out2,
        &ExportOptions {
            force: false,
            gguf: true
        }
    )
    .is_err());
    assert_eq!(siblings(tmp.path()), vec!["out".to_string()]);
}

/// One real export at a time: a Gemma-3 f32 export is 2 GB on disk (HF dir + GGUF), and CI
/// machines have run out of space when both real round trips wrote at once.
static REAL_EXPORT_DISK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Real model → HF dir (+ GGUF) → reload: same tokens and pronoun probabilities; GGUF too.
fn real_round_trip(alias: &str, tol: f32) {
    let _one_at_a_time = REAL_EXPORT_DISK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let m = common::real_model(alias);
    let tk = m.tokenizer().unwrap();
    let rows: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tk.encode(p).unwrap()).collect();
    // In the target dir, not /tmp: /tmp is often a small tmpfs.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = tmp.path().join(alias);
    write_hf_dir(
        &m,
        &m.weights,
        &out,
        &ExportOptions {
            force: false,
            gguf: true,
        },
    )
    .unwrap();
    let want = last_logprobs(&m.transformer, &rows);
    let pronouns: Vec<u32> = [" he", " she", " they"]
        .iter()
        .map(|w| tk.single_token_id(w).unwrap())
        .collect();
    let probs = |lp: &[Vec<f32>]| -> Vec<Vec<f32>> {
        lp.iter()
            .map(|r| pronouns.iter().map(|&i| r[i as usize].exp()).collect())
            .collect()
    };
    let hf = Model::load_hf_dir(alias, &out, &Device::Cpu).unwrap();
    let hf_tk = hf.tokenizer().unwrap();
    for (p, r) in PROMPTS.iter().zip(&rows) {
        assert_eq!(
            &hf_tk.encode(p).unwrap(),
            r,
            "{alias}: tokenizer changed for {p:?}"
        );
    }
    assert_eq!(
        hf.info.weights_sha256, m.info.weights_sha256,
        "{alias}: the HF export has the GGUF model's weights hash"
    );
    let got = last_logprobs(&hf.transformer, &rows);
    assert!(
        max_diff(&probs(&got), &probs(&want)) <= 1e-6,
        "{alias}: HF export changed p(pronoun)"
    );
    assert_eq!(
        max_diff(&got, &want),
        0.0,
        "{alias}: HF export changed logits"
    );
    let gguf = Model::load_gguf(alias, &out.join("model.gguf"), &Device::Cpu).unwrap();
    assert_eq!(gguf.config(), m.config());
    for (p, r) in PROMPTS.iter().zip(&rows) {
        assert_eq!(
            &gguf.tokenizer().unwrap().encode(p).unwrap(),
            r,
            "{alias}: GGUF tokenizer changed"
        );
    }
    let got = last_logprobs(&gguf.transformer, &rows);
    let d = max_diff(&got, &want);
    assert!(d <= tol, "{alias}: GGUF export changed log-probs by {d}");
}

#[test]
fn smollm2_exports_to_hf_and_gguf_with_same_probabilities() {
    real_round_trip("smollm2-135m", 1e-5);
}

#[test]
fn gemma3_exports_to_hf_and_gguf_with_same_probabilities() {
    real_round_trip("gemma-3-270m", 1e-5);
}

/// Not a test: writes a synthetic delta for the tiny llama and the last-token log-probs that
/// biaslens computes for the edited model, for `harness/check-hf-export.sh --tiny` to compare
/// with transformers. Run with BIASLENS_EXPORT_OUT=DIR and `--ignored`.
#[test]
#[ignore]
fn write_tiny_delta_for_transformers_check() {
    let Ok(dir) = std::env::var("BIASLENS_EXPORT_OUT") else {
        panic!("set BIASLENS_EXPORT_OUT to the folder to write into");
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let base = tiny("llama");
    let delta = synthetic_delta(
        &base,
        &[
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.2.mlp.down_proj.weight",
        ],
    );
    delta.save(&dir.join("delta.safetensors")).unwrap();
    let edited = apply_delta(&base, &delta).unwrap();
    let t = Transformer::from_weights(base.config().clone(), &edited, &Device::Cpu).unwrap();
    let rows = tiny_rows();
    let expected = serde_json::json!({"rows": rows, "logprobs": last_logprobs(&t, &rows)});
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_vec(&expected).unwrap(),
    )
    .unwrap();
}
