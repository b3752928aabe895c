//! Tracing noise: the empirical std of the embedding output and seeded Gaussian draws.

use crate::model::Transformer;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Population std of every element of the embedding-module output (the `Embed` site, Gemma's
/// sqrt(d) scale included) over all tokens of `prompts`, accumulated in f64.
pub fn embedding_std(model: &Transformer, prompts: &[Vec<u32>]) -> Result<f64> {
    let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
    for ids in prompts {
        if ids.iter().any(|&i| i as usize >= model.cfg.vocab_size) {
            return Err(Error::param("token id", "outside the vocabulary"));
        }
        let idx = Tensor::from_vec(ids.clone(), ids.len(), &model.device)?;
        let mut e = model.embed.embedding(&idx)?;
        if let Some(scale) = model.cfg.embed_scale {
            e = (e * scale)?;
        }
        for x in e.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()? {
            n += 1.0;
            s += x;
            s2 += x * x;
        }
    }
    if n < 2.0 {
        return Err(Error::param("prompts", "need at least two embedding values"));
    }
    let mean = s / n;
    Ok((s2 / n - mean * mean).max(0.0).sqrt())
}

/// `samples` × `tokens` × `d` draws of N(0, std²) from a ChaCha stream seeded by `seed`.
pub fn sample_noise(seed: u64, samples: usize, tokens: usize, d: usize, std: f64, device: &candle_core::Device) -> Result<Tensor> {
    if !std.is_finite() || std < 0.0 {
        return Err(Error::param("noise std", format!("{std} is not a non-negative number")));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f64, 1.0).map_err(|e| Error::param("noise std", e.to_string()))?;
    let v: Vec<f32> = (0..samples * tokens * d).map(|_| (normal.sample(&mut rng) * std) as f32).collect();
    Ok(Tensor::from_vec(v, (samples, tokens, d), device)?)
}
