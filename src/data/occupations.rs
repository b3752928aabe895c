//! Occupation prompts: the Bolukbasi et al. professions with their definitional / stereotypical
//! gender scores, the 17 Vig et al. templates, their cross product, and the Winogender BLS table.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One profession of `professions.json`; `raw` keeps the file's spelling (`adjunct_professor`),
/// `name` is what goes into a prompt (`adjunct professor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profession {
    pub raw: String,
    pub name: String,
    pub definitional: f64,
    pub stereotypical: f64,
}

impl Profession {
    /// Build from the file's spelling; underscores become spaces in `name`.
    pub fn new(raw: &str, definitional: f64, stereotypical: f64) -> Self {
        Profession {
            raw: raw.to_string(),
            name: raw.replace('_', " "),
            definitional,
            stereotypical,
        }
    }

    /// Load a JSON list of `[name, definitional, stereotypical]` triples.
    pub fn load(path: &Path) -> Result<Vec<Profession>> {
        let text = crate::io::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parse the JSON text of [`Profession::load`]; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Vec<Profession>> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        let items = value.as_array().ok_or_else(|| {
            Error::file(
                path,
                "expected a JSON list of [name, definitional, stereotypical]",
            )
        })?;
        if items.is_empty() {
            return Err(Error::file(path, "no professions in file"));
        }
        let mut out: Vec<Profession> = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let bad = |msg: &str| Error::file(path, format!("entry {i}: {msg}"));
            let triple = item
                .as_array()
                .filter(|t| t.len() == 3)
                .ok_or_else(|| bad("expected [name, definitional, stereotypical]"))?;
            let raw = triple[0]
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| bad("name must be a non-empty string"))?;
            let score = |v: &serde_json::Value, what: &str| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(&format!("{what} score must be a finite number")))
            };
            let definitional = score(&triple[1], "definitional")?;
            let stereotypical = score(&triple[2], "stereotypical")?;
            if !seen.insert(raw.to_string()) {
                return Err(bad(&format!("duplicate profession `{raw}`")));
            }
            out.push(Profession::new(raw, definitional, stereotypical));
        }
        Ok(out)
    }
}

/// The 17 templates of Vig et al.'s neuron-intervention experiments, in their order.
pub const VIG_TEMPLATES: [&str; 17] = [
    "The {} said that",
    "The {} yelled that",
    "The {} whispered that",
    "The {} wanted that",
    "The {} desired that",
    "The {} wished that",
    "The {} ate because",
    "The {} ran because",
    "The {} drove because",
    "The {} slept because",
    "The {} cried because",
    "The {} laughed because",
    "The {} went home because",
    "The {} stayed up because",
    "The {} was fired because",
    "The {} was promoted because",
    "The {} yelled because",
];

/// A prompt template with exactly one `{}` slot for the profession.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template(String);

impl Template {
    pub fn new(text: &str) -> Result<Self> {
        let slots = text.matches("{}").count();
        if slots != 1 {
            return Err(Error::param(
                "template",
                format!("{text:?} must contain exactly one `{{}}`, found {slots}"),
            ));
        }
        Ok(Template(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The template with its slot replaced by `name`.
    pub fn fill(&self, name: &str) -> String {
        self.0.replacen("{}", name, 1)
    }

    /// Read one template per line; blank lines are skipped, errors name `file:line`.
    pub fn load(path: &Path) -> Result<Vec<Template>> {
        let text = crate::io::read_text(path)?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            out.push(Template::new(line).map_err(|e| Error::line(path, i + 1, e.to_string()))?);
        }
        if out.is_empty() {
            return Err(Error::file(path, "no templates in file"));
        }
        Ok(out)
    }
}

impl TryFrom<String> for Template {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Template::new(&s)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.0
    }
}

/// The Vig templates as validated [`Template`]s.
pub fn vig_templates() -> Vec<Template> {
    VIG_TEMPLATES
        .iter()
        .map(|t| Template(t.to_string()))
        .collect()
}

/// One filled prompt with the scores of its profession.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccupationPrompt {
    /// The profession as spelled in the data file (`adjunct_professor`).
    pub profession: String,
    pub name: String,
    pub template_index: usize,
    pub template: String,
    pub text: String,
    pub definitional: f64,
    pub stereotypical: f64,
}

/// Every profession × template, profession-major (the order of the reference outputs).
pub fn occupation_prompts(
    professions: &[Profession],
    templates: &[Template],
) -> Vec<OccupationPrompt> {
    professions
        .iter()
        .flat_map(|p| {
            templates
                .iter()
                .enumerate()
                .map(move |(k, t)| OccupationPrompt {
                    profession: p.raw.clone(),
                    name: p.name.clone(),
                    template_index: k,
                    template: t.as_str().to_string(),
                    text: t.fill(&p.name),
                    definitional: p.definitional,
                    stereotypical: p.stereotypical,
                })
        })
        .collect()
}

/// One row of Winogender's `occupations-stats.tsv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlsRow {
    pub occupation: String,
    pub bergsma_pct_female: f64,
    pub bls_pct_female: f64,
    pub bls_year: u32,
}

/// The Winogender occupation statistics (Bergsma text statistics and BLS 2015/2016 % female).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlsTable {
    pub rows: Vec<BlsRow>,
}

impl BlsTable {
    pub fn load(path: &Path) -> Result<BlsTable> {
        let text = crate::io::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parse the TSV text (header then rows); `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<BlsTable> {
        let mut lines = text.lines().enumerate();
        let expected = [
            "occupation",
            "bergsma_pct_female",
            "bls_pct_female",
            "bls_year",
        ];
        match lines.next() {
            Some((_, h)) if h.trim_end_matches('\r').split('\t').eq(expected) => {}
            _ => {
                return Err(Error::line(
                    path,
                    1,
                    format!("header must be {}", expected.join("\\t")),
                ))
            }
        }
        let mut rows = Vec::new();
        for (i, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: String| Error::line(path, i + 1, msg);
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 4 {
                return Err(bad(format!(
                    "expected 4 tab-separated fields, found {}",
                    f.len()
                )));
            }
            let num = |s: &str, what: &str| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(format!("{what} {s:?} is not a number")))
            };
            rows.push(BlsRow {
                occupation: f[0].trim().to_string(),
                bergsma_pct_female: num(f[1], "bergsma_pct_female")?,
                bls_pct_female: num(f[2], "bls_pct_female")?,
                bls_year: f[3]
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("bls_year {:?} is not a year", f[3])))?,
            });
        }
        if rows.is_empty() {
            return Err(Error::file(path, "no occupation rows"));
        }
        Ok(BlsTable { rows })
    }

    /// BLS % female for a profession, matched on its prompt name (`_` read as a space).
    pub fn bls_pct_female(&self, profession_name: &str) -> Option<f64> {
        let key = profession_name.trim().replace('_', " ");
        self.rows
            .iter()
            .find(|r| r.occupation.eq_ignore_ascii_case(&key))
            .map(|r| r.bls_pct_female)
    }
}
