//! LSDM's closed-form least-squares update on candle tensors (f32).
//!
//! Row convention (HF layout): W is [d_model, d_ff]; a key k ∈ R^{d_ff} is a row of K [n, d_ff];
//! R [n, d_model] holds the desired change of W k for each key; P [m, d_ff] are preserved keys.
//! The update Δ [d_model, d_ff] minimises
//!
//! ```text
//!   ‖(W+Δ)Kᵀ - (WKᵀ + Rᵀ)‖² + μ‖Δ Pᵀ‖² + λ tr(Δ C Δᵀ)
//! ```
//!
//! whose stationarity condition Δ (λC + KᵀK + μPᵀP) = RᵀK gives Δ = RᵀK (λC + KᵀK + μPᵀP)⁻¹
//! (MEMIT's R Kᵀ(λC + K Kᵀ)⁻¹ in column convention, plus the preserved-key term).
//!
//! Two algebraically equal paths, picked by the prior:
//! - [`Prior::Moment`] with λ > 0 (the LSDM case): the primal d_ff × d_ff system, solved by a
//!   blocked Cholesky factorisation.
//! - [`Prior::Identity`] or [`Prior::Zero`] (or λ = 0): the dual (n+m) × (n+m) system. With
//!   G = [K; √μ P] and T = [R; 0], Δ = Tᵀ(λI + GGᵀ)⁻¹G (push-through identity). For C = 0 this is
//!   the minimum-Frobenius-norm minimiser, which needs G to have full row rank.
//!
//! What runs in f32: every tensor operation (forming the normal matrix, the trailing-matrix
//! updates of the factorisation, the triangular solves, one step of iterative refinement) runs in
//! f32 on the inputs' device. Only the diagonal blocks (≤ [`BLOCK`]² entries each) are factorised
//! and inverted on the CPU with f64 arithmetic and rounded back to f32. Accuracy therefore scales
//! like f32 eps × cond(normal matrix); the system is Jacobi-scaled first so that badly scaled key
//! coordinates do not cost accuracy.

use crate::model::stable_matmul::matmul as mm;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Block size of the Cholesky factorisation: diagonal blocks are factorised on the CPU, the rest
/// is candle matmuls; 128 keeps the CPU part negligible at d_ff = 2048.
pub const BLOCK: usize = 128;

/// The regulariser C in λ tr(Δ C Δᵀ).
#[derive(Debug, Clone, Copy)]
pub enum Prior<'a> {
    /// C = 0: only the key constraints and preserved keys; minimum-norm solution.
    Zero,
    /// C = I: ridge regularisation.
    Identity,
    /// C = E[k kᵀ] over a corpus, [d_ff, d_ff] (see `second_moment`).
    Moment(&'a Tensor),
}

/// Inputs of one least-squares update. All tensors must be on the same device.
#[derive(Debug, Clone, Copy)]
pub struct LsqInput<'a> {
    /// Edit keys K, [n, d_ff].
    pub keys: &'a Tensor,
    /// Residual targets R, [n, d_model]: the desired change of W k for each key.
    pub residuals: &'a Tensor,
    /// The regulariser C.
    pub prior: Prior<'a>,
    /// λ ≥ 0, weight of tr(Δ C Δᵀ) (MEMIT's `mom2_update_weight`).
    pub lambda: f64,
    /// Preserved keys P, [m, d_ff], whose outputs should not change.
    pub preserved: Option<&'a Tensor>,
    /// μ ≥ 0, weight of ‖Δ Pᵀ‖².
    pub mu: f64,
}

/// Check scalars and shapes; returns (n, d_ff, d_model).
pub(crate) fn check_dims(
    keys: (usize, usize),
    residuals: (usize, usize),
    prior: Option<(usize, usize)>,
    preserved: Option<(usize, usize)>,
    lambda: f64,
    mu: f64,
) -> Result<(usize, usize, usize)> {
    if !lambda.is_finite() || lambda < 0.0 {
        return Err(Error::param(
            "lambda",
            format!("must be finite and >= 0, got {lambda}"),
        ));
    }
    if !mu.is_finite() || mu < 0.0 {
        return Err(Error::param(
            "mu",
            format!("must be finite and >= 0, got {mu}"),
        ));
    }
    let (n, d_ff) = keys;
    if n == 0 || d_ff == 0 {
        return Err(Error::param("keys", format!("empty key matrix {n}x{d_ff}")));
    }
    if residuals.0 != n {
        return Err(Error::param(
            "residuals",
            format!("{} rows but keys have {n}", residuals.0),
        ));
    }
    if let Some(c) = prior {
        if c != (d_ff, d_ff) {
            return Err(Error::param(
                "prior",
                format!("second moment is {}x{}, expected {d_ff}x{d_ff}", c.0, c.1),
            ));
        }
    }
    if let Some(p) = preserved {
        if p.1 != d_ff {
            return Err(Error::param(
                "preserved",
                format!("preserved keys have width {}, expected {d_ff}", p.1),
            ));
        }
    }
    Ok((n, d_ff, residuals.1))
}

