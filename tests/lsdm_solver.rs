//! LSDM least-squares update, second moments, DAMA projection and the delta store, checked
//! against an independent f64 reference and against the properties the method promises.

mod common;

use biaslens::edit::dama_projection::{apply_projection, dama_projection, nipals_pls2, DamaParams};
use biaslens::edit::delta::{apply, bits, revert, DeltaMeta, WeightDelta};
use biaslens::edit::reference::{reference_update, LsqProblemF64, PriorF64};
use biaslens::edit::second_moment::{load_moment, reference_moment, MomentAccumulator, MomentMeta};
use biaslens::edit::solve::{solve_update, solve_update_robust, LsqInput, Prior, SolvePath};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::collections::HashMap;

/// Relative Frobenius tolerance between the f32 candle solve and the f64 reference.
///
/// Why 1e-3: the test systems are well conditioned (Jacobi-scaled cond ≲ 10³), so f32 rounding
/// (eps ≈ 6e-8) amplified by the condition number and by O(d) accumulation stays ≲ 1e-4; any
/// algebraic mistake (wrong transpose, missing term, wrong λ/μ scaling) gives an O(1e-1..1)
/// error, so 1e-3 separates "f32 rounding" from "wrong formula" with a 10× margin each side.
const REL_TOL: f64 = 1e-3;

fn randn(rng: &mut StdRng, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.sample::<f64, _>(StandardNormal))
}

fn tensor(m: &DMatrix<f64>) -> Tensor {
    common::f32_tensor(m, &Device::Cpu)
}

fn matrix(t: &Tensor) -> DMatrix<f64> {
    common::f64_matrix(t)
}

fn rel_err(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).norm() / b.norm()
}

/// C = XᵀX / N over N = 4·d random keys: PD with cond ≈ ((1+√¼)/(1-√¼))² = 9.
fn random_moment(rng: &mut StdRng, d_ff: usize) -> DMatrix<f64> {
    let n = 4 * d_ff;
    let x = randn(rng, n, d_ff);
    x.transpose() * &x / n as f64
}

/// Run both solvers on the same f64 problem (the candle one sees its f32 rounding).
fn both(p: &LsqProblemF64) -> (DMatrix<f64>, DMatrix<f64>) {
    (
        common::candle_solve(p, &Device::Cpu),
        reference_update(p).unwrap(),
    )
}

fn problem(
    seed: u64,
    dims: (usize, usize, usize),
    prior: u8,
    m: usize,
    lambda: f64,
    mu: f64,
) -> LsqProblemF64 {
    let (n, d_ff, d_model) = dims;
    let mut rng = StdRng::seed_from_u64(seed);
    let prior = match prior {
        0 => PriorF64::Zero,
        1 => PriorF64::Identity,
        _ => PriorF64::Moment(random_moment(&mut rng, d_ff)),
    };
    LsqProblemF64 {
        keys: randn(&mut rng, n, d_ff),
        residuals: randn(&mut rng, n, d_model),
        prior,
        lambda,
        preserved: (m > 0).then(|| randn(&mut rng, m, d_ff)),
        mu,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn candle_matches_reference(seed in 0u64..1000, n in 8usize..=32, prior in 0u8..3,
                                m in 0usize..8, lambda in 0.1f64..10.0, mu in 0.0f64..5.0) {
        let p = problem(seed, (n, 64, 16), prior, m, lambda, mu);
        let (got, want) = both(&p);
        let e = rel_err(&got, &want);
        prop_assert!(e < REL_TOL, "relative error {e}");
    }

    #[test]
    fn invariant_to_key_order(seed in 0u64..1000, n in 8usize..=32, prior in 1u8..3) {
        let p = problem(seed, (n, 64, 16), prior, 4, 1.0, 2.0);
        let mut rng = StdRng::seed_from_u64(seed ^ 0xabc);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.gen_range(0..=i));
        }
        let q = LsqProblemF64 {
            keys: p.keys.select_rows(&perm),
            residuals: p.residuals.select_rows(&perm),
            ..p.clone()
        };
        let (a, _) = both(&p);
        let (b, _) = both(&q);
        prop_assert!(rel_err(&b, &a) < 1e-4);
    }
}

