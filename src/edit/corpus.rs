//! Second-moment statistics C = E[k kᵀ] of edit inputs (MLP keys, attention head outputs) over
//! a text corpus (WikiText-2 valid by default), for every edited site in one pass, cached on disk
//! per (model, site, corpus, n).

use super::second_moment::{load_moment, MomentAccumulator, MomentMeta};
use crate::model::{InterventionPlan, Site, Transformer};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What gathering a method's corpus second moments cost this run, for edit.json and the cost
/// tables: passes and token-layers are 0 when every site came from the cache, so tables count
/// them apart from the method's own work (which does not depend on caches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CorpusCost {
    /// Corpus tokens behind C (0 when the method used none).
    #[serde(default)]
    pub statistics_tokens: u64,
    #[serde(default)]
    pub statistics_passes: u64,
    #[serde(default)]
    pub statistics_token_layers: u64,
}

impl CorpusCost {
    pub fn new(tokens: u64, work: crate::model::Work) -> Self {
        CorpusCost {
            statistics_tokens: tokens,
            statistics_passes: work.passes,
            statistics_token_layers: work.token_layers,
        }
    }
    pub fn work(&self) -> crate::model::Work {
        crate::model::Work {
            passes: self.statistics_passes,
            token_layers: self.statistics_token_layers,
        }
    }
}

/// Token chunks of `seq_len` from a text file (WikiText-style: one paragraph per line), up to
/// `max_tokens` tokens in all, in file order. Returns the chunks and the sha256 of the file.
pub fn corpus_chunks(
    tok: &Tokenizer,
    path: &Path,
    seq_len: usize,
    max_tokens: usize,
) -> Result<(Vec<Vec<u32>>, String)> {
    let text = crate::io::read_text(path)?;
    let hash = crate::io::sha256_bytes(text.as_bytes());
    let mut stream: Vec<u32> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('=') {
            continue;
        }
        stream.extend(tok.encode_plain(&format!(" {l}"))?);
        if stream.len() >= max_tokens {
            break;
        }
    }
    stream.truncate(max_tokens);
    let chunks: Vec<Vec<u32>> = stream
        .chunks(seq_len.max(2))
        .filter(|c| c.len() >= 2)
        .map(|c| c.to_vec())
        .collect();
    if chunks.is_empty() {
        return Err(Error::file(path, "corpus has no text"));
    }
    Ok((chunks, hash))
}

/// The cache-file stem of a site's statistics (MLP keys keep the original `mom2` name).
fn moment_stem(site: Site) -> Result<&'static str> {
    match site {
        Site::MlpKey(_) => Ok("mom2"),
        Site::HeadZ(_) => Ok("mom2z"),
        s => Err(Error::param(
            "statistics site",
            format!("{s}: only MLP keys and attention head outputs have corpus statistics"),
        )),
    }
}

fn site_width(model: &Transformer, site: Site) -> usize {
    match site {
        Site::HeadZ(_) => model.cfg.num_heads * model.cfg.head_dim,
        _ => model.cfg.intermediate_size,
    }
}

#[allow(clippy::too_many_arguments)]
/// C for each of `sites` (MLP keys or head outputs), from the cache when present, else computed
/// and cached.
pub fn key_moments(
    model: &Transformer,
    model_hash: &str,
    chunks: &[Vec<u32>],
    corpus_hash: &str,
    sites: &[Site],
    cache_dir: Option<&Path>,
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<BTreeMap<Site, Tensor>> {
    let n_tokens: usize = chunks.iter().map(|c| c.len()).sum();
    for &s in sites {
        moment_stem(s)?;
        if s.layer().is_none_or(|l| l >= model.cfg.num_layers) {
            return Err(Error::param(
                "statistics site",
                format!("{s} is not in the model"),
            ));
        }
    }
    let path_of = |s: Site| -> Option<PathBuf> {
        let stem = moment_stem(s).ok()?;
        let l = s.layer()?;
        cache_dir.map(|d| {
            d.join(format!(
                "{stem}_{}_{}_l{l}_n{n_tokens}.safetensors",
                &model_hash[..16.min(model_hash.len())],
                &corpus_hash[..16]
            ))
        })
    };
    let mut out = BTreeMap::new();
    let mut todo = Vec::new();
    for &site in sites {
        let l = site.layer().unwrap_or(0);
        match path_of(site).filter(|p| p.is_file()) {
            Some(p) => {
                let (c, meta) = load_moment(&p, &model.device)?;
                if meta.model_hash != model_hash
                    || meta.layer != l
                    || meta.corpus_hash != corpus_hash
                {
                    return Err(Error::file(
                        &p,
                        "cached statistics belong to another model, layer or corpus",
                    ));
                }
                out.insert(site, c.to_dtype(DType::F32)?);
            }
            None => todo.push(site),
        }
    }
    if todo.is_empty() {
        return Ok(out);
    }
    let mut acc: BTreeMap<Site, MomentAccumulator> = todo
        .iter()
        .map(|&s| {
            let w = site_width(model, s);
            Ok((s, MomentAccumulator::new(w, DType::F64, &model.device)?))
        })
        .collect::<Result<_>>()?;
    let stop = todo.iter().filter_map(|s| s.layer()).max();
    for batch_rows in chunks.chunks(batch.max(1)) {
        let plan = InterventionPlan {
            capture: todo.clone(),
            stop_after: stop,
            ..Default::default()
        };
        let fwd = model.forward(batch_rows, &plan)?;
        let t = batch_rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mask: Vec<f32> = fwd
            .pads
            .iter()
            .flat_map(|&p| (0..t).map(move |i| if i >= p { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, batch_rows.len() * t, &model.device)?;
        for (&s, a) in acc.iter_mut() {
            let keys = fwd.captures[&s].reshape((batch_rows.len() * t, site_width(model, s)))?;
            a.update(&keys, Some(&mask))?;
        }
        on_batch(batch_rows.len());
    }
    for (site, a) in acc {
        let meta = MomentMeta {
            model_hash: model_hash.to_string(),
            layer: site.layer().unwrap_or(0),
            corpus_hash: corpus_hash.to_string(),
            n: a.count(),
        };
        if let Some(p) = path_of(site) {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
            }
            a.save(&p, &meta)?;
        }
        out.insert(site, a.moment()?.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// Corpus statistics of an edit: C per site from `max_tokens` tokens of `corpus` in chunks of
/// `seq_len` (cached), and how many corpus tokens they cover. One path for every method that
/// uses a corpus prior.
#[allow(clippy::too_many_arguments)]
pub fn corpus_moments(
    model: &Transformer,
    model_hash: &str,
    tok: &Tokenizer,
    corpus: &Path,
    seq_len: usize,
    max_tokens: usize,
    sites: &[Site],
    cache_dir: Option<&Path>,
    log: &mut impl FnMut(&str),
) -> Result<(BTreeMap<Site, Tensor>, u64)> {
    let (chunks, corpus_hash) = corpus_chunks(tok, corpus, seq_len, max_tokens)?;
    let tokens: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    log(&format!(
        "second moments of edit inputs over {tokens} corpus tokens"
    ));
    let m = key_moments(
        model,
        model_hash,
        &chunks,
        &corpus_hash,
        sites,
        cache_dir,
        16,
        |_| {},
    )?;
    Ok((m, tokens))
}
