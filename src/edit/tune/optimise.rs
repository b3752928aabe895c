//! Gap tuning's optimiser: Adam on every stage's low-rank factors.

use super::lowrank::{centred, Stage};
use super::readings::{log_mass, Baseline, Readers};
use super::{set_weight, TuneParams};
use crate::model::Transformer;
use crate::Result;
use candle_core::{DType, Device, Tensor, Var};

/// Every 10 steps and the last: the losses the report keeps.
#[derive(Default)]
pub(super) struct Histories {
    pub(super) main: Vec<(usize, f64, f64, f64)>,
    pub(super) corpus_gap: Vec<(usize, f64)>,
    pub(super) corpus_topk: Vec<(usize, f64)>,
    pub(super) fit_preferred: Vec<(usize, f64)>,
    pub(super) fit_mass: Vec<(usize, f64)>,
}

/// Adam on every stage's (A, B) for `params.steps` steps, each one minibatch of fit, protected
/// and (with γ or δ) corpus rows; `tr` holds the edited weights of the last step's factors.
pub(super) fn optimise(
    tr: &mut Transformer,
    stages: &[Stage],
    readers: &Readers,
    base: &Baseline,
    params: &TuneParams,
    log: &mut impl FnMut(&str),
) -> Result<Histories> {
    let device = Device::Cpu;
    let alpha = params.protect_weight;
    let vars: Vec<Var> = stages
        .iter()
        .flat_map(|s| [s.a.clone(), s.b.clone()])
        .collect();
    let mut adam: Vec<(Tensor, Tensor)> = vars
        .iter()
        .map(|v| Ok((v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?)))
        .collect::<Result<_>>()?;
    let mut hist = Histories::default();
    let (nf, np) = (readers.fit.n_batches(), readers.protect.n_batches());
    for step in 0..params.steps {
        for s in stages {
            set_weight(tr, s.layer, s.comp, (&s.w0 + s.delta()?)?);
        }
        let i = step % nf;
        let fit_gaps = readers.fit.batch_gaps(tr, i)?;
        let fit_loss = match &base.fit_targets {
            None => fit_gaps.sqr()?.mean_all()?,
            Some(t) => (fit_gaps - &t[i])?.sqr()?.mean_all()?,
        };
        let j = step % np;
        let prot_sq = (readers.protect.batch_gaps(tr, j)? - &base.protect[j])?.sqr()?;
        let prot_loss = prot_sq.mean_all()?;
        // The weighted term that is optimised; `prot_loss` (unweighted) is what history logs.
        let prot_term = match &base.protect_alpha {
            None => (&prot_loss * alpha)?,
            Some(w) => (prot_sq * &w[j])?.mean_all()?,
        };
        let mut prior = Tensor::zeros((), fit_loss.dtype(), &device)?;
        for s in stages {
            prior = (prior + s.relative_energy()?)?;
        }
        let mut total = ((&fit_loss + &prot_term)? + (&prior * params.prior)?)?;
        let corpus_loss = match params.corpus_gap {
            Some(gamma) => {
                let k = step % base.corpus.len();
                let sq = (readers.corpus.batch_gaps_all(tr, k)? - &base.corpus[k])?.sqr()?;
                let loss = sq.mean_all()?;
                total = (total + (&loss * gamma)?)?;
                Some(loss)
            }
            None => None,
        };
        // ζ and η read the same pronoun log-probabilities: one full unembedding for both.
        let fit_lp = if params.hold_preferred.is_some() || params.hold_mass.is_some() {
            Some(readers.fit.batch_pronoun_log_probs(tr, i)?)
        } else {
            None
        };
        let preferred_loss = match (params.hold_preferred, &fit_lp) {
            (Some(zeta), Some(lp)) => {
                let (idx, lp0) = &base.fit_preferred[i];
                let loss = (lp.gather(idx, 1)?.squeeze(1)? - lp0)?.sqr()?.mean_all()?;
                total = (total + (&loss * zeta)?)?;
                Some(loss)
            }
            _ => None,
        };
        let mass_loss = match (params.hold_mass, &fit_lp) {
            (Some(eta), Some(lp)) => {
                let loss = (log_mass(lp)? - &base.fit_mass[i])?.sqr()?.mean_all()?;
                total = (total + (&loss * eta)?)?;
                Some(loss)
            }
            _ => None,
        };
        let topk_loss = match params.corpus_topk {
            Some(weight) => {
                let k = step % base.topk.len();
                let (ids, z0) = &base.topk[k];
                let z = centred(&readers.corpus.batch_logits_at(tr, k, ids)?)?;
                let loss = (z - z0)?.sqr()?.mean_all()?;
                total = (total + (&loss * weight)?)?;
                Some(loss)
            }
            None => None,
        };
        if step % 10 == 0 || step + 1 == params.steps {
            let v = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
            let row = (step, v(&fit_loss)?, v(&prot_loss)?, v(&prior)?);
            // An optional term's minibatch loss: into its history and the log line.
            let note = |loss: &Option<Tensor>,
                        history: &mut Vec<(usize, f64)>,
                        label: &str|
             -> Result<String> {
                let Some(c) = loss else {
                    return Ok(String::new());
                };
                let c = v(c)?;
                history.push((step, c));
                Ok(format!(", {label} {c:.4}"))
            };
            let corpus_note = note(&corpus_loss, &mut hist.corpus_gap, "corpus (L−L₀)²")?;
            let topk_note = note(&topk_loss, &mut hist.corpus_topk, "corpus top-k Δz²")?;
            let preferred_note = note(
                &preferred_loss,
                &mut hist.fit_preferred,
                "preferred pronoun Δlog p²",
            )?;
            let mass_note = note(&mass_loss, &mut hist.fit_mass, "pronoun mass Δlog²")?;
            log(&format!(
                "  step {step}: fit L² {:.4}, protected (L−L₀)² {:.4}, prior {:.5}{corpus_note}{topk_note}{preferred_note}{mass_note}",
                row.1, row.2, row.3
            ));
            hist.main.push(row);
        }
        let grads = total.backward()?;
        let t = (step + 1) as i32;
        let lr = params.lr_schedule.at(params.lr, step, params.steps);
        for (v, (m, s)) in vars.iter().zip(adam.iter_mut()) {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            *m = ((&*m * 0.9)? + (g * 0.1)?)?;
            *s = ((&*s * 0.999)? + (g.sqr()? * 0.001)?)?;
            let upd = ((&*m / (1.0 - 0.9f64.powi(t)))?
                / ((&*s / (1.0 - 0.999f64.powi(t)))?.sqrt()? + 1e-8)?)?;
            v.set(&(v.as_tensor() - (upd * lr)?)?)?;
        }
    }
    Ok(hist)
}
