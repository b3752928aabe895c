//! Reading a fixed prompt set's keys, gaps and gradients at any layer above a cached one.

use super::super::context::EditPrompt;
use super::Component;
use crate::model::{InterventionPlan, Site, Transformer};
use crate::{Error, Result};
use candle_core::{DType, IndexOp, Tensor, Var};
use nalgebra::{DMatrix, DVector};

/// Per prompt at one stage's last token: the probe input k, the gap L = log p(he) − log p(she)
/// and g = ∂L/∂m, m the edited projection's output.
pub struct StageReadout {
    /// [n, key width]
    pub keys: DMatrix<f64>,
    pub gaps: DVector<f64>,
    /// [n, d_model]
    pub grads: DMatrix<f64>,
}

/// Reads keys, gaps and gradients for a fixed prompt set at any layer ≥ `start`, resuming every
/// pass from the residual stream cached at `start` (edits at layers ≥ `start` leave it valid).
/// The gap needs only two unembedding rows: log p(he) − log p(she) = (u_he − u_she)·final norm.
pub struct ProbeReader {
    start: usize,
    batches: Vec<(Tensor, Vec<usize>)>,
    gap_dir: Tensor,
    pronouns: [u32; 2],
    n: usize,
}

impl ProbeReader {
    pub fn new(
        tr: &Transformer,
        prompts: &[EditPrompt],
        start: usize,
        pronouns: [u32; 2],
        batch: usize,
    ) -> Result<Self> {
        let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        Self::from_rows(tr, &rows, start, pronouns, batch)
    }

    /// The same reader over token rows that are not edit prompts (corpus windows: gap tuning's
    /// corpus gap term reads every position of them, [`Self::batch_gaps_all`]).
    pub fn from_rows(
        tr: &Transformer,
        rows: &[Vec<u32>],
        start: usize,
        pronouns: [u32; 2],
        batch: usize,
    ) -> Result<Self> {
        if start >= tr.cfg.num_layers {
            return Err(Error::param(
                "start layer",
                format!("{start} >= {} layers", tr.cfg.num_layers),
            ));
        }
        let mut batches = Vec::new();
        for rows in rows.chunks(batch.max(1)) {
            let plan = InterventionPlan {
                capture: vec![Site::ResidPre(start)],
                stop_after: Some(start),
                ..Default::default()
            };
            let out = tr.forward(rows, &plan)?;
            batches.push((out.captures[&Site::ResidPre(start)].detach(), out.pads));
        }
        let row = |id: u32| tr.lm_head.i(id as usize);
        let gap_dir = (row(pronouns[0])? - row(pronouns[1])?)?.unsqueeze(1)?;
        Ok(ProbeReader {
            start,
            batches,
            gap_dir,
            pronouns,
            n: rows.len(),
        })
    }

    fn check(&self, l: usize) -> Result<()> {
        if l < self.start {
            return Err(Error::param(
                "layer",
                format!("{l} is below the cached layer {}", self.start),
            ));
        }
        Ok(())
    }

