//! Statistics checked against values computed independently (Python `statistics`, exact
//! fractions, numerical integration of the t density), invariants (proptest), and the reference
//! headline regression of the HF-derived occupation probabilities.

use biaslens::stats::*;
use proptest::prelude::*;
use std::path::Path;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn student_t_matches_independent_values() {
    // Two-sided p from midpoint integration of the t density in Python (400k points).
    for (t, df, p) in [
        (2.0, 10.0, 0.07338803477075426),
        (1.5, 5.0, 0.19390368024252935),
        (-0.7, 3.0, 0.5343269983049294),
        (3.2, 30.0, 0.0032386017119518705),
        (0.3, 2.5, 0.787342371495468),
    ] {
        let got = student_t_two_sided_p(t, df);
        assert!(close(got, p, 1e-8), "t={t} df={df}: {got} vs {p}");
    }
    assert!(close(student_t_two_sided_p(2.0, 10.0), 0.07339, 5e-6));
    // df = 1 is Cauchy: P(|T| >= 1) = 1/2; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t²)).
    assert!(close(student_t_two_sided_p(1.0, 1.0), 0.5, 1e-12));
    for t in [-3.0f64, -0.5, 0.0, 0.25, 1.7, 8.0] {
        let exact = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
        assert!(close(student_t_cdf(t, 2.0), exact, 1e-12), "t={t}");
    }
}

#[test]
fn incomplete_beta_closed_forms() {
    for x in [0.01, 0.2, 0.5, 0.77, 0.99] {
        assert!(close(reg_inc_beta(3.5, 1.0, x), x.powf(3.5), 1e-12));
        assert!(close(
            reg_inc_beta(1.0, 2.5, x),
            1.0 - (1.0 - x).powf(2.5),
            1e-12
        ));
    }
    assert!(close(reg_inc_beta(7.3, 7.3, 0.5), 0.5, 1e-12));
    assert!(close(ln_gamma(10.0), 362880f64.ln(), 1e-11));
    assert!(close(
        ln_gamma(0.5),
        std::f64::consts::PI.sqrt().ln(),
        1e-12
    ));
}

#[test]
fn binomial_and_mcnemar() {
    // 2 · P(X <= 1), X ~ Bin(10, 1/2) = 2 · 11 / 1024.
    assert!(close(2.0 * binomial_cdf(1, 10, 0.5), 0.021484375, 1e-13));
    let base: Vec<bool> = (0..40).map(|i| !(20..38).contains(&i)).collect(); // 22 right
    let mut edited = base.clone();
    // 1 item lost (right -> wrong), 9 gained (wrong -> right).
    edited[0] = false;
    for e in edited.iter_mut().take(29).skip(20) {
        *e = true;
    }
    let m = mcnemar(&base, &edited).unwrap();
    assert_eq!((m.base_only, m.edited_only, m.n), (1, 9, 40));
    assert!(close(m.p_exact, 0.021484375, 1e-13));
    // 7 vs 18 discordant: 2 · sum_{k<=7} C(25,k) / 2^25.
    assert!(close(
        2.0 * binomial_cdf(7, 25, 0.5),
        0.043285250663757324,
        1e-12
    ));
    assert_eq!(mcnemar(&base, &base).unwrap().p_exact, 1.0);
    assert!(mcnemar(&base, &edited[..3]).is_err());
}

#[test]
fn mean_sd_sem_match_python_statistics() {
    let d = [0.5, 1.2, -0.3, 0.8, 1.1, 0.2, 0.9, -0.1];
    assert!(close(mean(&d).unwrap(), 0.5375, 1e-15));
    assert!(close(sample_sd(&d).unwrap(), 0.5578978401105349, 1e-14));
    assert!(close(sem(&d).unwrap(), 0.19724667297574372, 1e-14));
    let e = mean_ci(&d).unwrap();
    assert!(close(
        e.ci_high - e.value,
        1.96 * 0.19724667297574372,
        1e-14
    ));
    assert_eq!(e.n, 8);
    assert!(mean(&[]).is_err());
    assert!(sample_sd(&[1.0]).is_err());
    assert!(mean(&[1.0, f64::NAN]).is_err());
}

