//! `eval_<variant>`: the spec's bias and capability benchmarks on one model variant, each task
//! with its own item limit, through the on-disk log-likelihood cache (keyed by model hash, so an
//! edited model never reuses the base model's answers).

use super::{edit_deps, is_method, load_variant, STAGE_VERSION};
use crate::eval::load::LoadOptions;
use crate::eval::model_lm::{LmOptions, ModelLm};
use crate::eval::suite::{run_suite, MetricRow, SuiteOptions};
use crate::report::inputs::{BiasRow, CapabilityRow, ReportInputs};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::Spec;
use crate::stats::Estimate;
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// One task's metrics on one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub task: String,
    /// `bias` or `capability`.
    pub group: String,
    pub limit: Option<usize>,
    pub metrics: Vec<MetricRow>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOutput {
    pub variant: String,
    pub tasks: Vec<TaskMetrics>,
    pub wall_s: f64,
}

impl EvalOutput {
    /// Mean accuracy over capability tasks that report `acc` (the trade-off figure's x axis).
    pub fn mean_capability_acc(&self) -> Option<f64> {
        let accs: Vec<f64> = self
            .tasks
            .iter()
            .filter(|t| t.group == "capability")
            .filter_map(|t| t.metrics.iter().find(|m| m.name == "acc"))
            .map(|m| m.value)
            .collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }
}

pub struct EvalStage {
    name: String,
    variant: String,
    tasks: Vec<(String, String, Option<usize>)>,
    model: String,
    data_dir: PathBuf,
    cache_dir: PathBuf,
    lm: LmOptions,
}

impl EvalStage {
    pub fn new(spec: &Spec, variant: &str) -> Self {
        let b = &spec.benchmarks;
        let tasks: Vec<(String, String, Option<usize>)> = b
            .bias
            .iter()
            .map(|t| (t.clone(), "bias".to_string(), b.limit_for(t)))
            .chain(
                b.capability
                    .iter()
                    .map(|t| (t.clone(), "capability".to_string(), b.limit_for(t))),
            )
            // Sweep points only feed the trade-off figure, which needs capability alone.
            .filter(|(_, group, _)| is_method(variant) || group == "capability")
            .collect();
        EvalStage {
            name: format!("eval_{variant}"),
            variant: variant.into(),
            tasks,
            model: spec.model.name.clone(),
            data_dir: crate::data::data_dir(),
            cache_dir: PathBuf::from(".biaslens-cache"),
            // candle's composed ops: the fused AVX-512 kernels exist only on some CPUs, and
            // snapshot numbers must not depend on which CPU made them (packing is exact and
            // CPU-independent).
            lm: LmOptions {
                fast_kernels: false,
                ..LmOptions::default()
            },
        }
    }
}

/// A reported metric as an estimate: ±1.96 stderr where the task gives one, else a point.
pub fn metric_estimate(m: &MetricRow) -> Estimate {
    match m.stderr {
        Some(se) if se.is_finite() => Estimate {
            value: m.value,
            ci_low: m.value - 1.96 * se,
            ci_high: m.value + 1.96 * se,
            n: m.n,
            method: "normal (±1.96 stderr)".into(),
        },
        _ => Estimate::point(m.value, m.n),
    }
}

/// Bias metrics shown in Table 2 per task, with the unbiased value.
fn bias_metrics_of(task: &str) -> &'static [(&'static str, Option<f64>)] {
    match task {
        t if t.starts_with("winobias") => &[("delta_s", Some(0.0)), ("acc", None)],
        t if t.starts_with("stereoset") => &[("ss", Some(50.0)), ("lms", None)],
        "winogender" => &[("acc_gap", Some(0.0)), ("acc", None)],
        t if t.starts_with("crows") => &[("pct_stereotype", Some(50.0))],
        _ => &[],
    }
}

/// Capability metrics shown in Table 3: accuracy (↑) and perplexities (↓).
const CAPABILITY_METRICS: [(&str, bool); 3] = [
    ("acc", true),
    ("perplexity", false),
    ("word_perplexity", false),
];

