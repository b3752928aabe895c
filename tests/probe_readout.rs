//! The gap probe's readout (`edit::probe::layer_readout`) against plain forwards on the tiny
//! models: its gaps equal log p(he) − log p(she) of an ordinary pass, and its gradients with
//! respect to the down-projection output agree with central finite differences taken through
//! the intervention seam (a `PatchOp::Add` at `MlpOut`), with and without Gemma's post-MLP norm.

use biaslens::edit::context::EditPrompt;
use biaslens::edit::probe::layer_readout;
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Patch, PatchOp, Site};
use candle_core::{Device, Tensor};

fn tiny(arch: &str) -> Model {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reference/tiny")
        .join(arch);
    Model::load_hf_dir(arch, &dir, &Device::Cpu).unwrap()
}

fn gap(m: &Model, ids: &[u32], pronouns: [u32; 2], patch: Option<(usize, Vec<f32>)>) -> f64 {
    let mut plan = InterventionPlan::logits(LogitsRequest::LastToken);
    if let Some((l, v)) = patch {
        let n = v.len();
        plan.patches.push(Patch {
            site: Site::MlpOut(l),
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
    lp[0][pronouns[0] as usize] - lp[0][pronouns[1] as usize]
}

#[test]
fn readout_gaps_and_gradients_match_plain_forwards() {
    for arch in ["llama", "gemma3"] {
        let m = tiny(arch);
        let d = m.transformer.cfg.hidden_size;
        let pronouns = [5u32, 9u32];
        let prompts: Vec<EditPrompt> = [vec![1u32, 20, 31, 7, 12], vec![1, 44, 3, 28]]
            .into_iter()
            .enumerate()
            .map(|(g, ids)| EditPrompt {
                group: g,
                text: String::new(),
                last_subject_token: ids.len() - 1,
                ids,
            })
            .collect();
        let l = 1;
        let r = layer_readout(&m.transformer, &prompts, l, pronouns, 2).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let plain = gap(&m, &p.ids, pronouns, None);
            assert!(
                (r.gaps[i] - plain).abs() < 1e-4,
                "{arch}: gap {} vs {plain}",
                r.gaps[i]
            );
            // Directional derivative along a fixed direction, by central differences.
            let v: Vec<f32> = (0..d)
                .map(|j| ((j * 7 + i * 3) % 11) as f32 / 11.0 - 0.45)
                .collect();
            // Small against the tiny models' MLP outputs, so the post-norm stays near-linear.
            let eps = 1e-3f32;
            let scaled = |s: f32| v.iter().map(|x| x * s).collect::<Vec<f32>>();
            let fd = (gap(&m, &p.ids, pronouns, Some((l, scaled(eps))))
                - gap(&m, &p.ids, pronouns, Some((l, scaled(-eps)))))
                / (2.0 * eps as f64);
            let an: f64 = (0..d).map(|j| r.grads[(i, j)] * v[j] as f64).sum();
            assert!(
                (fd - an).abs() < 2e-3 * (1.0 + fd.abs()),
                "{arch} prompt {i}: finite difference {fd} vs gradient {an}"
            );
        }
    }
}
