//! Pronoun word sets as plain strings. Which token ids they map to is decided later with the
//! model's real tokenizer; here we only say whether the word carries a leading space.

use serde::{Deserialize, Serialize};

/// How a pronoun is written when it follows a prompt: `" he"` (the next word after a space,
/// what BPE tokenizers see) or `"he"` (bare, for tokenizers that mark word starts themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PronounForms {
    LeadingSpace,
    Bare,
}

impl PronounForms {
    pub fn render(self, word: &str) -> String {
        match self {
            PronounForms::LeadingSpace => format!(" {word}"),
            PronounForms::Bare => word.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gender {
    Male,
    Female,
    Neutral,
}

/// The male, female and neutral word of one grammatical case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PronounSet {
    pub male: &'static str,
    pub female: &'static str,
    pub neutral: &'static str,
}

/// Subject pronouns: the next-token candidates of the occupation prompts.
pub const SUBJECT: PronounSet = PronounSet {
    male: "he",
    female: "she",
    neutral: "they",
};

/// Object pronouns.
pub const OBJECT: PronounSet = PronounSet {
    male: "him",
    female: "her",
    neutral: "them",
};

/// Possessive determiners.
pub const POSSESSIVE: PronounSet = PronounSet {
    male: "his",
    female: "her",
    neutral: "their",
};

/// Vig et al.'s interventions replace the profession with these words.
pub const INTERVENTION_NOUNS: PronounSet = PronounSet {
    male: "man",
    female: "woman",
    neutral: "person",
};

impl PronounSet {
    pub fn get(&self, gender: Gender) -> &'static str {
        match gender {
            Gender::Male => self.male,
            Gender::Female => self.female,
            Gender::Neutral => self.neutral,
        }
    }

    /// `[male, female, neutral]` written in `forms`.
    pub fn rendered(&self, forms: PronounForms) -> [String; 3] {
        [Gender::Male, Gender::Female, Gender::Neutral].map(|g| forms.render(self.get(g)))
    }
}
