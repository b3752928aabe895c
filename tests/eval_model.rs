//! The batched, prefix-sharing, chunk-unembedding `ModelLm` against the plainest possible
//! scorer (one request per forward, full log-softmax at every continuation position), and the
//! result cache against an uncached run.

mod common;
use biaslens::eval::cache::{cache_path, request_key, CachedLm};
use biaslens::eval::lm::{LanguageModel, LlRequest, LlResult};
use biaslens::eval::model_lm::{LmOptions, ModelLm, Products};
use biaslens::model::{InterventionPlan, LogitsRequest, Model};
use candle_core::{DType, Device, D};

const TOL: f64 = 1e-4;

/// Reference: one unpadded forward per request, `LogitsRequest::Positions`, argmax by hand.
struct Plain<'a>(&'a Model);

impl LanguageModel for Plain<'_> {
    fn tokenize(&self, text: &str) -> biaslens::Result<Vec<u32>> {
        self.0.tokenizer()?.encode(text)
    }
    fn tokenize_plain(&self, text: &str) -> biaslens::Result<Vec<u32>> {
        self.0.tokenizer()?.encode_plain(text)
    }
    fn bos_id(&self) -> Option<u32> {
        self.0.tokenizer.as_ref().and_then(|t| t.bos_id())
    }
    fn eos_id(&self) -> Option<u32> {
        self.0.tokenizer.as_ref().and_then(|t| t.eos_id())
    }
    fn max_length(&self) -> usize {
        2048.min(self.0.config().max_positions)
    }
    fn loglikelihood(&mut self, requests: &[LlRequest]) -> biaslens::Result<Vec<LlResult>> {
        let mut out = Vec::new();
        for r in requests {
            let mut row = r.context.clone();
            row.extend_from_slice(&r.continuation[..r.continuation.len() - 1]);
            let n = r.continuation.len();
            let first = row.len() - n;
            let pos: Vec<(usize, usize)> = (first..row.len()).map(|t| (0, t)).collect();
            let fwd = self.0.transformer.forward(
                &[row],
                &InterventionPlan::logits(LogitsRequest::Positions(pos)),
            )?;
            let lp = fwd.logprobs.expect("log-probs requested");
            let argmax = lp
                .argmax(D::Minus1)?
                .to_dtype(DType::U32)?
                .to_vec1::<u32>()?;
            let lp = lp.to_vec2::<f32>()?;
            let mut res = LlResult {
                logprob: 0.0,
                is_greedy: true,
                n_tokens: n,
            };
            for (j, &tok) in r.continuation.iter().enumerate() {
                res.logprob += f64::from(lp[j][tok as usize]);
                res.is_greedy &= argmax[j] == tok;
            }
            out.push(res);
        }
        Ok(out)
    }
}

fn tiny(arch: &str) -> Model {
    let dir = common::reference("tiny").join(arch);
    Model::load_hf_dir(arch, &dir, &Device::Cpu).expect("load tiny model")
}

/// Requests with shared contexts, one-token choices (prefix sharing), duplicates and very
/// different lengths (padding).
fn requests() -> Vec<LlRequest> {
    let mut out = Vec::new();
    for i in 0..6u32 {
        let ctx: Vec<u32> = (0..(3 + 7 * i))
            .map(|k| (k * 13 + i * 5 + 1) % 120 + 3)
            .collect();
        out.push(LlRequest {
            context: ctx.clone(),
            continuation: vec![5 + i],
        });
        out.push(LlRequest {
            context: ctx.clone(),
            continuation: vec![9 + i],
        });
        out.push(LlRequest {
            context: ctx.clone(),
            continuation: vec![9 + i, 17, 33],
        });
        out.push(LlRequest {
            context: ctx.clone(),
            continuation: vec![40, 41 + i],
        });
        // A request branching off inside the context (WinoGrande-like partial scoring).
        let half = ctx.len() / 2 + 1;
        let mut branch = ctx[..half].to_vec();
        branch.extend([99, 100 + i]);
        out.push(LlRequest {
            context: branch,
            continuation: vec![7, 8],
        });
        out.push(LlRequest {
            context: ctx,
            continuation: vec![5 + i],
        });
    }
    out
}

fn assert_close(a: &[LlResult], b: &[LlResult], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x.logprob - y.logprob).abs() < TOL,
            "{what}: request {i}: {} vs {}",
            x.logprob,
            y.logprob
        );
        assert_eq!(x.n_tokens, y.n_tokens, "{what}: request {i} token count");
        assert_eq!(x.is_greedy, y.is_greedy, "{what}: request {i} greedy");
    }
}

