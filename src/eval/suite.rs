//! Run a list of tasks on one model and collect everything a reader needs to trust and
//! reproduce the numbers: model hash, data-file hashes, seed and sub-sampling, versions, and
//! per task every metric with its standard error and sample count (plus per-item records for
//! paired comparisons).

use crate::eval::cache::{model_cache_path, CacheStats, CachedLm};
use crate::eval::lm::LanguageModel;
use crate::eval::load::LoadOptions;
use crate::eval::metrics::Metric;
use crate::eval::model_lm::{LmOptions, Products};
use crate::eval::registry::{run_task, TaskOutput, TaskRegistry, TaskScores, TaskSpec};
use crate::model::ModelInfo;
use crate::stats::BootstrapSpec;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bias benchmarks (occupation prompts are `biaslens measure`'s job).
pub const BIAS_TASKS: &[&str] = &[
    "winobias_type1",
    "winobias_type2",
    "winogender",
    "stereoset_gender",
    "crows_pairs_gender",
];

/// Capability benchmarks: the paper's seven plus perplexity and fact recall.
pub const CAPABILITY_TASKS: &[&str] = &[
    "arc_easy",
    "arc_challenge",
    "piqa",
    "boolq",
    "copa",
    "openbookqa",
    "winogrande",
    "lambada_openai",
    "wikitext2",
    "lama_trex",
];

/// Task names of a suite: `bias`, `capability` or `all`.
pub fn suite_tasks(suite: &str) -> Result<Vec<&'static TaskSpec>> {
    suite_tasks_in(TaskRegistry::builtin(), suite)
}

/// [`suite_tasks`] looked up in `registry`.
pub fn suite_tasks_in<'r>(registry: &'r TaskRegistry, suite: &str) -> Result<Vec<&'r TaskSpec>> {
    let names: Vec<&str> = match suite {
        "bias" => BIAS_TASKS.to_vec(),
        "capability" => CAPABILITY_TASKS.to_vec(),
        "all" => BIAS_TASKS.iter().chain(CAPABILITY_TASKS).copied().collect(),
        other => {
            return Err(Error::param(
                "suite",
                format!("unknown suite {other:?}; known: bias, capability, all"),
            ))
        }
    };
    names.into_iter().map(|n| registry.task(n)).collect()
}

/// Parse a comma-separated `--tasks` list; unknown names list the known ones, a name given
/// twice is refused.
pub fn parse_tasks(list: &str) -> Result<Vec<&'static TaskSpec>> {
    parse_tasks_in(TaskRegistry::builtin(), list)
}

/// [`parse_tasks`] looked up in `registry` (e.g. the built-in tasks plus a `--task-file`).
pub fn parse_tasks_in<'r>(registry: &'r TaskRegistry, list: &str) -> Result<Vec<&'r TaskSpec>> {
    let specs = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|n| registry.task(n))
        .collect::<Result<Vec<_>>>()?;
    for (i, t) in specs.iter().enumerate() {
        if specs[..i].iter().any(|u| u.name == t.name) {
            return Err(Error::param(
                "tasks",
                format!("`{}` is named twice", t.name),
            ));
        }
    }
    if specs.is_empty() {
        return Err(Error::param(
            "tasks",
            format!("no task given; known: {}", registry.names().join(", ")),
        ));
    }
    Ok(specs)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteOptions {
    pub data_dir: PathBuf,
    pub load: LoadOptions,
    pub lm: LmOptions,
    /// Result cache directory; None disables caching.
    pub cache_dir: Option<PathBuf>,
    /// Tokens per scored chunk (cache write and progress granularity).
    pub chunk_tokens: usize,
    /// Score only this part of the requests (`biaslens eval --shard`); metrics are then
    /// meaningless and come from the merged cache instead.
    #[serde(default)]
    pub shard: Option<crate::rundir::Shard>,
    /// Answer every request from the cache; a missing one is an error (merged shards).
    #[serde(default)]
    pub cache_only: bool,
}

