//! Edit prompts: occupation prompts of the edit split, each with short context prefixes, and
//! the token position of the last occupation token (where keys are read and the edit lands).

use crate::data::{split_professions, Part, Profession, SplitSpec, Template};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Context prefixes put before each edit prompt so the edit generalises beyond one sentence
/// start (MEMIT averages keys over such prefixes). The empty prefix is always included.
pub const DEFAULT_PREFIXES: &[&str] = &["", "It was a busy day. ", "Everyone knew it. "];

/// Templates held out from editing (indices into the 17 Vig templates): the edit never sees
/// them, so the evaluation can tell template generalisation apart.
pub const HELD_OUT_TEMPLATES: &[usize] = crate::data::UNSEEN_TEMPLATES;

/// One tokenised prompt with the occupation's token span.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditPrompt {
    /// Index of the profession (or word) this prompt belongs to, in the edit set's order.
    pub group: usize,
    pub text: String,
    pub ids: Vec<u32>,
    /// Token index of the last token of the occupation word.
    pub last_subject_token: usize,
}

/// Token span [start, end) of `text[start_char..end_char]` under the tokenizer (BOS included).
pub fn subject_span(
    tok: &Tokenizer,
    text: &str,
    start_char: usize,
    end_char: usize,
) -> Result<(usize, usize)> {
    let before = text[..start_char].trim_end();
    let a = if before.is_empty() {
        tok.encode("")?.len()
    } else {
        tok.encode(before)?.len()
    };
    let upto = tok.encode(&text[..end_char])?;
    let full = tok.encode(text)?;
    if upto.len() <= a || full.len() < upto.len() || full[..upto.len()] != upto[..] {
        return Err(Error::param(
            "subject",
            format!(
                "{:?} in {text:?} does not tokenise to a clean token span",
                &text[start_char..end_char]
            ),
        ));
    }
    Ok((a, upto.len()))
}

/// Build prompts for `words` (group index = position in `words`) in `templates` × `prefixes`.
pub fn build_prompts(
    tok: &Tokenizer,
    words: &[String],
    templates: &[Template],
    prefixes: &[&str],
) -> Result<Vec<EditPrompt>> {
    let mut out = Vec::new();
    for (g, w) in words.iter().enumerate() {
        for t in templates {
            for p in prefixes {
                let filled = t.fill(w);
                let start = p.len() + t.as_str().find("{}").unwrap_or(0);
                let text = format!("{p}{filled}");
                let (_, end) = subject_span(tok, &text, start, start + w.len())?;
                out.push(EditPrompt {
                    group: g,
                    ids: tok.encode(&text)?,
                    text,
                    last_subject_token: end - 1,
                });
            }
        }
    }
    Ok(out)
}

/// The professions an edit may touch and those it must preserve (definitional controls).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditSets {
    /// Names (spaces, not underscores) of edit-split professions.
    pub edit: Vec<String>,
    /// Definitional professions and gendered words whose outputs are preserved.
    pub preserve: Vec<String>,
    pub edit_templates: Vec<usize>,
    /// A validation fit: the validation professions and templates (Vig's and the
    /// project-written ones) are left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validation: bool,
}

/// Edit professions from the split (optionally the first `max_edit`), controls to preserve, and
/// the edit templates (all Vig templates minus [`HELD_OUT_TEMPLATES`]).
pub fn edit_sets(
    professions: &[Profession],
    split: &SplitSpec,
    max_edit: Option<usize>,
    validation: bool,
) -> Result<EditSets> {
    let s = split_professions(professions, split)?;
    let set_aside = if validation {
        crate::data::validation_professions(&s)
    } else {
        Vec::new()
    };
    let name = |raw: &str| raw.replace('_', " ");
    let mut edit: Vec<String> = professions
        .iter()
        .filter(|p| s.part_of(&p.raw) == Some(Part::Edit) && !set_aside.contains(&p.raw))
        .map(|p| name(&p.raw))
        .collect();
    if let Some(m) = max_edit.filter(|&m| m > 0 && m < edit.len()) {
        // Evenly spaced over the (alphabetical) list, so a small edit set is not all "a..." words.
        let n = edit.len();
        edit = (0..m).map(|i| edit[i * n / m].clone()).collect();
    }
    let preserve = professions
        .iter()
        .filter(|p| s.part_of(&p.raw) == Some(Part::DefinitionalControl))
        .map(|p| name(&p.raw))
        .collect();
    let edit_templates = (0..17)
        .filter(|i| !HELD_OUT_TEMPLATES.contains(i))
        .filter(|i| !(validation && crate::data::VALIDATION_TEMPLATES.contains(i)))
        .collect();
    Ok(EditSets {
        edit,
        preserve,
        edit_templates,
        validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{validation_professions, VALIDATION_TEMPLATES};

    /// A validation fit leaves out the validation professions and Vig templates, and says so
    /// (the probe's prompts read the flag to leave out the project-written validation lines);
    /// the flag is not serialised for a final fit, so earlier records and cache keys stand.
    #[test]
    fn validation_sets_leave_out_the_validation_parts() {
        let professions =
            Profession::load(&crate::data::data_dir().join("bolukbasi_debiaswe/professions.json"))
                .unwrap();
        let spec = SplitSpec::default();
        let full = edit_sets(&professions, &spec, None, false).unwrap();
        let val = edit_sets(&professions, &spec, None, true).unwrap();
        assert!(!full.validation && val.validation);
        let set_aside = validation_professions(&split_professions(&professions, &spec).unwrap());
        assert_eq!(val.edit.len() + set_aside.len(), full.edit.len());
        assert!(set_aside
            .iter()
            .all(|p| !val.edit.contains(&p.replace('_', " "))));
        assert_eq!(full.edit_templates.len(), 12);
        assert_eq!(val.edit_templates.len(), 12 - VALIDATION_TEMPLATES.len());
        assert!(val
            .edit_templates
            .iter()
            .all(|i| !VALIDATION_TEMPLATES.contains(i)));
        assert!(serde_json::to_value(&full)
            .unwrap()
            .get("validation")
            .is_none());
        assert_eq!(serde_json::to_value(&val).unwrap()["validation"], true);
    }
}
