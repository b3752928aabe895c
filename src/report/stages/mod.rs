//! The real stages of a report: measure, trace, edit, eval, the LSDM sweeps and the trade-off
//! summary, plugged into the [`Pipeline`] in a fixed order by [`standard_pipeline`].
//!
//! Variants are model versions: `base` (the loaded model), `lsdm`/`ft`/`dama` (the spec's method
//! sections) and sweep points (`lsdm_lambda_<i>`, `lsdm_layers_<i>`). Every edited variant is
//! one `edit_<variant>` stage whose delta later stages apply to a freshly loaded base model.

pub mod edit;
pub mod eval;
pub mod measure;
pub mod trace;
pub mod tradeoff;

use super::pipeline::{Ctx, Pipeline};
use super::spec::Spec;
use super::variant::ReportVariant;
use crate::edit::delta::WeightDelta;
use crate::edit::method::Method;
use crate::edit::record::apply_delta;
use crate::model::Model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Bump when the output format or computation of every stage changes, so old caches are not
/// reused. A change to one stage's output bumps that stage's own version instead (a `VERSION`
/// beside this one in its settings, as `tradeoff` has), which keeps the other stages' caches.
pub const STAGE_VERSION: u32 = 2;

/// Variant name of the unedited model (`measure_base`, `eval_base`).
pub const BASE: &str = ReportVariant::Base.name();

/// What an edited variant changes relative to the spec's method section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Stage-name suffix and table column: `lsdm`, `ft`, `dama`, `lsdm_lambda_0`, ...
    pub name: String,
    /// The edit method (serialised `lsdm`, `ft` or `dama`).
    pub method: Method,
    /// Overrides of LSDM's λ and of the number of edited layers (sweeps).
    pub lambda: Option<f64>,
    pub layer_count: Option<usize>,
    /// Label drawn in the trade-off figure.
    pub label: String,
}

/// The edited variants of a spec, in table order, then the sweep points.
pub fn variants(spec: &Spec) -> Vec<Variant> {
    let mut v: Vec<Variant> = spec
        .methods
        .edit_methods()
        .into_iter()
        .map(|m| Variant {
            name: m.name().into(),
            method: m,
            lambda: None,
            layer_count: None,
            label: ReportVariant::Method(m).label().into(),
        })
        .collect();
    for (i, &l) in spec.sweeps.lambda.iter().enumerate() {
        v.push(Variant {
            name: format!("{}_lambda_{i}", Method::Lsdm),
            method: Method::Lsdm,
            lambda: Some(l),
            layer_count: None,
            // In the edit stages' keys (the variant is): a change of format would redo them.
            label: format!("λ={l:e}"),
        });
    }
    for (i, &n) in spec.sweeps.layer_count.iter().enumerate() {
        v.push(Variant {
            name: format!("{}_layers_{i}", Method::Lsdm),
            method: Method::Lsdm,
            lambda: None,
            layer_count: Some(n),
            label: format!("{n} layers"),
        });
    }
    v
}

/// Whether a variant is one of the spec's methods (tables) rather than a sweep point (figure only).
pub fn is_method(v: &str) -> bool {
    ReportVariant::from_name(v).is_some()
}

/// Whether any method edits the layers the trace stage locates.
pub fn needs_sites(spec: &Spec) -> bool {
    let m = &spec.methods;
    m.lsdm.as_ref().is_some_and(|x| x.layers.is_from_sites())
        || m.ft.as_ref().is_some_and(|x| x.layers.is_from_sites())
        || m.dama.as_ref().is_some_and(|x| x.layers.is_from_sites())
        || !spec.sweeps.layer_count.is_empty()
}

