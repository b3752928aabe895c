//! The gendered words the probe and gap tuning hold at zero change.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Gendered nouns that are not in the profession list: Bolukbasi et al.'s equalize pairs, single
/// lower-case words only. Returned sorted, both members of each pair.
pub fn protected_words(data_dir: &Path, professions: &[String]) -> Result<Vec<String>> {
    let path = data_dir.join(EQUALIZE_PAIRS);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
    let pairs: Vec<[String; 2]> = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("expected [[word, word], ...]: {e}")))?;
    let mut words: Vec<String> = pairs
        .into_iter()
        .filter(|[a, b]| [a, b].iter().all(|w| plain_word(w)))
        .flatten()
        .filter(|w| !professions.iter().any(|p| p == w))
        .collect();
    words.sort();
    words.dedup();
    if words.is_empty() {
        return Err(Error::file(&path, "no usable gendered word pairs"));
    }
    Ok(words)
}

/// Which gendered words the probe and gap tuning hold at zero change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectSet {
    /// The equalize pairs' plain words ([`protected_words`], 37 words).
    #[default]
    Pairs,
    /// Those plus the seed list's singular gendered persons
    /// (`protected/gendered_persons.json`, 87 words; fixtures/data/protected/README.md).
    Persons,
    /// Those plus gendered role nouns that are not professions (`protected/gendered_roles.json`,
    /// 56 words: hostess, policewoman, doorman, duchess, …).
    Roles,
    /// Those plus 96 more definitionally gendered persons (`protected/gendered_extended.json`:
    /// grandson, baroness, cowboy, spinster, …), for wider coverage of "gendered by definition".
    Extended,
}

impl std::str::FromStr for ProtectSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pairs" => Ok(ProtectSet::Pairs),
            "persons" => Ok(ProtectSet::Persons),
            "roles" => Ok(ProtectSet::Roles),
            "extended" => Ok(ProtectSet::Extended),
            _ => Err(Error::param(
                "protect set",
                format!("`{s}`: expected pairs, persons, roles or extended"),
            )),
        }
    }
}

/// The equalize pairs, read by every protect set.
const EQUALIZE_PAIRS: &str = "bolukbasi_debiaswe/equalize_pairs.json";

impl ProtectSet {
    /// The files this set's words come from: the equalize pairs, then its lists under
    /// `protected/`.
    pub fn files(self, data_dir: &Path) -> Vec<PathBuf> {
        let lists: &[&str] = match self {
            ProtectSet::Pairs => &[],
            ProtectSet::Persons => &["gendered_persons.json"],
            ProtectSet::Roles => &["gendered_persons.json", "gendered_roles.json"],
            ProtectSet::Extended => &[
                "gendered_persons.json",
                "gendered_roles.json",
                "gendered_extended.json",
            ],
        };
        std::iter::once(data_dir.join(EQUALIZE_PAIRS))
            .chain(lists.iter().map(|f| data_dir.join("protected").join(f)))
            .collect()
    }
}

/// The protected words of `set`, sorted, none of them in `professions`.
pub fn protect_set_words(
    set: ProtectSet,
    data_dir: &Path,
    professions: &[String],
) -> Result<Vec<String>> {
    let mut words = protected_words(data_dir, professions)?;
    for path in set.files(data_dir).into_iter().skip(1) {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
        let extra: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("expected [word, ...]: {e}")))?;
        words.extend(extra.into_iter().filter(|w| !professions.contains(w)));
    }
    words.sort();
    words.dedup();
    Ok(words)
}

fn plain_word(w: &str) -> bool {
    !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()) && !NOT_A_PERSON.contains(&w)
}

/// Equalize-pair words that do not name one person, so "The {} said that" is no gendered
/// subject: pronouns, plurals, animals, institutions, hormones, abstractions.
const NOT_A_PERSON: &[&str] = &[
    "he",
    "she",
    "his",
    "her",
    "himself",
    "herself",
    "boys",
    "girls",
    "brothers",
    "sisters",
    "dads",
    "moms",
    "daughters",
    "sons",
    "fathers",
    "mothers",
    "females",
    "males",
    "gals",
    "dudes",
    "gentlemen",
    "ladies",
    "men",
    "women",
    "kings",
    "queens",
    "wives",
    "husbands",
    "granddaughters",
    "grandsons",
    "colt",
    "filly",
    "gelding",
    "mare",
    "convent",
    "monastery",
    "fraternity",
    "sorority",
    "estrogen",
    "testosterone",
    "fatherhood",
    "motherhood",
    "female",
    "male",
];

