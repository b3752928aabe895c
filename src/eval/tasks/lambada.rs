//! LAMBADA (OpenAI): context, continuation = " " + final word. acc = the whole continuation is
//! the greedy prediction; perplexity = exp(-mean log-likelihood), as lm-eval aggregates it.

use crate::eval::lm::{checked_loglikelihood, encode_pair, LanguageModel};
use crate::eval::load::{json_line, parse_lines, subsample, LoadOptions, Loaded};
use crate::eval::metrics::{mean, mean_stderr, Metric};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambadaItem {
    pub context: String,
    pub continuation: String,
}

pub fn load_lambada(path: &Path, opts: &LoadOptions) -> Result<Loaded<LambadaItem>> {
    let loaded = parse_lines(path, opts.skip_bad, |_, line| {
        let item: LambadaItem = json_line(line)?;
        if item.continuation.trim().is_empty() {
            return Err("empty continuation".into());
        }
        Ok(item)
    })?;
    subsample(loaded, opts)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambadaRecord {
    pub loglik: f64,
    pub is_greedy: bool,
    pub n_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambadaResult {
    pub acc: Metric,
    /// exp(-mean loglik). The stderr is the delta-method one, ppl * stderr(loglik); lm-eval
    /// bootstraps it instead, so expect agreement to about 1%.
    pub perplexity: Metric,
    pub n: usize,
    pub records: Vec<LambadaRecord>,
}

pub fn score_lambada(items: &[LambadaItem], lm: &mut dyn LanguageModel) -> Result<LambadaResult> {
    let requests = items
        .iter()
        .map(|it| encode_pair(lm, &it.context, &format!(" {}", it.continuation)))
        .collect::<Result<Vec<_>>>()?;
    let results = checked_loglikelihood(lm, &requests)?;
    let records: Vec<LambadaRecord> = results
        .iter()
        .map(|r| LambadaRecord {
            loglik: r.logprob,
            is_greedy: r.is_greedy,
            n_tokens: r.n_tokens,
        })
        .collect();
    let lls: Vec<f64> = records.iter().map(|r| r.loglik).collect();
    let ppl = (-mean(&lls)).exp();
    Ok(LambadaResult {
        acc: Metric::accuracy(records.iter().map(|r| r.is_greedy)),
        perplexity: Metric {
            value: ppl,
            stderr: mean_stderr(&lls).map(|s| ppl * s),
        },
        n: records.len(),
        records,
    })
}
