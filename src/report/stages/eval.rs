//! `eval_<variant>`: the spec's bias and capability benchmarks on one model variant, each task
//! with its own item limit, through the on-disk log-likelihood cache (keyed by model hash, so an
//! edited model never reuses the base model's answers).

use super::{edit_deps, is_method, load_variant, STAGE_VERSION};
use crate::eval::load::LoadOptions;
use crate::eval::model_lm::{LmOptions, ModelLm};
use crate::eval::suite::{run_suite, MetricRow, SuiteOptions};
use crate::report::inputs::{BiasRow, CapabilityRow, ReportInputs};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::{EvalKernels, Spec};
use crate::stats::{wilson, Estimate, MIN_N_FOR_CI, Z95};
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
            // By default candle's composed ops: the fused AVX-512 kernels exist only on some
            // CPUs, and snapshot numbers must not depend on which CPU made them (packing is
            // exact and CPU-independent).
            lm: LmOptions {
                fast_kernels: b.kernels == EvalKernels::Fused,
                ..LmOptions::default()
            },
        }
    }
}

/// The scale of a metric that is a proportion (1 for accuracies, 100 for percentages), `None`
/// for everything else (differences, perplexities, scores).
fn proportion_scale(name: &str) -> Option<f64> {
    match name {
        "acc_gap" | "acc_macro" => None,
        "acc" | "pro_more_likely" => Some(1.0),
        n if n.starts_with("acc_") => Some(1.0),
        n if n.starts_with("pct_stereotype") => Some(100.0),
        _ => None,
    }
}

/// A reported metric as an estimate with a 95% interval that can be right: no interval from
/// fewer than [`MIN_N_FOR_CI`] items ("n too small"); Wilson for proportions (inside [0, 1]);
/// for perplexities exp(mean NLL ± 1.96·se), with se of the mean NLL = stderr / perplexity
/// (the delta-method stderr the tasks report), so the interval is positive; ±1.96 stderr for
/// the rest; a point where the task gives no stderr.
pub fn metric_estimate(m: &MetricRow) -> Estimate {
    if m.n < MIN_N_FOR_CI {
        return Estimate::too_few(m.value, m.n);
    }
    let with = |(lo, hi): (f64, f64), method: &str| Estimate {
        value: m.value,
        ci_low: lo,
        ci_high: hi,
        n: m.n,
        method: method.into(),
    };
    if let Some(scale) = proportion_scale(&m.name) {
        if let Some((lo, hi)) = wilson(m.value / scale, m.n) {
            return with((lo * scale, hi * scale), "Wilson score 95%");
        }
    }
    match m.stderr {
        Some(se) if se.is_finite() && m.name.contains("perplexity") && m.value > 0.0 => {
            let h = Z95 * se / m.value;
            with(
                (m.value * (-h).exp(), m.value * h.exp()),
                "log scale: exp(mean NLL ± 1.96 se)",
            )
        }
        Some(se) if se.is_finite() => with(
            (m.value - Z95 * se, m.value + Z95 * se),
            "normal (±1.96 stderr)",
        ),
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

    fn row_n(name: &str, v: f64, se: Option<f64>, n: usize) -> MetricRow {
        MetricRow {
            n,
            ..row(name, v, se)
        }
    }

    #[test]
    fn estimates_use_stderr_when_given() {
        let e = metric_estimate(&row("delta_s", 0.5, Some(0.1)));
        assert!((e.ci_low - 0.304).abs() < 1e-12 && (e.ci_high - 0.696).abs() < 1e-12);
        let e = metric_estimate(&row("ss", 55.0, None));
        assert_eq!((e.ci_low, e.ci_high), (55.0, 55.0));
        assert!(e.is_point());
    }

    /// Every accuracy interval lies in [0, 1] (Wilson), percentages in [0, 100]; below 10 items
    /// there is none. The quick spec's BoolQ 2/6 printed [−0.080, 0.747] before.
    #[test]
    fn accuracy_intervals_stay_in_the_unit_interval() {
        for n in 1..=60 {
            for k in 0..=n {
                let p = k as f64 / n as f64;
                let se = (p * (1.0 - p) / (n as f64 - 1.0).max(1.0)).sqrt();
                for name in ["acc", "acc_norm", "acc_pro", "acc_female"] {
                    let e = metric_estimate(&row_n(name, p, Some(se), n));
                    if n < MIN_N_FOR_CI {
                        assert!(e.is_point() && e.method == crate::stats::TOO_FEW_METHOD);
                        continue;
                    }
                    assert!(
                        0.0 <= e.ci_low && e.ci_low <= p && p <= e.ci_high && e.ci_high <= 1.0,
                        "{name} {k}/{n}: [{}, {}]",
                        e.ci_low,
                        e.ci_high
                    );
                }
                let e = metric_estimate(&row_n("pct_stereotype", 100.0 * p, Some(1.0), n));
                assert!(e.is_point() || (0.0 <= e.ci_low && e.ci_high <= 100.0));
            }
        }
        let e = metric_estimate(&row_n("acc", 0.6, Some(0.1124), 20));
        assert!((e.ci_low - 0.3866).abs() < 5e-5 && (e.ci_high - 0.7812).abs() < 5e-5);
        assert!(metric_estimate(&row_n("acc", 1.0 / 3.0, Some(0.21), 6)).is_point());
    }

    /// A perplexity interval is exp(mean NLL ± 1.96 se): positive, and around the value on a
    /// log scale. LAMBADA's 59.3 with stderr 89.7 gave [−116.5, 235.1] before.
    #[test]
    fn perplexity_intervals_are_positive() {
        let e = metric_estimate(&row_n("perplexity", 59.31, Some(89.69), 12));
        let h: f64 = 1.96 * 89.69 / 59.31;
        assert!((e.ci_low - 59.31 * (-h).exp()).abs() < 1e-9 && e.ci_low > 0.0);
        assert!((e.ci_high - 59.31 * h.exp()).abs() < 1e-9);
        assert!(((e.ci_low * e.ci_high).sqrt() - 59.31).abs() < 1e-9);
        let e = metric_estimate(&row_n("word_perplexity", 20.3, Some(0.4), 50));
        assert!(e.ci_low > 0.0 && e.ci_low < 20.3 && 20.3 < e.ci_high);
        assert!(metric_estimate(&row_n("perplexity", 59.31, Some(89.69), 6)).is_point());
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
            variant: crate::report::stages::BASE.into(),
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
