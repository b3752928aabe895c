//! The gap probe's closed form, in nalgebra f64 (the reference and the solver: the systems are
//! d_ff × d_ff, a second on the CPU).
//!
//! Given keys K `[n, d_ff]` of the fit prompts with targets s `[n]` (the share of each prompt's
//! pronoun logit gap this layer removes), the corpus second moment C [d_ff, d_ff] and protected
//! keys P [m, d_ff] (gendered words), the probe w minimises
//!
//! ```text
//!   (1/n) ‖K w − s‖² + λ wᵀ C w      subject to   P w = 0
//! ```
//!
//! The first term makes wᵀk predict the gap on the fit prompts; λ wᵀCw keeps wᵀk small on
//! ordinary text (so the edit rarely acts there); the constraint makes the edit leave every
//! protected key's output exactly unchanged. With A = KᵀK/n + λC and b = Kᵀs/n, the KKT
//! conditions give w = A⁻¹b − A⁻¹Q (QᵀA⁻¹Q)⁻¹ QᵀA⁻¹b, Q an orthonormal basis of P's row space
//! (from its SVD, so nearly dependent protected keys do not make the system singular).
//! The edit is ΔW = −u wᵀ: rank one, output direction u.

use crate::{Error, Result};
use nalgebra::{DMatrix, DVector};

/// Singular values of P below this share of the largest are treated as zero.
pub const PROTECT_RANK_TOL: f64 = 1e-9;

/// The probe w (see the module doc).
pub fn probe_weights(
    keys: &DMatrix<f64>,
    targets: &DVector<f64>,
    moment: Option<&DMatrix<f64>>,
    lambda: f64,
    protect: Option<&DMatrix<f64>>,
) -> Result<DVector<f64>> {
    let (n, d) = keys.shape();
    if n == 0 || targets.len() != n {
        return Err(Error::param(
            "keys",
            format!("{n} keys for {} targets", targets.len()),
        ));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::param("lambda", format!("{lambda} must be >= 0")));
    }
    let mut a = keys.transpose() * keys / n as f64;
    match moment {
        Some(c) if c.shape() == (d, d) => a += c * lambda,
        Some(c) => {
            return Err(Error::param(
                "moment",
                format!("{:?} for keys of width {d}", c.shape()),
            ))
        }
        None => a += DMatrix::<f64>::identity(d, d) * lambda,
    }
    let b = keys.transpose() * targets / n as f64;
    let chol = a.clone().cholesky().ok_or_else(|| {
        Error::Model(format!(
            "probe: KᵀK/n + λC is not positive definite for keys of width {d}: raise \
             probe.lambda, or probe.corpus_tokens if it is below {d} (C from fewer tokens \
             than the width is singular)"
        ))
    })?;
    let w0 = chol.solve(&b);
    let Some(p) = protect.filter(|p| p.nrows() > 0) else {
        return Ok(w0);
    };
    if p.ncols() != d {
        return Err(Error::param(
            "protect",
            format!(
                "protected keys of width {} for keys of width {d}",
                p.ncols()
            ),
        ));
    }
    let q = row_space_basis(p);
    if q.ncols() == 0 {
        return Ok(w0);
    }
    let aq = chol.solve(&q);
    let s = q.transpose() * &aq;
    let nu = s
        .cholesky()
        .ok_or_else(|| Error::Model("probe: QᵀA⁻¹Q is not positive definite".into()))?
        .solve(&(q.transpose() * &w0));
    Ok(w0 - aq * nu)
}

/// Orthonormal basis [d, r] of the row space of `p` [m, d].
pub fn row_space_basis(p: &DMatrix<f64>) -> DMatrix<f64> {
    if p.nrows() == 0 || p.ncols() == 0 {
        return DMatrix::zeros(p.ncols(), 0);
    }
    let svd = p.transpose().svd(true, false);
    let Some(u) = svd.u else {
        return DMatrix::zeros(p.ncols(), 0);
    };
    let top = svd.singular_values.iter().cloned().fold(0f64, f64::max);
    let keep: Vec<usize> = svd
        .singular_values
        .iter()
        .enumerate()
        .filter(|(_, &s)| top > 0.0 && s > PROTECT_RANK_TOL * top)
        .map(|(i, _)| i)
        .collect();
    DMatrix::from_fn(p.ncols(), keep.len(), |i, j| u[(i, keep[j])])
}

/// The rank-one update −scale · u wᵀ, [d_model, d_ff].
pub fn rank_one_update(u: &DVector<f64>, w: &DVector<f64>, scale: f64) -> DMatrix<f64> {
    -(u * w.transpose()) * scale
}

