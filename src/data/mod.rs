//! Prompt data: occupation prompts (Bolukbasi professions × Vig templates), the deterministic
//! edit / held-out / control split of professions, and the pronoun word sets.

pub mod occupations;
pub mod pronouns;
pub mod split;

pub use occupations::{
    occupation_prompts, vig_templates, BlsRow, BlsTable, OccupationPrompt, Profession, Template,
    VIG_TEMPLATES,
};
pub use pronouns::{Gender, PronounForms, PronounSet};
pub use split::{split_professions, Part, Split, SplitSpec};
