//! An edited model against the base model on the same occupation prompts, in the terms the
//! mitigation goal is stated in: the share of mean |p(he) − p(she)| left, and the share of the
//! definitional controls' gap toward their own gender kept.
//!
//! Why intervals that resample professions: the prompts are professions × templates, and a
//! profession's templates move together (one word's gender is lost on every template, or on
//! none). A prompt-level interval treats 5 templates of one word as 5 independent draws and is
//! too narrow; the unit the data were drawn in is the word. So the ratio of sums is
//! bootstrapped over professions, each carrying all its prompts, base and edited paired.
//!
//! Why the cut at the base model's pronoun mass: |p(he) − p(she)| = (p(he) + p(she)) ·
//! |tanh(L/2)| with L = ln p(he)/p(she), so an edit lowers the gap either by evening out the two
//! pronouns (L → 0) or by making both less likely (the mass falls, the next word is something
//! else). Only the first is the stereotype removed; the second also lowers the goal's metric.
//! Putting the edited model's L at each prompt's base mass separates the two.

use super::occupations::PromptProbs;
use crate::stats::{bootstrap_many, BootstrapSpec, Estimate};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Edited over base on the same prompts, with profession-resampled intervals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgainstBase {
    /// Prompts, paired by profession, template and text.
    pub n_prompts: usize,
    /// Professions: the unit the bootstrap resamples (each `Estimate::n` counts these).
    pub n_professions: usize,
    /// Σ edited |p(he) − p(she)| / Σ base (1 = unchanged; the goal's −80% is 0.2).
    pub abs_gap_ratio: Estimate,
    /// Σ edited (p(he) + p(she)) / Σ base: how much of the pronouns' probability the edit
    /// leaves (None only in results written before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pronoun_mass_ratio: Option<Estimate>,
    /// `abs_gap_ratio` with each prompt's edited |p(he) − p(she)| rescaled to the base model's
    /// p(he) + p(she): Σ base mass · |p(he) − p(she)| / (p(he) + p(she)) over the edited
    /// prompts, / Σ base |gap|. The share of the gap left by evening out the pronouns alone,
    /// without the part that comes from making both less likely (None only in older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abs_gap_ratio_at_base_mass: Option<Estimate>,
    /// Σ edited gap toward the definitional gender / Σ base, over the prompts of professions
    /// with |definitional| ≥ the split's threshold (the controls; 1 = factual gender kept).
    /// None when no prompt has such a profession.
    pub definitional_kept: Option<Estimate>,
    /// Professions behind `definitional_kept`.
    pub n_definitional_professions: usize,
    pub bootstrap: BootstrapSpec,
    /// The base model compared with ([`super::MeasureResult::against`] sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<crate::model::ModelInfo>,
}

/// Per profession: Σ base |gap|, Σ edited |gap|, and, for a control, Σ base and Σ edited gap
/// toward its definitional gender.
struct Sums {
    base_abs: f64,
    edited_abs: f64,
    base_mass: f64,
    edited_mass: f64,
    edited_abs_at_base_mass: f64,
    toward: Option<(f64, f64)>,
}

fn key(p: &PromptProbs) -> (&str, usize, &str) {
    (p.profession.as_str(), p.template_index, p.text.as_str())
}

