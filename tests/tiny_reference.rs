//! The instrumented forward against Hugging Face transformers on tiny random models of five
//! architectures: every hidden state, every block output, every MLP key, and the logits.

mod common;
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Site};
use candle_core::{DType, Device, Tensor, D};

const TOL: f32 = 1e-4;

/// `fast`: the eval path's fused CPU ops (attention, SwiGLU, RMS norm, AVX-512 matmul where
/// it applies) instead of candle's composed ones.
fn check_arch(arch: &str, fast: bool) {
    let dir = common::reference("tiny").join(arch);
    let mut model = Model::load_hf_dir(arch, &dir, &Device::Cpu).expect("load tiny model");
    model.transformer.fast_kernels = fast;
    let exp =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let n_layers = model.config().num_layers;
    let (_, plan) = common::every_site_plan(n_layers, ids.len(), ids[0].len());
    let out = model.transformer.forward(&ids, &plan).unwrap();
    let mut worst = Vec::new();
    let mut cmp = |name: &str, got: &Tensor| {
        let want = exp[name].to_dtype(DType::F32).unwrap();
        let d = common::max_abs_diff(got, &want);
        worst.push((name.to_string(), d));
    };
    cmp("hidden.0", &out.captures[&Site::ResidPre(0)]);
    for l in 0..n_layers {
        let hidden = if l + 1 == n_layers {
            Site::FinalNorm
        } else {
            Site::ResidPost(l)
        };
        cmp(&format!("hidden.{}", l + 1), &out.captures[&hidden]);
        cmp(&format!("attn_out.{l}"), &out.captures[&Site::AttnOut(l)]);
        cmp(&format!("mlp_out.{l}"), &out.captures[&Site::MlpOut(l)]);
        cmp(&format!("mlp_key.{l}"), &out.captures[&Site::MlpKey(l)]);
    }
    let logits = exp["logits"].to_dtype(DType::F32).unwrap();
    let want_lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let got_lp = out.logprobs.unwrap().reshape(want_lp.dims()).unwrap();
    worst.push(("logprobs".into(), common::max_abs_diff(&got_lp, &want_lp)));
    let bad: Vec<_> = worst
        .iter()
        .filter(|(_, d)| *d > TOL || d.is_nan())
        .collect();
    assert!(
        bad.is_empty(),
        "{arch} (fast: {fast}): deviations above {TOL}: {bad:?}"
    );
}

#[test]
fn tiny_llama_matches_hf() {
    check_arch("llama", false);
    check_arch("llama", true);
}
#[test]
fn tiny_mistral_matches_hf() {
    check_arch("mistral", false);
    check_arch("mistral", true);
}
#[test]
fn tiny_qwen2_matches_hf() {
    check_arch("qwen2", false);
    check_arch("qwen2", true);
}
#[test]
fn tiny_gemma3_matches_hf() {
    check_arch("gemma3", false);
    check_arch("gemma3", true);
}
#[test]
fn tiny_gpt2_matches_hf() {
    check_arch("gpt2", false);
    check_arch("gpt2", true);
}

/// The work counter behind Table 4: one pass per forward, rows × tokens × layers run, shared
/// with clones (the edit methods run on clones of the model's transformer).
#[test]
fn work_counter_counts_passes_and_token_layers() {
    let dir = common::reference("tiny").join("llama");
    let m = Model::load_hf_dir("llama", &dir, &Device::Cpu).unwrap();
    let layers = m.config().num_layers as u64;
    let start = m.transformer.work.read();
    let rows = vec![vec![1u32, 2, 3], vec![4u32, 5]];
    let plan = InterventionPlan::logits(LogitsRequest::LastToken);
    m.transformer.forward(&rows, &plan).unwrap();
    let clone = m.transformer.clone();
    clone.forward(&rows[..1], &plan).unwrap();
    let w = m.transformer.work.read() - start;
    assert_eq!(w.passes, 2);
    // Rows are left-padded to the longest: 2 × 3 tokens, then 1 × 3.
    assert_eq!(w.token_layers, (2 * 3 + 3) * layers);
    // A capture pass that stops after layer 0 runs (and counts) one layer.
    let before = m.transformer.work.read();
    let capture = InterventionPlan {
        capture: vec![Site::MlpKey(0)],
        stop_after: Some(0),
        ..Default::default()
    };
    m.transformer.forward(&rows, &capture).unwrap();
    let w = m.transformer.work.read() - before;
    assert_eq!((w.passes, w.token_layers), (1, 2 * 3));
}

/// `read_at` (the eval path's last layer at the read positions only) gives the full pass's
/// final states at those positions, on packed trees with padding, both attention paths and
/// every architecture; a plan that also touches the last layer is refused before any work.
#[test]
fn reading_a_few_positions_equals_the_full_pass_there() {
    use biaslens::model::TreeRow;
    for arch in ["llama", "mistral", "qwen2", "gemma3", "gpt2"] {
        let dir = common::reference("tiny").join(arch);
        let mut model = Model::load_hf_dir(arch, &dir, &Device::Cpu).expect("load tiny model");
        let layers = model.config().num_layers;
        // Row 0: a trie of two sequences sharing a prefix (8 tokens); row 1: a chain of 5, so
        // it carries 3 pads. Token ids stay inside every tiny vocabulary.
        let (tree, _) = TreeRow::pack(&[&[5, 9, 3, 7, 2, 8], &[5, 9, 3, 11, 4]]);
        let rows = vec![tree, TreeRow::chain(&[6, 1, 12, 3, 10])];
        // Row 0 reads three columns (both branch ends and a shared token); row 1 two, its last
        // repeated to fill.
        let read = vec![vec![5, 7, 2], vec![4, 7, 7]];
        for fast in [false, true] {
            model.transformer.fast_kernels = fast;
            let t = &model.transformer;
            let full = t
                .forward_tree(
                    &rows,
                    &InterventionPlan::default().with_capture([Site::FinalNorm]),
                )
                .unwrap();
            let sparse = t
                .forward_tree(
                    &rows,
                    &InterventionPlan::default()
                        .with_capture([Site::FinalNorm])
                        .reading_at(read.clone()),
                )
                .unwrap();
            let got = &sparse.captures[&Site::FinalNorm];
            assert_eq!(
                got.dims3().unwrap().1,
                3,
                "{arch}: one state per read position"
            );
            let want = &full.captures[&Site::FinalNorm];
            for (r, cols) in read.iter().enumerate() {
                for (j, &c) in cols.iter().enumerate() {
                    let a = got.get(r).unwrap().get(j).unwrap();
                    let b = want.get(r).unwrap().get(c).unwrap();
                    let d = common::max_abs_diff(&a, &b);
                    assert!(d < 1e-5, "{arch} fast={fast} row {r} column {c}: {d}");
                }
            }
            let touching = InterventionPlan::default()
                .with_capture([Site::MlpOut(layers - 1)])
                .reading_at(read.clone());
            let err = t.forward_tree(&rows, &touching).unwrap_err().to_string();
            assert!(err.contains("last layer"), "{arch}: {err}");
            let ragged = InterventionPlan::default().reading_at(vec![vec![1], vec![1, 2]]);
            assert!(t.forward_tree(&rows, &ragged).is_err());
        }
    }
}