#[test]
fn real_size_matches_reference() {
    let p = problem(7, (50, 1536, 576), 2, 0, 100.0, 0.0);
    let (got, want) = both(&p);
    let e = rel_err(&got, &want);
    assert!(e < REL_TOL, "relative error {e}");
}

#[test]
fn edited_keys_hit_targets_without_prior() {
    for (prior, lambda) in [(0u8, 0.0), (0, 1e-6), (1, 1e-8)] {
        let p = problem(3, (24, 64, 16), prior, 0, lambda, 0.0);
        let mut rng = StdRng::seed_from_u64(11);
        let w = randn(&mut rng, 16, 64);
        let (delta, _) = both(&p);
        let before = &w * p.keys.transpose();
        let after = (&w + &delta) * p.keys.transpose();
        let want = &before + p.residuals.transpose();
        assert!(rel_err(&after, &want) < 1e-4, "prior {prior} λ {lambda}");
    }
}

#[test]
fn huge_lambda_gives_no_edit_and_c_norm_decreases() {
    let mut last = f64::INFINITY;
    for lambda in [1e-2, 1.0, 1e2, 1e4, 1e12] {
        let p = problem(5, (16, 64, 16), 2, 0, lambda, 0.0);
        let (delta, _) = both(&p);
        let PriorF64::Moment(c) = &p.prior else {
            unreachable!()
        };
        let c_norm = (&delta * c * delta.transpose()).trace();
        assert!(
            c_norm <= last * (1.0 + 1e-4),
            "tr(ΔCΔᵀ) rose at λ = {lambda}"
        );
        last = c_norm;
        if lambda == 1e12 {
            let scale = p.residuals.norm() * p.keys.norm();
            assert!(delta.norm() < 1e-9 * scale, "‖Δ‖ = {}", delta.norm());
        }
    }
}

#[test]
fn preserved_keys_bounded_by_tradeoff() {
    for mu in [1e2, 1e4, 1e6] {
        let p = problem(9, (16, 64, 16), 2, 8, 1.0, mu);
        let (delta, want) = both(&p);
        assert!(rel_err(&delta, &want) < REL_TOL, "μ {mu}");
        let pk = p.preserved.as_ref().unwrap();
        let leak = (&delta * pk.transpose()).norm();
        // The optimum beats Δ = 0: μ‖ΔPᵀ‖² <= objective(Δ) <= objective(0) = ‖R‖².
        let bound = p.residuals.norm() / mu.sqrt();
        assert!(leak <= bound * 1.01, "μ {mu}: ‖ΔPᵀ‖ {leak} > {bound}");
        let free = both(&LsqProblemF64 {
            preserved: None,
            mu: 0.0,
            ..p.clone()
        })
        .0;
        assert!(leak < 0.5 * (&free * pk.transpose()).norm());
    }
}

#[test]
fn orthogonal_preserved_keys_untouched_exactly() {
    let mut rng = StdRng::seed_from_u64(21);
    let q = randn(&mut rng, 64, 64).qr().q();
    let keys = randn(&mut rng, 12, 24) * q.columns(0, 24).transpose();
    let preserved = randn(&mut rng, 10, 40) * q.columns(24, 40).transpose();
    let residuals = randn(&mut rng, 12, 16);
    for prior in [
        PriorF64::Identity,
        PriorF64::Moment(DMatrix::identity(64, 64)),
    ] {
        let p = LsqProblemF64 {
            keys: keys.clone(),
            residuals: residuals.clone(),
            prior,
            lambda: 0.5,
            preserved: Some(preserved.clone()),
            mu: 3.0,
        };
        let (delta, _) = both(&p);
        let leak = (&delta * preserved.transpose()).norm();
        assert!(leak < 1e-5 * delta.norm() * preserved.norm(), "leak {leak}");
        let free = both(&LsqProblemF64 {
            preserved: None,
            mu: 0.0,
            ..p.clone()
        })
        .0;
        assert!(rel_err(&delta, &free) < 1e-4);
    }
}