fn check_batched_equals_plain(arch: &str) {
    let model = tiny(arch);
    let reqs = requests();
    let want = Plain(&model).loglikelihood(&reqs).unwrap();
    let configs = [
        LmOptions {
            batch_tokens: 1,
            max_length: 64,
            logit_floats: 1,
            pack_tokens: 0,
            pack_min_shared: 4,
            row_tokens: 0,
            fast_kernels: false,
            parallel_batches: 1,
            products: Products::F32,
        },
        LmOptions {
            batch_tokens: 64,
            max_length: 64,
            logit_floats: 300,
            pack_tokens: 40,
            pack_min_shared: 1,
            row_tokens: 0,
            fast_kernels: false,
            parallel_batches: 3,
            products: Products::F32,
        },
        LmOptions {
            batch_tokens: 100_000,
            max_length: 64,
            logit_floats: 1 << 24,
            pack_tokens: 0,
            pack_min_shared: 4,
            row_tokens: 0,
            fast_kernels: true,
            parallel_batches: 1,
            products: Products::F32,
        },
        LmOptions {
            batch_tokens: 100_000,
            max_length: 64,
            logit_floats: 1 << 24,
            pack_tokens: 1000,
            pack_min_shared: 2,
            row_tokens: 70,
            fast_kernels: true,
            parallel_batches: 3,
            products: Products::F32,
        },
        LmOptions {
            batch_tokens: 100,
            max_length: 64,
            logit_floats: 1 << 24,
            pack_tokens: 0,
            pack_min_shared: 4,
            row_tokens: 50,
            fast_kernels: true,
            parallel_batches: 1,
            products: Products::F32,
        },
        LmOptions {
            batch_tokens: 97,
            max_length: 64,
            logit_floats: 1 << 24,
            ..LmOptions::default()
        },
    ];
    for opts in configs {
        let got = ModelLm::new(&model, opts)
            .unwrap()
            .loglikelihood(&reqs)
            .unwrap();
        assert_close(&got, &want, &format!("{arch} {opts:?}"));
    }
}

#[test]
fn batched_and_shared_prefix_scores_equal_plain_forward_llama() {
    check_batched_equals_plain("llama");
}

#[test]
fn batched_and_shared_prefix_scores_equal_plain_forward_gemma3_sliding_window() {
    check_batched_equals_plain("gemma3");
}

/// The compensated bf16 products (`--products bf16x3`, `mkl` builds) score like the plain
/// forward within 1e-3 nats, with the same greedy flags, on both tiny models; a build without
/// MKL refuses them before scoring, naming the option.
#[test]
fn bf16x3_products_score_like_the_plain_forward_or_are_refused() {
    for arch in ["llama", "gemma3"] {
        let model = tiny(arch);
        let reqs = requests();
        let opts = LmOptions {
            batch_tokens: 100_000,
            max_length: 64,
            products: Products::Bf16x3,
            ..LmOptions::default()
        };
        let lm = ModelLm::new(&model, opts);
        if !cfg!(feature = "mkl") {
            let err = lm.err().expect("bf16x3 accepted without MKL").to_string();
            assert!(err.contains("products") && err.contains("mkl"), "{err}");
            continue;
        }
        let got = lm.unwrap().loglikelihood(&reqs).unwrap();
        let want = Plain(&model).loglikelihood(&reqs).unwrap();
        let mut worst = 0f64;
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            worst = worst.max((x.logprob - y.logprob).abs());
            assert_eq!(x.is_greedy, y.is_greedy, "{arch}: request {i} greedy");
        }
        assert!(worst < 1e-3, "{arch}: largest difference {worst} nats");
        // Not the f32 path in disguise: the products' rounding shows.
        assert!(worst > 0.0, "{arch}: bf16x3 gave f32's numbers exactly");
    }
}

#[test]
fn a_request_scores_the_same_alone_and_beside_longer_rows() {
    let model = tiny("llama");
    let reqs = requests();
    let mut lm = ModelLm::new(
        &model,
        LmOptions {
            batch_tokens: 100_000,
            max_length: 64,
            logit_floats: 1 << 20,
            ..LmOptions::default()
        },
    )
    .unwrap();
    let together = lm.loglikelihood(&reqs).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let alone = lm.loglikelihood(std::slice::from_ref(r)).unwrap();
        assert!(
            (alone[0].logprob - together[i].logprob).abs() < 1e-5,
            "request {i}"
        );
        assert_eq!(alone[0].is_greedy, together[i].is_greedy);
    }
}

