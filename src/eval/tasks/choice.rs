//! Multiple-choice tasks in llm-foundry's `{query, choices, gold}` form (ARC, PIQA, BoolQ, COPA,
//! OpenBookQA, Winogender MC), scored as lm-eval `multiple_choice`: context = query, each
//! continuation = " " + choice; acc = argmax of summed log-likelihood, acc_norm = argmax of
//! log-likelihood divided by the character count of the choice (without the leading space).
//!
//! A task record's [`ChoiceFormat`] can name other JSON fields and other context/continuation
//! templates; its defaults are the form above.

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

/// Which of the two multiple-choice metrics a task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceMetric {
    Acc,
    AccNorm,
}

impl ChoiceMetric {
    pub fn name(self) -> &'static str {
        match self {
            ChoiceMetric::Acc => "acc",
            ChoiceMetric::AccNorm => "acc_norm",
        }
    }
}

/// How a multiple-choice data file is read and turned into requests (a task record's
/// `[task.kind.choice]` table). The defaults are llm-foundry's form as lm-eval scores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChoiceFormat {
    /// JSON field of each line holding the question (a string).
    pub query_field: String,
    /// JSON field holding the answers (an array of at least two strings).
    pub choices_field: String,
    /// JSON field holding the index of the right answer (a non-negative integer).
    pub gold_field: String,
    /// Context of every request; `{query}` is replaced by the query.
    pub context: String,
    /// Continuation of each request; `{choice}` is replaced by the choice.
    pub continuation: String,
    /// Metrics reported (both are always computed and kept per item).
    pub metrics: Vec<ChoiceMetric>,
}

impl Default for ChoiceFormat {
    fn default() -> Self {
        ChoiceFormat {
            query_field: "query".into(),
            choices_field: "choices".into(),
            gold_field: "gold".into(),
            context: "{query}".into(),
            continuation: " {choice}".into(),
            metrics: vec![ChoiceMetric::Acc, ChoiceMetric::AccNorm],
        }
    }
}

/// The `{name}` placeholders of a template.
fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

impl ChoiceFormat {
    /// Check the format is usable: distinct, non-empty field names, templates whose only
    /// placeholder is `{query}` (context) / `{choice}` (continuation), a non-empty
    /// continuation and at least one metric, none twice.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let fields = [
            ("query_field", &self.query_field),
            ("choices_field", &self.choices_field),
            ("gold_field", &self.gold_field),
        ];
        for (i, (key, value)) in fields.iter().enumerate() {
            if value.is_empty() {
                return Err(format!("{key} is empty"));
            }
            if let Some((other, _)) = fields[..i].iter().find(|(_, v)| v == value) {
                return Err(format!("{key} and {other} are both {value:?}"));
            }
        }
        for (key, template, allowed) in [
            ("context", &self.context, "query"),
            ("continuation", &self.continuation, "choice"),
        ] {
            if let Some(p) = placeholders(template).into_iter().find(|p| *p != allowed) {
                return Err(format!(
                    "{key} {template:?}: unknown placeholder {{{p}}} (only {{{allowed}}})"
                ));
            }
        }
        if !self.continuation.contains("{choice}") {
            return Err(format!(
                "continuation {:?} does not contain {{choice}}",
                self.continuation
            ));
        }
        if self.metrics.is_empty() {
            return Err("metrics is empty".into());
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if self.metrics[..i].contains(m) {
                return Err(format!("metric {:?} given twice", m.name()));
            }
        }
        Ok(())
    }

    /// The context of an item's requests.
    pub fn context(&self, query: &str) -> String {
        self.context.replace("{query}", query)
    }

    /// The continuation of one choice.
    pub fn continuation(&self, choice: &str) -> String {
        self.continuation.replace("{choice}", choice)
    }

    /// Read one JSON line into an item with this format's field names.
    pub fn item(&self, line: &str) -> std::result::Result<ChoiceItem, String> {
        let value: serde_json::Value = json_line(line)?;
        let object = value
            .as_object()
            .ok_or("invalid JSON item: not an object")?;
        let field = |name: &str| {
            object
                .get(name)
                .ok_or_else(|| format!("invalid JSON item: missing field `{name}`"))
        };
        let query = field(&self.query_field)?
            .as_str()
            .ok_or_else(|| format!("`{}` is not a string", self.query_field))?
            .to_string();
        let choices = field(&self.choices_field)?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("`{}` is not an array of strings", self.choices_field))?;
        let gold = field(&self.gold_field)?
            .as_u64()
            .and_then(|g| usize::try_from(g).ok())
            .ok_or_else(|| format!("`{}` is not a non-negative integer", self.gold_field))?;
        Ok(ChoiceItem {
            query,
            choices,
            gold,
        })
    }
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

