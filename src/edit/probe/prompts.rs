//! The prompts the probe and gap tuning fit on and protect, read at the last token.

use super::super::context::{EditPrompt, EditSets, DEFAULT_PREFIXES};
use super::{extra_words, protect_set_words, FitTemplates, ProtectSet, WordSource};
use crate::data::{vig_templates, Template};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// `words` × `templates` × `prefixes`, read at the prompt's last token (stored in
/// `last_subject_token`, which is where [`crate::edit::keys`] reads).
pub fn last_token_prompts(
    tok: &Tokenizer,
    words: &[String],
    templates: &[Template],
    prefixes: &[&str],
) -> Result<Vec<EditPrompt>> {
    let mut out = Vec::new();
    for (g, w) in words.iter().enumerate() {
        for t in templates {
            for p in prefixes {
                let text = format!("{p}{}", t.fill(w));
                let ids = tok.encode(&text)?;
                out.push(EditPrompt {
                    group: g,
                    last_subject_token: ids.len() - 1,
                    text,
                    ids,
                });
            }
        }
    }
    Ok(out)
}

/// What the probe and gap tuning share: checked layers, the pronoun ids, the fit prompts (edit
/// professions, then the word source's occupations, × fit templates (the split's Vig templates,
/// then `fit_templates`' extra ones) × prefixes, last token) and
/// the protected words' prompts (the protect set, then the word source's gendered nouns).
pub struct ProbePrompts {
    /// Sorted, unique, each below the model's layer count.
    pub layers: Vec<usize>,
    pub pronouns: [u32; 2],
    pub fit: Vec<EditPrompt>,
    pub words: Vec<String>,
    /// `words` × the same templates and prefixes; `group` indexes `words`.
    pub protect: Vec<EditPrompt>,
}

/// Where the probe's and gap tuning's prompts come from: their params' shared fields.
#[derive(Debug, Clone, Copy)]
pub struct PromptSources {
    /// Context prefixes per prompt (the first n of `DEFAULT_PREFIXES`).
    pub prefixes: usize,
    pub protect_set: ProtectSet,
    pub word_source: WordSource,
    pub fit_templates: FitTemplates,
}

impl PromptSources {
    /// Every data file these prompts read beyond the professions (their hashes go into the
    /// edit record).
    pub fn files(&self, data_dir: &Path) -> Vec<PathBuf> {
        let mut files = self.protect_set.files(data_dir);
        files.extend(self.word_source.file(data_dir));
        files.extend(self.fit_templates.file(data_dir));
        files
    }

    /// Read and parse those files, so a missing or malformed one fails before a model is
    /// loaded, naming the file (for a `validation` fit, also a templates file too short for
    /// its validation lines).
    pub fn check(&self, data_dir: &Path, validation: bool) -> Result<()> {
        protect_set_words(self.protect_set, data_dir, &[])?;
        extra_words(self.word_source, data_dir, &[])?;
        self.fit_templates
            .templates(Vec::new(), data_dir, validation)?;
        Ok(())
    }
}

pub fn probe_prompts(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    sources: PromptSources,
    data_dir: &Path,
) -> Result<ProbePrompts> {
    let PromptSources {
        prefixes,
        protect_set,
        word_source,
        fit_templates,
    } = sources;
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let n_layers = model.config().num_layers;
    if layers.is_empty() || layers.iter().any(|&l| l >= n_layers) {
        return Err(Error::param(
            "layers",
            format!("{layers:?} must be a non-empty subset of 0..{n_layers}"),
        ));
    }
    let tok = model.tokenizer()?;
    let pronouns = [tok.single_token_id(" he")?, tok.single_token_id(" she")?];
    let all = vig_templates();
    let vig_fit: Vec<Template> = sets
        .edit_templates
        .iter()
        .map(|&i| all[i].clone())
        .collect();
    let templates = fit_templates.templates(vig_fit, data_dir, sets.validation)?;
    let prefixes = &DEFAULT_PREFIXES[..prefixes.min(DEFAULT_PREFIXES.len())];
    let professions: Vec<String> =
        crate::data::Profession::load(&data_dir.join("bolukbasi_debiaswe/professions.json"))?
            .into_iter()
            .map(|p| p.raw)
            .collect();
    let mut words = protect_set_words(protect_set, data_dir, &professions)?;
    let known: Vec<String> = professions.iter().chain(&words).cloned().collect();
    let extra = extra_words(word_source, data_dir, &known)?;
    let fit_words: Vec<String> = sets
        .edit
        .iter()
        .chain(&extra.occupations)
        .cloned()
        .collect();
    let fit = last_token_prompts(tok, &fit_words, &templates, prefixes)?;
    words.extend(extra.gendered);
    let protect = last_token_prompts(tok, &words, &templates, prefixes)?;
    Ok(ProbePrompts {
        layers,
        pronouns,
        fit,
        words,
        protect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `files` is exactly what `check` (and so the edit) reads: a data folder with only those
    /// files passes, and without any one of them fails naming it. So the edit record's hashes
    /// cover every word file, and nothing it reads goes unhashed.
    #[test]
    fn the_listed_files_are_the_files_read() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data");
        let sources = PromptSources {
            prefixes: 1,
            protect_set: ProtectSet::Extended,
            word_source: WordSource::Wordnet,
            fit_templates: FitTemplates::Varied,
        };
        let listed = sources.files(&src);
        assert_eq!(listed.len(), 1 + 3 + 1 + 1, "{listed:?}");
        let copy = |dir: &Path, skip: Option<&PathBuf>| {
            for f in listed.iter().filter(|f| Some(*f) != skip) {
                let to = dir.join(f.strip_prefix(&src).unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(f, to).unwrap();
            }
        };
        let dir = tempfile::tempdir().unwrap();
        copy(dir.path(), None);
        sources.check(dir.path(), true).unwrap();
        for f in &listed {
            let dir = tempfile::tempdir().unwrap();
            copy(dir.path(), Some(f));
            let err = sources.check(dir.path(), true).unwrap_err().to_string();
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(err.contains(name), "without {name}: {err}");
        }
        // The plain choices read only the equalize pairs.
        let plain = PromptSources {
            prefixes: 1,
            protect_set: ProtectSet::Pairs,
            word_source: WordSource::Project,
            fit_templates: FitTemplates::Vig,
        };
        assert_eq!(plain.files(&src).len(), 1);
    }
}
