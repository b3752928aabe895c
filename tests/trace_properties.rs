#![allow(clippy::needless_range_loop, clippy::cloned_ref_to_slice_refs)]
//! Invariants of causal tracing and mediation on the random tiny models of every architecture:
//! fast == naive, restoring everything gives the clean run, zero noise gives no effect, the last
//! layer's hidden state at the last token carries the clean metric, an MLP window covering every
//! layer equals restoring all MLP outputs, an input-independent mediator has no NIE, and mediation
//! with aligned tokens (a two-token occupation against a one-token noun) equals plain patched
//! forwards.

use biaslens::model::{InterventionPlan, LogitsRequest, Model, Patch, PatchOp, Site, Transformer};
use biaslens::trace::mediation::{mediate, MediationCase};
use biaslens::trace::{trace_fast, trace_naive, Kind, NoiseLevel, TraceCase, TraceSettings};
use candle_core::{Device, Tensor};
use proptest::prelude::*;

const ARCHS: [&str; 5] = ["gpt2", "llama", "qwen2", "mistral", "gemma3"];

fn tiny(arch: &str) -> Model {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reference/tiny")
        .join(arch);
    Model::load_hf_dir(arch, &dir, &Device::Cpu).unwrap()
}

fn settings(samples: usize, window: usize) -> TraceSettings {
    TraceSettings {
        samples,
        window,
        kinds: Kind::ALL.to_vec(),
        noise: NoiseLevel::Fixed(0.5),
        seed: 0,
    }
}

fn probs(
    m: &Transformer,
    rows: &[Vec<u32>],
    patches: Vec<Patch>,
    pronouns: [u32; 3],
) -> Vec<[f64; 3]> {
    let out = m
        .forward(
            rows,
            &InterventionPlan::logits(LogitsRequest::LastTokenIds(pronouns.to_vec()))
                .with_patches(patches),
        )
        .unwrap();
    out.logprobs
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|r| [0, 1, 2].map(|i| (r[i] as f64).exp()))
        .collect()
}

fn noise_add(noise: &Tensor, subject: (usize, usize)) -> Vec<Patch> {
    let mut v = Vec::new();
    for r in 0..noise.dim(0).unwrap() {
        for j in 0..subject.1 - subject.0 {
            v.push(Patch {
                site: Site::Embed,
                row: r,
                token: subject.0 + j,
                cols: None,
                op: PatchOp::Add,
                value: noise.get(r).unwrap().get(j).unwrap(),
            });
        }
    }
    v
}

