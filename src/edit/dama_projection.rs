//! DAMA's null-space projection baseline (Limisiewicz et al., ICLR 2024), simplified.
//!
//! Given keys U [n, d_ff] of the edited MLP, its weight W [d_model, d_ff] and value differences
//! D [n, d_model] (value for the "he" target minus value for the "she" target), find k PLS2
//! directions in output space linking X = U Wᵀ (what the layer writes now) to Y = D, orthonormalise
//! them into B [d_model, k], and project them out of the layer's output: W' = (I - B Bᵀ) W.
//!
//! Simplifications, stated: no whitening of U (DAMA optionally whitens through λC + UᵀU); PLS
//! directions are the NIPALS x-weights (orthonormalised by QR, which is a no-op up to rounding
//! because deflation keeps them orthogonal); centring X and Y is a parameter (sklearn's
//! PLSRegression centres; not centring keeps the mean he–she direction, which is the bias signal
//! when every prompt's difference points the same way). The PLS runs in nalgebra f64 on the CPU:
//! X and Y are only n × d_model.

use crate::model::stable_matmul::matmul as mm;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// Parameters of the projection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DamaParams {
    /// Null-space dimension k (number of PLS components).
    pub components: usize,
    /// Subtract column means of X and Y before PLS.
    pub center: bool,
    /// NIPALS inner iterations per component.
    pub max_iter: usize,
    /// Convergence threshold on the relative change of the score vector.
    pub tol: f64,
}

impl Default for DamaParams {
    fn default() -> Self {
        Self {
            components: 1,
            center: false,
            max_iter: 500,
            tol: 1e-10,
        }
    }
}

/// Result: B [d_model, k] with orthonormal columns and M = I - B Bᵀ [d_model, d_model] (f32).
#[derive(Debug, Clone)]
pub struct DamaProjection {
    pub basis: Tensor,
    pub projection: Tensor,
}

/// Compute DAMA's projection for one layer.
pub fn dama_projection(
    keys: &Tensor,
    weight: &Tensor,
    value_diffs: &Tensor,
    params: &DamaParams,
) -> Result<DamaProjection> {
    let (n, d_ff) = keys.dims2()?;
    let (d_model, w_in) = weight.dims2()?;
    if w_in != d_ff {
        return Err(Error::param(
            "weight",
            format!("is {d_model}x{w_in}, keys have width {d_ff}"),
        ));
    }
    if value_diffs.dims2()? != (n, d_model) {
        return Err(Error::param(
            "value_diffs",
            format!("shape {:?}, expected [{n}, {d_model}]", value_diffs.dims()),
        ));
    }
    let x = mm(
        &keys.to_dtype(DType::F32)?,
        &weight.to_dtype(DType::F32)?.t()?,
    )?;
    let x = to_nalgebra(&x)?;
    let y = to_nalgebra(&value_diffs.to_dtype(DType::F32)?)?;
    let w = nipals_pls2(&x, &y, params)?;
    let b = w.qr().q();
    let m = DMatrix::<f64>::identity(d_model, d_model) - &b * b.transpose();
    let dev = keys.device();
    Ok(DamaProjection {
        basis: to_candle(&b, dev)?,
        projection: to_candle(&m, dev)?,
    })
}

/// New weight W' = M W (same dtype as `weight`).
pub fn apply_projection(projection: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let w = weight.to_dtype(DType::F32)?;
    Ok(mm(&projection.to_dtype(DType::F32)?, &w)?.to_dtype(weight.dtype())?)
}

/// NIPALS PLS2: the x-weights [p, k] of `params.components` components between X [n, p] and
/// Y [n, q]. Each weight is the dominant left singular vector of the deflated XᵀY.
pub fn nipals_pls2(
    x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    params: &DamaParams,
) -> Result<DMatrix<f64>> {
    let k = params.components;
    if k == 0 || k > x.nrows().min(x.ncols()) {
        return Err(Error::param(
            "components",
            format!("must be in 1..={}, got {k}", x.nrows().min(x.ncols())),
        ));
    }
    if x.nrows() != y.nrows() {
        return Err(Error::param("value_diffs", "row count differs from keys"));
    }
    let (mut x, mut y) = (x.clone(), y.clone());
    if params.center {
        center_columns(&mut x);
        center_columns(&mut y);
    }
    let scale = x.norm().max(f64::MIN_POSITIVE);
    let mut weights = DMatrix::<f64>::zeros(x.ncols(), k);
    for a in 0..k {
        let best = (0..y.ncols())
            .max_by(|&i, &j| y.column(i).norm().total_cmp(&y.column(j).norm()))
            .ok_or_else(|| Error::param("value_diffs", "has no columns"))?;
        let mut u = y.column(best).into_owned();
        let mut t_old = nalgebra::DVector::<f64>::zeros(x.nrows());
        let mut w = nalgebra::DVector::<f64>::zeros(x.ncols());
        for _ in 0..params.max_iter {
            w = x.transpose() * &u;
            let wn = w.norm();
            if wn <= 1e-12 * scale {
                return Err(Error::Numerical(format!(
                    "PLS component {} has no covariance left; use at most {a} components",
                    a + 1
                )));
            }
            w /= wn;
            let t = &x * &w;
            let mut c = y.transpose() * &t;
            c /= c.norm().max(f64::MIN_POSITIVE);
            u = &y * c;
            let done = (&t - &t_old).norm() <= params.tol * t.norm().max(f64::MIN_POSITIVE);
            t_old = t;
            if done {
                break;
            }
        }
        let tt = t_old.dot(&t_old).max(f64::MIN_POSITIVE);
        let p = x.transpose() * &t_old / tt;
        let q = y.transpose() * &t_old / tt;
        x -= &t_old * p.transpose();
        y -= &t_old * q.transpose();
        weights.set_column(a, &w);
    }
    Ok(weights)
}

fn center_columns(m: &mut DMatrix<f64>) {
    for mut col in m.column_iter_mut() {
        let mean = col.mean();
        col.add_scalar_mut(-mean);
    }
}

fn to_nalgebra(t: &Tensor) -> Result<DMatrix<f64>> {
    Ok(crate::edit::reference::matrix_from_rows(
        &t.to_vec2::<f32>()?,
    ))
}

fn to_candle(m: &DMatrix<f64>, device: &candle_core::Device) -> Result<Tensor> {
    let vals: Vec<f32> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
        .collect();
    Ok(Tensor::from_vec(vals, (m.nrows(), m.ncols()), device)?)
}
