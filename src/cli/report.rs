//! `biaslens report`: run a spec's stages (reusing cached outputs) and write the tables, figures
//! and report.html; or, with `--inputs`, re-render a report from stored stage summaries.

use anyhow::{bail, Context};
use biaslens::io::{sha256_bytes, sha256_file};
use biaslens::report::pipeline::{Pipeline, RunMode};
use biaslens::report::write::write_report;
use biaslens::report::{Manifest, ReportInputs, Spec};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment spec (TOML), e.g. harness/quick.toml.
    #[arg(long)]
    pub spec: PathBuf,
    /// Output folder; stage outputs cached here are reused when their settings match.
    #[arg(long)]
    pub out: PathBuf,
    /// Render from a stored `inputs.json` (typed stage summaries) instead of running stages.
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Rerun every stage even when its cached output matches.
    #[arg(long, conflicts_with = "stored_only")]
    pub force: bool,
    /// Run nothing: write the tables and figures from the stages already stored in --out,
    /// leaving out the rest (their cells read as missing; the trade-off figures show the
    /// variants stored so far), e.g. while a long run is under way or from a committed stages/
    /// folder.
    #[arg(long)]
    pub stored_only: bool,
}

/// The stage implementations wired into the report (see `report::stages`).
fn stages(spec: &Spec) -> biaslens::Result<Pipeline> {
    biaslens::report::stages::standard_pipeline(spec)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let spec = Spec::load(&a.spec)?;
    // Fix the worker count before the first parallel kernel so reductions do not depend on the
    // machine's core count.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", spec.run.threads.to_string());
    }
    let spec_bytes = std::fs::read(&a.spec).with_context(|| format!("{}", a.spec.display()))?;
    let mut manifest = Manifest::new(
        &a.spec.display().to_string(),
        &sha256_bytes(&spec_bytes),
        &spec.model.name,
    );
    manifest.device = spec.model.device.clone();
    manifest.git_revision = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    manifest.threads = spec.run.threads;
    manifest.seeds.insert("split".into(), spec.split.seed);
    manifest.seeds.insert("trace".into(), spec.trace.seed);
    manifest.seeds.insert("bootstrap".into(), spec.run.seeds[0]);
    manifest.nondeterminism.push(
        "run.seeds beyond the first are not used: every edit is deterministic given the split"
            .into(),
    );
    if let Ok(biaslens::model::registry::ModelSource::Gguf(p)) =
        biaslens::model::registry::resolve_model(&spec.model.name)
    {
        manifest.model_sha256 = Some(sha256_file(&p)?);
    }
    let inputs: ReportInputs = match &a.inputs {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
            manifest
                .data_sha256
                .insert(p.display().to_string(), sha256_bytes(&bytes));
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a report inputs file", p.display()))?
        }
        None => {
            // The data every stage reads (measure's prompts, edits' word lists, eval's tasks).
            let data = biaslens::data::data_dir();
            let label = data
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .map_or_else(|_| data.display().to_string(), |p| p.display().to_string());
            let data_key = format!("{label} (folder)");
            let data_hash = biaslens::io::sha256_folder(&data)?;
            if let Some(old) = previous_data_hash(&a.out, &data_key) {
                if old != data_hash {
                    // Stage keys hold the data folder's path, not its content (hashing only
                    // what each stage reads is not done), so say it before stages are reused.
                    eprintln!(
                        "report: warning: the data folder {label} changed since {} was written \
                         (sha256 {} -> {}); stored stages are keyed by its path, not its \
                         content, so a stage that read a changed file is reused as it is: \
                         delete its stages/<stage>.json, or pass --force",
                        a.out.join("manifest.json").display(),
                        old.chars().take(16).collect::<String>(),
                        data_hash.chars().take(16).collect::<String>()
                    );
                }
            }
            manifest.data_sha256.insert(data_key, data_hash);
            let pipeline = stages(&spec)?;
            // One line per stage on stderr: a mitigation report runs for hours, and a resumed
            // run should say what it reused.
            let mode = match (a.force, a.stored_only) {
                (true, _) => RunMode::Force,
                (_, true) => RunMode::StoredOnly,
                _ => RunMode::Resume,
            };
            let outcome =
                pipeline.run_with_events(&spec, &a.out, mode, &mut |e| eprintln!("report {e}"))?;
            if !outcome.skipped.is_empty() {
                eprintln!(
                    "report: {} of {} stages are not stored yet and were left out: {}",
                    outcome.skipped.len(),
                    outcome.skipped.len() + outcome.records.len(),
                    outcome.skipped.join(", ")
                );
                manifest.stages_not_run = outcome.skipped.clone();
            }
            // A render that finds none of the stages would replace a report that has them with
            // an empty one: refuse (the stored stages were keyed by another spec or version).
            let previous = previous_stage_count(&a.out);
            if mode == RunMode::StoredOnly && outcome.records.is_empty() && previous > 0 {
                bail!(
                    "--stored-only: none of the {} stages of {} is stored in {} under the \
                     spec's current settings, while its report lists {previous}: nothing was \
                     written, so that report stays; run without --stored-only to recompute, or \
                     render into another --out",
                    outcome.skipped.len(),
                    a.spec.display(),
                    a.out.display()
                );
            }
            if !outcome.partial.is_empty() {
                eprintln!(
                    "report: drawn from the stored stages only (shown, not stored): {}",
                    outcome.partial.join(", ")
                );
            }
            if outcome.records.is_empty() && mode != RunMode::StoredOnly {
                bail!(
                    "no measure/trace/edit/eval stages are wired into `report` in this build; \
                     render stored summaries with --inputs FILE"
                );
            }
            manifest.stages = outcome.records;
            outcome.inputs
        }
    };
    manifest.total_wall_s = start.elapsed().as_secs_f64();
    let written = write_report(&a.out, &inputs, &manifest, &spec.output)?;
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// How many stage records `out`'s last manifest lists (0 without one).
fn previous_stage_count(out: &std::path::Path) -> usize {
    std::fs::read(out.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m.get("stages")?.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The data folder hash that `out`'s last manifest recorded under `key`, if any.
fn previous_data_hash(out: &std::path::Path, key: &str) -> Option<String> {
    let bytes = std::fs::read(out.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    m.get("data_sha256")?.get(key)?.as_str().map(str::to_string)
}
