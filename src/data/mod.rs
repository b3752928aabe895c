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

use std::path::PathBuf;

/// Folder of vendored datasets: `$BIASLENS_DATA`, else `./fixtures/data`, else the crate's copy.
pub fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BIASLENS_DATA") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("fixtures/data");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data")
}
