//! The gap probe's readout (`edit::probe::ProbeReader`) against plain forwards on the tiny
//! models: its gaps (two unembedding rows, resumed from a cached residual; also gap tuning's
//! `batch_gaps`) equal log p(he) − log p(she) of an ordinary full-vocabulary pass, its keys equal a plain capture, and
//! its gradients with respect to the edited projection's output (MLP down or attention output)
//! agree with central finite differences taken through the intervention seam (a `PatchOp::Add`),
//! with and without Gemma's post-norms.

use biaslens::edit::context::EditPrompt;
use biaslens::edit::probe::{Component, ProbeReader};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Patch, PatchOp, Site};
use candle_core::{Device, Tensor};

fn tiny(arch: &str) -> Model {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reference/tiny")
        .join(arch);
    Model::load_hf_dir(arch, &dir, &Device::Cpu).unwrap()
}

/// Prompts of the given token ids, the subject at each one's last token.
fn prompts(rows: Vec<Vec<u32>>) -> Vec<EditPrompt> {
    rows.into_iter()
        .enumerate()
        .map(|(g, ids)| EditPrompt {
            group: g,
            text: String::new(),
            last_subject_token: ids.len() - 1,
            ids,
        })
        .collect()
}

fn gap(m: &Model, ids: &[u32], pronouns: [u32; 2], patch: Option<(Site, Vec<f32>)>) -> f64 {
    let lp = log_probs(m, ids, patch);
    lp[pronouns[0] as usize] - lp[pronouns[1] as usize]
}

/// The last token's log-probabilities over the vocabulary from one ordinary forward (with an
/// optional addition at one site of the last token).
fn log_probs(m: &Model, ids: &[u32], patch: Option<(Site, Vec<f32>)>) -> Vec<f64> {
    let mut plan = InterventionPlan::logits(LogitsRequest::LastToken);
    if let Some((site, v)) = patch {
        let n = v.len();
        plan.patches.push(Patch {
            site,
            row: 0,
            token: ids.len() - 1,
            cols: None,
            op: PatchOp::Add,
            value: Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
        });
    }
    let lp = m
        .transformer
        .forward(&[ids.to_vec()], &plan)
        .unwrap()
        .logprobs
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    lp.into_iter().next().unwrap()
}

#[test]
fn readout_gaps_and_gradients_match_plain_forwards() {
    for arch in ["llama", "gemma3"] {
        let m = tiny(arch);
        let d = m.transformer.cfg.hidden_size;
        let pronouns = [5u32, 9u32];
        let prompts = prompts(vec![vec![1u32, 20, 31, 7, 12], vec![1, 44, 3, 28]]);
        for (start, l, comp) in [
            (0, 1, Component::Mlp),
            (1, 1, Component::Mlp),
            (0, 1, Component::Attn),
            (1, 0, Component::Attn),
        ] {
            let reader = ProbeReader::new(&m.transformer, &prompts, start, pronouns, 2);
            if l < start {
                // A layer below the cached residual cannot be read.
                let reader = reader.unwrap();
                assert!(reader.readout(&m.transformer, l, comp).is_err());
                continue;
            }
            let reader = reader.unwrap();
            let r = reader.readout(&m.transformer, l, comp).unwrap();
            let keys = reader.keys(&m.transformer, l, comp).unwrap();
            // Gap tuning's differentiable read-out, batch by batch (2 rows each), in prompt order.
            let batched: Vec<f32> = (0..reader.n_batches())
                .flat_map(|b| {
                    reader
                        .batch_gaps(&m.transformer, b)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect();
            assert_eq!(batched.len(), prompts.len());
            for (i, p) in prompts.iter().enumerate() {
                let plain = gap(&m, &p.ids, pronouns, None);
                assert!(
                    (batched[i] as f64 - plain).abs() < 1e-4,
                    "{arch}: batch_gaps {} vs {plain}",
                    batched[i]
                );
                assert!(
                    (r.gaps[i] - plain).abs() < 1e-4,
                    "{arch} {comp:?}: gap {} vs {plain}",
                    r.gaps[i]
                );
                let site = comp.key_site(l);
                let cap = m
                    .transformer
                    .forward(
                        std::slice::from_ref(&p.ids),
                        &InterventionPlan::default().with_capture([site]),
                    )
                    .unwrap()
                    .captures[&site]
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec3::<f64>()
                    .unwrap();
                let last = &cap[0][p.ids.len() - 1];
                for (j, k) in last.iter().enumerate() {
                    assert!(
                        (r.keys[(i, j)] - k).abs() < 1e-5,
                        "{arch} {comp:?}: key {j}"
                    );
                    assert_eq!(
                        r.keys[(i, j)],
                        keys[(i, j)],
                        "{arch} {comp:?}: keys() vs readout"
                    );
                }
                // Directional derivative along a fixed direction, by central differences.
                let v: Vec<f32> = (0..d)
                    .map(|j| ((j * 7 + i * 3) % 11) as f32 / 11.0 - 0.45)
                    .collect();
                // Small against the tiny models' outputs, so the post-norms stay near-linear.
                let eps = 1e-3f32;
                let scaled = |s: f32| v.iter().map(|x| x * s).collect::<Vec<f32>>();
                let out = comp.out_site(l);
                let fd = (gap(&m, &p.ids, pronouns, Some((out, scaled(eps))))
                    - gap(&m, &p.ids, pronouns, Some((out, scaled(-eps)))))
                    / (2.0 * eps as f64);
                let an: f64 = (0..d).map(|j| r.grads[(i, j)] * v[j] as f64).sum();
                assert!(
                    (fd - an).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{arch} {comp:?} prompt {i}: finite difference {fd} vs gradient {an}"
                );
            }
        }
    }
}

/// Gap tuning's ζ term reads each pronoun's own log-probability (`batch_pronoun_log_probs`,
/// resumed from a cached residual, the whole unembedding and its normaliser): equal to an
/// ordinary full-vocabulary pass's, and their difference to `batch_gaps`.
#[test]
fn pronoun_log_probs_match_plain_forwards() {
    for arch in ["llama", "gemma3"] {
        let m = tiny(arch);
        let pronouns = [5u32, 9u32];
        let prompts = prompts(vec![
            vec![1u32, 20, 31, 7, 12],
            vec![1, 44, 3, 28],
            vec![1, 2],
        ]);
        for start in [0, 1] {
            let reader = ProbeReader::new(&m.transformer, &prompts, start, pronouns, 2).unwrap();
            let mut i = 0;
            for b in 0..reader.n_batches() {
                let lp = reader
                    .batch_pronoun_log_probs(&m.transformer, b)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let gaps = reader
                    .batch_gaps(&m.transformer, b)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (row, g) in lp.iter().zip(gaps) {
                    let plain = log_probs(&m, &prompts[i].ids, None);
                    for (k, &id) in pronouns.iter().enumerate() {
                        let want = plain[id as usize];
                        assert!(
                            (row[k] as f64 - want).abs() < 1e-4,
                            "{arch} start {start} prompt {i}: log p({id}) {} vs {want}",
                            row[k]
                        );
                    }
                    assert!((row[0] - row[1] - g).abs() < 1e-4, "{arch}: gap {g}");
                    i += 1;
                }
            }
            assert_eq!(i, prompts.len());
        }
    }
}