/// Which words beyond the edit professions and the protect set the probe and gap tuning fit on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordSource {
    /// The project's lists only.
    #[default]
    Project,
    /// Also WordNet's occupations (fit prompts: their gap is removed) and gendered person nouns
    /// (protected prompts: their gap is kept), `wordnet/words.json` (614, 133 and 110 words;
    /// fixtures/data/wordnet/README.md): more words from which to learn what separates a
    /// stereotyped occupation from a noun gendered by definition (findings §6h).
    Wordnet,
}

impl WordSource {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            WordSource::Project => "project",
            WordSource::Wordnet => "wordnet",
        }
    }

    pub fn is_project(&self) -> bool {
        *self == WordSource::Project
    }

    /// The file this source's words come from, if any.
    pub fn file(self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            WordSource::Project => None,
            WordSource::Wordnet => Some(data_dir.join("wordnet/words.json")),
        }
    }
}

impl std::str::FromStr for WordSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "word source",
            s,
            &[WordSource::Project, WordSource::Wordnet],
            WordSource::name,
        )
    }
}

/// The extra words of a [`WordSource`]: occupations to fit, gendered nouns to protect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraWords {
    pub occupations: Vec<String>,
    pub gendered: Vec<String>,
}

/// The words `source` adds, minus every word in `exclude` (the project's professions, among them
/// the held-out ones and the definitional controls, which no edit may see, and the protected
/// words already present).
pub fn extra_words(source: WordSource, data_dir: &Path, exclude: &[String]) -> Result<ExtraWords> {
    let Some(path) = source.file(data_dir) else {
        return Ok(ExtraWords::default());
    };
    #[derive(Deserialize)]
    struct File {
        occupations: Vec<String>,
        male: Vec<String>,
        female: Vec<String>,
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e.to_string()))?;
    let file: File = serde_json::from_str(&text).map_err(|e| {
        Error::file(
            &path,
            format!("expected {{\"occupations\": [...], \"male\": [...], \"female\": [...]}}: {e}"),
        )
    })?;
    let keep = |w: &String| !w.is_empty() && !exclude.contains(w);
    let occupations: Vec<String> = file.occupations.into_iter().filter(keep).collect();
    let gendered: Vec<String> = file
        .male
        .into_iter()
        .chain(file.female)
        .filter(keep)
        .filter(|w| !occupations.contains(w))
        .collect();
    if occupations.is_empty() || gendered.is_empty() {
        return Err(Error::file(
            &path,
            "no usable occupations or gendered nouns",
        ));
    }
    Ok(ExtraWords {
        occupations,
        gendered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::probe::ProbeParams;
    use crate::edit::tune::TuneParams;

    /// The default source is not written, so earlier edits' cache keys and records stay valid;
    /// `wordnet` is written and read back.
    #[test]
    fn only_a_non_default_word_source_is_written() {
        fn check<P: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            plain: &P,
            with: &P,
        ) {
            let v = serde_json::to_value(plain).unwrap();
            assert!(v.get("word_source").is_none(), "{v}");
            let w = serde_json::to_value(with).unwrap();
            assert_eq!(w["word_source"], "wordnet");
            assert_eq!(&serde_json::from_value::<P>(w).unwrap(), with);
        }
        let tune = TuneParams {
            word_source: WordSource::Wordnet,
            ..TuneParams::default()
        };
        check(&TuneParams::default(), &tune);
        let probe = ProbeParams {
            word_source: WordSource::Wordnet,
            ..ProbeParams::default()
        };
        check(&ProbeParams::default(), &probe);
        assert_eq!(
            "wordnet".parse::<WordSource>().unwrap(),
            WordSource::Wordnet
        );
        assert!("wordnets".parse::<WordSource>().is_err());
    }
}
