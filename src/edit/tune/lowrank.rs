//! The algebra of gap tuning's change: ΔW = B (P⊥ A)ᵀ of rank r that maps the protected keys to
//! zero (optionally reading only some heads' columns), its corpus prior tr(ΔW C ΔWᵀ), and the
//! per-prompt targets and weights of the loss. Each stage of an edit is one [`Stage`].

use crate::edit::probe::Component;
use crate::model::stable_matmul::matmul as mm;
use crate::Result;
use candle_core::{Tensor, Var};
use nalgebra::DMatrix;

/// Logits [positions, k] centred on each position's mean: the log-odds among the k tokens,
/// unchanged by anything that shifts every logit of a position alike (the normaliser).
pub(super) fn centred(z: &Tensor) -> Result<Tensor> {
    Ok(z.broadcast_sub(&z.mean_keepdim(1)?)?)
}

/// ΔW = B (A − Q QᵀA)ᵀ, [d_out, d_in]: rank ≤ r, and ΔW p = 0 for every p in Q's column span.
/// `a` [d_in, r], `b` [d_out, r], `q` [d_in, m] with orthonormal columns (m may be 0).
pub fn low_rank_delta(a: &Tensor, b: &Tensor, q: Option<&Tensor>) -> Result<Tensor> {
    let a = match q {
        Some(q) => (a - mm(q, &mm(&q.t()?, a)?)?)?,
        None => a.clone(),
    };
    mm(b, &a.t()?)
}

/// tr(ΔW C ΔWᵀ) for ΔW = B Ãᵀ, computed as Σ (B (ÃᵀCÃ)) ⊙ B without forming ΔW C.
pub fn prior_energy(a: &Tensor, b: &Tensor, q: Option<&Tensor>, c: &Tensor) -> Result<Tensor> {
    let a = match q {
        Some(q) => (a - mm(q, &mm(&q.t()?, a)?)?)?,
        None => a.clone(),
    };
    let m = mm(&a.t()?, &mm(c, &a)?)?;
    Ok((mm(b, &m)? * b)?.sum_all()?)
}

/// Which prompts keep their gap under the hard threshold: |L₀| ≥ τ, compared in `base`'s dtype
/// (u8 mask). The one definition behind [`threshold_targets`] and the kept count.
pub(super) fn keeps_gap(base: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(base.abs()?.ge(tau)?)
}

/// The hard-threshold targets: 0 where |L₀| < τ, else L₀ (same shape and dtype as `base`).
pub fn threshold_targets(base: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(keeps_gap(base, tau)?.where_cond(base, &base.zeros_like()?)?)
}

/// Per-prompt weights of the protected loss: `he` where the base gap leans he (L₀ > 0), else
/// `other` (same shape and dtype as `base`).
pub fn protect_weights(base: &Tensor, he: f64, other: f64) -> Result<Tensor> {
    let he_t = (base.ones_like()? * he)?;
    let other_t = (base.ones_like()? * other)?;
    Ok(base.gt(0.0)?.where_cond(&he_t, &other_t)?)
}

/// One edited projection: its base weight, the factors (A, B) being fitted and what the loss and
/// the report need of it.
pub(super) struct Stage {
    pub(super) layer: usize,
    pub(super) comp: Component,
    pub(super) w0: Tensor,
    pub(super) a: Var,
    pub(super) b: Var,
    pub(super) q: Option<Tensor>,
    /// [d_in, 1] 0/1: the input coordinates the change may read (the chosen heads' columns);
    /// None: all of them.
    pub(super) mask: Option<Tensor>,
    pub(super) c: Tensor,
    /// tr(W₀ C W₀ᵀ)
    pub(super) energy0: f64,
    /// Protected mean keys [words, d_in] (f64), for the report's exactness check.
    pub(super) protected: DMatrix<f64>,
}

impl Stage {
    pub(super) fn delta(&self) -> Result<Tensor> {
        match &self.mask {
            None => low_rank_delta(self.a.as_tensor(), self.b.as_tensor(), self.q.as_ref()),
            Some(m) => mm(
                self.b.as_tensor(),
                &head_a(self.a.as_tensor(), self.q.as_ref(), m)?.t()?,
            ),
        }
    }
    pub(super) fn relative_energy(&self) -> Result<Tensor> {
        let e = match &self.mask {
            None => prior_energy(
                self.a.as_tensor(),
                self.b.as_tensor(),
                self.q.as_ref(),
                &self.c,
            )?,
            Some(m) => {
                let a = head_a(self.a.as_tensor(), self.q.as_ref(), m)?;
                prior_energy(&a, self.b.as_tensor(), None, &self.c)?
            }
        };
        Ok((e / self.energy0)?)
    }
    /// tr(ΔW C ΔWᵀ) / tr(W₀ C W₀ᵀ) of a given change `dw` (e.g. the mean of several seeds'
    /// changes, which no single pair of factors holds).
    pub(super) fn relative_energy_of(&self, dw: &Tensor) -> Result<f64> {
        // In f64: the report's figure, not a hot path.
        let f64 = candle_core::DType::F64;
        let dw = dw.to_dtype(f64)?;
        let e = (dw.matmul(&self.c.to_dtype(f64)?)? * &dw)?
            .sum_all()?
            .to_scalar::<f64>()?;
        Ok(e / self.energy0)
    }
}

