//! Shared helpers for integration tests: fixture paths, tensor comparison, real-model loading.
#![allow(dead_code)]

use biaslens::model::Model;
use candle_core::{Device, Tensor};
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
