//! `biaslens trace` and `biaslens mediate`: resumable, shardable sweeps over occupation prompts.

use super::common::{
    at_least_one, first_duplicate, positive, progress, require_tokenizer, ModelArgs, SeedArg,
};
use anyhow::Context;
use biaslens::measure::Subset;
use biaslens::model::Model;
use biaslens::rundir::{RunDir, Shard};
use biaslens::trace::mediation::{mediate, MediationCase};
use biaslens::trace::prompts::{pronoun_ids, subject_span};
use biaslens::trace::run::{finalize, MediationRecord};
use biaslens::trace::{trace_fast, trace_naive, Kind, NoiseLevel, PreparedTrace, TraceJob};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The library's defaults, which the flags default to.
fn defaults() -> TraceJob {
    TraceJob::default()
}

fn default_kinds() -> String {
    let kinds: Vec<&str> = defaults().settings.kinds.iter().map(|k| k.name()).collect();
    kinds.join(",")
}

/// What `trace` and `mediate` share: the model, the prompts and the run directory.
#[derive(clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of occupation prompts (a seeded shuffle of professions × 17 templates).
    #[arg(long, default_value_t = defaults().prompts, value_parser = at_least_one)]
    pub prompts: usize,
    /// Run directory (resumed when it exists with the same settings).
    #[arg(long)]
    pub out: PathBuf,
    /// This process's part, `i/n` (default: SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX).
    #[arg(long)]
    pub shard: Option<String>,
    #[command(flatten)]
    pub rng: SeedArg,
    /// professions.json ([name, definitional, stereotypical] triples); default:
    /// bolukbasi_debiaswe/professions.json in $BIASLENS_DATA, else in the crate's fixtures/data.
    #[arg(long)]
    pub professions: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Which professions of the default split: all, edit, held-out, controls or validation
    /// (`edit` with the report spec's prompts, seed and settings gives the report's trace).
    #[arg(long, default_value_t = defaults().subset)]
    pub split: Subset,
    #[arg(long, default_value_t = defaults().settings.samples, value_parser = at_least_one)]
    pub samples: usize,
    #[arg(long, default_value_t = defaults().settings.window, value_parser = at_least_one)]
    pub window: usize,
    /// Comma-separated kinds: hidden, mlp, attn.
    #[arg(long, default_value_t = default_kinds())]
    pub kinds: String,
    /// Noise std as a multiple of the embedding output's std over the selected prompts
    /// (default: the library's, 3; ignored with --noise-std).
    #[arg(long, value_parser = positive)]
    pub noise_times: Option<f64>,
    /// A fixed noise std.
    #[arg(long, value_parser = positive)]
    pub noise_std: Option<f64>,
    /// Rows per batched pass of the fast path.
    #[arg(long, default_value_t = defaults().batch_rows, value_parser = at_least_one)]
    pub batch_rows: usize,
    /// Instead of a run: time the fast and the naive path on this many prompts, print the speedup.
    #[arg(long, value_parser = at_least_one)]
    pub bench_naive: Option<usize>,
    /// Also write the embedding noise of every traced prompt to this safetensors file
    /// (`noise.{i}`: [samples, occupation tokens, hidden size] f32, i = the item's index in
    /// results.jsonl), so another implementation can trace with the same noise.
    #[arg(long)]
    pub noise_out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct MediateArgs {
    #[command(flatten)]
    pub common: Common,
}

fn shard(spec: &Option<String>) -> anyhow::Result<Shard> {
    Ok(match spec {
        Some(s) => Shard::parse(s)?,
        None => Shard::from_env()?.unwrap_or(Shard::WHOLE),
    })
}

fn load_model(c: &Common) -> anyhow::Result<Model> {
    let (spec, device) = (&c.model.model, c.model.device()?);
    let model = Model::load(spec, &device).with_context(|| format!("--model {spec}"))?;
    require_tokenizer(&model)?;
    Ok(model)
}

