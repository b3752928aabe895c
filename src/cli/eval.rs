//! `biaslens eval` (run a benchmark suite on one model) and `biaslens compare` (runs side by
//! side with deltas and paired tests).

use super::common::{
    at_least_one, fraction, progress, require_tokenizer, JsonOutArgs, ModelArgs, OutArgs,
};
use anyhow::{bail, Context};
use biaslens::eval::compare::{compare, markdown as compare_markdown};
use biaslens::eval::load::LoadOptions;
use biaslens::eval::model_lm::{LmOptions, ModelLm, Products};
use biaslens::eval::registry::TaskRegistry;
use biaslens::eval::suite::{
    markdown, parse_tasks_in, run_suite, suite_tasks_in, SuiteOptions, SuiteResult,
};
use biaslens::io::check_output_file;
use biaslens::model::Model;
use biaslens::rundir::Shard;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    /// bias, capability or all (ignored when --tasks is given).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Comma-separated task names, e.g. copa,arc_easy.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Task registry file (TOML `[[task]]` records, see src/eval/tasks.toml) whose tasks are
    /// added to the built-in ones for --tasks (default: $BIASLENS_TASKS if set).
    #[arg(long)]
    #[serde(default)]
    pub task_file: Option<PathBuf>,
    /// Keep only the first N items of each data file.
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Keep a seeded random fraction in (0, 1] of each data file.
    #[arg(long, value_parser = fraction)]
    pub fraction: Option<f64>,
    // Not common::SeedArg: eval's default is 1234, the other commands' 0.
    /// Seed of the --fraction sample.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Skip (and report) data lines that do not parse instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Folder with the benchmark data (default: $BIASLENS_DATA, else the crate's fixtures/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Result cache (resume after a crash); --no-cache disables it.
    #[arg(long, default_value = ".biaslens-cache")]
    pub cache: PathBuf,
    #[arg(long)]
    pub no_cache: bool,
    /// Upper bound on rows × tokens of one forward pass.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    pub batch_tokens: usize,
    /// Longest model input (lm-eval max_length), capped by the model's positions.
    #[arg(long, default_value_t = 2048, value_parser = at_least_one)]
    pub max_length: usize,
    /// Longest row of requests packed as a token trie to share their common prefix (the
    /// choices of an item, questions on one passage); 0 scores every request in its own row.
    #[arg(long, default_value_t = 128)]
    pub pack_tokens: usize,
    /// Fewest shared leading tokens for two requests to share a packed row.
    #[arg(long, default_value_t = 4)]
    pub pack_min_shared: usize,
    /// Fill rows with several packed requests up to this many tokens (less padding); 0 keeps
    /// one per row.
    #[arg(long, default_value_t = 128)]
    pub row_tokens: usize,
    /// Use candle's composed ops everywhere (matmul, attention, SwiGLU, RMS norm) instead of
    /// the fused AVX-512 kernels: the slow reference.
    #[arg(long, alias = "candle-matmul")]
    pub candle_ops: bool,
    /// Batches scored at once on separate threads (keeps every core busy between matmuls).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    pub parallel_batches: usize,
    /// The projections' arithmetic: f32, or bf16x3 (three bf16 products with f32
    /// accumulation; `mkl` builds, fast on CPUs with AMX; docs/method.md §7).
    #[arg(long, default_value = "f32")]
    pub products: Products,
    // --out: results.json and results.md (a shard: eval-shard.json and cache/).
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutArgs,
    /// This process's part of the requests, `i/n` (default: SLURM_ARRAY_TASK_ID/COUNT or
    /// JOB_COMPLETION_INDEX). A shard scores its requests into OUT/cache and writes
    /// OUT/eval-shard.json instead of results; `biaslens merge` turns the shards into the
    /// single-run results.
    #[arg(long)]
    #[serde(default)]
    pub shard: Option<String>,
    /// Answer only from the cache, scoring nothing; a missing request is an error. Writes one
    /// result for tasks scored by separate runs (as `biaslens merge` does for shards).
    #[arg(long)]
    #[serde(default)]
    pub cache_only: bool,
}

/// What one `eval --shard` run leaves for `biaslens merge`.
pub const SHARD_RECORD: &str = "eval-shard.json";

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ShardRecord {
    pub command: String,
    pub shard: Shard,
    pub model_sha256: String,
    /// The arguments, to rerun the merged evaluation from the cache.
    pub args: EvalArgs,
    /// Requests scored by this shard, per task.
    pub scored: Vec<(String, usize)>,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Result folders (or results.json files) of `biaslens eval`; the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    // --json: the comparison.
    #[command(flatten)]
    pub output: JsonOutArgs,
}

/// Move `bar` to `done` of `total`. The length is set only when it changes: setting it draws the
/// bar at once, with the old position and a rate decayed by the time since the last update,
/// and in a log (one line per 30 s, `common::progress`) that stale line was the one written.
fn show_progress(bar: &ProgressBar, done: usize, total: usize) {
    if bar.length() != Some(total as u64) {
        bar.set_length(total as u64);
    }
    bar.set_position(done as u64);
}