    /// Keys, gaps and gradients of `component` at layer `l` on the model `tr`.
    pub fn readout(
        &self,
        tr: &Transformer,
        l: usize,
        component: Component,
    ) -> Result<StageReadout> {
        self.check(l)?;
        let d = tr.cfg.hidden_size;
        let (mut keys, mut grads, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        for (resid, pads) in &self.batches {
            let (b, t, _) = resid.dims3()?;
            let shift = Var::zeros((b, d), resid.dtype(), resid.device())?;
            let plan = InterventionPlan {
                capture: vec![component.key_site(l), Site::FinalNorm],
                last_token_shifts: vec![(component.out_site(l), shift.as_tensor().clone())],
                ..Default::default()
            };
            let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
            let last = out.captures[&Site::FinalNorm].i((.., t - 1, ..))?;
            let gap = crate::model::stable_matmul::matmul(&last, &self.gap_dir)?.squeeze(1)?;
            let g = gap.sum_all()?.backward()?;
            let gd = g.get(shift.as_tensor()).ok_or_else(|| {
                Error::Model(format!("probe: no gradient at {}", component.out_site(l)))
            })?;
            grads.extend(gd.to_dtype(DType::F64)?.to_vec2::<f64>()?);
            keys.extend(last_token_rows(&out.captures[&component.key_site(l)])?);
            gaps.extend(gap.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(StageReadout {
            keys: rows_to_matrix(&keys),
            gaps: DVector::from_vec(gaps),
            grads: rows_to_matrix(&grads),
        })
    }

    /// How many batches the prompts were cached in (the constructor's `batch` rows each).
    pub fn n_batches(&self) -> usize {
        self.batches.len()
    }

    /// The gaps L = log p(he) − log p(she) of batch `i` on `tr`, `[rows]`, differentiable in
    /// `tr`'s weights above the cached layer (gap tuning backpropagates through it).
    pub fn batch_gaps(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let last = self.batch_last_states(tr, i)?;
        Ok(crate::model::stable_matmul::matmul(&last, &self.gap_dir)?.squeeze(1)?)
    }

    /// The final-norm states of batch `i` at each row's last token, [rows, width].
    fn batch_last_states(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let (resid, pads) = self
            .batches
            .get(i)
            .ok_or_else(|| Error::param("batch", format!("{i} >= {}", self.batches.len())))?;
        let t = resid.dim(1)?;
        let plan = InterventionPlan {
            capture: vec![Site::FinalNorm],
            ..Default::default()
        };
        let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
        Ok(out.captures[&Site::FinalNorm].i((.., t - 1, ..))?)
    }

    /// log p(he) and log p(she) at the last token of batch `i` on `tr`, [rows, 2], through the
    /// whole unembedding and its softmax normaliser (a gap needs only two rows; a pronoun's own
    /// probability needs them all), differentiable like [`Self::batch_gaps`].
    pub fn batch_pronoun_log_probs(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let last = self.batch_last_states(tr, i)?;
        let logits = crate::model::stable_matmul::matmul(&last, &tr.lm_head.t()?)?;
        // The max only shifts the normaliser; held constant, it needs no gradient.
        let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?.detach())?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let ids = Tensor::new(&self.pronouns, shifted.device())?;
        Ok(shifted.index_select(&ids, 1)?.broadcast_sub(&lse)?)
    }

    /// The gaps of batch `i` at every position of its rows, [rows, tokens] (left padding
    /// included: meaningful only for rows of equal length, as corpus windows are), differentiable
    /// like [`Self::batch_gaps`]. Log-probabilities share one normaliser per position, so the
    /// gap is still (u_he − u_she)·final norm.
    pub fn batch_gaps_all(&self, tr: &Transformer, i: usize) -> Result<Tensor> {
        let (states, (b, t)) = self.batch_states_all(tr, i)?;
        Ok(crate::model::stable_matmul::matmul(&states, &self.gap_dir)?.reshape((b, t))?)
    }

    /// The final-norm states of batch `i` at every position, [rows · tokens, width], and the
    /// batch's (rows, tokens).
    fn batch_states_all(&self, tr: &Transformer, i: usize) -> Result<(Tensor, (usize, usize))> {
        let (resid, pads) = self
            .batches
            .get(i)
            .ok_or_else(|| Error::param("batch", format!("{i} >= {}", self.batches.len())))?;
        let (b, t, d) = resid.dims3()?;
        let plan = InterventionPlan {
            capture: vec![Site::FinalNorm],
            ..Default::default()
        };
        let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
        Ok((out.captures[&Site::FinalNorm].reshape((b * t, d))?, (b, t)))
    }

    /// The token ids of the `k` largest logits at every position of batch `i` on `tr`,
    /// [rows · tokens, k] (u32, largest first): the full unembedding, a few rows at a time so
    /// that a 262k vocabulary never sits whole in memory for every position.
    pub fn batch_top_ids(&self, tr: &Transformer, i: usize, k: usize) -> Result<Tensor> {
        let states = self.batch_states_all(tr, i)?.0.detach();
        let (p, _) = states.dims2()?;
        let vocab = tr.lm_head.dim(0)?;
        if k == 0 || k > vocab {
            return Err(Error::param(
                "top-k",
                format!("{k} is not between 1 and the vocabulary's {vocab}"),
            ));
        }
        let mut ids = Vec::with_capacity(p * k);
        let unembed = tr.lm_head.t()?;
        for start in (0..p).step_by(32) {
            let n = 32.min(p - start);
            let logits =
                crate::model::stable_matmul::matmul(&states.narrow(0, start, n)?, &unembed)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
            for row in logits {
                let mut order: Vec<u32> = (0..vocab as u32).collect();
                let by_logit = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
                order.select_nth_unstable_by(k - 1, by_logit);
                order.truncate(k);
                order.sort_by(by_logit);
                ids.extend(order);
            }
        }
        Ok(Tensor::from_vec(ids, (p, k), states.device())?)
    }

    /// The logits of each position's own token ids at every position of batch `i` on `tr`,
    /// [rows · tokens, k], for `ids` [rows · tokens, k] (u32): k rows of the unembedding per
    /// position instead of the vocabulary, differentiable like [`Self::batch_gaps`] (gap
    /// tuning's corpus top-k term).
    pub fn batch_logits_at(&self, tr: &Transformer, i: usize, ids: &Tensor) -> Result<Tensor> {
        let (states, _) = self.batch_states_all(tr, i)?;
        let (p, d) = states.dims2()?;
        let (pi, k) = ids.dims2()?;
        if pi != p {
            return Err(Error::param(
                "top-k ids",
                format!("{pi} rows for a batch of {p} positions"),
            ));
        }
        let rows = tr
            .lm_head
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((p, k, d))?;
        Ok(rows.broadcast_mul(&states.unsqueeze(1)?)?.sum(2)?)
    }

    /// Only the probe inputs of `component` at layer `l` (a forward that stops after `l`).
    pub fn keys(&self, tr: &Transformer, l: usize, component: Component) -> Result<DMatrix<f64>> {
        self.check(l)?;
        let mut keys = Vec::with_capacity(self.n);
        for (resid, pads) in &self.batches {
            let plan = InterventionPlan {
                capture: vec![component.key_site(l)],
                stop_after: Some(l),
                ..Default::default()
            };
            let out = tr.forward_from_layer(self.start, resid, pads, &plan)?;
            keys.extend(last_token_rows(&out.captures[&component.key_site(l)])?);
        }
        Ok(rows_to_matrix(&keys))
    }
}

/// The last token of each row of a [rows, tokens, width] capture (rows are left-padded, so
/// every prompt ends at the last position), in f64.
fn last_token_rows(x: &Tensor) -> Result<Vec<Vec<f64>>> {
    let t = x.dim(1)?;
    Ok(x.i((.., t - 1, ..))?
        .detach()
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?)
}

fn rows_to_matrix(rows: &[Vec<f64>]) -> DMatrix<f64> {
    let c = rows.first().map_or(0, |r| r.len());
    DMatrix::from_fn(rows.len(), c, |i, j| rows[i][j])
}

pub(in crate::edit) fn to_f64(t: &Tensor) -> Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(DMatrix::from_row_slice(r, c, &v))
}

pub(in crate::edit) fn to_tensor(m: &DMatrix<f64>, like: &Tensor) -> Result<Tensor> {
    let v: Vec<f64> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    Ok(Tensor::from_vec(v, (m.nrows(), m.ncols()), like.device())?.to_dtype(like.dtype())?)
}

/// Mean key per group: [groups, d_ff].
pub(in crate::edit) fn group_means(
    keys: &DMatrix<f64>,
    prompts: &[EditPrompt],
    groups: usize,
) -> DMatrix<f64> {
    let mut out = DMatrix::<f64>::zeros(groups, keys.ncols());
    let mut count = vec![0usize; groups];
    for (r, p) in prompts.iter().enumerate() {
        let mut row = out.row_mut(p.group);
        row += keys.row(r);
        count[p.group] += 1;
    }
    for (g, &c) in count.iter().enumerate() {
        if c > 0 {
            out.row_mut(g).scale_mut(1.0 / c as f64);
        }
    }
    out
}
