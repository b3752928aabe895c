//! Unembedding: log-probabilities only where a plan's `LogitsRequest` asks for them, the
//! f64-normalised log-softmax, and the finite check on what a pass returns.

use super::sites::LogitsRequest;
use super::stable_matmul::matmul as mm;
use super::transformer::Transformer;
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};

impl Transformer {
    /// Unembed only where the request needs it.
    pub(super) fn logprobs(
        &self,
        x: &Tensor,
        req: &LogitsRequest,
        pads: &[usize],
        offset: usize,
    ) -> Result<Option<Tensor>> {
        let (b, t, d) = x.dims3()?;
        let last = || -> Result<Tensor> { Ok(x.narrow(1, t - 1, 1)?.reshape((b, d))?) };
        let at = |list: &[(usize, usize)]| -> Result<Tensor> {
            let mut idx = Vec::with_capacity(list.len());
            for &(r, tok) in list {
                if r >= b || tok < offset || pads[r] + tok - offset >= t {
                    return Err(Error::param(
                        "logits position",
                        format!("(row {r}, token {tok}) is outside the batch"),
                    ));
                }
                idx.push((r * t + pads[r] + tok - offset) as u32);
            }
            let n = idx.len();
            Ok(x.reshape((b * t, d))?
                .index_select(&Tensor::from_vec(idx, n, &self.device)?, 0)?)
        };
        let (rows, ids) = match req {
            LogitsRequest::None => return Ok(None),
            LogitsRequest::LastToken => (last()?, None),
            LogitsRequest::LastTokenIds(ids) => (last()?, Some(ids)),
            LogitsRequest::Positions(list) => (at(list)?, None),
            LogitsRequest::PositionIds(list, ids) => (at(list)?, Some(ids)),
        };
        if let Some(&id) = ids
            .into_iter()
            .flatten()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(Error::param(
                "token id",
                format!("{id} is outside the vocabulary"),
            ));
        }
        let logits = mm(&rows, &self.lm_head.t()?)?;
        let Some(ids) = ids else {
            return Ok(Some(log_softmax_accurate(&logits)?));
        };
        // The fast kernels read the ids off a one-pass normaliser instead of materialising the
        // vocabulary-sized log-softmax (`fused::token_log_probs`).
        if self.fast_kernels {
            let wanted = vec![ids.clone(); rows.dim(0)?];
            if let Some(lp) = super::fused::token_log_probs(&logits, &wanted)? {
                let flat: Vec<f32> = lp.log_probs.into_iter().flatten().collect();
                return Ok(Some(Tensor::from_vec(
                    flat,
                    (wanted.len(), ids.len()),
                    &self.device,
                )?));
            }
        }
        let idx = Tensor::from_vec(ids.clone(), ids.len(), &self.device)?;
        Ok(Some(log_softmax_accurate(&logits)?.index_select(&idx, 1)?))
    }
}

/// Log-softmax over the last dimension with the normaliser summed in f64: a sequential f32 sum
/// over a 50k-262k vocabulary is off by ~1e-4 relative, which shows up in every probability.
pub fn log_softmax_accurate(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted
        .exp()?
        .to_dtype(DType::F64)?
        .sum_keepdim(D::Minus1)?
        .log()?;
    Ok(shifted.broadcast_sub(&lse.to_dtype(DType::F32)?)?)
}

/// Fail loudly on NaN/inf instead of returning a silently wrong number.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::Numerical(format!(
            "{} in {what} at flat index {i}",
            v[i]
        )));
    }
    Ok(())
}