/// Every stage the spec asks for, in dependency order: the base model's stages, then each
/// variant's edit and every stage that reads its delta, one variant after the other. A variant
/// whose stages are all stored needs its delta no more, so a run stopped part way (and resumed
/// elsewhere from `stages/` alone) redoes only the variant it was in.
pub fn standard_pipeline(spec: &Spec) -> Result<Pipeline> {
    let mut p = Pipeline::new();
    let vars = variants(spec);
    p.push(Box::new(measure::MeasureStage::new(spec, BASE)));
    p.push(Box::new(trace::TraceStage::new(spec, BASE)));
    p.push(Box::new(eval::EvalStage::new(spec, BASE)));
    for v in &vars {
        p.push(Box::new(edit::EditStage::new(spec, v.clone())?));
        if v.name == Method::Lsdm.name() && spec.trace.after_edit {
            p.push(Box::new(trace::TraceStage::new(spec, Method::Lsdm.name())));
        }
        p.push(Box::new(measure::MeasureStage::new(spec, &v.name)));
        p.push(Box::new(eval::EvalStage::new(spec, &v.name)));
    }
    if !spec.benchmarks.capability.is_empty() {
        p.push(Box::new(tradeoff::TradeoffStage::new(spec, &vars)));
    }
    Ok(p)
}

pub(crate) fn device(spec: &Spec) -> Result<candle_core::Device> {
    crate::device::parse_device(&spec.model.device)
}

/// The model of `variant`: the base model, or the base with the delta of `edit_<variant>` applied.
/// Returns the model and the seconds spent loading it.
pub(crate) fn load_variant(ctx: &Ctx, variant: &str) -> Result<(Model, f64)> {
    let t0 = Instant::now();
    let dev = device(ctx.spec)?;
    let base = Model::load(&ctx.spec.model.name, &dev)?;
    if variant == BASE {
        return Ok((base, t0.elapsed().as_secs_f64()));
    }
    let stage = format!("edit_{variant}");
    let out = ctx.input(&stage)?;
    let rel = out["delta"]
        .as_str()
        .ok_or_else(|| Error::param(&stage, "output has no `delta` path"))?;
    let path = ctx.out_dir.join(rel);
    let delta = WeightDelta::load(&path, &dev)?;
    let weights = apply_delta(&base, &delta)?;
    let edited = base.with_weights(weights, &format!("+{variant}"))?;
    Ok((edited, t0.elapsed().as_secs_f64()))
}

/// Stages a variant's measure/eval/trace stage reads: its edit stage (none for base).
pub(crate) fn edit_deps(variant: &str) -> Vec<String> {
    if variant == BASE {
        vec![]
    } else {
        vec![format!("edit_{variant}")]
    }
}

