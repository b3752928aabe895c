//! `tradeoff`: one point per model variant (methods and sweep points) pairing the held-out bias of
//! `measure_<v>` with the mean capability accuracy of `eval_<v>` and the definitional controls'
//! gap toward their gender (factual gender kept), for the trade-off figures.

use super::eval::EvalOutput;
use super::measure::MeasureOutput;
use super::{Variant, STAGE_VERSION};
use crate::report::inputs::{ReportInputs, TradeoffPoint};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::Spec;
use crate::report::variant::ReportVariant;
use crate::{Error, Result};
use serde_json::{json, Value};

/// This stage's own output version, in its cache key beside the shared [`STAGE_VERSION`]: bumped
/// when only this stage's output changes, so that the other stages' caches stay valid.
/// 1: each point carries the definitional controls' gap (Figure 3).
const VERSION: u32 = 1;

pub struct TradeoffStage {
    /// (variant name, method family, label)
    points: Vec<(String, ReportVariant, String)>,
}

impl TradeoffStage {
    pub fn new(_spec: &Spec, vars: &[Variant]) -> Self {
        let base = ReportVariant::Base;
        let mut points = vec![(base.name().to_string(), base, base.label().to_string())];
        points.extend(vars.iter().map(|v| {
            (
                v.name.clone(),
                ReportVariant::Method(v.method),
                v.label.clone(),
            )
        }));
        TradeoffStage { points }
    }
}

impl Stage for TradeoffStage {
    fn name(&self) -> &str {
        "tradeoff"
    }
    fn deps(&self) -> Vec<String> {
        self.points
            .iter()
            .flat_map(|(v, _, _)| [format!("measure_{v}"), format!("eval_{v}")])
            .collect()
    }
    fn settings(&self) -> Result<Value> {
        Ok(json!({ "version": STAGE_VERSION, "stage_version": VERSION, "points": self.points }))
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let mut out = vec![];
        for (v, method, label) in &self.points {
            // A `--stored-only` render of an unfinished report draws the variants stored so far.
            let (Some(m), Some(e)) = (
                ctx.input_if_stored(&format!("measure_{v}"))?,
                ctx.input_if_stored(&format!("eval_{v}"))?,
            ) else {
                continue;
            };
            let m: MeasureOutput = serde_json::from_value(m.clone())?;
            let e: EvalOutput = serde_json::from_value(e.clone())?;
            let Some(capability) = e.mean_capability_acc() else {
                return Err(Error::param(
                    "benchmarks.capability",
                    "the trade-off figure needs at least one capability task reporting accuracy",
                ));
            };
            out.push(TradeoffPoint {
                method: method.name().into(),
                label: label.clone(),
                bias: m.mean_abs_gap.value,
                capability,
                factual: m.controls_toward_definitional.map(|e| e.value),
            });
        }
        Ok(serde_json::to_value(out)?)
    }
    fn renders_partially(&self) -> bool {
        true
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        inputs.tradeoff = serde_json::from_value(output.clone())?;
        Ok(())
    }
}