impl Stage for EvalStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn deps(&self) -> Vec<String> {
        edit_deps(&self.variant)
    }
    fn settings(&self) -> Result<Value> {
        Ok(json!({
            "version": STAGE_VERSION, "model": self.model, "variant": self.variant,
            "tasks": self.tasks, "data_dir": self.data_dir, "lm": self.lm,
        }))
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let (model, _) = load_variant(ctx, &self.variant)?;
        let mut lm = ModelLm::new(&model, self.lm)?;
        let mut tasks = vec![];
        for (task, group, limit) in &self.tasks {
            let spec = crate::eval::registry::task(task)?;
            let opts = SuiteOptions {
                data_dir: self.data_dir.clone(),
                load: LoadOptions {
                    limit: *limit,
                    ..LoadOptions::default()
                },
                lm: self.lm,
                cache_dir: Some(self.cache_dir.clone()),
                chunk_tokens: 8 * self.lm.batch_tokens,
                shard: None,
                cache_only: false,
            };
            let r = run_suite(&mut lm, &model.info, &[spec], &opts, &mut |_, _, _| {})?;
            for t in r.tasks {
                eprintln!("{}: {} in {:.1} s", self.name, t.task, t.seconds);
                tasks.push(TaskMetrics {
                    task: t.task,
                    group: group.clone(),
                    limit: *limit,
                    metrics: t.metrics,
                    seconds: t.seconds,
                });
            }
        }
        let out = EvalOutput {
            variant: self.variant.clone(),
            tasks,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        Ok(serde_json::to_value(out)?)
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        if !is_method(&self.variant) {
            return Ok(());
        }
        let o: EvalOutput = serde_json::from_value(output.clone())?;
        for t in &o.tasks {
            // Outputs stored before ΔS/ΔG carried a stderr get the same one now.
            let mut metrics = t.metrics.clone();
            crate::eval::suite::fill_difference_stderr(&mut metrics);
            if t.group == "bias" {
                for &(name, ideal) in bias_metrics_of(&t.task) {
                    if let Some(m) = metrics.iter().find(|m| m.name == name) {
                        inputs.bias.push(BiasRow {
                            model_variant: self.variant.clone(),
                            dataset: t.task.clone(),
                            metric: name.into(),
                            value: metric_estimate(m),
                            ideal,
                        });
                    }
                }
            } else {
                for (name, up) in CAPABILITY_METRICS {
                    if let Some(m) = metrics.iter().find(|m| m.name == name) {
                        inputs.capability.push(CapabilityRow {
                            model_variant: self.variant.clone(),
                            dataset: t.task.clone(),
                            metric: name.into(),
                            value: metric_estimate(m),
                            higher_is_better: up,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, v: f64, se: Option<f64>) -> MetricRow {
        MetricRow {
            name: name.into(),
            value: v,
            stderr: se,
            n: 10,
        }
    }

    #[test]
    fn estimates_use_stderr_when_given() {
        let e = metric_estimate(&row("acc", 0.5, Some(0.1)));
        assert!((e.ci_low - 0.304).abs() < 1e-12 && (e.ci_high - 0.696).abs() < 1e-12);
        let e = metric_estimate(&row("ss", 55.0, None));
        assert_eq!((e.ci_low, e.ci_high), (55.0, 55.0));
    }

    #[test]
    fn capability_mean_ignores_bias_tasks_and_perplexity() {
        let t = |task: &str, group: &str, m: Vec<MetricRow>| TaskMetrics {
            task: task.into(),
            group: group.into(),
            limit: None,
            metrics: m,
            seconds: 0.0,
        };
        let o = EvalOutput {
            variant: "base".into(),
            tasks: vec![
                t("copa", "capability", vec![row("acc", 0.6, None)]),
                t("piqa", "capability", vec![row("acc", 0.8, None)]),
                t(
                    "wikitext2",
                    "capability",
                    vec![row("word_perplexity", 30.0, None)],
                ),
                t("winobias_type1", "bias", vec![row("acc", 0.1, None)]),
            ],
            wall_s: 0.0,
        };
        assert!((o.mean_capability_acc().unwrap() - 0.7).abs() < 1e-12);
    }
}
