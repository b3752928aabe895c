//! `measure_<variant>`: bias on held-out occupation prompts (held-out professions × the spec's
//! `measure.template_split`, all 17 Vig templates by default), the number a bias edit must move
//! without having seen those professions, and the definitional controls on the same templates.

use super::{bootstrap, edit_deps, is_method, load_variant, STAGE_VERSION};
use crate::measure::{MeasureJob, MeasureOptions, Subset};
use crate::report::inputs::{BiasRow, ReportInputs};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::Spec;
use crate::stats::Estimate;
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

/// Dataset name of the held-out rows in Table 2.
pub const DATASET: &str = "occupations (held-out)";
/// Definitional professions (actress, businessman, ...): their gender is a fact an edit must
/// keep, so these rows should stay at Base, not go to 0.
pub const CONTROLS: &str = "definitional controls (keep)";
/// Mean of e = p(he) − p(she) signed toward the profession's definitional gender.
pub const KEPT: &str = "mean gap toward definitional gender";
pub const GAP: &str = "mean |p(he) - p(she)|";
pub const SLOPE: &str = "a_s (stereotype slope)";
/// DAMA's factual slope: p(he) − p(she) against the definitional score, on the same prompts. It
/// carries factual gender, so an edit should leave it at Base (no ideal value).
pub const FACTUAL_SLOPE: &str = "a_f (definitional slope)";

/// What the stage stores: the metrics the report shows, not every prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureOutput {
    pub variant: String,
    pub n_prompts: usize,
    pub n_professions: usize,
    pub mean_abs_gap: Estimate,
    pub mean_gap: Estimate,
    /// DAMA regression slope on the stereotypical score, and its R².
    pub a_s: Option<Estimate>,
    /// The same regression's slope on the definitional score (absent in older outputs).
    #[serde(default)]
    pub a_f: Option<Estimate>,
    pub r2: Option<Estimate>,
    /// The definitional controls (all of them, on the held-out rows' templates): mean |e| and
    /// mean e signed toward each word's definitional gender (absent in outputs of older
    /// versions).
    #[serde(default)]
    pub controls_abs_gap: Option<Estimate>,
    #[serde(default)]
    pub controls_toward_definitional: Option<Estimate>,
    pub forwards: u64,
    pub wall_s: f64,
}

pub struct MeasureStage {
    name: String,
    variant: String,
    job: MeasureJob,
    model: String,
}

impl MeasureStage {
    pub fn new(spec: &Spec, variant: &str) -> Self {
        MeasureStage {
            name: format!("measure_{variant}"),
            variant: variant.into(),
            job: MeasureJob {
                options: MeasureOptions {
                    subset: Subset::HeldOut,
                    split: spec.split.clone(),
                    batch_size: spec.measure.batch,
                    template_split: spec.measure.template_split,
                    bootstrap: bootstrap(spec),
                    ..MeasureOptions::default()
                },
                max_professions: spec.measure.max_professions,
            },
            model: spec.model.name.clone(),
        }
    }

    /// The held-out measurement; `biaslens measure --split held-out` runs the same job.
    pub fn job(&self) -> &MeasureJob {
        &self.job
    }

    /// The definitional controls, every one of them.
    pub fn controls_job(&self) -> MeasureJob {
        MeasureJob::new(MeasureOptions {
            subset: Subset::Controls,
            ..self.job.options.clone()
        })
    }
}