pub fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    let mut bar: Option<(String, ProgressBar)> = None;
    let mut on_progress = |task: &str, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(t, _)| t != task) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            bar = Some((task.to_string(), progress(total as u64, task)));
        }
        if let Some((_, b)) = &bar {
            show_progress(b, done, total);
        }
    };
    let result = run_eval_with(a, None, &Default::default(), &mut on_progress);
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    result
}

/// `biaslens eval` on `model` when given (it must be what `a`'s `--model` names; the Python
/// bindings pass the model they hold), else on the model `--model` loads after the inputs are
/// checked, stopped by `stop`. `on_progress(task, done, total)` is called as requests are
/// scored.
pub fn run_eval_with(
    mut a: EvalArgs,
    model: Option<&Model>,
    stop: &biaslens::model::StopFlag,
    on_progress: &mut dyn FnMut(&str, usize, usize),
) -> anyhow::Result<()> {
    // Resolved once and recorded (a shard record keeps the folder its shard read).
    let data = biaslens::data::resolve_data_dir(a.data.as_deref());
    a.data = Some(data.clone());
    // Also resolved once and recorded, so `biaslens merge` reads the same tasks.
    if a.task_file.is_none() {
        a.task_file = std::env::var_os("BIASLENS_TASKS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
    }
    let registry = match &a.task_file {
        Some(file) => std::borrow::Cow::Owned(
            TaskRegistry::with_file(file).context("--task-file (or BIASLENS_TASKS)")?,
        ),
        None => std::borrow::Cow::Borrowed(TaskRegistry::builtin()),
    };
    let specs = match &a.tasks {
        Some(list) => parse_tasks_in(&registry, list).with_context(|| format!("--tasks {list}"))?,
        None => suite_tasks_in(&registry, &a.suite)?,
    };
    let shard = match &a.shard {
        Some(s) => Some(Shard::parse(s)?),
        None => Shard::from_env()?,
    }
    .filter(|s| !s.is_whole());
    let (out, force) = (&a.output.out, a.output.force);
    let json_path = out.join("results.json");
    let md_path = out.join("results.md");
    let shard_path = out.join(SHARD_RECORD);
    if shard.is_some() {
        check_output_file(&shard_path, force, &[])?;
        if a.no_cache {
            bail!("--shard needs the cache (it is the shard's output): drop --no-cache");
        }
    } else {
        check_output_file(&json_path, force, &[])?;
        check_output_file(&md_path, force, &[])?;
    }
    if !data.is_dir() {
        bail!(
            "data folder {} (from --data, else BIASLENS_DATA, else the crate's copy): not a folder",
            data.display()
        );
    }
    let loaded;
    let model = match model {
        Some(m) => m,
        None => {
            let (spec, device) = (&a.model.model, a.model.device()?);
            loaded = Model::load(spec, &device)
                .with_context(|| format!("loading --model {spec}"))?
                .with_stop_flag(stop.clone());
            &loaded
        }
    };
    require_tokenizer(model)?;
    let lm_opts = LmOptions {
        batch_tokens: a.batch_tokens,
        max_length: a.max_length,
        pack_tokens: a.pack_tokens,
        pack_min_shared: a.pack_min_shared,
        row_tokens: a.row_tokens,
        fast_kernels: !a.candle_ops,
        parallel_batches: a.parallel_batches,
        products: a.products,
        ..LmOptions::default()
    };
    let mut lm = ModelLm::new(model, lm_opts)?;
    if a.products == Products::Bf16x3 && !biaslens::model::bf16x3::amx_available() {
        eprintln!(
            "note: --products bf16x3 on a CPU without AMX-BF16: MKL computes it, more slowly than f32"
        );
    }
    let opts = SuiteOptions {
        data_dir: data,
        load: LoadOptions {
            skip_bad: a.skip_bad,
            limit: a.limit,
            fraction: a.fraction,
            seed: a.seed,
        },
        lm: lm_opts,
        // A shard's cache is its output, kept inside OUT for `biaslens merge`.
        cache_dir: match shard {
            Some(_) => Some(out.join("cache")),
            None => (!a.no_cache).then(|| a.cache.clone()),
        },
        chunk_tokens: 8 * a.batch_tokens,
        shard,
        cache_only: a.cache_only,
    };
    let result = run_suite(&mut lm, &model.info, &specs, &opts, on_progress)?;
    for t in &result.tasks {
        for s in &t.output.load.skipped {
            eprintln!("skipped {}:{}: {}", s.path.display(), s.line, s.message);
        }
    }
    if let Some(shard) = shard {
        let record = ShardRecord {
            command: "eval".into(),
            shard,
            model_sha256: model.info.sha256.clone(),
            args: a.clone(),
            scored: result
                .tasks
                .iter()
                .map(|t| {
                    let c = &t.cache;
                    (t.task.clone(), c.requests - c.from_cache - c.other_shards)
                })
                .collect(),
        };
        biaslens::io::write_json_atomic(&shard_path, &record)?;
        eprintln!(
            "shard {}/{}: cache in {}; run `biaslens merge --out DIR` over all {} shard folders",
            shard.index,
            shard.count,
            out.join("cache").display(),
            shard.count
        );
        return Ok(());
    }
    biaslens::io::write_json_atomic(&json_path, &result)?;
    let md = markdown(&result);
    biaslens::io::write_atomic(&md_path, md.as_bytes())?;
    print!("{md}");
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// The results.json of a run given as its folder or the file itself.
fn run_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    }
}