/// Pair `edited` with `base` prompt by prompt and compute [`AgainstBase`]. Both must hold the
/// same prompts (any order); a prompt without a partner is an error that names it.
/// `definitional_threshold` is the split's ([`crate::data::SplitSpec`]): professions at or
/// above it are the controls whose kept share is reported.
pub fn against_base(
    base: &[PromptProbs],
    edited: &[PromptProbs],
    definitional_threshold: f64,
    boot: &BootstrapSpec,
) -> Result<AgainstBase> {
    if base.is_empty() {
        return Err(Error::param("base", "no prompts to compare with"));
    }
    let mut by_key: BTreeMap<(&str, usize, &str), &PromptProbs> = BTreeMap::new();
    for p in base {
        if by_key.insert(key(p), p).is_some() {
            return Err(Error::param(
                "base",
                format!(
                    "prompt `{}` (template {}) appears twice",
                    p.text, p.template_index
                ),
            ));
        }
    }
    if edited.len() != base.len() {
        return Err(Error::param(
            "base",
            format!(
                "{} prompts against the edited model's {}: measure both with the same flags",
                base.len(),
                edited.len()
            ),
        ));
    }
    let mut sums: BTreeMap<&str, Sums> = BTreeMap::new();
    for e in edited {
        let b = by_key.remove(&key(e)).ok_or_else(|| {
            Error::param(
                "base",
                format!(
                    "no prompt `{}` (profession {}, template {}) to pair with the edited \
                     model's: measure both with the same flags and data",
                    e.text, e.profession, e.template_index
                ),
            )
        })?;
        let s = sums.entry(e.profession.as_str()).or_insert(Sums {
            base_abs: 0.0,
            edited_abs: 0.0,
            base_mass: 0.0,
            edited_mass: 0.0,
            edited_abs_at_base_mass: 0.0,
            toward: None,
        });
        s.base_abs += (b.p_he - b.p_she).abs();
        s.edited_abs += (e.p_he - e.p_she).abs();
        let (base_mass, edited_mass) = (b.p_he + b.p_she, e.p_he + e.p_she);
        s.base_mass += base_mass;
        s.edited_mass += edited_mass;
        // Equal masses take the edited gap as it is, so an unchanged prompt gives exactly 1.
        s.edited_abs_at_base_mass += if edited_mass == base_mass {
            (e.p_he - e.p_she).abs()
        } else if edited_mass > 0.0 {
            base_mass * (e.p_he - e.p_she).abs() / edited_mass
        } else {
            0.0
        };
        if b.definitional.abs() >= definitional_threshold && b.definitional != 0.0 {
            let sign = b.definitional.signum();
            let t = s.toward.get_or_insert((0.0, 0.0));
            t.0 += sign * (b.p_he - b.p_she);
            t.1 += sign * (e.p_he - e.p_she);
        }
    }
    let groups: Vec<&Sums> = sums.values().collect();
    let abs_gap_ratio = ratio_of_sums(&groups, |s| Some((s.base_abs, s.edited_abs)), boot)?;
    let pronoun_mass_ratio = ratio_of_sums(&groups, |s| Some((s.base_mass, s.edited_mass)), boot)?;
    let abs_gap_ratio_at_base_mass = ratio_of_sums(
        &groups,
        |s| Some((s.base_abs, s.edited_abs_at_base_mass)),
        boot,
    )?;
    let controls: Vec<&Sums> = groups
        .iter()
        .copied()
        .filter(|s| s.toward.is_some())
        .collect();
    let definitional_kept = if controls.is_empty() {
        None
    } else {
        Some(ratio_of_sums(&controls, |s| s.toward, boot)?)
    };
    Ok(AgainstBase {
        n_prompts: edited.len(),
        n_professions: groups.len(),
        abs_gap_ratio,
        pronoun_mass_ratio: Some(pronoun_mass_ratio),
        abs_gap_ratio_at_base_mass: Some(abs_gap_ratio_at_base_mass),
        definitional_kept,
        n_definitional_professions: controls.len(),
        bootstrap: boot.clone(),
        base_model: None,
    })
}

