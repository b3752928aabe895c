//! biaslens: locate gender bias in a language model, remove it with a least-squares MLP edit,
//! and verify that the rest of the model survived.
//!
//! Modules follow the data flow: `model` (weights, tokenizer, the instrumented forward) →
//! `data` (prompts and benchmark items) → `measure` (pronoun probabilities and bias metrics) →
//! `trace` / `mediate` (where the bias flows) → `edit` (LSDM and baselines) → `eval`
//! (bias and capability benchmarks) → `report` (tables, figures, snapshots).

// The command line lives in the library so that the Python bindings (crates/biaslens-py) run
// the same code: its files name the crate `biaslens::`, as from outside.
extern crate self as biaslens;

pub mod cli;
pub mod data;
pub mod device;
pub mod edit;
pub mod error;
pub mod eval;
pub mod io;
pub mod measure;
pub mod model;
pub mod plot;
pub mod report;
pub mod rundir;
pub mod stats;
pub mod tokenizer;
pub mod trace;

pub use error::{Error, Result};