/// One reported number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub name: String,
    pub value: f64,
    pub stderr: Option<f64>,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub task: String,
    pub metrics: Vec<MetricRow>,
    /// sha256 of every data file the task read, by path relative to the data directory.
    pub data_hashes: BTreeMap<String, String>,
    pub seconds: f64,
    pub cache: CacheStats,
    pub output: TaskOutput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResult {
    pub biaslens_version: String,
    pub model: ModelInfo,
    pub seed: u64,
    pub limit: Option<usize>,
    pub fraction: Option<f64>,
    pub max_length: usize,
    pub data_dir: PathBuf,
    pub seconds: f64,
    pub tasks: Vec<TaskRun>,
    /// The projections' arithmetic the scores were made with; absent (f32) in older results.
    #[serde(default, skip_serializing_if = "Products::is_f32")]
    pub products: Products,
}

impl SuiteResult {
    pub fn task(&self, name: &str) -> Option<&TaskRun> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

fn row(name: &str, m: &Metric, n: usize) -> MetricRow {
    MetricRow {
        name: name.to_string(),
        value: m.value,
        stderr: m.stderr,
        n,
    }
}

/// Differences of two accuracies and their parts: WinoBias ΔS = acc_pro − acc_anti and
/// ΔG = acc_male − acc_female.
const DIFFERENCES: [(&str, &str, &str); 2] = [
    ("delta_s", "acc_pro", "acc_anti"),
    ("delta_g", "acc_male", "acc_female"),
];

/// Give each difference row without a stderr √(se_a² + se_b²) from its two accuracy rows. The
/// two are measured on the same sentence pairs and positively correlated, so treating them as
/// independent overstates the stderr: the interval is conservative. Used when scoring and when a
/// report reads results stored before differences carried a stderr, so both agree.
pub fn fill_difference_stderr(rows: &mut [MetricRow]) {
    for (diff, a, b) in DIFFERENCES {
        let se = |name: &str| rows.iter().find(|r| r.name == name).and_then(|r| r.stderr);
        if let (Some(sa), Some(sb)) = (se(a), se(b)) {
            if let Some(r) = rows
                .iter_mut()
                .find(|r| r.name == diff && r.stderr.is_none())
            {
                r.stderr = Some((sa * sa + sb * sb).sqrt());
            }
        }
    }
}

fn plain(name: &str, value: f64, n: usize) -> MetricRow {
    MetricRow {
        name: name.to_string(),
        value,
        stderr: None,
        n,
    }
}

/// Resamples and seed of the bootstrap standard errors of aggregates that have no per-item
/// standard error (perplexities over documents, StereoSet's scores over target terms).
pub const BOOTSTRAP_SE: BootstrapSpec = BootstrapSpec {
    resamples: 1000,
    seed: 1234,
};

/// Fewest units (documents, target terms) for a bootstrap standard error: with fewer the
/// resamples take few distinct values and the interval means little ("no CI" instead).
pub const BOOTSTRAP_MIN_UNITS: usize = 10;

/// Bootstrap standard errors of `k` statistics of `n` units, or `None` for each where there
/// are too few units ([`BOOTSTRAP_MIN_UNITS`]) or too many non-finite resamples.
fn bootstrap_se<F: Fn(&[usize]) -> Vec<f64>>(n: usize, k: usize, stat: F) -> Vec<Option<f64>> {
    if n < BOOTSTRAP_MIN_UNITS {
        return vec![None; k];
    }
    match crate::stats::bootstrap_stderr(n, &BOOTSTRAP_SE, k, stat) {
        Ok(se) => se.into_iter().map(Some).collect(),
        Err(_) => vec![None; k],
    }
}

/// Rows of named values with their (optional) standard errors.
fn with_stderr(values: &[(&str, f64)], se: Vec<Option<f64>>, n: usize) -> Vec<MetricRow> {
    values
        .iter()
        .zip(se)
        .map(|(&(name, value), stderr)| MetricRow {
            name: name.to_string(),
            value,
            stderr,
            n,
        })
        .collect()
}

/// Flatten a task's typed scores into named metrics.
pub fn metric_rows(scores: &TaskScores) -> Vec<MetricRow> {
    match scores {
        TaskScores::Choice(c) => vec![row("acc", &c.acc, c.n), row("acc_norm", &c.acc_norm, c.n)],
        TaskScores::Winogrande(w) => vec![row("acc", &w.acc, w.n)],
        TaskScores::Lambada(l) => vec![
            row("acc", &l.acc, l.n),
            row("perplexity", &l.perplexity, l.n),
        ],
        TaskScores::Perplexity(p) => {
            let se = bootstrap_se(p.records.len(), 4, |idx| {
                let r = crate::eval::tasks::wikitext::perplexities(
                    idx.iter().map(|&i| p.records[i].clone()).collect(),
                );
                vec![
                    r.word_perplexity,
                    r.token_perplexity,
                    r.byte_perplexity,
                    r.bits_per_byte,
                ]
            });
            let values = [
                ("word_perplexity", p.word_perplexity),
                ("token_perplexity", p.token_perplexity),
                ("byte_perplexity", p.byte_perplexity),
                ("bits_per_byte", p.bits_per_byte),
            ];
            with_stderr(&values, se, p.n_docs)
        }
        TaskScores::Lama(l) => vec![
            row("acc", &l.acc, l.n),
            MetricRow {
                stderr: crate::eval::tasks::lama::acc_macro_stderr(&l.records),
                ..plain("acc_macro", l.acc_macro, l.n)
            },
        ],
        TaskScores::WinoBias(w) => {
            let n = w.n_pairs;
            let mut rows = vec![
                row("acc", &w.acc, 2 * n),
                row("acc_pro", &w.acc_pro, n),
                row("acc_anti", &w.acc_anti, n),
                plain("delta_s", w.delta_s, n),
                row("acc_male", &w.acc_male, n),
                row("acc_female", &w.acc_female, n),
                plain("delta_g", w.delta_g, n),
                row("pro_more_likely", &w.pro_more_likely, n),
            ];
            fill_difference_stderr(&mut rows);
            rows
        }
        TaskScores::Winogender(w) => vec![
            row("acc", &w.all.acc, w.all.n),
            row("acc_norm", &w.all.acc_norm, w.all.n),
            row("acc_female", &w.female.acc, w.female.n),
            row("acc_norm_female", &w.female.acc_norm, w.female.n),
            row("acc_male", &w.male.acc, w.male.n),
            row("acc_norm_male", &w.male.acc_norm, w.male.n),
            row("acc_gap", &w.acc_gap, w.all.n),
        ],
        TaskScores::StereoSet(s) => {
            let terms: Vec<(f64, f64)> = s.per_term.values().map(|t| (t.lms, t.ss)).collect();
            let se = bootstrap_se(terms.len(), 3, |idx| {
                let k = idx.len() as f64;
                let lms = idx.iter().map(|&i| terms[i].0).sum::<f64>() / k;
                let ss = idx.iter().map(|&i| terms[i].1).sum::<f64>() / k;
                vec![lms, ss, lms * ss.min(100.0 - ss) / 50.0]
            });
            with_stderr(&[("lms", s.lms), ("ss", s.ss), ("icat", s.icat)], se, s.n)
        }
        TaskScores::Crows(c) => vec![
            row("pct_stereotype", &c.pct_stereotype, c.n),
            row("pct_stereotype_stereo", &c.pct_stereotype_stereo, c.n),
            row(
                "pct_stereotype_antistereo",
                &c.pct_stereotype_antistereo,
                c.n,
            ),
            MetricRow {
                stderr: crate::eval::tasks::crows::likelihood_diff_stderr(&c.records),
                ..plain("likelihood_diff", c.likelihood_diff, c.n)
            },
        ],
    }
}

/// sha256 of the task's data: its file, or every file under its folder (sorted).
pub fn data_hashes(spec: &TaskSpec, data_dir: &Path) -> Result<BTreeMap<String, String>> {
    let root = data_dir.join(&spec.path);
    let mut files = Vec::new();
    if root.is_dir() {
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| Error::file(&d, e.to_string()))? {
                let p = e.map_err(|e| Error::file(&d, e.to_string()))?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    } else {
        files.push(root);
    }
    files.sort();
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f
            .strip_prefix(data_dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        out.insert(rel, crate::io::sha256_file(&f)?);
    }
    Ok(out)
}

/// Run `tasks` with `lm` (the model of `info`), caching per (model hash, task).
/// `progress(task, done, total)` is called as requests are scored.
pub fn run_suite(
    lm: &mut dyn LanguageModel,
    info: &ModelInfo,
    tasks: &[&TaskSpec],
    opts: &SuiteOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<SuiteResult> {
    let start = Instant::now();
    let mut runs = Vec::with_capacity(tasks.len());
    for spec in tasks {
        let t0 = Instant::now();
        let hashes = data_hashes(spec, &opts.data_dir)?;
        let file = opts
            .cache_dir
            .as_ref()
            .map(|d| model_cache_path(d, info, lm.cache_scope(), &spec.name));
        let mut report = |done: usize, total: usize| progress(&spec.name, done, total);
        let mut cached =
            CachedLm::new(&mut *lm, file, opts.chunk_tokens).with_progress(&mut report);
        if let Some(shard) = opts.shard {
            cached = cached.with_shard(shard);
        }
        if opts.cache_only {
            cached = cached.cache_only();
        }
        let output = run_task(spec, &opts.data_dir, &opts.load, &mut cached)?;
        let cache = cached.stats;
        let mut metrics = metric_rows(&output.result);
        if let Some(reported) = spec.reported_metrics() {
            metrics.retain(|m| reported.contains(&m.name.as_str()));
        }
        runs.push(TaskRun {
            task: spec.name.clone(),
            metrics,
            data_hashes: hashes,
            seconds: t0.elapsed().as_secs_f64(),
            cache,
            output,
        });
    }
    Ok(SuiteResult {
        biaslens_version: env!("CARGO_PKG_VERSION").to_string(),
        model: info.clone(),
        seed: opts.load.seed,
        limit: opts.load.limit,
        fraction: opts.load.fraction,
        max_length: lm.max_length(),
        data_dir: opts.data_dir.clone(),
        seconds: start.elapsed().as_secs_f64(),
        tasks: runs,
        products: opts.lm.products,
    })
}

/// Markdown table of every metric.
pub fn markdown(r: &SuiteResult) -> String {
    let items = match (r.limit, r.fraction) {
        (Some(n), _) => format!("first {n} items of each file"),
        (None, Some(f)) => format!("a seeded fraction {f} of each file"),
        (None, None) => "every item".to_string(),
    };
    let mut s = format!(
        "# Evaluation of `{}`\n\nmodel sha256 `{}`, seed {}, {items}, max_length {}, {:.0} s\n\n| task | metric | value | stderr | n |\n|---|---|---:|---:|---:|\n",
        r.model.name, r.model.sha256, r.seed, r.max_length, r.seconds
    );
    for t in &r.tasks {
        for m in &t.metrics {
            let se = m.stderr.map_or("–".to_string(), |e| format!("{e:.4}"));
            s.push_str(&format!(
                "| {} | {} | {:.4} | {} | {} |\n",
                t.task, m.name, m.value, se, m.n
            ));
        }
    }
    let skipped: Vec<_> = r
        .tasks
        .iter()
        .flat_map(|t| t.output.load.skipped.iter().map(move |l| (&t.task, l)))
        .collect();
    if !skipped.is_empty() {
        s.push_str(&format!(
            "\n**{} data line(s) skipped** (`--skip-bad`): they are not in the numbers above.\n\n",
            skipped.len()
        ));
        for (task, l) in skipped {
            s.push_str(&format!(
                "- {task}: `{}:{}`: {}\n",
                l.path.display(),
                l.line,
                l.message.replace(['\n', '\r'], " ")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, value: f64, stderr: Option<f64>) -> MetricRow {
        MetricRow {
            name: name.into(),
            value,
            stderr,
            n: 100,
        }
    }

    /// ΔS gets √(se_pro² + se_anti²); a row that already has a stderr, or whose parts lack
    /// one, is left alone.
    #[test]
    fn differences_get_the_stderr_of_their_parts() {
        let mut rows = vec![
            r("acc_pro", 0.6, Some(0.03)),
            r("acc_anti", 0.5, Some(0.04)),
            r("delta_s", 0.1, None),
            r("acc_male", 0.6, None),
            r("acc_female", 0.5, Some(0.04)),
            r("delta_g", 0.1, None),
        ];
        fill_difference_stderr(&mut rows);
        assert!((rows[2].stderr.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(rows[5].stderr, None);
        rows[2].stderr = Some(0.5);
        fill_difference_stderr(&mut rows);
        assert_eq!(rows[2].stderr, Some(0.5));
    }

    /// StereoSet's LMS is a mean over target terms: its bootstrap standard error must agree
    /// with the analytic one of a mean (sd·√((k-1)/k)/√k for the plug-in bootstrap) within
    /// resampling noise, and ICAT gets one too.
    #[test]
    fn stereoset_scores_get_a_bootstrap_stderr_over_terms() {
        use crate::eval::tasks::stereoset::{stereoset_metrics, StereoSetRecord};
        let mut records = Vec::new();
        for t in 0..40 {
            for i in 0..(3 + t % 4) {
                let v = ((t * 7 + i * 3) % 5) as f64;
                records.push(StereoSetRecord {
                    target: format!("term{t}"),
                    stereotype: v,
                    anti_stereotype: 2.0,
                    unrelated: 1.0 + (i % 2) as f64 * 3.0,
                });
            }
        }
        let result = stereoset_metrics(records);
        let rows = metric_rows(&TaskScores::StereoSet(result.clone()));
        let lms: Vec<f64> = result.per_term.values().map(|t| t.lms).collect();
        let k = lms.len() as f64;
        let sd = crate::stats::sample_sd(&lms).unwrap();
        let analytic = sd * ((k - 1.0) / k).sqrt() / k.sqrt();
        let got = rows[0].stderr.expect("lms has a stderr");
        assert!(
            analytic > 0.0 && (got / analytic - 1.0).abs() < 0.1,
            "{got} vs {analytic}"
        );
        assert!(rows.iter().all(|r| r.stderr.is_some_and(|s| s > 0.0)));
    }

    /// Perplexity's standard error comes from resampling documents: zero (to rounding) when
    /// every document is the same, positive otherwise, none for fewer than ten documents.
    #[test]
    fn perplexity_gets_a_bootstrap_stderr_over_documents() {
        use crate::eval::tasks::wikitext::{perplexities, WikiRecord};
        let doc = |line: usize, loglik: f64| WikiRecord {
            line,
            loglik,
            tokens: 100,
            words: 80,
            bytes: 400,
        };
        let same = perplexities((0..10).map(|i| doc(i, -300.0)).collect());
        let rows = metric_rows(&TaskScores::Perplexity(same));
        assert!(
            rows.iter()
                .all(|r| r.stderr.is_some_and(|s| s < 1e-9 * r.value)),
            "{rows:?}"
        );
        let varied = perplexities((0..10).map(|i| doc(i, -250.0 - 10.0 * i as f64)).collect());
        let rows = metric_rows(&TaskScores::Perplexity(varied));
        assert!(
            rows.iter().all(|r| r.stderr.is_some_and(|s| s > 0.0)),
            "{rows:?}"
        );
        let few = perplexities(
            (0..BOOTSTRAP_MIN_UNITS - 1)
                .map(|i| doc(i, -300.0 - i as f64))
                .collect(),
        );
        let rows = metric_rows(&TaskScores::Perplexity(few));
        assert!(rows.iter().all(|r| r.stderr.is_none()), "{rows:?}");
    }
}
