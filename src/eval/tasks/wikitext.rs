//! WikiText-2 test perplexity as lm-eval's `wikitext` task: per document, the rolling
//! log-likelihood of the detokenized page; word perplexity = exp(-Σ loglik / Σ words) with words
//! counted on the original page as `len(re.split(r"\s+", page))`; token perplexity =
//! exp(-Σ loglik / Σ tokens); bits per byte = -Σ loglik / (Σ bytes · ln 2).
//! The vendored raw test copy has no blank lines, so documents are rebuilt by splitting at
//! top-level headings (" = Title = ") and joining lines with "\n"; numbers therefore differ
//! slightly from lm-eval's document-level HF copy, but a before/after comparison is exact.

use crate::eval::lm::{loglikelihood_rolling, LanguageModel};
use crate::eval::load::{read_nonempty, subsample, LoadOptions, LoadReport, Loaded};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WikiDoc {
    /// 1-based line of the heading that starts the document.
    pub line: usize,
    pub page: String,
}

fn is_top_heading(line: &str) -> bool {
    let t = line.trim();
    t.len() > 4 && t.starts_with("= ") && t.ends_with(" =") && !t.starts_with("= =")
}

/// Split a WikiText file (raw or `.tokens`) into articles at top-level headings.
pub fn load_wikitext(path: &Path, opts: &LoadOptions) -> Result<Loaded<WikiDoc>> {
    let text = read_nonempty(path)?;
    let mut docs: Vec<WikiDoc> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if is_top_heading(line) {
            docs.push(WikiDoc {
                line: i + 1,
                page: String::new(),
            });
        }
        match docs.last_mut() {
            Some(d) => {
                d.page.push_str(line);
                d.page.push('\n');
            }
            None if line.trim().is_empty() => {}
            None => {
                return Err(Error::line(
                    path,
                    i + 1,
                    "text before the first ` = Title = ` heading",
                ))
            }
        }
    }
    let report = LoadReport {
        files: vec![path.to_path_buf()],
        parsed: docs.len(),
        kept: docs.len(),
        ..Default::default()
    };
    subsample(
        Loaded {
            items: docs,
            report,
        },
        opts,
    )
}

/// Replace every occurrence of `open … close` by the same with the inner text trimmed
/// (the bracket/quote rules of lm-eval's `wikitext_detokenizer`).
fn tighten(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len_utf8()..];
        match after.find(close) {
            Some(j) => {
                out.push_str(&rest[..i]);
                out.push(open);
                out.push_str(after[..j].trim());
                out.push(close);
                rest = &after[j + close.len_utf8()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// lm-eval's `wikitext_detokenizer`, rule by rule.
pub fn detokenize(page: &str) -> String {
    let mut s = page.replace("s '", "s'");
    // r"/' [0-9]/" → the literal "/'[0-9]/" (kept for fidelity; it almost never fires).
    for d in '0'..='9' {
        s = s.replace(&format!("/' {d}/"), "/'[0-9]/");
    }
    for (a, b) in [
        (" @-@ ", "-"),
        (" @,@ ", ","),
        (" @.@ ", "."),
        (" : ", ": "),
        (" ; ", "; "),
    ] {
        s = s.replace(a, b);
    }
    for (a, b) in [(" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")] {
        s = s.replace(a, b);
    }
    for (o, c) in [('(', ')'), ('[', ']'), ('{', '}'), ('"', '"'), ('\'', '\'')] {
        s = tighten(&s, o, c);
    }
    for (a, b) in [
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" \u{b0} ", "\u{b0}"),
    ] {
        s = s.replace(a, b);
    }
    for (a, b) in [(" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")] {
        s = s.replace(a, b);
    }
    s
}

/// `len(re.split(r"\s+", page))`: one more than the number of whitespace runs.
pub fn count_words(page: &str) -> usize {
    let mut runs = 0;
    let mut in_ws = false;
    for c in page.chars() {
        let ws = c.is_whitespace();
        if ws && !in_ws {
            runs += 1;
        }
        in_ws = ws;
    }
    runs + 1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WikiRecord {
    pub line: usize,
    pub loglik: f64,
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityResult {
    pub token_perplexity: f64,
    pub word_perplexity: f64,
    pub byte_perplexity: f64,
    pub bits_per_byte: f64,
    pub n_docs: usize,
    pub records: Vec<WikiRecord>,
}

pub fn score_wikitext(docs: &[WikiDoc], lm: &mut dyn LanguageModel) -> Result<PerplexityResult> {
    let texts: Vec<String> = docs.iter().map(|d| detokenize(&d.page)).collect();
    let lls = loglikelihood_rolling(lm, &texts)?;
    let records: Vec<WikiRecord> = docs
        .iter()
        .zip(&lls)
        .map(|(d, &(loglik, tokens))| WikiRecord {
            line: d.line,
            loglik,
            tokens,
            words: count_words(&d.page),
            bytes: d.page.len(),
        })
        .collect();
    Ok(perplexities(records))
}

/// Corpus-level (weighted) perplexities from per-document sums.
pub fn perplexities(records: Vec<WikiRecord>) -> PerplexityResult {
    let ll: f64 = records.iter().map(|r| r.loglik).sum();
    let tokens: usize = records.iter().map(|r| r.tokens).sum();
    let words: usize = records.iter().map(|r| r.words).sum();
    let bytes: usize = records.iter().map(|r| r.bytes).sum();
    PerplexityResult {
        token_perplexity: (-ll / tokens as f64).exp(),
        word_perplexity: (-ll / words as f64).exp(),
        byte_perplexity: (-ll / bytes as f64).exp(),
        bits_per_byte: -ll / (bytes as f64 * std::f64::consts::LN_2),
        n_docs: records.len(),
        records,
    }
}
