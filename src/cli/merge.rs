//! `biaslens merge`: shard directories of one trace / mediate / eval run into the single-run
//! result.

use super::common::OutArgs;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    // --out: the merged run directory.
    #[command(flatten)]
    pub output: OutArgs,
    /// The shard directories (same settings).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Write summaries and plots even when items are missing (to look at a sweep in progress).
    #[arg(long)]
    pub allow_partial: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use biaslens::rundir::{RESULTS, SETTINGS};
    let (out, force) = (&a.output.out, a.output.force);
    let eval = a.shards[0].join(super::eval::SHARD_RECORD).is_file();
    // Check every result file before any is written; a shard's own files are never overwritten.
    let outputs = if eval {
        ["results.json", "results.md"]
    } else {
        [SETTINGS, RESULTS]
    };
    let inputs: Vec<PathBuf> = a
        .shards
        .iter()
        .flat_map(|d| outputs.iter().map(|f| d.join(f)))
        .collect();
    let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    for f in outputs {
        biaslens::io::check_output_file(&out.join(f), force, &inputs)?;
    }
    if eval {
        return super::eval::merge_eval_shards(out, &a.shards, force);
    }
    let n = biaslens::rundir::merge(out, &a.shards)?;
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join(biaslens::rundir::SETTINGS),
    )?)?;
    let expected = settings
        .get("items")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    eprintln!("merge: {n} records into {}", out.display());
    match expected {
        Some(e) if e != n && !a.allow_partial => anyhow::bail!(
            "the shards hold {n} of {e} items; run the missing shards, then merge again"
        ),
        _ => biaslens::trace::run::finalize(out)?,
    }
    if let Some(e) = expected.filter(|&e| e != n) {
        eprintln!("merge: partial result, {n} of {e} items");
    }
    Ok(())
}