/// Solve for Δ [d_model, d_ff] (f32, on the keys' device). See the module docs for the objective.
pub fn solve_update(input: &LsqInput) -> Result<Tensor> {
    let k = input.keys.to_dtype(DType::F32)?;
    let r = input.residuals.to_dtype(DType::F32)?;
    let c_dims = match input.prior {
        Prior::Moment(c) => Some(c.dims2()?),
        _ => None,
    };
    let p_dims = input.preserved.map(|p| p.dims2()).transpose()?;
    check_dims(
        k.dims2()?,
        r.dims2()?,
        c_dims,
        p_dims,
        input.lambda,
        input.mu,
    )?;
    let p = match input.preserved {
        Some(p) if input.mu > 0.0 && p.dim(0)? > 0 => Some(p.to_dtype(DType::F32)?),
        _ => None,
    };
    match input.prior {
        Prior::Moment(c) if input.lambda > 0.0 => {
            let a0 = ((c.to_dtype(DType::F32)? * input.lambda)? + mm(&k.t()?, &k)?)?;
            let rhs = mm(&k.t()?, &r)?;
            let x = match &p {
                None => SpdSolver::new(&a0)?.solve(&rhs)?,
                Some(p) => preserved_solve(&a0, p, input.mu, &rhs)?,
            };
            Ok(x.t()?.contiguous()?)
        }
        _ => {
            // Dual: S = λ'I + GGᵀ with G = [K; √μ P], S Y = T, Δ = Yᵀ G.
            let ridge = if matches!(input.prior, Prior::Identity) {
                input.lambda
            } else {
                0.0
            };
            let (g, t) = match &p {
                Some(p) => {
                    let zeros = Tensor::zeros((p.dim(0)?, r.dim(1)?), DType::F32, r.device())?;
                    (
                        Tensor::cat(&[&k, &(p * input.mu.sqrt())?], 0)?,
                        Tensor::cat(&[&r, &zeros], 0)?,
                    )
                }
                None => (k.clone(), r.clone()),
            };
            let rows = g.dim(0)?;
            let mut s = mm(&g, &g.t()?)?;
            if ridge > 0.0 {
                let eye = (Tensor::eye(rows, DType::F32, g.device())? * ridge)?;
                s = (s + eye)?;
            }
            let y = spd_solve(&s, &t)?;
            Ok(mm(&y.t()?, &g)?)
        }
    }
}

/// Solve (A0 + μPᵀP) X = B by the Woodbury identity
/// (A0 + μPᵀP)⁻¹ = A0⁻¹ - A0⁻¹Pᵀ(I/μ + P A0⁻¹ Pᵀ)⁻¹ P A0⁻¹,
/// which stays well conditioned as μ grows (forming A0 + μPᵀP in f32 does not), then one step of
/// refinement against the residual B - A0 X - μPᵀ(P X).
fn preserved_solve(a0: &Tensor, p: &Tensor, mu: f64, b: &Tensor) -> Result<Tensor> {
    let m = p.dim(0)?;
    let base = SpdSolver::new(a0)?;
    let y = base.solve(&p.t()?.contiguous()?)?; // A0⁻¹ Pᵀ, [d, m]
    let eye = (Tensor::eye(m, DType::F32, p.device())? / mu)?;
    let small = SpdSolver::new(&(eye + mm(p, &y)?)?)?;
    let woodbury = |rhs: &Tensor| -> Result<Tensor> {
        let x0 = base.solve(rhs)?;
        Ok((&x0 - mm(&y, &small.solve(&mm(p, &x0)?)?)?)?)
    };
    let x = woodbury(b)?;
    let applied = (mm(a0, &x)? + (mm(&p.t()?, &mm(p, &x)?)? * mu)?)?;
    Ok((&x + woodbury(&(b - applied)?)?)?)
}