/// Σ edited / Σ base over groups, with a percentile bootstrap that resamples groups.
fn ratio_of_sums(
    groups: &[&Sums],
    pair: impl Fn(&Sums) -> Option<(f64, f64)>,
    boot: &BootstrapSpec,
) -> Result<Estimate> {
    let pairs: Vec<(f64, f64)> = groups.iter().filter_map(|s| pair(s)).collect();
    let total: f64 = pairs.iter().map(|p| p.0).sum();
    if total == 0.0 {
        return Err(Error::param(
            "base",
            "the base model's sum is zero, so no share of it can be taken",
        ));
    }
    let mut out = bootstrap_many(pairs.len(), boot, 1, |idx| {
        let (b, e) = idx
            .iter()
            .fold((0.0, 0.0), |(b, e), &i| (b + pairs[i].0, e + pairs[i].1));
        vec![e / b]
    })?;
    Ok(out.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(
        profession: &str,
        template: usize,
        definitional: f64,
        he: f64,
        she: f64,
    ) -> PromptProbs {
        PromptProbs {
            profession: profession.into(),
            name: profession.into(),
            template_index: template,
            text: format!("The {profession} {template}"),
            definitional,
            stereotypical: 0.0,
            p_he: he,
            p_she: she,
            p_they: 0.0,
        }
    }

    fn boot() -> BootstrapSpec {
        BootstrapSpec {
            resamples: 500,
            seed: 3,
        }
    }

    #[test]
    fn hand_computed_ratios_and_an_unchanged_model() {
        // Two controls (actor male, nun female) and one profession without a gender.
        let base = vec![
            prompt("actor", 0, 0.8, 0.5, 0.1),
            prompt("actor", 1, 0.8, 0.4, 0.2),
            prompt("nun", 0, -0.9, 0.1, 0.6),
            prompt("nurse", 0, 0.0, 0.1, 0.3),
        ];
        let mut edited = base.clone();
        edited[0].p_he = 0.3; // actor's toward-gender gap 0.4 -> 0.2
        edited[3].p_she = 0.2; // nurse's |gap| 0.2 -> 0.1
        edited.reverse(); // pairing does not depend on order
        let r = against_base(&base, &edited, 0.5, &boot()).unwrap();
        assert_eq!((r.n_prompts, r.n_professions), (4, 3));
        // |gap|: base 0.4 + 0.2 + 0.5 + 0.2 = 1.3, edited 0.2 + 0.2 + 0.5 + 0.1 = 1.0.
        assert!((r.abs_gap_ratio.value - 1.0 / 1.3).abs() < 1e-12);
        // Toward gender: base 0.4 + 0.2 + 0.5 = 1.1, edited 0.2 + 0.2 + 0.5 = 0.9.
        let kept = r.definitional_kept.unwrap();
        assert!((kept.value - 0.9 / 1.1).abs() < 1e-12);
        assert_eq!((kept.n, r.n_definitional_professions), (2, 2));
        // Any resample's ratio of sums lies between the groups' own ratios (actor 0.2/0.6,
        // nun 1), so the interval does too.
        assert!(kept.ci_low >= 0.2 / 0.6 - 1e-12 && kept.ci_high <= 1.0 + 1e-12);
        assert!(kept.ci_low <= kept.value && kept.value <= kept.ci_high);

        // Mass: base 0.6 + 0.6 + 0.7 + 0.4 = 2.3, edited 0.4 + 0.6 + 0.7 + 0.3 = 2.0.
        assert!((r.pronoun_mass_ratio.as_ref().unwrap().value - 2.0 / 2.3).abs() < 1e-12);
        // At base mass: actor 0 is 0.6 · 0.2/0.4 = 0.3, nurse 0.4 · 0.1/0.3; the rest as edited.
        let at_base = (0.3 + 0.2 + 0.5 + 0.4 / 3.0) / 1.3;
        let r_at = r.abs_gap_ratio_at_base_mass.as_ref().unwrap();
        assert!((r_at.value - at_base).abs() < 1e-12);

        let same = against_base(&base, &base, 0.5, &boot()).unwrap();
        for e in [
            same.abs_gap_ratio,
            same.definitional_kept.unwrap(),
            same.pronoun_mass_ratio.unwrap(),
            same.abs_gap_ratio_at_base_mass.unwrap(),
        ] {
            assert_eq!((e.value, e.ci_low, e.ci_high), (1.0, 1.0, 1.0));
        }
    }

    proptest::proptest! {
        /// Whatever the probabilities: the point is Σ edited / Σ base, every resample's ratio
        /// of sums lies between the professions' own ratios (so the interval does), and the
        /// order of the edited prompts changes nothing.
        #[test]
        fn ratios_lie_between_the_professions_own(
            probs in proptest::collection::vec((0.01f64..0.9, 0.01f64..0.9, 0.01f64..0.9, 0.01f64..0.9), 2..24),
            rotate in 0usize..24,
        ) {
            let base: Vec<PromptProbs> = probs.iter().enumerate()
                .map(|(i, &(h, s, _, _))| prompt(&format!("w{}", i / 2), i % 2, if i % 3 == 0 { 0.0 } else { 0.7 }, h, s))
                .collect();
            let edited: Vec<PromptProbs> = base.iter().zip(&probs)
                .map(|(b, &(_, _, h, s))| PromptProbs { p_he: h, p_she: s, ..b.clone() })
                .collect();
            let r = against_base(&base, &edited, 0.5, &boot()).unwrap();
            let mut rotated = edited.clone();
            rotated.rotate_left(rotate % edited.len());
            proptest::prop_assert_eq!(&r, &against_base(&base, &rotated, 0.5, &boot()).unwrap());
            let sum = |ps: &[PromptProbs]| ps.iter().map(|p| (p.p_he - p.p_she).abs()).sum::<f64>();
            proptest::prop_assert!((r.abs_gap_ratio.value - sum(&edited) / sum(&base)).abs() < 1e-12);
            let mut words: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            for (b, e) in base.iter().zip(&edited) {
                let w = words.entry(b.profession.as_str()).or_default();
                w.0 += (b.p_he - b.p_she).abs();
                w.1 += (e.p_he - e.p_she).abs();
            }
            let lo = words.values().map(|w| w.1 / w.0).fold(f64::INFINITY, f64::min);
            let hi = words.values().map(|w| w.1 / w.0).fold(f64::NEG_INFINITY, f64::max);
            let a = &r.abs_gap_ratio;
            proptest::prop_assert!(lo - 1e-9 <= a.ci_low && a.ci_low <= a.value + 1e-12);
            proptest::prop_assert!(a.value <= a.ci_high + 1e-12 && a.ci_high <= hi + 1e-9);
            proptest::prop_assert_eq!(a.n, words.len());
        }
    }

    proptest::proptest! {
        /// An edit that only scales each prompt's two pronouns by one factor (the ratio kept,
        /// the mass lowered) leaves the gap at base mass unchanged, while the plain ratio and
        /// the mass ratio fall by the same amount.
        #[test]
        fn scaling_both_pronouns_only_moves_the_mass(
            probs in proptest::collection::vec((0.01f64..0.5, 0.01f64..0.5, 0.05f64..1.0), 2..24),
        ) {
            let base: Vec<PromptProbs> = probs.iter().enumerate()
                .map(|(i, &(h, s, _))| prompt(&format!("w{}", i / 3), i % 3, 0.0, h, s))
                .collect();
            let edited: Vec<PromptProbs> = base.iter().zip(&probs)
                .map(|(b, &(_, _, c))| PromptProbs { p_he: c * b.p_he, p_she: c * b.p_she, ..b.clone() })
                .collect();
            let r = against_base(&base, &edited, 0.5, &boot()).unwrap();
            let at = r.abs_gap_ratio_at_base_mass.unwrap();
            proptest::prop_assert!((at.value - 1.0).abs() < 1e-9);
            proptest::prop_assert!((at.ci_low - 1.0).abs() < 1e-9 && (at.ci_high - 1.0).abs() < 1e-9);
            let mass = |ps: &[PromptProbs]| ps.iter().map(|p| p.p_he + p.p_she).sum::<f64>();
            proptest::prop_assert!((r.pronoun_mass_ratio.unwrap().value - mass(&edited) / mass(&base)).abs() < 1e-12);
            proptest::prop_assert!(r.abs_gap_ratio.value <= 1.0 + 1e-12);
        }
    }

    #[test]
    fn unpaired_or_duplicated_prompts_are_named() {
        let base = vec![
            prompt("actor", 0, 0.8, 0.5, 0.1),
            prompt("nurse", 0, 0.0, 0.1, 0.3),
        ];
        let other = vec![
            prompt("actor", 0, 0.8, 0.5, 0.1),
            prompt("nurse", 1, 0.0, 0.1, 0.3),
        ];
        let e = against_base(&base, &other, 0.5, &boot())
            .unwrap_err()
            .to_string();
        assert!(e.contains("The nurse 1") && e.contains("template 1"), "{e}");
        let e = against_base(&base, &base[..1], 0.5, &boot())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 prompts against the edited model's 1"), "{e}");
        let twice = vec![base[0].clone(), base[0].clone()];
        let e = against_base(&twice, &twice, 0.5, &boot())
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
        // No controls: no kept share.
        let r = against_base(&base[1..], &base[1..], 0.5, &boot()).unwrap();
        assert!(r.definitional_kept.is_none() && r.n_definitional_professions == 0);
    }
}