#[test]
fn bad_parameters_are_named() {
    let k = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
    let r = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let input = LsqInput {
        keys: &k,
        residuals: &r,
        prior: Prior::Identity,
        lambda: 1.0,
        preserved: None,
        mu: 0.0,
    };
    assert!(solve_update(&input)
        .unwrap_err()
        .to_string()
        .contains("residuals"));
    let r = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    let input = LsqInput {
        residuals: &r,
        lambda: -1.0,
        ..input
    };
    assert!(solve_update(&input)
        .unwrap_err()
        .to_string()
        .contains("lambda"));
    // Dependent keys with C = 0 have no unique minimiser: a numerical error, not garbage.
    let input = LsqInput {
        prior: Prior::Zero,
        lambda: 0.0,
        ..input
    };
    assert!(solve_update(&input).is_err());
}

/// Batches of keys with padding rows (mask 0) filled with junk that must be ignored.
fn masked_batches(seed: u64, sizes: &[usize], d_ff: usize) -> Vec<(DMatrix<f64>, Vec<bool>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    sizes
        .iter()
        .map(|&rows| {
            let keys = randn(&mut rng, rows, d_ff) * 3.0;
            let mask = (0..rows).map(|i| i % 4 != 3).collect();
            (keys, mask)
        })
        .collect()
}

fn accumulate(batches: &[(DMatrix<f64>, Vec<bool>)], dtype: DType) -> MomentAccumulator {
    let d_ff = batches[0].0.ncols();
    let mut acc = MomentAccumulator::new(d_ff, dtype, &Device::Cpu).unwrap();
    for (keys, mask) in batches {
        let m: Vec<f32> = mask.iter().map(|&b| b as u8 as f32).collect();
        let m = Tensor::from_vec(m, mask.len(), &Device::Cpu).unwrap();
        acc.update(&tensor(keys), Some(&m)).unwrap();
    }
    acc
}

