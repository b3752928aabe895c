//! LAMA T-REx fact recall for causal LMs. For each relation the first ParaRel pattern whose
//! `[Y]` comes last (only punctuation after it) is used: the prompt is the pattern up to `[Y]`
//! with `[X]` filled by the subject, and a fact counts as recalled when the whole object
//! (" " + obj_label) is the greedy continuation — top-1 / P@1 generalised to objects that are
//! several tokens in the model's vocabulary.

use crate::eval::lm::{checked_loglikelihood, encode_pair, LanguageModel};
use crate::eval::load::{
    json_line, parse_lines, read_nonempty, subsample, LoadOptions, LoadReport, Loaded,
};
use crate::eval::metrics::{mean, mean_stderr, Metric};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LamaFact {
    pub relation: String,
    pub subject: String,
    pub object: String,
    /// The filled prompt, ending just before the object.
    pub prompt: String,
}

#[derive(Deserialize)]
struct FactLine {
    sub_label: String,
    obj_label: String,
}

#[derive(Deserialize)]
struct PatternLine {
    pattern: String,
}

/// The part of a pattern before `[Y]` if `[Y]` is last (only punctuation/space after it) and
/// `[X]` comes before it.
pub fn causal_prefix(pattern: &str) -> Option<&str> {
    let y = pattern.find("[Y]")?;
    let after = &pattern[y + 3..];
    if !after
        .chars()
        .all(|c| c.is_whitespace() || c.is_ascii_punctuation())
    {
        return None;
    }
    let prefix = pattern[..y].trim_end();
    prefix.contains("[X]").then_some(prefix)
}

/// Load all relations under `dir` (`trex_lms_vocab/` and `pararel_patterns/`).
pub fn load_lama(dir: &Path, opts: &LoadOptions) -> Result<Loaded<LamaFact>> {
    let facts_dir = dir.join("trex_lms_vocab");
    let patterns_dir = dir.join("pararel_patterns");
    let mut names: Vec<String> = std::fs::read_dir(&facts_dir)
        .map_err(|e| Error::file(&facts_dir, e.to_string()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::file(&facts_dir, "no relation files"));
    }
    let mut items = Vec::new();
    let mut report = LoadReport::default();
    for name in names {
        let relation = name.trim_end_matches(".jsonl").to_string();
        let facts = parse_lines(&facts_dir.join(&name), opts.skip_bad, |_, line| {
            let f: FactLine = json_line(line)?;
            if f.sub_label.trim().is_empty() || f.obj_label.trim().is_empty() {
                return Err("empty subject or object".into());
            }
            Ok(f)
        })?;
        report.merge(facts.report);
        let pattern_path = patterns_dir.join(&name);
        if !pattern_path.exists() {
            report
                .notes
                .push(format!("{relation}: no ParaRel patterns, skipped"));
            continue;
        }
        let text = read_nonempty(&pattern_path)?;
        let mut prefix = None;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let p: PatternLine =
                json_line(line).map_err(|m| Error::line(&pattern_path, i + 1, m))?;
            if let Some(pre) = causal_prefix(&p.pattern) {
                prefix = Some(pre.to_string());
                break;
            }
        }
        let Some(prefix) = prefix else {
            report
                .notes
                .push(format!("{relation}: no pattern ends with [Y], skipped"));
            continue;
        };
        for f in facts.items {
            items.push(LamaFact {
                relation: relation.clone(),
                prompt: prefix.replace("[X]", &f.sub_label),
                subject: f.sub_label,
                object: f.obj_label,
            });
        }
    }
    if items.is_empty() {
        return Err(Error::file(dir, "no usable facts"));
    }
    // `parsed` stays the number of facts read (all relations); `kept` counts usable ones.
    report.kept = items.len();
    subsample(Loaded { items, report }, opts)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LamaRecord {
    pub relation: String,
    pub correct: bool,
    pub loglik: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LamaResult {
    /// P@1 over facts.
    pub acc: Metric,
    /// P@1 averaged over relations.
    pub acc_macro: f64,
    pub per_relation: BTreeMap<String, f64>,
    pub n: usize,
    pub records: Vec<LamaRecord>,
}

/// Standard error of the macro accuracy (the unweighted mean over relations of each
/// relation's P@1): relations are independent strata, so it is sqrt(Σ_r se_r²) / R with
/// se_r lm-eval's `mean_stderr` of relation r's 0/1 outcomes. None when a relation has fewer
/// than two facts (its own error is undefined).
pub fn acc_macro_stderr(records: &[LamaRecord]) -> Option<f64> {
    let mut by_rel: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records {
        by_rel
            .entry(r.relation.as_str())
            .or_default()
            .push(f64::from(u8::from(r.correct)));
    }
    if by_rel.is_empty() {
        return None;
    }
    let mut variance = 0.0;
    for outcomes in by_rel.values() {
        variance += mean_stderr(outcomes)?.powi(2);
    }
    Some(variance.sqrt() / by_rel.len() as f64)
}

pub fn score_lama(facts: &[LamaFact], lm: &mut dyn LanguageModel) -> Result<LamaResult> {
    let requests = facts
        .iter()
        .map(|f| encode_pair(lm, &f.prompt, &format!(" {}", f.object)))
        .collect::<Result<Vec<_>>>()?;
    let res = checked_loglikelihood(lm, &requests)?;
    let records: Vec<LamaRecord> = facts
        .iter()
        .zip(&res)
        .map(|(f, r)| LamaRecord {
            relation: f.relation.clone(),
            correct: r.is_greedy,
            loglik: r.logprob,
        })
        .collect();
    let mut by_rel: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &records {
        by_rel
            .entry(r.relation.clone())
            .or_default()
            .push(f64::from(u8::from(r.correct)));
    }
    let per_relation: BTreeMap<String, f64> =
        by_rel.into_iter().map(|(k, v)| (k, mean(&v))).collect();
    let acc_macro = mean(&per_relation.values().copied().collect::<Vec<_>>());
    Ok(LamaResult {
        acc: Metric::accuracy(records.iter().map(|r| r.correct)),
        acc_macro,
        per_relation,
        n: records.len(),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(relation: &str, correct: bool) -> LamaRecord {
        LamaRecord {
            relation: relation.to_string(),
            correct,
            loglik: 0.0,
        }
    }

    /// One relation: the macro error is that relation's lm-eval stderr. Two relations: the
    /// root of the summed variances over R = 2, by hand.
    #[test]
    fn acc_macro_stderr_by_hand() {
        let one: Vec<LamaRecord> = [true, false, true, true]
            .iter()
            .map(|&c| record("P1", c))
            .collect();
        let p1 = mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((acc_macro_stderr(&one).unwrap() - p1).abs() < 1e-15);

        let mut two = one.clone();
        two.extend([false, false, true].iter().map(|&c| record("P2", c)));
        let p2 = mean_stderr(&[0.0, 0.0, 1.0]).unwrap();
        let expected = (p1 * p1 + p2 * p2).sqrt() / 2.0;
        assert!((acc_macro_stderr(&two).unwrap() - expected).abs() < 1e-15);

        two.push(record("P3", true));
        assert_eq!(
            acc_macro_stderr(&two),
            None,
            "a one-fact relation has no error"
        );
        assert_eq!(acc_macro_stderr(&[]), None);
    }
}
