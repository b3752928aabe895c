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
pub use split::{
    check_varied_lines, split_professions, validation_professions, Part, Split, SplitSpec,
    TemplateSplit, UNSEEN_TEMPLATES, VALIDATION_TEMPLATES, VARIED_TEMPLATES_FILE,
    VARIED_VALIDATION_TEMPLATES,
};

use std::path::{Path, PathBuf};

/// The folder of vendored datasets, resolved the same way by every command: the command's flag
/// (`flag`, e.g. `eval --data`), else `$BIASLENS_DATA` (an empty value counts as unset), else
/// the crate's own `fixtures/data`. It does not depend on the working directory (a relative
/// flag or variable is, as always, relative to it).
pub fn resolve_data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("BIASLENS_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data"),
    }
}

/// The data folder without a flag: `$BIASLENS_DATA`, else the crate's copy (see
/// [`resolve_data_dir`]).
pub fn data_dir() -> PathBuf {
    resolve_data_dir(None)
}