#[test]
fn second_moment_matches_reference_and_batch_split() {
    let batches = masked_batches(4, &[7, 16, 3, 20], 32);
    let reference = reference_moment(
        &batches
            .iter()
            .map(|(k, m)| (k.clone(), Some(m.clone())))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for dtype in [DType::F64, DType::F32] {
        let acc = accumulate(&batches, dtype);
        assert_eq!(
            acc.count(),
            batches
                .iter()
                .map(|b| b.1.iter().filter(|&&x| x).count() as u64)
                .sum::<u64>()
        );
        assert!(rel_err(&matrix(&acc.moment().unwrap()), &reference) < 1e-6);
    }
    // The same rows in one batch and in another split give the same C.
    let all_keys: Vec<DMatrix<f64>> = batches.iter().map(|b| b.0.clone()).collect();
    let stacked = DMatrix::from_rows(
        &all_keys
            .iter()
            .flat_map(|k| k.row_iter().map(|r| r.into_owned()).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
    );
    let mask: Vec<bool> = batches.iter().flat_map(|b| b.1.clone()).collect();
    let one = accumulate(&[(stacked.clone(), mask.clone())], DType::F64);
    let split = accumulate(
        &[
            (stacked.rows(0, 30).into_owned(), mask[..30].to_vec()),
            (stacked.rows(30, 16).into_owned(), mask[30..].to_vec()),
        ],
        DType::F64,
    );
    let (a, b) = (
        matrix(&one.moment().unwrap()),
        matrix(&split.moment().unwrap()),
    );
    assert!(rel_err(&a, &b) < 1e-12);
    assert!(rel_err(&a, &reference) < 1e-6);
}

#[test]
fn second_moment_cache_roundtrip_and_bad_mask() {
    let batches = masked_batches(8, &[10, 6], 16);
    let acc = accumulate(&batches, DType::F64);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let meta = MomentMeta {
        model_hash: "abc".into(),
        layer: 3,
        corpus_hash: "def".into(),
        n: 0,
    };
    acc.save(&path, &meta).unwrap();
    let (c, got) = load_moment(&path, &Device::Cpu).unwrap();
    assert_eq!(
        got,
        MomentMeta {
            n: acc.count(),
            ..meta
        }
    );
    let want = acc.moment().unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(c.to_vec2::<f64>().unwrap(), want);

    let mut acc = MomentAccumulator::new(16, DType::F64, &Device::Cpu).unwrap();
    let k = Tensor::ones((2, 16), DType::F32, &Device::Cpu).unwrap();
    let bad = Tensor::new(&[1f32, 0.5], &Device::Cpu).unwrap();
    assert!(acc
        .update(&k, Some(&bad))
        .unwrap_err()
        .to_string()
        .contains("mask"));
}

#[test]
fn dama_projection_is_orthogonal_projection_removing_directions() {
    let mut rng = StdRng::seed_from_u64(13);
    let (n, d_ff, d_model, k) = (40, 48, 24, 3);
    let u = randn(&mut rng, n, d_ff);
    let w = randn(&mut rng, d_model, d_ff);
    let d = randn(&mut rng, n, d_model) + (&u * w.transpose()) * 0.3;
    let params = DamaParams {
        components: k,
        ..DamaParams::default()
    };
    let proj = dama_projection(&tensor(&u), &tensor(&w), &tensor(&d), &params).unwrap();
    let (b, m) = (matrix(&proj.basis), matrix(&proj.projection));
    assert_eq!(b.shape(), (d_model, k));
    assert!((b.transpose() * &b - DMatrix::identity(k, k)).norm() < 1e-5);
    assert!((&m - m.transpose()).norm() < 1e-5);
    assert!((&m * &m - &m).norm() < 1e-5);
    assert!((&m * &b).norm() < 1e-5);
    assert!((b.transpose() * d.transpose()).norm() > 1.0);
    assert!((b.transpose() * &m * d.transpose()).norm() < 1e-4 * d.norm());
    // The edited layer writes nothing along B for any key.
    let w_new = matrix(&apply_projection(&proj.projection, &tensor(&w)).unwrap());
    assert!((b.transpose() * w_new * u.transpose()).norm() < 1e-4 * (&w * u.transpose()).norm());
    // First PLS direction = top left singular vector of XᵀY (independent SVD).
    let x = &u * w.transpose();
    let weights = nipals_pls2(&x, &d, &params).unwrap();
    let svd = (x.transpose() * &d).svd(true, false);
    let top = svd.singular_values.imax();
    let cos = weights.column(0).dot(&svd.u.unwrap().column(top)).abs();
    assert!(cos > 0.9999, "cos {cos}");
    let too_many = DamaParams {
        components: n + 1,
        ..params
    };
    assert!(dama_projection(&tensor(&u), &tensor(&w), &tensor(&d), &too_many).is_err());
}

fn delta_fixture() -> (HashMap<String, Tensor>, WeightDelta) {
    let mut rng = StdRng::seed_from_u64(17);
    let mut weights = HashMap::new();
    let mut delta = WeightDelta::new(DeltaMeta {
        method: "lsdm".into(),
        model_hash: "m".into(),
        params: serde_json::json!({"lambda": 1.0}),
    });
    for (i, name) in [
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.2.mlp.down_proj.weight",
    ]
    .iter()
    .enumerate()
    {
        let w = tensor(&randn(&mut rng, 6 + i, 10));
        let dw = tensor(&(randn(&mut rng, 6 + i, 10) * 1e-3));
        delta.insert(name, &w, &dw).unwrap();
        weights.insert(name.to_string(), w);
    }
    weights.insert("untouched".into(), tensor(&randn(&mut rng, 3, 3)));
    (weights, delta)
}

#[test]
fn delta_apply_revert_is_bit_exact_through_a_file() {
    let (mut weights, delta) = delta_fixture();
    let before: HashMap<String, Vec<u32>> = weights
        .iter()
        .map(|(k, v)| (k.clone(), bits(v).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edit.safetensors");
    delta.save(&path).unwrap();
    let loaded = WeightDelta::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.meta, delta.meta);
    apply(&mut weights, &loaded).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    assert_ne!(bits(&weights[name]).unwrap(), before[name]);
    assert!(
        apply(&mut weights, &loaded).is_err(),
        "applying twice must be refused"
    );
    revert(&mut weights, &loaded, 1e-6).unwrap();
    for (k, v) in &weights {
        assert_eq!(bits(v).unwrap(), before[k], "{k}");
    }
}

#[test]
fn delta_revert_refuses_mismatches() {
    let (mut weights, delta) = delta_fixture();
    apply(&mut weights, &delta).unwrap();
    let edited: HashMap<String, Vec<u32>> = weights
        .iter()
        .map(|(k, v)| (k.clone(), bits(v).unwrap()))
        .collect();
    // Unedited weights are not original + delta.
    let (mut fresh, _) = delta_fixture();
    assert!(revert(&mut fresh, &delta, 1e-6)
        .unwrap_err()
        .to_string()
        .contains("refusing"));
    // A different delta for the same tensors.
    let mut wrong = delta.clone();
    for e in wrong.entries.values_mut() {
        e.delta = (&e.delta * 2.0).unwrap();
    }
    assert!(revert(&mut weights, &wrong, 1e-6).is_err());
    // Missing tensor name, wrong shape.
    let mut renamed = WeightDelta::new(delta.meta.clone());
    for (k, e) in &delta.entries {
        renamed
            .insert(&format!("{k}.x"), &e.orig, &e.delta)
            .unwrap();
    }
    assert!(revert(&mut weights, &renamed, 1e-6)
        .unwrap_err()
        .to_string()
        .contains("not in the model"));
    let mut reshaped = WeightDelta::new(delta.meta.clone());
    for (k, e) in &delta.entries {
        reshaped
            .insert(
                k,
                &e.orig.flatten_all().unwrap(),
                &e.delta.flatten_all().unwrap(),
            )
            .unwrap();
    }
    assert!(revert(&mut weights, &reshaped, 1e-6).is_err());
    // Refusals changed nothing.
    for (k, v) in &weights {
        assert_eq!(bits(v).unwrap(), edited[k], "{k}");
    }
}

/// Timings at the real sizes (SmolLM2: 1536/576, Gemma-3-270M: 2048/640), n = 50 keys.
/// Run with `cargo test --release --test lsdm_solver -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_real_sizes() {
    for (d_ff, d_model) in [(1536, 576), (2048, 640)] {
        let p = problem(1, (50, d_ff, d_model), 2, 20, 15000.0, 10.0);
        let (k, r, pk) = (
            tensor(&p.keys),
            tensor(&p.residuals),
            tensor(p.preserved.as_ref().unwrap()),
        );
        let PriorF64::Moment(c) = &p.prior else {
            unreachable!()
        };
        let c = tensor(c);
        let input = LsqInput {
            keys: &k,
            residuals: &r,
            prior: Prior::Moment(&c),
            lambda: p.lambda,
            preserved: Some(&pk),
            mu: p.mu,
        };
        let t0 = std::time::Instant::now();
        let got = matrix(&solve_update(&input).unwrap());
        let t_candle = t0.elapsed();
        let t0 = std::time::Instant::now();
        let want = reference_update(&p).unwrap();
        let t_ref = t0.elapsed();
        println!(
            "d_ff {d_ff} d_model {d_model}: candle f32 {:.3}s, nalgebra f64 LU {:.3}s, rel err {:.2e}",
            t_candle.as_secs_f64(),
            t_ref.as_secs_f64(),
            rel_err(&got, &want)
        );
    }
}

/// Keys whose Gram matrix dwarfs λC (as SmolLM2's layer-0 keys with λ = 10 did): f32 cannot
/// factorise the normal matrix, the robust solve falls back to f64 and matches the reference.
#[test]
fn f32_failure_falls_back_to_f64_and_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let (n, d_ff, d) = (8, 64, 16);
    let k = randn(&mut rng, n, d_ff) * 1e4;
    let r = randn(&mut rng, n, d);
    let c = DMatrix::<f64>::identity(d_ff, d_ff) * 1e-6;
    let (kt, rt, ct) = (tensor(&k), tensor(&r), tensor(&c));
    let input = LsqInput {
        keys: &kt,
        residuals: &rt,
        prior: Prior::Moment(&ct),
        lambda: 1.0,
        preserved: None,
        mu: 0.0,
    };
    assert!(
        solve_update(&input).is_err(),
        "f32 solved it: the case no longer exercises the fallback"
    );
    let (x, path) = solve_update_robust(&input).unwrap();
    assert_eq!(path, SolvePath::F64Fallback);
    // Against the reference on the same (f32-rounded) inputs: the system's condition number
    // is ~1e14, so rounding the inputs alone would move the answer.
    let want = reference_update(&LsqProblemF64 {
        keys: matrix(&kt),
        residuals: matrix(&rt),
        prior: PriorF64::Moment(matrix(&ct)),
        lambda: 1.0,
        preserved: None,
        mu: 0.0,
    })
    .unwrap();
    assert!(rel_err(&matrix(&x), &want) < 1e-6);
}
