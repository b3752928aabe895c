//! WinoGrande with lm-eval's partial scoring: the option fills the blank in the context, the
//! shared rest of the sentence (" " + continuation) is scored under each context.

use crate::eval::lm::{checked_loglikelihood, encode_pair, LanguageModel};
use crate::eval::load::{json_line, parse_lines, subsample, LoadOptions, Loaded};
use crate::eval::metrics::{argmax, Metric};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinograndeItem {
    pub context_options: Vec<String>,
    pub continuation: String,
    pub gold: usize,
}

pub fn load_winogrande(path: &Path, opts: &LoadOptions) -> Result<Loaded<WinograndeItem>> {
    let loaded = parse_lines(path, opts.skip_bad, |_, line| {
        let item: WinograndeItem = json_line(line)?;
        if item.context_options.len() != 2 {
            return Err(format!(
                "need 2 context options, got {}",
                item.context_options.len()
            ));
        }
        if item.gold >= 2 {
            return Err(format!("gold {} is not 0 or 1", item.gold));
        }
        if item.continuation.trim().is_empty() {
            return Err("empty continuation".into());
        }
        Ok(item)
    })?;
    subsample(loaded, opts)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinograndeRecord {
    pub loglik: Vec<f64>,
    pub gold: usize,
    pub pred: usize,
    pub correct: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinograndeResult {
    pub acc: Metric,
    pub n: usize,
    pub records: Vec<WinograndeRecord>,
}

pub fn score_winogrande(
    items: &[WinograndeItem],
    lm: &mut dyn LanguageModel,
) -> Result<WinograndeResult> {
    let mut requests = Vec::new();
    for item in items {
        for ctx in &item.context_options {
            requests.push(encode_pair(lm, ctx, &format!(" {}", item.continuation))?);
        }
    }
    let results = checked_loglikelihood(lm, &requests)?;
    let mut records = Vec::with_capacity(items.len());
    let mut at = 0;
    for item in items {
        let k = item.context_options.len();
        let lls: Vec<f64> = results[at..at + k].iter().map(|r| r.logprob).collect();
        at += k;
        let pred = argmax(&lls).unwrap_or(0);
        records.push(WinograndeRecord {
            loglik: lls,
            gold: item.gold,
            pred,
            correct: pred == item.gold,
        });
    }
    Ok(WinograndeResult {
        acc: Metric::accuracy(records.iter().map(|r| r.correct)),
        n: records.len(),
        records,
    })
}