/// Load a file in llm-foundry's `{query, choices, gold}` form.
pub fn load_choice(path: &Path, opts: &LoadOptions) -> Result<Loaded<ChoiceItem>> {
    load_choice_with(path, &ChoiceFormat::default(), opts)
}

/// [`load_choice`] for a file in `format`'s form.
pub fn load_choice_with(
    path: &Path,
    format: &ChoiceFormat,
    opts: &LoadOptions,
) -> Result<Loaded<ChoiceItem>> {
    let loaded = parse_lines(path, opts.skip_bad, |_, line| {
        validate_choice(format.item(line)?)
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
    score_choice_with(items, &ChoiceFormat::default(), lm)
}

/// [`score_choice`] with `format`'s context and continuation templates.
pub fn score_choice_with(
    items: &[ChoiceItem],
    format: &ChoiceFormat,
    lm: &mut dyn LanguageModel,
) -> Result<ChoiceResult> {
    let mut requests = Vec::new();
    for item in items {
        let context = format.context(&item.query);
        for choice in &item.choices {
            requests.push(encode_pair(lm, &context, &format.continuation(choice))?);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Renamed fields are read and the templates build the requests' text; the defaults give
    /// llm-foundry's form (context = query, continuation = " " + choice).
    #[test]
    fn format_reads_its_fields_and_fills_its_templates() {
        let f = ChoiceFormat {
            query_field: "question".into(),
            choices_field: "options".into(),
            gold_field: "label".into(),
            context: "Q: {query}\nA:".into(),
            continuation: " {choice}.".into(),
            metrics: vec![ChoiceMetric::Acc],
        };
        f.validate().unwrap();
        let item = f
            .item(r#"{"question": "Sky?", "options": ["blue", "green"], "label": 0, "x": 1}"#)
            .unwrap();
        assert_eq!(
            item,
            ChoiceItem {
                query: "Sky?".into(),
                choices: vec!["blue".into(), "green".into()],
                gold: 0
            }
        );
        assert_eq!(f.context(&item.query), "Q: Sky?\nA:");
        assert_eq!(f.continuation("blue"), " blue.");
        let d = ChoiceFormat::default();
        assert_eq!(d.context("{choice} q"), "{choice} q");
        assert_eq!(d.continuation("a {query}"), " a {query}");
        let err = d.item(r#"{"question": "Sky?"}"#).unwrap_err();
        assert!(err.contains("missing field `query`"), "{err}");
        let err = d
            .item(r#"{"query": "q", "choices": ["a", 1], "gold": 0}"#)
            .unwrap_err();
        assert!(err.contains("`choices`"), "{err}");
        let err = d
            .item(r#"{"query": "q", "choices": ["a", "b"], "gold": -1}"#)
            .unwrap_err();
        assert!(err.contains("`gold`"), "{err}");
    }

    #[test]
    fn format_validation_names_the_bad_field() {
        let bad = |f: ChoiceFormat, what: &str| {
            let err = f.validate().unwrap_err();
            assert!(err.contains(what), "{err} lacks {what}");
        };
        let d = ChoiceFormat::default;
        bad(
            ChoiceFormat {
                gold_field: "query".into(),
                ..d()
            },
            "gold_field and query_field",
        );
        bad(
            ChoiceFormat {
                context: "{question}".into(),
                ..d()
            },
            "{question}",
        );
        bad(
            ChoiceFormat {
                continuation: " {query}".into(),
                ..d()
            },
            "{query}",
        );
        bad(
            ChoiceFormat {
                continuation: " yes".into(),
                ..d()
            },
            "does not contain {choice}",
        );
        bad(
            ChoiceFormat {
                metrics: vec![],
                ..d()
            },
            "metrics is empty",
        );
        bad(
            ChoiceFormat {
                metrics: vec![ChoiceMetric::Acc, ChoiceMetric::Acc],
                ..d()
            },
            "twice",
        );
        bad(
            ChoiceFormat {
                query_field: String::new(),
                ..d()
            },
            "query_field is empty",
        );
    }
}