/// Ã = M (A − Q Qᵀ M A) for a head-restricted change ΔW = B Ãᵀ: M the 0/1 `mask` [d_in, 1] of
/// the heads' columns, Q [d_in, m] an orthonormal basis of the protected keys' head columns (M p).
/// ΔW reads only the heads' columns (exact zeros elsewhere) and ΔW p = B Aᵀ M (I − QQᵀ) M p = 0
/// for every protected key p, whatever p holds outside the heads.
pub fn head_a(a: &Tensor, q: Option<&Tensor>, mask: &Tensor) -> Result<Tensor> {
    let a = a.broadcast_mul(mask)?;
    let a = match q {
        Some(q) => (&a - mm(q, &mm(&q.t()?, &a)?)?)?,
        None => a,
    };
    Ok(a.broadcast_mul(mask)?)
}

/// The 0/1 mask `[d_in]` over the concatenated head outputs of one layer that keeps `heads`'
/// columns (head h: columns h·head_dim .. (h+1)·head_dim).
pub fn head_mask(heads: &[usize], num_heads: usize, head_dim: usize) -> Vec<f64> {
    (0..num_heads * head_dim)
        .map(|i| f64::from(u8::from(heads.contains(&(i / head_dim)))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::probe::to_f64;
    use crate::edit::probe_solve::row_space_basis;
    use crate::edit::tune::TuneParams;
    use candle_core::Device;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = Normal::new(0.0, 1.0).unwrap();
        DMatrix::from_fn(rows, cols, |_, _| n.sample(&mut rng))
    }

    fn tensor(m: &DMatrix<f64>) -> Tensor {
        let v: Vec<f32> = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
            .collect();
        Tensor::from_vec(v, (m.nrows(), m.ncols()), &Device::Cpu).unwrap()
    }

    /// The report's energy of a given change (what a k-seed mean reports) is the factors'
    /// energy when the change is the stage's own: ΔW = B (A − QQᵀA)ᵀ, each over tr(W₀ C W₀ᵀ).
    #[test]
    fn relative_energy_of_the_stages_own_change_matches_the_factors() {
        let (d_out, d_in, r) = (5, 7, 2);
        let (a, b) = (mat(d_in, r, 1), mat(d_out, r, 2));
        let q = {
            let m = mat(d_in, 2, 3);
            m.qr().q()
        };
        let x = mat(d_in, 9, 4);
        let c = &x * x.transpose() / 9.0;
        let w0 = mat(d_out, d_in, 5);
        let stage = Stage {
            layer: 0,
            comp: crate::edit::probe::Component::Mlp,
            w0: tensor(&w0),
            a: Var::from_tensor(&tensor(&a)).unwrap(),
            b: Var::from_tensor(&tensor(&b)).unwrap(),
            q: Some(tensor(&q)),
            mask: None,
            c: tensor(&c),
            energy0: (&w0 * &c * w0.transpose()).trace(),
            protected: DMatrix::zeros(0, d_in),
        };
        let factors = stage
            .relative_energy()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let given = stage.relative_energy_of(&stage.delta().unwrap()).unwrap();
        // f64 reference: ΔW from the formula.
        let dw = &b * (&a - &q * (q.transpose() * &a)).transpose();
        let want = (&dw * &c * dw.transpose()).trace() / stage.energy0;
        assert!((given - want).abs() <= 1e-5 * want, "{given} vs {want}");
        assert!((factors - want).abs() <= 1e-4 * want, "{factors} vs {want}");
    }

    #[test]
    fn threshold_targets_zero_small_gaps_and_keep_large_ones() {
        let base = [-3.0f32, -2.4, -2.39, 0.0, 1.0, 2.4, 5.0];
        let t = threshold_targets(&Tensor::new(&base[..], &Device::Cpu).unwrap(), 2.4)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(t, vec![-3.0, -2.4, 0.0, 0.0, 0.0, 2.4, 5.0]);
        // No key for the default, so earlier records read and hash as before.
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("keep_above").is_none());
        let p: TuneParams = serde_json::from_value(v).unwrap();
        assert_eq!(p, TuneParams::default());
    }

    #[test]
    fn protect_weights_pick_the_he_side() {
        let base = Tensor::new(&[-2.0f32, 0.0, 0.5, 3.0][..], &Device::Cpu).unwrap();
        let w = protect_weights(&base, 4.0, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(w, vec![1.0, 1.0, 4.0, 4.0]);
        // Absent from records that do not set it, as `keep_above`.
        let v = serde_json::to_value(TuneParams::default()).unwrap();
        assert!(v.get("protect_weight_he").is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// With heads: ΔW = B (P⊥ M A)ᵀ, P⊥ the complement of the protected keys' head columns
        /// (M p), reads only the heads' columns, maps every whole protected key p to zero and
        /// matches the f64 formula.
        #[test]
        fn head_delta_reads_only_its_heads_and_protects_whole_keys(
            heads in 1usize..4, head_dim in 1usize..5, pick in 0usize..4, r in 1usize..3,
            d_out in 2usize..8, m in 0usize..3, seed in 0u64..1000,
        ) {
            let pick = pick % heads;
            let d_in = heads * head_dim;
            let mask = head_mask(&[pick], heads, head_dim);
            let m = m.min(head_dim - 1);
            let a = mat(d_in, r, seed);
            let b = mat(d_out, r, seed + 1);
            let p = mat(m, d_in, seed + 2);
            let mdiag = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(mask.clone()));
            let q = row_space_basis(&(&p * &mdiag));
            let proj = DMatrix::<f64>::identity(d_in, d_in) - &q * q.transpose();
            let want = &b * (&proj * &mdiag * &a).transpose();
            let mask_t = Tensor::from_vec(
                mask.iter().map(|&x| x as f32).collect::<Vec<_>>(), (d_in, 1), &Device::Cpu,
            ).unwrap();
            let qt = (q.ncols() > 0).then(|| tensor(&q));
            let at = head_a(&tensor(&a), qt.as_ref(), &mask_t).unwrap();
            let got = to_f64(&mm(&tensor(&b), &at.t().unwrap()).unwrap()).unwrap();
            let scale = want.amax().max(1.0);
            prop_assert!((&got - &want).amax() < 1e-4 * scale);
            for (j, _) in mask.iter().enumerate().filter(|(_, &x)| x == 0.0) {
                prop_assert!(got.column(j).amax() == 0.0, "column {j} outside the head");
            }
            if m > 0 {
                prop_assert!((&got * p.transpose()).amax() < 1e-4 * scale * p.amax().max(1.0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// f32 candle ΔW equals the f64 formula B (I − QQᵀ) A)ᵀ, maps every protected key to
        /// zero, has rank ≤ r, and the prior equals tr(ΔW C ΔWᵀ) computed directly.
        #[test]
        fn delta_protects_keys_has_rank_r_and_matches_f64(
            d_in in 3usize..24, d_out in 2usize..16, r in 1usize..4, m in 0usize..3,
            seed in 0u64..1000,
        ) {
            let m = m.min(d_in - 1);
            let a = mat(d_in, r, seed);
            let b = mat(d_out, r, seed + 1);
            let p = mat(m, d_in, seed + 2);
            let q = row_space_basis(&p);
            let qt = (q.ncols() > 0).then(|| tensor(&q));
            let x = mat(d_in, d_in + 2, seed + 3);
            let c = &x * x.transpose() / (d_in + 2) as f64;
            let proj = DMatrix::<f64>::identity(d_in, d_in) - &q * q.transpose();
            let want = &b * (&proj * &a).transpose();
            let got = to_f64(&low_rank_delta(&tensor(&a), &tensor(&b), qt.as_ref()).unwrap()).unwrap();
            let scale = want.amax().max(1.0);
            prop_assert!((&got - &want).amax() < 1e-4 * scale);
            if m > 0 {
                prop_assert!((&want * p.transpose()).amax() < 1e-9 * scale * p.amax().max(1.0));
                prop_assert!((&got * p.transpose()).amax() < 1e-4 * scale * p.amax().max(1.0));
            }
            let sv = want.clone().svd(false, false).singular_values;
            let top = sv.amax();
            prop_assert!(sv.iter().filter(|&&s| s > 1e-9 * top.max(1e-300)).count() <= r);
            let energy_want = (&want * &c * want.transpose()).trace();
            let energy_got = prior_energy(&tensor(&a), &tensor(&b), qt.as_ref(), &tensor(&c))
                .unwrap().to_scalar::<f32>().unwrap() as f64;
            prop_assert!((energy_got - energy_want).abs() < 1e-4 * energy_want.abs().max(1.0));
        }
    }
}