/// The output direction from per-prompt gradients g_i = ∂gap/∂m (rows of `grads` [n, d]):
/// u = ḡ / ‖ḡ‖², so that adding −c·u to m changes the gap by about −c.
pub fn output_direction(grads: &DMatrix<f64>) -> Result<DVector<f64>> {
    if grads.nrows() == 0 {
        return Err(Error::param("grads", "no gradients"));
    }
    let mean = grads.row_mean().transpose();
    let nn = mean.norm_squared();
    if !(nn.is_finite() && nn > 0.0) {
        return Err(Error::Model(
            "probe: the pronoun gap does not depend on this layer's output (zero gradient)".into(),
        ));
    }
    Ok(mean / nn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        DMatrix::from_fn(rows, cols, |_, _| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
    }

    /// The KKT system solved as one block system by LU: [A Pᵀ; P 0] [w; ν] = [b; 0] (P of full
    /// row rank here), independent of the basis and Cholesky steps of `probe_weights`.
    fn kkt_reference(
        k: &DMatrix<f64>,
        s: &DVector<f64>,
        c: &DMatrix<f64>,
        lambda: f64,
        p: &DMatrix<f64>,
    ) -> DVector<f64> {
        let (d, m) = (k.ncols(), p.nrows());
        let a = k.transpose() * k / k.nrows() as f64 + c * lambda;
        let b = k.transpose() * s / k.nrows() as f64;
        let mut big = DMatrix::<f64>::zeros(d + m, d + m);
        big.view_mut((0, 0), (d, d)).copy_from(&a);
        big.view_mut((0, d), (d, m)).copy_from(&p.transpose());
        big.view_mut((d, 0), (m, d)).copy_from(p);
        let mut rhs = DVector::<f64>::zeros(d + m);
        rhs.rows_mut(0, d).copy_from(&b);
        big.lu().solve(&rhs).unwrap().rows(0, d).into_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn protected_keys_are_unchanged_and_matches_null_space_form(
            n in 8usize..40, d in 6usize..24, m in 1usize..5, seed in 0u64..1000, lambda in 0.01f64..10.0
        ) {
            let k = mat(n, d, seed);
            let s = mat(n, 1, seed + 1).column(0).into_owned();
            let c0 = mat(d + 3, d, seed + 2);
            let c = c0.transpose() * &c0 / (d + 3) as f64;
            let p = mat(m.min(d - 1), d, seed + 3);
            let w = probe_weights(&k, &s, Some(&c), lambda, Some(&p)).unwrap();
            // Every protected key's output is unchanged: P w = 0.
            let pw = &p * &w;
            prop_assert!(pw.amax() < 1e-9 * (1.0 + w.amax()), "P w = {pw}");
            let want = kkt_reference(&k, &s, &c, lambda, &p);
            prop_assert!((&w - &want).amax() < 1e-7 * (1.0 + want.amax()), "{w} vs {want}");
        }

        #[test]
        fn the_update_is_rank_one_along_u(d_out in 2usize..12, d in 2usize..20, seed in 0u64..1000) {
            let u = mat(d_out, 1, seed).column(0).into_owned();
            let w = mat(d, 1, seed + 7).column(0).into_owned();
            let dw = rank_one_update(&u, &w, 0.7);
            let sv = dw.clone().svd(false, false).singular_values;
            prop_assert!(sv.iter().skip(1).all(|&x| x < 1e-12 * sv[0].max(1e-300)));
            // Its action on any key k is −0.7 (w·k) u.
            let k = mat(d, 1, seed + 9).column(0).into_owned();
            let got = &dw * &k;
            let want = &u * (-0.7 * w.dot(&k));
            prop_assert!((got - want).amax() < 1e-12);
        }
    }

    #[test]
    fn without_protection_it_is_ridge_regression_in_the_c_metric() {
        let (k, c0) = (mat(30, 6, 1), mat(9, 6, 2));
        let s = mat(30, 1, 3).column(0).into_owned();
        let c = c0.transpose() * &c0 / 9.0;
        let w = probe_weights(&k, &s, Some(&c), 0.5, None).unwrap();
        // Stationarity: (KᵀK/n + λC) w = Kᵀs/n.
        let resid = (k.transpose() * &k / 30.0 + &c * 0.5) * &w - k.transpose() * &s / 30.0;
        assert!(resid.amax() < 1e-12, "{resid}");
    }

    #[test]
    fn direction_moves_the_linearised_gap_by_one() {
        let g = mat(10, 5, 4);
        let u = output_direction(&g).unwrap();
        let mean = g.row_mean().transpose();
        assert!((mean.dot(&u) - 1.0).abs() < 1e-12);
        assert!(output_direction(&DMatrix::zeros(3, 5)).is_err());
    }

    #[test]
    fn dependent_protected_keys_do_not_break_the_solve() {
        let k = mat(20, 8, 5);
        let s = mat(20, 1, 6).column(0).into_owned();
        let row = mat(1, 8, 7);
        let p = DMatrix::from_fn(3, 8, |i, j| row[(0, j)] * (i + 1) as f64);
        let w = probe_weights(&k, &s, None, 0.1, Some(&p)).unwrap();
        assert!((&p * &w).amax() < 1e-10);
    }
}
