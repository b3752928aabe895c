//! Independent f64 reference for the LSDM update, in nalgebra, for tests and audits.
//!
//! Deliberately a different algorithm path from `solve`: it always forms the full primal system
//! A = λC + KᵀK + μPᵀP in f64 and solves A Δᵀ = KᵀR by LU with partial pivoting when the prior
//! makes A nonsingular, or by the SVD pseudo-inverse (minimum-norm solution) when C = 0 or λ = 0.
//! No dual form, no Cholesky, no scaling, no refinement.

use crate::edit::solve::check_dims;
use crate::{Error, Result};
use nalgebra::DMatrix;

/// The regulariser C in λ tr(Δ C Δᵀ) (mirrors `solve::Prior`).
#[derive(Debug, Clone)]
pub enum PriorF64 {
    Zero,
    Identity,
    Moment(DMatrix<f64>),
}

/// The same problem as `solve::LsqInput`, in f64 row convention (K [n, d_ff], R [n, d_model]).
#[derive(Debug, Clone)]
pub struct LsqProblemF64 {
    pub keys: DMatrix<f64>,
    pub residuals: DMatrix<f64>,
    pub prior: PriorF64,
    pub lambda: f64,
    pub preserved: Option<DMatrix<f64>>,
    pub mu: f64,
}

/// Δ [d_model, d_ff] minimising ‖ΔKᵀ - Rᵀ‖² + μ‖ΔPᵀ‖² + λ tr(ΔCΔᵀ).
pub fn reference_update(p: &LsqProblemF64) -> Result<DMatrix<f64>> {
    let shape = |m: &DMatrix<f64>| (m.nrows(), m.ncols());
    let c_dims = match &p.prior {
        PriorF64::Moment(c) => Some(shape(c)),
        _ => None,
    };
    let (_, d_ff, _) = check_dims(
        shape(&p.keys),
        shape(&p.residuals),
        c_dims,
        p.preserved.as_ref().map(shape),
        p.lambda,
        p.mu,
    )?;
    let kt = p.keys.transpose();
    let mut a = &kt * &p.keys;
    if let Some(pk) = &p.preserved {
        a += (pk.transpose() * pk) * p.mu;
    }
    let singular_prior = p.lambda == 0.0 || matches!(p.prior, PriorF64::Zero);
    match &p.prior {
        PriorF64::Moment(c) => a += c * p.lambda,
        PriorF64::Identity => a += DMatrix::<f64>::identity(d_ff, d_ff) * p.lambda,
        PriorF64::Zero => {}
    }
    let rhs = &kt * &p.residuals;
    let x = if singular_prior {
        let svd = a.svd(true, true);
        let tol = svd.singular_values.max() * (d_ff as f64) * f64::EPSILON;
        svd.solve(&rhs, tol)
            .map_err(|e| Error::Numerical(format!("reference SVD solve: {e}")))?
    } else {
        a.lu()
            .solve(&rhs)
            .ok_or_else(|| Error::Numerical("reference LU: normal matrix is singular".into()))?
    };
    Ok(x.transpose())
}

/// Convert a row-major `Vec<Vec<f32>>` (as returned by candle's `to_vec2`) to an f64 matrix.
pub fn matrix_from_rows(rows: &[Vec<f32>]) -> DMatrix<f64> {
    let ncols = rows.first().map_or(0, |r| r.len());
    DMatrix::from_fn(rows.len(), ncols, |i, j| rows[i][j] as f64)
}
