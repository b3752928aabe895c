//! Causal traces of the real models against ROME-style traces made with HF transformers
//! (fixtures/reference/<model>/trace.safetensors, stored noise), and fast == naive on one prompt.
//! The longest stored case is checked for every kind; the others for one kind each (hidden,
//! then mlp), which keeps every token count and kind covered at 5 of the 9 traces' cost.

mod common;
use biaslens::trace::{trace_fast, trace_naive, Kind, TraceCase, TraceSettings};
use candle_core::Device;
use serde_json::Value;

fn cases(
    alias: &str,
) -> (
    Vec<(TraceCase, candle_core::Tensor)>,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let dir = common::reference(alias);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let st = candle_core::safetensors::load(dir.join("trace.safetensors"), &Device::Cpu).unwrap();
    let p = &meta["pronoun_ids"];
    let pronouns = ["he", "she", "they"].map(|k| p[k].as_u64().unwrap() as u32);
    let mut out = Vec::new();
    for (c, case) in meta["trace"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let occ = case["occupation_tokens"].as_array().unwrap();
        let subject = (
            occ[0].as_u64().unwrap() as usize,
            occ[1].as_u64().unwrap() as usize,
        );
        out.push((
            TraceCase {
                ids,
                subject,
                pronouns,
            },
            st[&format!("case{c}.noise")].clone(),
        ));
    }
    (out, st)
}

fn reproduce(alias: &str) {
    let model = common::real_model(alias);
    let (cases, st) = cases(alias);
    let longest = (0..cases.len())
        .max_by_key(|&c| (cases[c].0.ids.len(), c))
        .unwrap();
    let mut worst = 0f64;
    for (c, (case, noise)) in cases.iter().enumerate() {
        let kinds = if c == longest {
            Kind::ALL.to_vec()
        } else {
            vec![Kind::ALL[c % Kind::ALL.len()]]
        };
        let settings = TraceSettings {
            kinds: kinds.clone(),
            ..TraceSettings::default()
        };
        let r = trace_fast(&model.transformer, case, noise, &settings).unwrap();
        for kind in kinds {
            let exp = st[&format!("case{c}.{}", kind.name())]
                .to_vec3::<f32>()
                .unwrap();
            let got = &r.grid(kind).unwrap().probs;
            assert_eq!(
                (exp.len(), exp[0].len()),
                (got.len(), got[0].len()),
                "{alias} case {c} {kind:?} shape"
            );
            for t in 0..exp.len() {
                for l in 0..exp[0].len() {
                    for i in 0..3 {
                        let d = (exp[t][l][i] as f64 - got[t][l][i]).abs();
                        worst = worst.max(d);
                        assert!(
                            d < 1e-4,
                            "{alias} case {c} {kind:?} t={t} l={l} pronoun {i}: {} vs {}",
                            got[t][l][i],
                            exp[t][l][i]
                        );
                    }
                }
            }
        }
    }
    eprintln!("{alias}: largest deviation from the reference trace {worst:.2e}");
}

#[test]
fn smollm2_reproduces_reference_trace() {
    reproduce("smollm2-135m");
}

#[test]
fn gemma3_reproduces_reference_trace() {
    reproduce("gemma-3-270m");
}

#[test]
fn smollm2_fast_equals_naive_on_one_prompt() {
    let model = common::real_model("smollm2-135m");
    let (cases, _) = cases("smollm2-135m");
    let (case, noise) = &cases[0];
    // The first 3 of the 10 stored noise draws: the naive loop costs a forward per
    // (kind, token, layer), and 3 rows of noise exercise the batching as well as 10 do.
    let samples = 3;
    let noise = noise.narrow(0, 0, samples).unwrap();
    let settings = TraceSettings {
        samples,
        ..TraceSettings::default()
    };
    let f = trace_fast(&model.transformer, case, &noise, &settings).unwrap();
    let n = trace_naive(&model.transformer, case, &noise, &settings).unwrap();
    for (gf, gn) in f.grids.iter().zip(&n.grids) {
        for (rf, rn) in gf.probs.iter().zip(&gn.probs) {
            for (a, b) in rf.iter().zip(rn) {
                for i in 0..3 {
                    assert!(
                        (a[i] - b[i]).abs() < 1e-5,
                        "{:?}: fast {} naive {}",
                        gf.kind,
                        a[i],
                        b[i]
                    );
                }
            }
        }
    }
}