#[test]
fn paired_t_matches_reference() {
    let d = [0.5, 1.2, -0.3, 0.8, 1.1, 0.2, 0.9, -0.1];
    let base: Vec<f64> = (1..=8).map(f64::from).collect();
    let edited: Vec<f64> = base.iter().zip(d).map(|(b, x)| b + x).collect();
    let t = paired_t_test(&base, &edited).unwrap();
    assert!(close(t.t, 2.7250142772552555, 1e-10));
    assert!(close(t.p_two_sided, 0.029550727911838246, 1e-8));
    assert_eq!(t.df, 7);
    let same = paired_t_test(&base, &base).unwrap();
    assert_eq!((same.t, same.p_two_sided), (0.0, 1.0));
    let shifted: Vec<f64> = base.iter().map(|b| b + 1.0).collect();
    assert_eq!(paired_t_test(&base, &shifted).unwrap().p_two_sided, 0.0);
    let boot = paired_bootstrap_mean_diff(&base, &edited, &BootstrapSpec::default()).unwrap();
    assert!(close(boot.value, 0.5375, 1e-12));
    assert!(boot.ci_low > 0.0 && boot.ci_high < 1.2 && boot.ci_low < boot.ci_high);
}

#[test]
fn ols_matches_exact_fractions() {
    let x1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
    let x2 = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 9.0];
    let y = [3.0, 4.0, 8.0, 7.0, 12.0, 10.0, 15.0];
    let fit = ols(&[&x1, &x2], &y).unwrap();
    assert!(close(fit.coefficients[0], 0.6935574229691877, 1e-12));
    assert!(close(fit.coefficients[1], 1.0509803921568628, 1e-12));
    assert!(close(fit.intercept, 1.1501400560224089, 1e-12));
    assert!(close(fit.r2, 0.9718954248366013, 1e-12));
    let constant = [1.0; 7];
    assert!(
        ols(&[&x1, &constant], &y).is_err(),
        "collinear with intercept"
    );
    assert!(ols(&[&x1[..3]], &y).is_err());
}

#[test]
fn correlations_match_python() {
    let x = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 5.0];
    let y = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 6.0, 7.0];
    assert_eq!(ranks(&x), vec![1.0, 2.5, 2.5, 4.0, 6.0, 6.0, 6.0, 8.0]);
    let s = spearman(&x, &y, &BootstrapSpec::default()).unwrap();
    assert!(close(s.value, 0.920033584470318, 1e-12));
    assert!(s.ci_low <= s.ci_high && s.ci_high <= 1.0);
    let px = [1.2, 2.3, 3.1, 4.8, 5.0, 6.7, 7.1];
    let py = [2.0, 2.9, 3.5, 5.9, 4.8, 7.7, 8.8];
    let p = pearson(&px, &py).unwrap();
    assert!(close(p.value, 0.9767340142544161, 1e-12));
    assert!(close(p.ci_low, 0.84577028473891, 1e-12));
    assert!(close(p.ci_high, 0.9966897056207279, 1e-12));
    assert!(pearson(&px, &[1.0; 7]).is_err());
}

#[test]
fn bootstrap_is_seeded_and_deterministic() {
    let xs: Vec<f64> = (0..50).map(|i| ((i * 37) % 11) as f64).collect();
    let stat = |idx: &[usize]| idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64;
    let a = bootstrap(xs.len(), 500, 3, stat).unwrap();
    assert_eq!(a, bootstrap(xs.len(), 500, 3, stat).unwrap());
    assert_ne!(a.ci_low, bootstrap(xs.len(), 500, 4, stat).unwrap().ci_low);
    // The percentile interval should be close to the normal one for a mean of 50 items.
    let normal = mean_ci(&xs).unwrap();
    assert!(close(a.ci_low, normal.ci_low, 0.4) && close(a.ci_high, normal.ci_high, 0.4));
    assert!(bootstrap(0, 500, 3, stat).is_err());
}

/// (e, stereotypical, definitional) from a reference occupation_probs.jsonl.
fn reference_rows(model: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("fixtures/reference/{model}/occupation_probs.jsonl"));
    let text = std::fs::read_to_string(path).unwrap();
    let (mut e, mut s, mut d) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        e.push(r["p_he"].as_f64().unwrap() - r["p_she"].as_f64().unwrap());
        s.push(r["stereotypical"].as_f64().unwrap());
        d.push(r["definitional"].as_f64().unwrap());
    }
    (e, s, d)
}