/// Process the owned, unfinished items; finalise when this process ran the whole set.
fn sweep<T: serde::Serialize>(
    out: &std::path::Path,
    settings: serde_json::Value,
    n: usize,
    sh: Shard,
    what: &str,
    mut f: impl FnMut(usize) -> anyhow::Result<T>,
) -> anyhow::Result<()> {
    let mut run = RunDir::open(out, &settings)?;
    let todo: Vec<usize> = (0..n).filter(|&i| sh.owns(i) && !run.is_done(i)).collect();
    let pb = progress(todo.len() as u64, what);
    let start = Instant::now();
    for &i in &todo {
        let rec = f(i)?;
        run.append(i, &rec)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!(
        "{what}: {} items in {:.1} s ({} already done)",
        todo.len(),
        start.elapsed().as_secs_f64(),
        run.done_count() - todo.len()
    );
    if sh.is_whole() && run.done_count() == n {
        run.normalise()?;
        drop(run);
        finalize(out)?;
        eprintln!("{what}: wrote summary.json and plots to {}", out.display());
    }
    Ok(())
}

/// The job the flags describe, checked before the model is loaded and anything is written.
pub fn job_of(a: &TraceArgs) -> anyhow::Result<TraceJob> {
    let kinds = a
        .kinds
        .split(',')
        .map(|k| Kind::parse(k.trim()))
        .collect::<biaslens::Result<Vec<_>>>()
        .with_context(|| format!("--kinds {}", a.kinds))?;
    if let Some(k) = first_duplicate(&kinds) {
        anyhow::bail!("--kinds {}: `{}` is named twice", a.kinds, k.name());
    }
    let mut job = defaults();
    job.professions = a.common.professions.clone();
    job.subset = a.split;
    job.prompts = a.common.prompts;
    job.batch_rows = a.batch_rows;
    let s = &mut job.settings;
    (s.samples, s.window, s.kinds, s.seed) = (a.samples, a.window, kinds, a.common.rng.seed);
    s.noise = match (a.noise_std, a.noise_times) {
        (Some(std), _) => NoiseLevel::Fixed(std),
        (None, Some(k)) => NoiseLevel::EmbedStdTimes(k),
        (None, None) => s.noise,
    };
    job.validate()?;
    Ok(job)
}

pub fn run_trace(a: TraceArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let sh = shard(&c.shard)?;
    let job = job_of(&a)?;
    if let Some(p) = &a.noise_out {
        biaslens::io::check_output_file(p, false, &[])?;
    }
    let model = load_model(c)?;
    let prepared = job.prepare(&model)?;
    for s in &prepared.skipped {
        eprintln!("skipping {:?}: {}", s.text, s.reason);
    }
    let n = prepared.items.len();
    if let Some(p) = &a.noise_out {
        write_noise(&prepared, p)?;
        eprintln!("wrote the noise of {n} prompts to {}", p.display());
    }
    if let Some(k) = a.bench_naive {
        return bench(&prepared, k.min(n));
    }
    // `trace` stays a top-level key: `finalize` reads its window, a changed setting is named
    // `trace.<field>`. Batch rows are left out, as before, so that a resumed run may use another
    // --batch-rows; they move the probabilities by about 1e-9 (tiny llama, 2 vs 480 rows).
    let s = json!({
        "command": "trace", "model": model.info.name, "model_sha256": model.info.sha256,
        "professions": job.professions, "subset": job.subset, "split": job.split,
        "prompts": job.prompts, "items": n, "skipped": prepared.skipped.len(),
        "seed": job.settings.seed, "trace": job.settings, "noise_std": prepared.noise_std,
    });
    sweep(&c.out, s, n, sh, "trace", |i| Ok(prepared.run_item(i)?))
}

/// Every item's noise as `noise.{i}` (f32, little endian) with the noise std as metadata.
fn write_noise(p: &PreparedTrace, path: &std::path::Path) -> anyhow::Result<()> {
    let mut owned = Vec::with_capacity(p.items.len());
    for i in 0..p.items.len() {
        let t = p.noise(i)?.to_device(&candle_core::Device::Cpu)?;
        let bytes: Vec<u8> = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        owned.push((format!("noise.{i}"), t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(name, shape, b)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?;
            Ok((name.clone(), v))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meta =
        std::collections::HashMap::from([("noise_std".to_string(), format!("{:e}", p.noise_std))]);
    let bytes = safetensors::serialize(views, &Some(meta))?;
    biaslens::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// Fast vs naive on the first `k` items, with the run's noise, in one process.
fn bench(p: &PreparedTrace, k: usize) -> anyhow::Result<()> {
    let model = &p.model().transformer;
    let (mut tf, mut tn, mut worst) = (0f64, 0f64, 0f64);
    for (i, item) in p.items[..k].iter().enumerate() {
        let noise = p.noise(i)?;
        let t0 = Instant::now();
        let f = trace_fast(model, &item.case, &noise, p.settings())?;
        let t1 = Instant::now();
        let n = trace_naive(model, &item.case, &noise, p.settings())?;
        let t2 = Instant::now();
        tf += (t1 - t0).as_secs_f64();
        tn += (t2 - t1).as_secs_f64();
        for (gf, gn) in f.grids.iter().zip(&n.grids) {
            for (a, b) in gf.probs.iter().flatten().zip(gn.probs.iter().flatten()) {
                worst = (0..3).map(|k| (a[k] - b[k]).abs()).fold(worst, f64::max);
            }
        }
        eprintln!(
            "{:?} ({} tokens): fast {:.2} s, naive {:.2} s",
            item.prompt.text,
            item.case.ids.len(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    println!("{{\"prompts\": {k}, \"fast_s\": {tf:.3}, \"naive_s\": {tn:.3}, \"speedup\": {:.2}, \"max_abs_diff\": {worst:.2e}}}", tn / tf);
    Ok(())
}

pub fn run_mediate(a: MediateArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let sh = shard(&c.shard)?;
    let model = load_model(c)?;
    // The same draw as `trace` over all professions.
    let mut selection = defaults();
    selection.professions = c.professions.clone();
    selection.prompts = c.prompts;
    selection.settings.seed = c.rng.seed;
    let tok = model.tokenizer()?;
    let pronouns = pronoun_ids(tok)?;
    let mut items = Vec::new();
    let mut unaligned = std::collections::BTreeSet::new();
    let mut multi_token = std::collections::BTreeSet::new();
    for p in selection.select()? {
        let male = p.stereotypical >= 0.0;
        let noun = if male { "woman" } else { "man" };
        let (base, base_subject) = subject_span(tok, &p.template, &p.name)?;
        let (swapped, swapped_subject) = subject_span(tok, &p.template, noun)?;
        let case = MediationCase {
            base,
            swapped,
            base_subject,
            swapped_subject,
            pronouns,
            male_stereotype: male,
        };
        // Prompts whose tokens around the occupation change with it cannot be aligned.
        if case.alignment().is_err() {
            unaligned.insert(p.profession.clone());
            continue;
        }
        if base_subject.1 - base_subject.0 != swapped_subject.1 - swapped_subject.0 {
            multi_token.insert(p.profession.clone());
        }
        let swapped_text = p.template.replacen("{}", noun, 1);
        items.push((p, swapped_text, case));
    }
    let s = json!({
        "command": "mediate", "model": model.info.name, "model_sha256": model.info.sha256,
        "prompts": c.prompts, "items": items.len(), "seed": c.rng.seed,
        "intervention": "occupation replaced by the anti-stereotypical noun (man / woman); \
            tokens aligned by the occupation's last token (docs/method.md)",
        "professions_with_other_token_counts": multi_token,
        "professions_not_aligned": unaligned,
    });
    if !unaligned.is_empty() {
        eprintln!(
            "mediate: {} professions change the tokens around them and are left out: {:?}",
            unaligned.len(),
            unaligned
        );
    }
    let n = items.len();
    sweep(&c.out, s, n, sh, "mediate", |i| {
        let (p, swapped_text, case) = &items[i];
        let result = mediate(&model.transformer, case)?;
        Ok(MediationRecord {
            profession: p.profession.clone(),
            template_index: p.template_index,
            text: p.text.clone(),
            swapped_text: swapped_text.clone(),
            result,
        })
    })
}
