//! Shared helpers for integration tests: fixture paths, tensor comparison, real-model loading.
#![allow(dead_code)]

use biaslens::edit::reference::{matrix_from_rows, LsqProblemF64, PriorF64};
use biaslens::edit::solve::{solve_update, LsqInput, Prior};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Site};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
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

/// Load a real model; fail with instructions when it has not been fetched.
pub fn real_model(alias: &str) -> Model {
    match Model::load(alias, &Device::Cpu) {
        Ok(m) => m,
        Err(e) => panic!("cannot load `{alias}`: {e}\nrun `harness/fetch-models.sh` first"),
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