#[test]
fn reproduces_reference_headlines() {
    // model, mean |e|, a_s, a_f, b, R² (reference README; R² given to 3 decimals)
    for (model, abs_e, a_s, a_f, b, r2) in [
        ("smollm2-135m", 0.0971, 0.0898, 0.2354, -0.0069, 0.339),
        ("gemma-3-270m", 0.2193, 0.1447, 0.3211, 0.1301, 0.403),
    ] {
        let (e, s, d) = reference_rows(model);
        assert_eq!(e.len(), 5440);
        let abs: Vec<f64> = e.iter().map(|x| x.abs()).collect();
        assert!(close(mean(&abs).unwrap(), abs_e, 5e-5), "{model} mean |e|");
        let fit = dama_regression(
            &e,
            &s,
            &d,
            &BootstrapSpec {
                resamples: 200,
                seed: 1,
            },
        )
        .unwrap();
        assert!(
            close(fit.a_s.value, a_s, 5e-5),
            "{model} a_s {}",
            fit.a_s.value
        );
        assert!(
            close(fit.a_f.value, a_f, 5e-5),
            "{model} a_f {}",
            fit.a_f.value
        );
        assert!(close(fit.b.value, b, 5e-5), "{model} b {}", fit.b.value);
        assert!(close(fit.r2.value, r2, 5e-4), "{model} r2 {}", fit.r2.value);
        for est in [&fit.a_s, &fit.a_f, &fit.b, &fit.r2] {
            assert!(
                est.ci_low < est.value && est.value < est.ci_high,
                "{model} {est:?}"
            );
            assert_eq!(est.n, 5440);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn ols_recovers_noise_free_coefficients(
        b1 in -5.0f64..5.0, b2 in -5.0f64..5.0, c in -5.0f64..5.0,
        x1 in prop::collection::vec(-10.0f64..10.0, 12),
        x2 in prop::collection::vec(-10.0f64..10.0, 12),
    ) {
        let y: Vec<f64> = x1.iter().zip(&x2).map(|(a, b)| b1 * a + b2 * b + c).collect();
        if let Ok(fit) = ols(&[&x1, &x2], &y) {
            let tol = 1e-6 * (1.0 + b1.abs() + b2.abs() + c.abs());
            prop_assert!(close(fit.coefficients[0], b1, tol));
            prop_assert!(close(fit.coefficients[1], b2, tol));
            prop_assert!(close(fit.intercept, c, tol));
        }
    }

    #[test]
    fn bootstrap_ci_contains_mean(xs in prop::collection::vec(-100.0f64..100.0, 5..60), seed in 0u64..1000) {
        let m = mean(&xs).unwrap();
        let est = bootstrap(xs.len(), 300, seed, |idx| idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64).unwrap();
        prop_assert!(close(est.value, m, 1e-9));
        prop_assert!(est.ci_low <= m + 1e-9 && m - 1e-9 <= est.ci_high, "{est:?}");
    }

    #[test]
    fn pearson_invariant_to_affine_maps(
        pairs in prop::collection::vec((-10.0f64..10.0, -10.0f64..10.0), 6..40),
        scale in 0.1f64..10.0, shift in -50.0f64..50.0,
    ) {
        let (x, y): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
        if let Ok(r) = pearson(&x, &y) {
            let mapped: Vec<f64> = x.iter().map(|v| scale * v + shift).collect();
            let flipped: Vec<f64> = x.iter().map(|v| -scale * v + shift).collect();
            prop_assert!(close(pearson(&mapped, &y).unwrap().value, r.value, 1e-9));
            prop_assert!(close(pearson(&flipped, &y).unwrap().value, -r.value, 1e-9));
        }
    }

    #[test]
    fn t_cdf_is_monotone_and_symmetric(t in -20.0f64..20.0, df in 0.5f64..200.0) {
        let f = student_t_cdf(t, df);
        prop_assert!((0.0..=1.0).contains(&f));
        prop_assert!(close(f + student_t_cdf(-t, df), 1.0, 1e-12));
        prop_assert!(student_t_cdf(t + 0.1, df) >= f - 1e-15);
    }
}
