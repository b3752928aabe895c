//! `measure_<variant>`: bias on held-out occupation prompts (held-out professions × all 17 Vig
//! templates), the number a bias edit must move without having seen those professions.

use super::{bootstrap, edit_deps, is_method, load_variant, STAGE_VERSION};
use crate::data::occupations::BlsTable;
use crate::measure::occupations::subset_prompts;
use crate::measure::{bias_metrics, prompt_probs, MeasureOptions, Subset};
use crate::report::inputs::{BiasRow, ReportInputs};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::Spec;
use crate::stats::Estimate;
use crate::{Error, Result};
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
    pub r2: Option<Estimate>,
    /// The definitional controls (all of them, 17 templates): mean |e| and mean e signed toward
    /// each word's definitional gender (absent in outputs of older versions).
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
    opts: MeasureOptions,
    max_professions: Option<usize>,
    model: String,
}

impl MeasureStage {
    pub fn new(spec: &Spec, variant: &str) -> Self {
        MeasureStage {
            name: format!("measure_{variant}"),
            variant: variant.into(),
            opts: MeasureOptions {
                subset: Subset::HeldOut,
                split: spec.split.clone(),
                batch_size: spec.measure.batch,
                bootstrap: bootstrap(spec),
                ..MeasureOptions::default()
            },
            max_professions: spec.measure.max_professions,
            model: spec.model.name.clone(),
        }
    }
}

/// Keep `m` professions evenly spaced over the (profession-major) prompt list.
fn keep_professions(
    prompts: Vec<crate::data::OccupationPrompt>,
    m: Option<usize>,
) -> Vec<crate::data::OccupationPrompt> {
    let mut names: Vec<String> = vec![];
    for p in &prompts {
        if names.last() != Some(&p.profession) {
            names.push(p.profession.clone());
        }
    }
    let n = names.len();
    let Some(m) = m.filter(|&m| m < n) else {
        return prompts;
    };
    let keep: Vec<&String> = (0..m).map(|i| &names[i * n / m]).collect();
    prompts
        .into_iter()
        .filter(|p| keep.contains(&&p.profession))
        .collect()
}

impl Stage for MeasureStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn deps(&self) -> Vec<String> {
        edit_deps(&self.variant)
    }
    fn settings(&self) -> Result<Value> {
        Ok(json!({
            "version": STAGE_VERSION, "model": self.model, "variant": self.variant,
            "split": self.opts.split, "batch": self.opts.batch_size,
            "bootstrap": self.opts.bootstrap, "max_professions": self.max_professions,
            "data_dir": self.opts.data_dir, "controls": true,
        }))
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let (model, _) = load_variant(ctx, &self.variant)?;
        let (prompts, _) = subset_prompts(&self.opts)?;
        let prompts = keep_professions(prompts, self.max_professions);
        if prompts.is_empty() {
            return Err(Error::param("split", "the held-out split is empty"));
        }
        let (_, out) = prompt_probs(&model, &prompts, self.opts.batch_size, |_| {})?;
        let bls = BlsTable::load(&self.opts.data_dir.join("winogender/occupations-stats.tsv"))?;
        let m = bias_metrics(&out, Some(&bls), &self.opts.bootstrap)?;
        let (controls, _) = subset_prompts(&MeasureOptions {
            subset: Subset::Controls,
            ..self.opts.clone()
        })?;
        let (controls_abs_gap, controls_toward_definitional) = if controls.is_empty() {
            (None, None)
        } else {
            let (_, c) = prompt_probs(&model, &controls, self.opts.batch_size, |_| {})?;
            let cm = bias_metrics(&c, None, &self.opts.bootstrap)?;
            (Some(cm.mean_abs_gap), cm.gap_toward_definitional)
        };
        let output = MeasureOutput {
            variant: self.variant.clone(),
            n_prompts: m.n_prompts,
            n_professions: m.n_professions,
            mean_abs_gap: m.mean_abs_gap,
            mean_gap: m.mean_gap,
            a_s: m.regression.as_ref().map(|r| r.a_s.clone()),
            r2: m.regression.as_ref().map(|r| r.r2.clone()),
            controls_abs_gap,
            controls_toward_definitional,
            forwards: (prompts.len().div_ceil(self.opts.batch_size)
                + controls.len().div_ceil(self.opts.batch_size)) as u64,
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

    fn prompt(prof: &str, t: usize) -> crate::data::OccupationPrompt {
        crate::data::OccupationPrompt {
            profession: prof.into(),
            name: prof.into(),
            template_index: t,
            template: "{}".into(),
            text: prof.into(),
            definitional: 0.0,
            stereotypical: 0.0,
        }
    }

    #[test]
    fn keeps_whole_professions_evenly_spaced() {
        let all: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .flat_map(|p| (0..3).map(move |t| prompt(p, t)))
            .collect();
        let kept = keep_professions(all.clone(), Some(2));
        let profs: Vec<&str> = kept.iter().map(|p| p.profession.as_str()).collect();
        assert_eq!(profs, ["a", "a", "a", "c", "c", "c"]);
        assert_eq!(keep_professions(all.clone(), None).len(), 12);
        assert_eq!(keep_professions(all, Some(9)).len(), 12);
    }
}
