//! The `biaslens` command line. Each file holds a subcommand's clap `Args` and a `run` that
//! calls the library; the binary (src/main.rs) and `python -m biaslens` both call
//! [`main_with_args`].

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
    /// Edit a model (by default the method validated for it: gap tuning with WordNet's words on
    /// SmolLM2 and Gemma-3; also the gap probe, LSDM, FT-L, DAMA) and write it out.
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

/// Parse `args` (the first is the program name) and run the command, as the `biaslens` binary
/// does: a usage error or `--help` is printed by clap, a failure as one `error: ...` line on
/// stderr. Returns the exit code (0 ok, 1 failed, 2 usage error).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // What clap's `exit` does, without ending the process.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
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

#[cfg(test)]
mod tests {
    //! The flags shared through `common`'s flattened structs keep each subcommand's names,
    //! defaults and required-ness.
    use super::{Cli, Command};
    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("biaslens").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    fn error_kind(args: &[&str]) -> Option<ErrorKind> {
        parse(args).err().map(|e| e.kind())
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn measure_and_edit_default_model_device_and_seed() {
        let Ok(Command::Measure(m)) = parse(&["measure"]) else {
            panic!("measure without flags did not parse");
        };
        assert_eq!(m.model.model, "smollm2-135m");
        assert_eq!(m.model.device.device, "cpu");
        assert_eq!(m.rng.seed, 0);
        assert!(m.output.json.is_none() && !m.output.force);
        let Ok(Command::Edit(e)) = parse(&["edit", "--out", "o"]) else {
            panic!("edit --out o did not parse");
        };
        assert_eq!(e.model.model, "smollm2-135m");
        assert_eq!(e.model.device.device, "cpu");
        assert_eq!(e.rng.seed, 0);
        assert!(!e.output.force && !e.output.gguf);
        assert_eq!(
            error_kind(&["edit"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
    }

    #[test]
    fn trace_and_mediate_need_model_and_out() {
        for sub in ["trace", "mediate"] {
            assert_eq!(
                error_kind(&[sub, "--out", "o"]),
                Some(ErrorKind::MissingRequiredArgument)
            );
            assert_eq!(
                error_kind(&[sub, "--model", "m"]),
                Some(ErrorKind::MissingRequiredArgument)
            );
            assert_eq!(
                error_kind(&[sub, "--model", "m", "--out", "o", "--force"]),
                Some(ErrorKind::UnknownArgument)
            );
        }
        let args = ["trace", "--model", "m", "--out", "o", "--device", "cuda:1"];
        let Ok(Command::Trace(t)) = parse(&args) else {
            panic!("trace did not parse");
        };
        assert_eq!(t.common.model.model, "m");
        assert_eq!(t.common.model.device.device, "cuda:1");
        assert_eq!(
            t.common.rng.seed,
            biaslens::trace::TraceJob::default().settings.seed
        );
    }

    #[test]
    fn eval_keeps_its_own_seed_default_and_needs_model_and_out() {
        let Ok(Command::Eval(e)) = parse(&["eval", "--model", "m", "--out", "o"]) else {
            panic!("eval did not parse");
        };
        assert_eq!(e.seed, 1234);
        assert_eq!(e.model.device.device, "cpu");
        assert!(!e.output.force);
        assert_eq!(
            error_kind(&["eval", "--out", "o"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            error_kind(&["eval", "--model", "m"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
    }

    /// An eval shard record stores the arguments flat, as before the shared structs (older
    /// eval-shard.json files still read).
    #[test]
    fn eval_args_serialize_flat() {
        let Ok(Command::Eval(e)) = parse(&["eval", "--model", "m", "--out", "o", "--force"]) else {
            panic!("eval did not parse");
        };
        let v = serde_json::to_value(&e).expect("serialize");
        assert_eq!(v["model"], "m");
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["out"], "o");
        assert_eq!(v["force"], true);
        assert_eq!(v["seed"], 1234);
        let back: super::eval::EvalArgs = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back.model.model, "m");
        assert_eq!(back.output.out, std::path::PathBuf::from("o"));
    }

    #[test]
    fn apply_and_revert_take_no_device() {
        for sub in ["apply", "revert"] {
            let base = [sub, "--model", "m", "--delta", "d", "--out", "o"];
            assert!(parse(&base).is_ok(), "{sub} did not parse");
            let with_device = [&base[..], &["--device", "cpu"]].concat();
            assert_eq!(error_kind(&with_device), Some(ErrorKind::UnknownArgument));
        }
    }

    #[test]
    fn json_and_out_flags() {
        let Ok(Command::Compare(c)) = parse(&["compare", "a", "b", "--json", "j", "--force"])
        else {
            panic!("compare did not parse");
        };
        assert!(c.output.json.is_some() && c.output.force);
        let Ok(Command::Merge(m)) = parse(&["merge", "--out", "o", "s1", "--force"]) else {
            panic!("merge did not parse");
        };
        assert!(m.output.force && m.shards.len() == 1);
        assert_eq!(
            error_kind(&["merge", "s1"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        let Ok(Command::Report(r)) = parse(&["report", "--spec", "s", "--out", "o", "--force"])
        else {
            panic!("report did not parse");
        };
        assert!(r.force);
    }
}