fn read_run(path: &Path) -> anyhow::Result<SuiteResult> {
    let file = run_file(path);
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a biaslens eval result", file.display()))
}

pub fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let inputs: Vec<PathBuf> = a.runs.iter().map(|p| run_file(p)).collect();
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    a.output.check(&inputs)?;
    let runs = a
        .runs
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<String> = a.runs.iter().map(|p| p.display().to_string()).collect();
    let c = compare(&labels, &runs)?;
    print!("{}", compare_markdown(&c));
    if let Some(j) = &a.output.json {
        biaslens::io::write_json_atomic(j, &c)?;
    }
    Ok(())
}

/// Merge `eval --shard` folders: union their caches into OUT/cache, then run the evaluation
/// from that cache alone (`cache_only`: nothing is scored, a missing request is an error), so
/// OUT/results.json holds exactly the single-run metrics.
pub fn merge_eval_shards(out: &Path, shards: &[PathBuf], force: bool) -> anyhow::Result<()> {
    let mut records = vec![];
    for d in shards {
        let p = d.join(SHARD_RECORD);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let r: ShardRecord = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an eval shard record", p.display()))?;
        records.push((d.clone(), r));
    }
    let (_, first) = &records[0];
    let n = first.shard.count;
    let settings = |r: &ShardRecord| {
        let mut a = r.args.clone();
        a.output.out = PathBuf::new();
        a.shard = None;
        a.output.force = false;
        serde_json::to_value(a).unwrap_or_default()
    };
    let mut seen = vec![false; n];
    for (d, r) in &records {
        if r.shard.count != n
            || r.model_sha256 != first.model_sha256
            || settings(r) != settings(first)
        {
            bail!(
                "{}: made with other settings, model or shard count than {}",
                d.display(),
                records[0].0.display()
            );
        }
        if std::mem::replace(&mut seen[r.shard.index], true) {
            bail!("shard {}/{n} given twice ({})", r.shard.index, d.display());
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        bail!("shard {i}/{n} is missing");
    }
    // Union of the cache files, sorted by key so the merged cache is byte-stable.
    let cache = out.join("cache");
    let mut files: std::collections::BTreeMap<PathBuf, std::collections::BTreeMap<String, String>> =
        Default::default();
    for (d, _) in &records {
        let root = d.join("cache");
        for model_dir in
            std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))?
        {
            let model_dir = model_dir?.path();
            for f in std::fs::read_dir(&model_dir)? {
                let f = f?.path();
                let rel = f.strip_prefix(&root)?.to_path_buf();
                let text = std::fs::read_to_string(&f)?;
                let lines = files.entry(rel).or_default();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{}: bad cache line", f.display()))?;
                    let key = v["key"].as_str().unwrap_or_default().to_string();
                    lines.insert(key, line.to_string());
                }
            }
        }
    }
    for (rel, lines) in &files {
        let mut body = String::new();
        for l in lines.values() {
            body.push_str(l);
            body.push('\n');
        }
        biaslens::io::write_atomic(&cache.join(rel), body.as_bytes())?;
    }
    let mut a = first.args.clone();
    a.output.out = out.to_path_buf();
    a.cache = cache;
    a.no_cache = false;
    a.shard = Some("0/1".into());
    a.cache_only = true;
    a.output.force = force;
    eprintln!("merge: {n} eval shards; computing the results from the merged cache");
    run_eval(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::common::{Capture, LineTerm};

    /// Every line drawn by an update shows that update's position: none shows the previous one
    /// (which a log writing one line per 30 s would keep, with a rate near 0 and an ETA of years).
    #[test]
    fn a_progress_update_never_draws_the_previous_position() {
        let cap = Capture::default();
        let bar = ProgressBar::with_draw_target(
            Some(100),
            indicatif::ProgressDrawTarget::term_like(Box::new(LineTerm(cap.clone()))),
        );
        bar.set_style(indicatif::ProgressStyle::with_template("{pos}/{len}").unwrap());
        show_progress(&bar, 0, 100);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let before = cap.lines().len();
        show_progress(&bar, 10, 100);
        let lines = cap.lines()[before..].to_vec();
        assert!(!lines.is_empty(), "the update drew nothing");
        assert!(lines.iter().all(|l| l == "10/100"), "{lines:?}");
    }
}