/// Factorised symmetric positive definite A [d, d]: Jacobi scaling A' = D A D with
/// D = diag(A)^(-1/2), blocked Cholesky of A', one step of iterative refinement per solve.
pub struct SpdSolver {
    scale: Tensor,
    scaled: Tensor,
    factor: Cholesky,
}

impl SpdSolver {
    pub fn new(a: &Tensor) -> Result<Self> {
        let d = a.dim(0)?;
        let idx = Tensor::arange_step(0u32, (d * d) as u32, (d + 1) as u32, a.device())?;
        let diag: Vec<f32> = a.flatten_all()?.index_select(&idx, 0)?.to_vec1::<f32>()?;
        if let Some(i) = diag.iter().position(|&x| !(x > 0.0 && x.is_finite())) {
            return Err(Error::Numerical(format!(
                "normal matrix is not positive definite: diagonal entry {i} is {}",
                diag[i]
            )));
        }
        let scale: Vec<f32> = diag.iter().map(|x| 1.0 / x.sqrt()).collect();
        let scale = Tensor::from_vec(scale, (d, 1), a.device())?;
        let scaled = a.broadcast_mul(&scale)?.broadcast_mul(&scale.t()?)?;
        let factor = Cholesky::factor(&scaled)?;
        Ok(Self {
            scale,
            scaled,
            factor,
        })
    }

    /// X = A⁻¹ B for B [d, r].
    pub fn solve(&self, b: &Tensor) -> Result<Tensor> {
        let b = b.broadcast_mul(&self.scale)?;
        let x = self.factor.solve(&b)?;
        let resid = (&b - mm(&self.scaled, &x)?)?;
        let x = (x + self.factor.solve(&resid)?)?;
        Ok(x.broadcast_mul(&self.scale)?)
    }
}

/// Solve A X = B for symmetric positive definite A [d, d], B [d, r] (see [`SpdSolver`]).
pub fn spd_solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    SpdSolver::new(a)?.solve(b)
}

/// One column block of the lower factor L: the inverse of its diagonal block and the panel below.
struct Block {
    size: usize,
    diag_inv: Tensor,
    panel: Option<Tensor>,
}

/// Blocked right-looking Cholesky A = L Lᵀ, stored as per-block (L_jj⁻¹, L_{>j,j}).
struct Cholesky {
    blocks: Vec<Block>,
}

impl Cholesky {
    fn factor(a: &Tensor) -> Result<Self> {
        let d = a.dim(0)?;
        let dev = a.device();
        let mut trailing = a.contiguous()?;
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < d {
            let b = BLOCK.min(d - start);
            let a11 = trailing
                .narrow(0, 0, b)?
                .narrow(1, 0, b)?
                .to_vec2::<f32>()?;
            let l11 = small_cholesky(&a11, start)?;
            let diag_inv = Tensor::from_vec(lower_inverse(&l11, b), (b, b), dev)?;
            let rest = d - start - b;
            let panel = if rest > 0 {
                let a21 = trailing.narrow(0, b, rest)?.narrow(1, 0, b)?.contiguous()?;
                let l21 = mm(&a21, &diag_inv.t()?)?;
                let a22 = trailing
                    .narrow(0, b, rest)?
                    .narrow(1, b, rest)?
                    .contiguous()?;
                trailing = (a22 - mm(&l21, &l21.t()?)?)?.contiguous()?;
                Some(l21)
            } else {
                None
            };
            blocks.push(Block {
                size: b,
                diag_inv,
                panel,
            });
            start += b;
        }
        Ok(Cholesky { blocks })
    }

    /// X = A⁻¹ B by forward (L Y = B) then backward (Lᵀ X = Y) block substitution.
    fn solve(&self, b: &Tensor) -> Result<Tensor> {
        let mut rest = b.contiguous()?;
        let mut ys = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let bj = rest.narrow(0, 0, blk.size)?;
            let yj = mm(&blk.diag_inv, &bj)?;
            if let Some(panel) = &blk.panel {
                let below = rest.narrow(0, blk.size, panel.dim(0)?)?;
                rest = (below - mm(panel, &yj)?)?.contiguous()?;
            }
            ys.push(yj);
        }
        let mut after: Option<Tensor> = None;
        for (blk, yj) in self.blocks.iter().zip(ys).rev() {
            let rhs = match (&blk.panel, &after) {
                (Some(panel), Some(xa)) => (yj - mm(&panel.t()?, xa)?)?,
                _ => yj,
            };
            let xj = mm(&blk.diag_inv.t()?, &rhs)?;
            after = Some(match after {
                None => xj,
                Some(xa) => Tensor::cat(&[&xj, &xa], 0)?,
            });
        }
        after.ok_or_else(|| Error::Numerical("empty system".into()))
    }
}

