//! The instrumented forward on the real GGUF models against Hugging Face transformers (float32):
//! hidden states layer by layer, top-20 next-token log-probabilities, and p(he)/p(she)/p(they)
//! on all 5,440 occupation prompts.

mod common;
use biaslens::measure::{measure_occupations, MeasureOptions};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Site};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn jsonl(path: std::path::PathBuf) -> Vec<Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every layer's residual stream for the three reference prompts. HF's hidden states are
/// compared relative to each layer's largest magnitude (residual streams reach the hundreds).
fn hidden_states(alias: &str, model: &Model) {
    let dir = common::reference(alias);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let exp = candle_core::safetensors::load(dir.join("hidden_states.safetensors"), &Device::Cpu)
        .unwrap();
    let n = model.config().num_layers;
    let mut sites = vec![Site::ResidPre(0), Site::FinalNorm];
    sites.extend((0..n).map(Site::ResidPost));
    for (k, case) in meta["trace"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let ids = ids_of(&case["ids"]);
        let out = model
            .transformer
            .forward(
                &[ids],
                &InterventionPlan::default().with_capture(sites.clone()),
            )
            .unwrap();
        for i in 0..=n {
            let site = match i {
                0 => Site::ResidPre(0),
                i if i == n => Site::FinalNorm,
                i => Site::ResidPost(i - 1),
            };
            let want = &exp[&format!("prompt{k}.hidden.{i}")];
            let got = out.captures[&site].squeeze(0).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = common::max_abs_diff(&got, want);
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "{alias} prompt {k} hidden.{i}: max |diff| {d} (scale {scale})"
            );
        }
    }
}

fn topk(alias: &str, model: &Model) {
    let rows = jsonl(common::reference(alias).join("topk_logprobs.jsonl"));
    let ids: Vec<Vec<u32>> = rows.iter().map(|r| ids_of(&r["ids"])).collect();
    let out = model
        .transformer
        .forward(&ids, &InterventionPlan::logits(LogitsRequest::LastToken))
        .unwrap();
    let lp = out.logprobs.unwrap();
    let mut worst = 0f32;
    for (r, row) in rows.iter().enumerate() {
        let top = ids_of(&row["top_ids"]);
        let want: Vec<f32> = row["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let idx = Tensor::new(top.as_slice(), &Device::Cpu).unwrap();
        let got = lp
            .get(r)
            .unwrap()
            .index_select(&idx, 0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
        }
    }
    assert!(worst < 1e-4, "{alias}: top-20 log-prob max |diff| {worst}");
}

/// All 5,440 prompts through the same path as `biaslens measure` (tokenizer included): every
/// probability within 1e-4 of HF, and the headline metrics to 3 decimals.
fn occupation_probs(alias: &str, model: &Model, headline: [f64; 5]) {
    let rows = jsonl(common::reference(alias).join("occupation_probs.jsonl"));
    assert_eq!(rows.len(), 5440);
    let opts = MeasureOptions {
        data_dir: common::fixtures().join("data"),
        ..Default::default()
    };
    let result = measure_occupations(model, &opts, |_| {}).unwrap();
    assert_eq!(result.prompts.len(), rows.len());
    let mut worst = (0f64, 0usize);
    for (i, (row, p)) in rows.iter().zip(&result.prompts).enumerate() {
        assert_eq!(row["text"].as_str().unwrap(), p.text);
        for (got, key) in [(p.p_he, "p_he"), (p.p_she, "p_she"), (p.p_they, "p_they")] {
            let d = (got - row[key].as_f64().unwrap()).abs();
            if d > worst.0 {
                worst = (d, i);
            }
        }
    }
    assert!(
        worst.0 < 1e-4,
        "{alias}: max |Δp| {} at prompt {} ({})",
        worst.0,
        worst.1,
        rows[worst.1]["text"]
    );
    let m = &result.metrics;
    let f = m.regression.as_ref().unwrap();
    let got = [
        m.mean_abs_gap.value,
        f.a_s.value,
        f.a_f.value,
        f.b.value,
        f.r2.value,
    ];
    for (g, w) in got.iter().zip(headline) {
        assert!(
            (g - w).abs() < 5e-4,
            "{alias}: headline {got:?} vs reference {headline:?}"
        );
    }
}

#[test]
fn smollm2_matches_hf() {
    let m = common::real_model("smollm2-135m");
    hidden_states("smollm2-135m", &m);
    topk("smollm2-135m", &m);
    occupation_probs("smollm2-135m", &m, [0.0971, 0.0898, 0.2354, -0.0069, 0.339]);
}

#[test]
fn gemma3_matches_hf() {
    let m = common::real_model("gemma-3-270m");
    hidden_states("gemma-3-270m", &m);
    topk("gemma-3-270m", &m);
    occupation_probs("gemma-3-270m", &m, [0.2193, 0.1447, 0.3211, 0.1301, 0.403]);
}
