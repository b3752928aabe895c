//! Multiple-choice tasks in llm-foundry's `{query, choices, gold}` form (ARC, PIQA, BoolQ, COPA,
//! OpenBookQA, Winogender MC), scored as lm-eval `multiple_choice`: context = query, each
//! continuation = " " + choice; acc = argmax of summed log-likelihood, acc_norm = argmax of
//! log-likelihood divided by the character count of the choice (without the leading space).

use crate::eval::lm::{checked_loglikelihood, encode_pair, LanguageModel};
use crate::eval::load::{json_line, parse_lines, subsample, LoadOptions, Loaded};
use crate::eval::metrics::{argmax, Metric};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceItem {
    pub query: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

/// Check the invariants a scorer relies on.
pub fn validate_choice(item: ChoiceItem) -> std::result::Result<ChoiceItem, String> {
    if item.choices.len() < 2 {
        return Err(format!(
            "need at least 2 choices, got {}",
            item.choices.len()
        ));
    }
    if item.gold >= item.choices.len() {
        return Err(format!(
            "gold {} out of range for {} choices",
            item.gold,
            item.choices.len()
        ));
    }
    Ok(item)
}

pub fn load_choice(path: &Path, opts: &LoadOptions) -> Result<Loaded<ChoiceItem>> {
    let loaded = parse_lines(path, opts.skip_bad, |_, line| {
        validate_choice(json_line(line)?)
    })?;
    subsample(loaded, opts)
}

/// Per-item record, kept so paired tests can be run across models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceRecord {
    pub loglik: Vec<f64>,
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
    pub correct: bool,
    pub correct_norm: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceResult {
    pub acc: Metric,
    pub acc_norm: Metric,
    pub n: usize,
    pub records: Vec<ChoiceRecord>,
}

/// Score items with one model call for all (item, choice) requests.
pub fn score_choice(items: &[ChoiceItem], lm: &mut dyn LanguageModel) -> Result<ChoiceResult> {
    let mut requests = Vec::new();
    for item in items {
        for choice in &item.choices {
            requests.push(encode_pair(lm, &item.query, &format!(" {choice}"))?);
        }
    }
    let results = checked_loglikelihood(lm, &requests)?;
    let mut records = Vec::with_capacity(items.len());
    let mut at = 0;
    for item in items {
        let lls: Vec<f64> = results[at..at + item.choices.len()]
            .iter()
            .map(|r| r.logprob)
            .collect();
        at += item.choices.len();
        records.push(choice_record(&lls, &item.choices, item.gold));
    }
    Ok(summarise(records))
}

/// acc / acc_norm decision for one item from its per-choice log-likelihoods.
pub fn choice_record(lls: &[f64], choices: &[String], gold: usize) -> ChoiceRecord {
    let normed: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.chars().count().max(1) as f64)
        .collect();
    let pred = argmax(lls).unwrap_or(0);
    let pred_norm = argmax(&normed).unwrap_or(0);
    ChoiceRecord {
        loglik: lls.to_vec(),
        gold,
        pred,
        pred_norm,
        correct: pred == gold,
        correct_norm: pred_norm == gold,
    }
}

pub fn summarise(records: Vec<ChoiceRecord>) -> ChoiceResult {
    ChoiceResult {
        acc: Metric::accuracy(records.iter().map(|r| r.correct)),
        acc_norm: Metric::accuracy(records.iter().map(|r| r.correct_norm)),
        n: records.len(),
        records,
    }
}
