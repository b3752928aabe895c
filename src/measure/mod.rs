//! Measure: next-token pronoun probabilities on prompts and the bias metrics built on them.

pub mod against_base;
pub mod bias;
pub mod job;
pub mod occupations;
pub mod probs;

pub use against_base::{against_base, AgainstBase};
pub use bias::{bias_metrics, gap_toward_definitional, BiasMetrics};
pub use job::MeasureJob;
pub use occupations::{
    measure_occupations, prompt_probs, MeasureOptions, MeasureResult, PromptProbs, Subset,
};
pub use probs::{next_token_probs, sequence_probs, PronounTargets};
