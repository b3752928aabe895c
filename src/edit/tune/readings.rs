//! What gap tuning reads off the base model once (the gaps and top-k logits its loss compares
//! with) and off the edited model after the fit (the report's shifts).

use super::lowrank::{centred, keeps_gap, protect_weights, threshold_targets};
use super::TuneParams;
use crate::edit::probe::ProbeReader;
use crate::model::Transformer;
use crate::Result;
use candle_core::{DType, Tensor};

/// Mean of `f(batch gaps, batch index)` over every batch of `reader`, without gradients.
pub(super) fn mean_over(
    reader: &ProbeReader,
    tr: &Transformer,
    mut f: impl FnMut(&[f64], usize) -> f64,
    n: usize,
) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..reader.n_batches() {
        let g = reader
            .batch_gaps(tr, i)?
            .detach()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        total += f(&g, i);
    }
    Ok(total / n.max(1) as f64)
}

/// What the loss compares the edited model with, read once from the base model per minibatch.
pub(super) struct Baseline {
    /// Gap L₀ of every fit batch.
    pub(super) fit: Vec<Tensor>,
    /// The fit batches' targets with `keep_above` (None: zero for every prompt), and how many
    /// fit prompts keep their gap.
    pub(super) fit_targets: Option<Vec<Tensor>>,
    pub(super) n_fit_kept: usize,
    /// With ζ (`hold_preferred`): per fit batch, which pronoun each prompt prefers on the base
    /// model ([rows, 1], 0 he, 1 she) and its base log-probability ([rows]).
    pub(super) fit_preferred: Vec<(Tensor, Tensor)>,
    /// With η (`hold_mass`): per fit batch, each prompt's base log(p(he) + p(she)) ([rows]).
    pub(super) fit_mass: Vec<Tensor>,
    /// Gap L₀ of every protected batch, and α per protected prompt with `protect_weight_he`.
    pub(super) protect: Vec<Tensor>,
    pub(super) protect_alpha: Option<Vec<Tensor>>,
    /// Gap at every position of every corpus batch, and the positions' count.
    pub(super) corpus: Vec<Tensor>,
    pub(super) corpus_positions: usize,
    /// With δ: each corpus position's k most likely tokens and their centred logits.
    pub(super) topk: Vec<(Tensor, Tensor)>,
}

/// The minibatch readers: fit prompts, protected prompts, corpus windows (shuffled where a
/// minibatch should mix professions and templates).
pub(super) struct Readers {
    pub(super) fit: ProbeReader,
    pub(super) protect: ProbeReader,
    pub(super) corpus: ProbeReader,
}

pub(super) fn baseline(
    base: &Transformer,
    readers: &Readers,
    params: &TuneParams,
) -> Result<Baseline> {
    let Readers {
        fit: fit_reader,
        protect: protect_reader,
        corpus: corpus_reader,
    } = readers;
    let corpus: Vec<Tensor> = (0..corpus_reader.n_batches())
        .map(|i| Ok(corpus_reader.batch_gaps_all(base, i)?.detach()))
        .collect::<Result<_>>()?;
    let corpus_positions: usize = corpus.iter().map(|t| t.elem_count()).sum();
    // δ: each corpus position's k most likely tokens on the base model and their centred
    // logits, computed once.
    let topk: Vec<(Tensor, Tensor)> = match params.corpus_topk {
        None => Vec::new(),
        Some(_) => (0..corpus_reader.n_batches())
            .map(|i| {
                let ids = corpus_reader.batch_top_ids(base, i, params.corpus_topk_k)?;
                let z = centred(&corpus_reader.batch_logits_at(base, i, &ids)?)?.detach();
                Ok((ids, z))
            })
            .collect::<Result<_>>()?,
    };
    let protect: Vec<Tensor> = (0..protect_reader.n_batches())
        .map(|i| Ok(protect_reader.batch_gaps(base, i)?.detach()))
        .collect::<Result<_>>()?;
    // α per protected prompt (α_he where L₀ > 0), or one α for all.
    let protect_alpha: Option<Vec<Tensor>> = params
        .protect_weight_he
        .map(|he| {
            protect
                .iter()
                .map(|g| protect_weights(g, he, params.protect_weight))
                .collect()
        })
        .transpose()?;
    let fit: Vec<Tensor> = (0..fit_reader.n_batches())
        .map(|i| Ok(fit_reader.batch_gaps(base, i)?.detach()))
        .collect::<Result<_>>()?;
    let fit_targets: Option<Vec<Tensor>> = params
        .keep_above
        .map(|tau| fit.iter().map(|g| threshold_targets(g, tau)).collect())
        .transpose()?;
    // Counted by the rule `threshold_targets` applies.
    let n_fit_kept = match params.keep_above {
        None => 0,
        Some(tau) => fit
            .iter()
            .map(|g| {
                Ok(keeps_gap(g, tau)?
                    .to_dtype(DType::F64)?
                    .sum_all()?
                    .to_scalar::<f64>()?)
            })
            .sum::<Result<f64>>()? as usize,
    };
    let fit_preferred: Vec<(Tensor, Tensor)> = match params.hold_preferred {
        None => Vec::new(),
        Some(_) => (0..fit_reader.n_batches())
            .map(|i| {
                let lp = fit_reader.batch_pronoun_log_probs(base, i)?.detach();
                preferred(&lp)
            })
            .collect::<Result<_>>()?,
    };
    let fit_mass: Vec<Tensor> = match params.hold_mass {
        None => Vec::new(),
        Some(_) => (0..fit_reader.n_batches())
            .map(|i| log_mass(&fit_reader.batch_pronoun_log_probs(base, i)?.detach()))
            .collect::<Result<_>>()?,
    };
    Ok(Baseline {
        fit,
        fit_preferred,
        fit_mass,
        fit_targets,
        n_fit_kept,
        protect,
        protect_alpha,
        corpus,
        corpus_positions,
        topk,
    })
}