impl Stage for MeasureStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn deps(&self) -> Vec<String> {
        edit_deps(&self.variant)
    }
    fn settings(&self) -> Result<Value> {
        let o = &self.job.options;
        let mut v = json!({
            "version": STAGE_VERSION, "model": self.model, "variant": self.variant,
            "split": o.split, "batch": o.batch_size,
            "bootstrap": o.bootstrap, "max_professions": self.job.max_professions,
            "data_dir": o.data_dir, "controls": true, "a_f": true,
        });
        // Only when not the default, so reports measured on all templates keep their cache keys.
        if o.template_split != crate::data::split::TemplateSplit::All {
            v["template_split"] = json!(o.template_split);
        }
        Ok(v)
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let (model, _) = load_variant(ctx, &self.variant)?;
        let held = self.job.run(&model, |_| {})?;
        let m = held.metrics;
        let controls = self.controls_job();
        let (n_controls, controls_abs_gap, controls_toward_definitional) =
            if controls.prompts()?.0.is_empty() {
                (0, None, None)
            } else {
                let c = controls.run(&model, |_| {})?;
                let cm = c.metrics;
                (
                    c.prompts.len(),
                    Some(cm.mean_abs_gap),
                    cm.gap_toward_definitional,
                )
            };
        let batch = self.job.options.batch_size;
        let output = MeasureOutput {
            variant: self.variant.clone(),
            n_prompts: m.n_prompts,
            n_professions: m.n_professions,
            mean_abs_gap: m.mean_abs_gap,
            mean_gap: m.mean_gap,
            a_s: m.regression.as_ref().map(|r| r.a_s.clone()),
            a_f: m.regression.as_ref().map(|r| r.a_f.clone()),
            r2: m.regression.as_ref().map(|r| r.r2.clone()),
            controls_abs_gap,
            controls_toward_definitional,
            forwards: (held.prompts.len().div_ceil(batch) + n_controls.div_ceil(batch)) as u64,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        Ok(serde_json::to_value(output)?)
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        if !is_method(&self.variant) {
            return Ok(());
        }
        let o: MeasureOutput = serde_json::from_value(output.clone())?;
        let row = |metric: &str, value: Estimate| BiasRow {
            model_variant: self.variant.clone(),
            dataset: DATASET.into(),
            metric: metric.into(),
            value,
            ideal: Some(0.0),
        };
        inputs.bias.push(row(GAP, o.mean_abs_gap));
        if let Some(a) = o.a_s {
            inputs.bias.push(row(SLOPE, a));
        }
        if let Some(a) = o.a_f {
            inputs.bias.push(BiasRow {
                ideal: None,
                ..row(FACTUAL_SLOPE, a)
            });
        }
        // Controls: no ideal value; the edit should leave them at Base.
        for (metric, v) in [
            (GAP, o.controls_abs_gap),
            (KEPT, o.controls_toward_definitional),
        ] {
            if let Some(value) = v {
                inputs.bias.push(BiasRow {
                    model_variant: self.variant.clone(),
                    dataset: CONTROLS.into(),
                    metric: metric.into(),
                    value,
                    ideal: None,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::split::TemplateSplit;
    use crate::report::spec::tests::MINIMAL;

    /// Table 2 gets a_s with Ideal 0 and a_f without one (it carries factual gender); an
    /// output of an older version, without a_f, still reads.
    #[test]
    fn slopes_reach_table_2_with_their_ideals() {
        let spec = Spec::parse(MINIMAL).unwrap();
        let stage = MeasureStage::new(&spec, "lsdm");
        let e = |v: f64| Estimate::point(v, 720);
        let output = MeasureOutput {
            variant: "lsdm".into(),
            n_prompts: 720,
            n_professions: 48,
            mean_abs_gap: e(0.05),
            mean_gap: e(0.01),
            a_s: Some(e(0.02)),
            a_f: Some(e(0.3)),
            r2: Some(e(0.4)),
            controls_abs_gap: None,
            controls_toward_definitional: None,
            forwards: 3,
            wall_s: 1.0,
        };
        let mut inputs = ReportInputs::new("t");
        let v = serde_json::to_value(&output).unwrap();
        stage.contribute(&v, &mut inputs).unwrap();
        let row = |m: &str| inputs.bias.iter().find(|r| r.metric == m).cloned();
        assert_eq!(row(SLOPE).unwrap().ideal, Some(0.0));
        let a_f = row(FACTUAL_SLOPE).unwrap();
        assert_eq!((a_f.value.value, a_f.ideal), (0.3, None));
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("a_f");
        let mut inputs = ReportInputs::new("t");
        stage.contribute(&old, &mut inputs).unwrap();
        assert!(inputs.bias.iter().all(|r| r.metric != FACTUAL_SLOPE));
    }

    #[test]
    fn template_split_reaches_both_jobs_and_keys_only_when_not_all() {
        let all = Spec::parse(MINIMAL).unwrap();
        let stage = MeasureStage::new(&all, "base");
        assert_eq!(stage.job().options.template_split, TemplateSplit::All);
        assert!(stage.settings().unwrap().get("template_split").is_none());

        let text = MINIMAL.replace(
            "[benchmarks]",
            "[measure]\ntemplate_split = \"unseen\"\n[benchmarks]",
        );
        let unseen = Spec::parse(&text).unwrap();
        let stage = MeasureStage::new(&unseen, "base");
        assert_eq!(stage.job().options.template_split, TemplateSplit::Unseen);
        assert_eq!(
            stage.controls_job().options.template_split,
            TemplateSplit::Unseen
        );
        assert_eq!(stage.settings().unwrap()["template_split"], "unseen");
        let e = Spec::parse(&text.replace("\"unseen\"", "\"novel\"")).unwrap_err();
        assert!(e.to_string().contains("unseen"), "{e}");
    }
}
