//! `biaslens eval` (run a benchmark suite on one model) and `biaslens compare` (runs side by
//! side with deltas and paired tests).

use super::common::{check_overwrite, parse_device, progress};
use anyhow::{bail, Context};
use biaslens::eval::compare::{compare, markdown as compare_markdown};
use biaslens::eval::load::LoadOptions;
use biaslens::eval::model_lm::{LmOptions, ModelLm};
use biaslens::eval::suite::{
    markdown, parse_tasks, run_suite, suite_tasks, SuiteOptions, SuiteResult,
};
use biaslens::model::Model;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Registry alias (smollm2-135m, gemma-3-270m), GGUF file or HF directory.
    #[arg(long)]
    pub model: String,
    /// bias, capability or all (ignored when --tasks is given).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Comma-separated task names, e.g. copa,arc_easy.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Keep only the first N items of each data file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep a seeded random fraction in (0, 1] of each data file.
    #[arg(long)]
    pub fraction: Option<f64>,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Skip (and report) data lines that do not parse instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Folder with the benchmark data.
    #[arg(long, default_value = "fixtures/data")]
    pub data: PathBuf,
    /// Result cache (resume after a crash); --no-cache disables it.
    #[arg(long, default_value = ".biaslens-cache")]
    pub cache: PathBuf,
    #[arg(long)]
    pub no_cache: bool,
    /// Upper bound on rows × tokens of one forward pass.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    /// Longest model input (lm-eval max_length), capped by the model's positions.
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Output folder for results.json and results.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite existing results in --out.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Result folders (or results.json files) of `biaslens eval`; the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Also write the comparison as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    let specs = match &a.tasks {
        Some(list) => parse_tasks(list)?,
        None => suite_tasks(&a.suite)?,
    };
    let json_path = a.out.join("results.json");
    let md_path = a.out.join("results.md");
    check_overwrite(&json_path, a.force)?;
    check_overwrite(&md_path, a.force)?;
    if !a.data.is_dir() {
        bail!("--data {}: not a folder", a.data.display());
    }
    let device = parse_device(&a.device)?;
    let model =
        Model::load(&a.model, &device).with_context(|| format!("loading --model {}", a.model))?;
    let lm_opts = LmOptions {
        batch_tokens: a.batch_tokens,
        max_length: a.max_length,
        ..LmOptions::default()
    };
    let mut lm = ModelLm::new(&model, lm_opts)?;
    let opts = SuiteOptions {
        data_dir: a.data.clone(),
        load: LoadOptions {
            skip_bad: a.skip_bad,
            limit: a.limit,
            fraction: a.fraction,
            seed: a.seed,
        },
        lm: lm_opts,
        cache_dir: (!a.no_cache).then(|| a.cache.clone()),
        chunk_tokens: 8 * a.batch_tokens,
    };
    let mut bar: Option<(String, ProgressBar)> = None;
    let mut on_progress = |task: &str, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(t, _)| t != task) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            bar = Some((task.to_string(), progress(total as u64, task)));
        }
        if let Some((_, b)) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    };
    let result = run_suite(&mut lm, &model.info, &specs, &opts, &mut on_progress)?;
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    for t in &result.tasks {
        for s in &t.output.load.skipped {
            eprintln!("skipped {}:{}: {}", s.path.display(), s.line, s.message);
        }
    }
    biaslens::io::write_json_atomic(&json_path, &result)?;
    let md = markdown(&result);
    biaslens::io::write_atomic(&md_path, md.as_bytes())?;
    print!("{md}");
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn read_run(path: &Path) -> anyhow::Result<SuiteResult> {
    let file = if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a biaslens eval result", file.display()))
}

pub fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<String> = a.runs.iter().map(|p| p.display().to_string()).collect();
    let c = compare(&labels, &runs)?;
    print!("{}", compare_markdown(&c));
    if let Some(j) = &a.json {
        biaslens::io::write_json_atomic(j, &c)?;
    }
    Ok(())
}