/// Of log-probabilities [rows, 2] (he, she): each row's larger column as [rows, 1] u32 indices
/// and its value [rows] (he on a tie).
fn preferred(lp: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = lp.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let idx: Vec<u32> = rows.iter().map(|r| u32::from(r[1] > r[0])).collect();
    let idx = Tensor::from_vec(idx, (rows.len(), 1), lp.device())?;
    let value = lp.gather(&idx, 1)?.squeeze(1)?;
    Ok((idx, value))
}

/// Σ |t| over every element, in f64.
fn abs_sum(t: Tensor) -> Result<f64> {
    Ok(t.abs()?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Of log-probabilities [rows, 2] (he, she): log(p(he) + p(she)) per row, [rows].
pub(super) fn log_mass(lp: &Tensor) -> Result<Tensor> {
    Ok(lp.exp()?.sum(1)?.log()?)
}

/// After the fit, on the edited model `tr`: mean |L| over the fit prompts, mean |L − L₀| over
/// the protected prompts and over every corpus position, and with δ the mean |Δ| of the centred
/// top-k logits.
pub(super) struct Shifts {
    pub(super) fit_after: f64,
    pub(super) protected: f64,
    pub(super) corpus: f64,
    pub(super) corpus_topk: Option<f64>,
    /// With ζ: mean |log p − log p₀| of each fit prompt's preferred pronoun.
    pub(super) fit_preferred: Option<f64>,
    /// With η: mean |Δ log(p(he) + p(she))| over the fit prompts.
    pub(super) fit_mass: Option<f64>,
}

pub(super) fn shifts(
    tr: &Transformer,
    readers: &Readers,
    base: &Baseline,
    n_fit: usize,
    n_protect: usize,
) -> Result<Shifts> {
    let fit_after = mean_over(
        &readers.fit,
        tr,
        |g, _| g.iter().map(|x| x.abs()).sum(),
        n_fit,
    )?;
    let base_vecs: Vec<Vec<f64>> = base
        .protect
        .iter()
        .map(|t| Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect::<Result<_>>()?;
    let protected = mean_over(
        &readers.protect,
        tr,
        |g, i| {
            g.iter()
                .zip(&base_vecs[i])
                .map(|(x, y)| (x - y).abs())
                .sum()
        },
        n_protect,
    )?;
    let mut corpus = 0.0;
    for (k, base_gaps) in base.corpus.iter().enumerate() {
        corpus += abs_sum((readers.corpus.batch_gaps_all(tr, k)?.detach() - base_gaps)?)?;
    }
    let corpus = corpus / base.corpus_positions.max(1) as f64;
    let corpus_topk = if base.topk.is_empty() {
        None
    } else {
        let mut sum = 0.0;
        let mut count = 0;
        for (k, (ids, z0)) in base.topk.iter().enumerate() {
            let z = centred(&readers.corpus.batch_logits_at(tr, k, ids)?)?.detach();
            count += z.elem_count();
            sum += abs_sum((z - z0)?)?;
        }
        Some(sum / count.max(1) as f64)
    };
    let fit_preferred = if base.fit_preferred.is_empty() {
        None
    } else {
        let mut sum = 0.0;
        for (i, (idx, lp0)) in base.fit_preferred.iter().enumerate() {
            let lp = readers.fit.batch_pronoun_log_probs(tr, i)?.detach();
            sum += abs_sum((lp.gather(idx, 1)?.squeeze(1)? - lp0)?)?;
        }
        Some(sum / n_fit.max(1) as f64)
    };
    let fit_mass = if base.fit_mass.is_empty() {
        None
    } else {
        let mut sum = 0.0;
        for (i, m0) in base.fit_mass.iter().enumerate() {
            let m = log_mass(&readers.fit.batch_pronoun_log_probs(tr, i)?.detach())?;
            sum += abs_sum((m - m0)?)?;
        }
        Some(sum / n_fit.max(1) as f64)
    };
    Ok(Shifts {
        fit_mass,
        fit_preferred,
        fit_after,
        protected,
        corpus,
        corpus_topk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_mass_is_the_log_of_the_two_probabilities_sum() {
        let lp = Tensor::new(&[[0.3f32.ln(), 0.1f32.ln()]], &Device::Cpu).unwrap();
        let m = log_mass(&lp).unwrap().to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.4f32.ln()).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn preferred_is_each_rows_larger_pronoun_and_he_on_a_tie() {
        let lp = Tensor::new(&[[-1.0f32, -2.0], [-3.0, -0.5], [-1.0, -1.0]], &Device::Cpu).unwrap();
        let (idx, value) = preferred(&lp).unwrap();
        assert_eq!(
            idx.to_vec2::<u32>().unwrap(),
            vec![vec![0], vec![1], vec![0]]
        );
        assert_eq!(value.to_vec1::<f32>().unwrap(), vec![-1.0, -0.5, -1.0]);
    }
}
