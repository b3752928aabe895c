//! Subcommands. Each file holds its clap `Args` and a `run` that calls the library.

pub mod common;
pub mod edit;
pub mod eval;
pub mod measure;
pub mod merge;
pub mod report;
pub mod trace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "biaslens",
    version,
    about = "Locate, remove and verify gender bias in language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Pronoun probabilities and bias metrics on occupation prompts.
    Measure(measure::Args),
    /// ROME-style causal tracing of the gender metric (resumable).
    Trace(trace::TraceArgs),
    /// Vig et al. causal mediation analysis (resumable).
    Mediate(trace::MediateArgs),
    /// Edit a model with LSDM, FT-L or DAMA and write it out.
    Edit(edit::EditArgs),
    /// Apply a stored delta to a model and write the edited model.
    Apply(edit::ApplyArgs),
    /// Revert a stored delta, restoring the original weights bit for bit.
    Revert(edit::RevertArgs),
    /// Bias and capability benchmarks.
    Eval(eval::EvalArgs),
    /// Compare evaluation results side by side with paired tests.
    Compare(eval::CompareArgs),
    /// Run a spec end to end and write the paper's tables and figures.
    Report(report::Args),
    /// Merge shard outputs into the single-run result.
    Merge(merge::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Measure(a) => measure::run(a),
        Command::Trace(a) => trace::run_trace(a),
        Command::Mediate(a) => trace::run_mediate(a),
        Command::Edit(a) => edit::run_edit(a),
        Command::Apply(a) => edit::run_apply(a),
        Command::Revert(a) => edit::run_revert(a),
        Command::Eval(a) => eval::run_eval(a),
        Command::Compare(a) => eval::run_compare(a),
        Command::Report(a) => report::run(a),
        Command::Merge(a) => merge::run(a),
    }
}