/// Unblocked Cholesky of a small dense block in f64; `offset` only labels the failing pivot.
fn small_cholesky(a: &[Vec<f32>], offset: usize) -> Result<Vec<f64>> {
    let b = a.len();
    let mut l = vec![0f64; b * b];
    for j in 0..b {
        let mut s = a[j][j] as f64;
        for p in 0..j {
            s -= l[j * b + p] * l[j * b + p];
        }
        if !(s > 0.0 && s.is_finite()) {
            return Err(Error::Numerical(format!(
                "normal matrix is not positive definite (pivot {} = {s:e}); \
                 increase lambda or use linearly independent keys",
                offset + j
            )));
        }
        let ljj = s.sqrt();
        l[j * b + j] = ljj;
        for i in j + 1..b {
            let mut t = a[i][j] as f64;
            for p in 0..j {
                t -= l[i * b + p] * l[j * b + p];
            }
            l[i * b + j] = t / ljj;
        }
    }
    Ok(l)
}

/// Inverse of a lower-triangular b×b matrix (row-major, f64), rounded to f32.
fn lower_inverse(l: &[f64], b: usize) -> Vec<f32> {
    let mut inv = vec![0f64; b * b];
    for col in 0..b {
        // Solve L x = e_col by forward substitution; x is column `col` of L⁻¹.
        for i in col..b {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for p in col..i {
                s -= l[i * b + p] * inv[p * b + col];
            }
            inv[i * b + col] = s / l[i * b + i];
        }
    }
    inv.into_iter().map(|x| x as f32).collect()
}

/// Which arithmetic produced an update (recorded in edit.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolvePath {
    /// [`solve_update`]: f32 on the keys' device.
    F32,
    /// The f32 factorisation met a numerically indefinite matrix and the nalgebra f64
    /// reference solved it instead (`edit::reference`).
    F64Fallback,
}

/// [`solve_update`], redone in f64 with the nalgebra reference when f32 cannot factorise the
/// normal matrix. That happens when the keys' Gram matrix KᵀK outweighs λC by more than f32
/// resolves (measured: SmolLM2 layer 0 keys with λ = 10 left a pivot of -1e-2): the
/// directions the keys do not span then hold only rounding noise.
pub fn solve_update_robust(input: &LsqInput) -> Result<(Tensor, SolvePath)> {
    match solve_update(input) {
        Ok(x) => Ok((x, SolvePath::F32)),
        Err(Error::Numerical(_)) => {
            use crate::edit::reference::{reference_update, LsqProblemF64, PriorF64};
            let f64_matrix = |t: &Tensor| -> Result<nalgebra::DMatrix<f64>> {
                let rows = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let ncols = rows.first().map_or(0, |r| r.len());
                Ok(nalgebra::DMatrix::from_fn(rows.len(), ncols, |i, j| {
                    rows[i][j]
                }))
            };
            let problem = LsqProblemF64 {
                keys: f64_matrix(input.keys)?,
                residuals: f64_matrix(input.residuals)?,
                prior: match input.prior {
                    Prior::Zero => PriorF64::Zero,
                    Prior::Identity => PriorF64::Identity,
                    Prior::Moment(c) => PriorF64::Moment(f64_matrix(c)?),
                },
                lambda: input.lambda,
                preserved: input.preserved.map(f64_matrix).transpose()?,
                mu: input.mu,
            };
            let x = reference_update(&problem)?;
            let (r, c) = (x.nrows(), x.ncols());
            let data: Vec<f32> = (0..r)
                .flat_map(|i| (0..c).map(move |j| (i, j)))
                .map(|(i, j)| x[(i, j)] as f32)
                .collect();
            let t = Tensor::from_vec(data, (r, c), input.keys.device())?;
            Ok((t, SolvePath::F64Fallback))
        }
        Err(e) => Err(e),
    }
}