fn case_strategy() -> impl Strategy<Value = (usize, Vec<u32>, usize, usize, usize, u64)> {
    (
        0..ARCHS.len(),
        proptest::collection::vec(1u32..128, 3..8),
        0usize..8,
        1usize..3,
        1usize..6,
        any::<u64>(),
    )
        .prop_map(|(a, ids, b, len, w, seed)| {
            let b = b % (ids.len() - 1);
            let e = (b + len).min(ids.len());
            (a, ids, b, e, w, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn fast_equals_naive((a, ids, b, e, w, seed) in case_strategy()) {
        let m = tiny(ARCHS[a]);
        let t = &m.transformer;
        let case = TraceCase { ids, subject: (b, e), pronouns: [3, 7, 11] };
        let noise = biaslens::trace::sample_noise(seed, 3, e - b, t.cfg.hidden_size, 0.8, &Device::Cpu).unwrap();
        let s = settings(3, w);
        let f = biaslens::trace::fast::trace_fast_batched(t, &case, &noise, &s, 7).unwrap();
        let n = trace_naive(t, &case, &noise, &s).unwrap();
        prop_assert!((f.clean[0] - n.clean[0]).abs() < 1e-6 && (f.corrupted[1] - n.corrupted[1]).abs() < 1e-6);
        for (gf, gn) in f.grids.iter().zip(&n.grids) {
            for (x, y) in gf.probs.iter().flatten().zip(gn.probs.iter().flatten()) {
                for i in 0..3 {
                    prop_assert!((x[i] - y[i]).abs() < 1e-5, "{} {:?}: fast {} naive {}", ARCHS[a], gf.kind, x[i], y[i]);
                }
            }
        }
    }
}

#[test]
fn restoring_every_hidden_state_of_the_corrupted_tokens_gives_the_clean_run() {
    for arch in ARCHS {
        let m = tiny(arch);
        let t = &m.transformer;
        let (ids, subject, pr) = (vec![5u32, 9, 14, 2, 77, 31], (1, 3), [3, 7, 11]);
        let clean_out = t
            .forward(
                &[ids.clone()],
                &InterventionPlan::default().with_capture(
                    (0..t.cfg.num_layers)
                        .map(Site::ResidPost)
                        .chain([Site::ResidPre(0)]),
                ),
            )
            .unwrap();
        let noise =
            biaslens::trace::sample_noise(1, 4, 2, t.cfg.hidden_size, 1.0, &Device::Cpu).unwrap();
        let mut patches = noise_add(&noise, subject);
        for r in 0..4 {
            for tok in subject.0..subject.1 {
                for site in std::iter::once(Site::ResidPre(0))
                    .chain((0..t.cfg.num_layers).map(Site::ResidPost))
                {
                    patches.push(Patch {
                        site,
                        row: r,
                        token: tok,
                        cols: None,
                        op: PatchOp::Set,
                        value: clean_out.at(site, 0, tok).unwrap(),
                    });
                }
            }
        }
        let clean = probs(t, &[ids.clone()], vec![], pr)[0];
        let noised = probs(t, &vec![ids.clone(); 4], noise_add(&noise, subject), pr);
        assert!(
            noised.iter().any(|p| (p[0] - clean[0]).abs() > 1e-4),
            "{arch}: the noise changes nothing, the test would be empty"
        );
        for p in probs(t, &vec![ids.clone(); 4], patches, pr) {
            for i in 0..3 {
                assert!(
                    (p[i] - clean[i]).abs() < 1e-6,
                    "{arch}: restored {} clean {}",
                    p[i],
                    clean[i]
                );
            }
        }
    }
}

#[test]
fn zero_noise_gives_zero_indirect_effects_and_last_hidden_gives_clean() {
    for arch in ARCHS {
        let m = tiny(arch);
        let t = &m.transformer;
        let case = TraceCase {
            ids: vec![4, 8, 15, 16, 23, 42],
            subject: (1, 3),
            pronouns: [3, 7, 11],
        };
        let zero = Tensor::zeros(
            (2, 2, t.cfg.hidden_size),
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let r = trace_fast(t, &case, &zero, &settings(2, 10)).unwrap();
        for (k, ie) in r.effects(1.0).ie {
            assert!(
                ie.iter().flatten().all(|x| x.abs() < 1e-6),
                "{arch} {k:?}: IE without noise"
            );
        }
        let noise =
            biaslens::trace::sample_noise(3, 5, 2, t.cfg.hidden_size, 2.0, &Device::Cpu).unwrap();
        let r = trace_fast(t, &case, &noise, &settings(5, 10)).unwrap();
        let last = r.grid(Kind::Hidden).unwrap().probs[case.ids.len() - 1][t.cfg.num_layers - 1];
        for i in 0..3 {
            assert!(
                (last[i] - r.clean[i]).abs() < 1e-6,
                "{arch}: last hidden {} clean {}",
                last[i],
                r.clean[i]
            );
        }
    }
}

#[test]
fn mlp_window_of_all_layers_equals_restoring_every_mlp_output() {
    for arch in ARCHS {
        let m = tiny(arch);
        let t = &m.transformer;
        let nl = t.cfg.num_layers;
        let case = TraceCase {
            ids: vec![4, 8, 15, 16, 23, 42],
            subject: (1, 3),
            pronouns: [3, 7, 11],
        };
        let noise =
            biaslens::trace::sample_noise(9, 3, 2, t.cfg.hidden_size, 2.0, &Device::Cpu).unwrap();
        let r = trace_fast(t, &case, &noise, &settings(3, 2 * nl)).unwrap();
        let clean_out = t
            .forward(
                &[case.ids.clone()],
                &InterventionPlan::default().with_capture((0..nl).map(Site::MlpOut)),
            )
            .unwrap();
        for tok in 0..case.ids.len() {
            let mut patches = noise_add(&noise, case.subject);
            for row in 0..3 {
                patches.extend((0..nl).map(|l| Patch {
                    site: Site::MlpOut(l),
                    row,
                    token: tok,
                    cols: None,
                    op: PatchOp::Set,
                    value: clean_out.at(Site::MlpOut(l), 0, tok).unwrap(),
                }));
            }
            let p = probs(t, &vec![case.ids.clone(); 3], patches, case.pronouns);
            for l in 0..nl {
                let got = r.grid(Kind::Mlp).unwrap().probs[tok][l];
                for i in 0..3 {
                    let want = p.iter().map(|x| x[i]).sum::<f64>() / 3.0;
                    assert!(
                        (got[i] - want).abs() < 1e-6,
                        "{arch} t={tok} l={l}: {} vs {want}",
                        got[i]
                    );
                }
            }
        }
    }
}

#[test]
fn nie_through_an_input_independent_mediator_is_zero() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference/tiny/llama");
    let m = Model::load_hf_dir("llama", &dir, &Device::Cpu).unwrap();
    let mut w = m.weights.clone();
    let name = "model.layers.1.mlp.down_proj.weight";
    let z = w[name].zeros_like().unwrap();
    w.insert(name.to_string(), z);
    let t = Transformer::from_weights(m.config().clone(), &w, &Device::Cpu).unwrap();
    let case = MediationCase {
        base: vec![4, 8, 15, 16, 23],
        swapped: vec![4, 99, 15, 16, 23],
        base_subject: (1, 2),
        swapped_subject: (1, 2),
        pronouns: [3, 7, 11],
        male_stereotype: true,
    };
    let r = mediate(&t, &case).unwrap();
    assert!(r.te.abs() > 1e-4, "the intervention must change the output");
    assert!(
        r.nie_mlp[1].abs() < 1e-6,
        "NIE through a constant MLP: {}",
        r.nie_mlp[1]
    );
    assert!(
        (r.nde_mlp[1] - r.te).abs() < 1e-5,
        "NDE {} vs TE {}",
        r.nde_mlp[1],
        r.te
    );
    // The same input twice: no effect of any kind.
    let same = mediate(
        &t,
        &MediationCase {
            swapped: case.base.clone(),
            ..case
        },
    )
    .unwrap();
    assert!(
        same.te.abs() < 1e-6
            && same
                .nie_attn
                .iter()
                .chain(same.nde_mlp.iter())
                .chain(same.nie_head.iter().flatten())
                .all(|x| x.abs() < 1e-5)
    );
}

/// Odds of the anti-stereotypical pronoun (male stereotype: she / he) from plain forwards.
fn odds_of(m: &Transformer, ids: &[u32], patches: Vec<Patch>, pronouns: [u32; 3]) -> f64 {
    let p = probs(m, &[ids.to_vec()], patches, pronouns)[0];
    p[1] / p[0]
}

/// The slow reference for multi-token mediation: for every layer, the MLP output, the attention
/// output and head 0 are transplanted between a prompt with a two-token occupation and one with a
/// one-token noun by a plain forward with `Set` patches at the aligned tokens (every token after
/// the shared prefix, the occupation's last token against the noun); `mediate` (batched resumed
/// passes) must give the same NIE and NDE.
#[test]
fn aligned_mediation_equals_plain_patched_forwards() {
    for arch in ARCHS {
        let m = tiny(arch);
        let t = &m.transformer;
        let case = MediationCase {
            base: vec![4, 8, 9, 15, 16, 23],
            swapped: vec![4, 99, 15, 16, 23],
            base_subject: (1, 3),
            swapped_subject: (1, 2),
            pronouns: [3, 7, 11],
            male_stereotype: true,
        };
        let pairs = case.alignment().unwrap();
        assert_eq!(pairs, vec![(0, 0), (2, 1), (3, 2), (4, 3), (5, 4)]);
        let r = mediate(t, &case).unwrap();
        let nl = t.cfg.num_layers;
        let hd = t.cfg.head_dim;
        let mut sites = Vec::new();
        for l in 0..nl {
            sites.extend([Site::MlpOut(l), Site::AttnOut(l), Site::HeadZ(l)]);
        }
        let capture = |ids: &[u32]| {
            t.forward(
                &[ids.to_vec()],
                &InterventionPlan::default().with_capture(sites.clone()),
            )
            .unwrap()
        };
        let (cx, cs) = (capture(&case.base), capture(&case.swapped));
        let y = odds_of(t, &case.base, vec![], case.pronouns);
        let ys = odds_of(t, &case.swapped, vec![], case.pronouns);
        assert!(
            (r.te - (ys / y - 1.0)).abs() < 1e-5 * (1.0 + r.te.abs()),
            "{arch} TE"
        );
        for l in 0..nl {
            for (site, cols, nie, nde) in [
                (Site::MlpOut(l), None, r.nie_mlp[l], r.nde_mlp[l]),
                (Site::AttnOut(l), None, r.nie_attn[l], r.nde_attn[l]),
                (
                    Site::HeadZ(l),
                    Some((0, hd)),
                    r.nie_head[l][0],
                    r.nde_head[l][0],
                ),
            ] {
                // (target prompt, source capture, (target token, source token) pairs)
                for (ids, from, swap, got, what) in [
                    (&case.base, &cs, false, nie, "NIE"),
                    (&case.swapped, &cx, true, nde, "NDE"),
                ] {
                    let patches = pairs
                        .iter()
                        .map(|&(a, b)| if swap { (b, a) } else { (a, b) })
                        .map(|(to, src)| {
                            let v = from.at(site, 0, src).unwrap();
                            Patch {
                                site,
                                row: 0,
                                token: to,
                                cols,
                                op: PatchOp::Set,
                                value: match cols {
                                    Some((a, b)) => v.narrow(0, a, b - a).unwrap(),
                                    None => v,
                                },
                            }
                        })
                        .collect();
                    let want = odds_of(t, ids, patches, case.pronouns) / y - 1.0;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{arch} layer {l} {site} {what}: mediate {got} vs plain {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn alignment_rejects_prompts_that_differ_outside_the_occupation() {
    let case = MediationCase {
        base: vec![4, 8, 9, 15, 16],
        swapped: vec![4, 99, 15, 17],
        base_subject: (1, 3),
        swapped_subject: (1, 2),
        pronouns: [3, 7, 11],
        male_stereotype: true,
    };
    assert!(case.alignment().is_err(), "suffixes differ");
    let case = MediationCase {
        swapped: vec![5, 99, 15, 16],
        ..case
    };
    assert!(case.alignment().is_err(), "prefixes differ");
    let case = MediationCase {
        swapped: vec![4, 99, 15, 16],
        ..case
    };
    assert_eq!(
        case.alignment().unwrap(),
        vec![(0, 0), (2, 1), (3, 2), (4, 3)]
    );
}