/// The bootstrap seed: the first of `run.seeds`.
pub(crate) fn bootstrap(spec: &Spec) -> crate::stats::BootstrapSpec {
    crate::stats::BootstrapSpec {
        resamples: spec.run.bootstrap,
        seed: spec.run.seeds[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_spec_wires_every_stage_in_dependency_order() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/quick.toml");
        let spec = Spec::load(&root).unwrap();
        let names: Vec<String> = variants(&spec).into_iter().map(|v| v.name).collect();
        assert_eq!(&names[..3], ["lsdm", "ft", "dama"]);
        assert_eq!(
            names.len(),
            3 + spec.sweeps.lambda.len() + spec.sweeps.layer_count.len()
        );
        // check() in Pipeline::run validates the order; here a dry check of the names.
        let p = standard_pipeline(&spec).unwrap();
        let stage_names = p.names();
        for v in ["base", "lsdm", "ft", "dama"] {
            assert!(stage_names.contains(&format!("measure_{v}")), "{v}");
            assert!(stage_names.contains(&format!("eval_{v}")), "{v}");
        }
        assert!(stage_names.contains(&"trace".to_string()));
        assert!(stage_names.contains(&"trace_lsdm".to_string()));
        assert!(stage_names.contains(&"edit_lsdm_lambda_0".to_string()));
        p.check().unwrap();
        // Base first, then one variant after the other: every stage that reads a variant's
        // delta follows its edit before the next variant's edit.
        assert_eq!(stage_names[..3], ["measure_base", "trace", "eval_base"]);
        let at = |n: &str| stage_names.iter().position(|s| s == n).unwrap();
        assert!(at("eval_lsdm") < at("edit_ft") && at("eval_ft") < at("edit_dama"));
        assert!(at("edit_lsdm") < at("trace_lsdm") && at("trace_lsdm") < at("edit_ft"));
        assert_eq!(stage_names.last().unwrap(), "tradeoff");
    }

    /// Cache keys hash the settings: the enums must serialise as the strings they replaced.
    #[test]
    fn settings_spell_methods_priors_and_optimisers_as_before() {
        use super::super::pipeline::Stage;
        use serde_json::json;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/quick.toml");
        let spec = Spec::load(&root).unwrap();
        let vars = variants(&spec);
        let s = edit::EditStage::new(&spec, vars[0].clone())
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(s["variant"]["name"], "lsdm");
        assert_eq!(s["variant"]["method"], "lsdm");
        assert_eq!(s["edit"]["method"], "lsdm");
        assert_eq!(s["edit"]["lsdm"]["prior"], "moment");
        assert_eq!(s["edit"]["lsdm"]["target"]["optimizer"], "gauss-newton");
        let s = edit::EditStage::new(&spec, vars[1].clone())
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(s["variant"]["method"], "ft");
        let t = tradeoff::TradeoffStage::new(&spec, &vars)
            .settings()
            .unwrap();
        assert_eq!(t["points"][0], json!(["base", "base", "Base"]));
        assert_eq!(t["points"][1], json!(["lsdm", "lsdm", "LSDM"]));
        assert_eq!(t["points"][2], json!(["ft", "ft", "FT-L"]));
        assert_eq!(t["points"][3], json!(["dama", "dama", "DAMA"]));
        assert_eq!(t["points"][4][0], "lsdm_lambda_0");
        assert_eq!(t["points"][4][1], "lsdm");
    }

    /// An edit's key holds its own method's hyperparameters only: changing gap tuning's table
    /// in a report spec redoes `edit_tune`, not the LSDM, FT-L, DAMA or probe edits.
    #[test]
    fn an_edit_key_ignores_the_other_methods_tables() {
        use super::super::pipeline::Stage;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("harness/mitigation-smollm2.toml");
        let text = std::fs::read_to_string(&root).unwrap();
        let keys = |text: &str| -> Vec<(&'static str, serde_json::Value)> {
            let spec: Spec = toml::from_str(text).unwrap();
            variants(&spec)
                .into_iter()
                .map(|v| {
                    let s = edit::EditStage::new(&spec, v.clone()).unwrap();
                    (v.method.name(), s.settings().unwrap())
                })
                .collect()
        };
        let before = keys(&text);
        // The five methods, then LSDM's λ points.
        assert_eq!(before.len(), 7);
        let changed = text.replace("steps = 400", "steps = 401");
        assert_ne!(changed, text);
        for ((name, a), (_, b)) in before.iter().zip(keys(&changed)) {
            assert_eq!(a == &b, *name != "tune", "{name}");
            assert!(a["edit"].get("cache_dir").is_none());
            for other in ["lsdm", "ft", "dama", "probe", "tune"] {
                assert_eq!(
                    a["edit"].get(other).is_some(),
                    other == *name,
                    "{name}: {other}"
                );
            }
        }
    }

    /// The eval stages score with candle's composed ops unless the spec asks for the fused
    /// kernels; the choice is part of their cache key only (the default key is unchanged).
    #[test]
    fn eval_kernels_come_from_the_spec_and_key_only_the_eval_stages() {
        use super::super::pipeline::Stage;
        use crate::report::spec::EvalKernels;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/quick.toml");
        let mut spec = Spec::load(&root).unwrap();
        assert_eq!(spec.benchmarks.kernels, EvalKernels::Composed);
        let vars = variants(&spec);
        let eval_key = |spec: &Spec| eval::EvalStage::new(spec, "lsdm").settings().unwrap();
        let edit_key = |spec: &Spec| {
            edit::EditStage::new(spec, vars[0].clone())
                .unwrap()
                .settings()
                .unwrap()
        };
        let (composed, edit_before) = (eval_key(&spec), edit_key(&spec));
        assert_eq!(composed["lm"]["fast_kernels"], false);
        let text = std::fs::read_to_string(&root)
            .unwrap()
            .replace("[benchmarks]", "[benchmarks]\nkernels = \"fused\"");
        spec = toml::from_str(&text).unwrap();
        assert_eq!(spec.benchmarks.kernels, EvalKernels::Fused);
        let fused = eval_key(&spec);
        assert_eq!(fused["lm"]["fast_kernels"], true);
        assert_ne!(fused, composed);
        assert_eq!(edit_key(&spec), edit_before);
    }
}