#[test]
fn cache_resume_returns_identical_results() {
    let model = tiny("llama");
    let reqs = requests();
    let dir = tempfile::tempdir().unwrap();
    let file = cache_path(dir.path(), &model.info.sha256, "tiny");
    let opts = LmOptions {
        batch_tokens: 256,
        max_length: 64,
        logit_floats: 1 << 20,
        ..LmOptions::default()
    };
    let mut lm = ModelLm::new(&model, opts).unwrap();
    let first = CachedLm::new(&mut lm, Some(file.clone()), 40)
        .loglikelihood(&reqs)
        .unwrap();
    // A crash after some chunks: keep only the first lines, then resume.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One line per distinct request (duplicates are scored once).
    let distinct: std::collections::HashSet<String> = reqs.iter().map(request_key).collect();
    assert_eq!(lines.len(), distinct.len());
    std::fs::write(
        &file,
        format!("{}\n{{\"key\":\"trunc", lines[..7].join("\n")),
    )
    .unwrap();
    let mut calls = 0;
    let mut count = |done: usize, total: usize| {
        calls += 1;
        assert!(done <= total);
    };
    let mut lm2 = ModelLm::new(&model, opts).unwrap();
    let mut cached = CachedLm::new(&mut lm2, Some(file.clone()), 40).with_progress(&mut count);
    let resumed = cached.loglikelihood(&reqs).unwrap();
    // Every request whose key is among the 7 surviving lines (duplicates included).
    let kept: std::collections::HashSet<String> = lines[..7]
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expect = reqs
        .iter()
        .filter(|r| kept.contains(&request_key(r)))
        .count();
    assert!(expect >= 7);
    assert_eq!(cached.stats.from_cache, expect);
    assert_close(&resumed, &first, "resumed");
    // Fully cached: bit-identical, no model work.
    let mut lm3 = ModelLm::new(&model, opts).unwrap();
    let mut cached = CachedLm::new(&mut lm3, Some(file), 40);
    let again = cached.loglikelihood(&reqs).unwrap();
    assert_eq!(cached.stats.from_cache, reqs.len());
    let again_bits: Vec<u64> = again.iter().map(|r| r.logprob.to_bits()).collect();
    let resumed_bits: Vec<u64> = resumed.iter().map(|r| r.logprob.to_bits()).collect();
    assert_eq!(again_bits, resumed_bits);
    assert!(calls >= 2);
}

#[test]
fn smollm2_choice_scoring_equals_plain_forward() {
    use biaslens::eval::load::LoadOptions;
    use biaslens::eval::tasks::choice::{load_choice, score_choice};
    let model = common::real_model("smollm2-135m");
    let opts = LoadOptions {
        limit: Some(4),
        ..LoadOptions::default()
    };
    let items = load_choice(&common::fixtures().join("data/copa/copa.jsonl"), &opts)
        .unwrap()
        .items;
    let plain = score_choice(&items, &mut Plain(&model)).unwrap();
    let mut lm = ModelLm::new(
        &model,
        LmOptions {
            batch_tokens: 64,
            ..LmOptions::default()
        },
    )
    .unwrap();
    let fast = score_choice(&items, &mut lm).unwrap();
    for (a, b) in plain.records.iter().zip(&fast.records) {
        for (x, y) in a.loglik.iter().zip(&b.loglik) {
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
        assert_eq!(a.pred, b.pred);
        assert_eq!(a.pred_norm, b.pred_norm);
    }
}

/// The fused kernels and candle's composed ops differ in their last bits, and the composed
/// path is the CPU-independent one the report's snapshots use: their results go to different
/// cache files for the same weights, so neither reads the other's (nor the bf16x3 products').
#[test]
fn fused_and_composed_scorers_keep_separate_caches() {
    use biaslens::eval::cache::model_cache_path;
    let model = tiny("llama");
    let lm = |fast_kernels| {
        ModelLm::new(
            &model,
            LmOptions {
                fast_kernels,
                ..LmOptions::default()
            },
        )
        .unwrap()
    };
    let (fused, composed) = (lm(true), lm(false));
    let dir = std::path::Path::new("cache");
    let path = |l: &ModelLm| model_cache_path(dir, &model.info, l.cache_scope(), "copa");
    assert_eq!(
        (fused.cache_scope(), composed.cache_scope()),
        ("", "composed")
    );
    assert_ne!(path(&fused), path(&composed));
    // The default scorer keeps the plain weights-hash folder (caches written before stay valid).
    assert_eq!(path(&fused), cache_path(dir, model.info.identity(), "copa"));
    // A cached wrapper reports its scorer's scope.
    let mut inner = lm(false);
    let cached = CachedLm::new(&mut inner, None, 40);
    assert_eq!(cached.cache_scope(), composed.cache_scope());
    // The compensated bf16 products (mkl builds) differ from both: a third folder.
    if cfg!(feature = "mkl") {
        let opts = LmOptions {
            products: Products::Bf16x3,
            ..LmOptions::default()
        };
        let bf = ModelLm::new(&model, opts).unwrap();
        assert_eq!(bf.cache_scope(), "bf16x3");
        assert_ne!(path(&bf), path(&fused));
    }
}
