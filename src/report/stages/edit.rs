//! `edit_<variant>`: one LSDM / FT-L / DAMA / probe / gap-tuning edit with the spec's
//! hyperparameters, on explicit layers, on the layers the trace stage located, or (probe, tune)
//! on the method's default top layers; the delta goes to
//! `artefacts/edit_<variant>/delta.safetensors` for the later stages to apply.

use super::{Variant, STAGE_VERSION};
use crate::edit::method::{edit_model, edit_prompt_bias, EditSpec, Method};
use crate::model::Model;
use crate::report::inputs::{CostRow, ReportInputs};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::{Layers, Spec};
use crate::stats::Estimate;
use crate::trace::{Kind, LocatedSites};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditOutput {
    pub variant: String,
    pub method: Method,
    pub layers: Vec<usize>,
    /// Delta file, relative to the report folder.
    pub delta: String,
    pub delta_sha256: String,
    /// Bias on the edit prompts before and after (what the edit was asked to change).
    pub edit_prompts_before: Estimate,
    pub edit_prompts_after: Estimate,
    /// `edit_model` alone (targets, keys, statistics, solve) and the whole stage.
    pub edit_s: f64,
    /// Work of `edit_model` as counted by the transformer (its clones included).
    #[serde(default)]
    pub passes: u64,
    #[serde(default)]
    pub token_layers: u64,
    /// Corpus tokens behind cacheable statistics (LSDM's C); their passes are excluded above.
    #[serde(default)]
    pub statistics_tokens: u64,
    pub wall_s: f64,
    /// The method's own report (losses, norms).
    pub report: Value,
}

pub struct EditStage {
    name: String,
    variant: Variant,
    /// None: the method's default layers (the probe's and gap tuning's top layers).
    layers: Option<Layers>,
    edit: EditSpec,
    model: String,
    uses_sites: bool,
    /// `trace.sites`: located sites from a file instead of the trace stage.
    sites_file: Option<std::path::PathBuf>,
}

/// The spec's method sections as the library's [`EditSpec`] (layers filled in at run time).
pub fn edit_spec(spec: &Spec, v: &Variant) -> Result<(EditSpec, Option<Layers>)> {
    let mut e = EditSpec::new(v.method, vec![]);
    e.split = spec.split.clone();
    e.max_edit_professions = spec.methods.max_edit_professions;
    let m = &spec.methods;
    // Each present section's parameters as they are; absent ones keep the library defaults.
    if let Some(l) = &m.lsdm {
        e.lsdm = l.params.clone();
    }
    if let Some(lambda) = v.lambda {
        // A λ sweep point.
        e.lsdm.lambda = lambda;
    }
    if let Some(f) = &m.ft {
        e.ft = f.params.clone();
    }
    if let Some(d) = &m.dama {
        e.dama = d.params.clone();
    }
    if let Some(p) = &m.probe {
        e.probe = p.params.clone();
    }
    if let Some(t) = &m.tune {
        e.tune = t.params.clone();
    }
    let missing = || Error::param(format!("methods.{}", v.method), "section missing");
    // None: the method's own default layers, resolved when the model is loaded.
    let layers = match v.method {
        Method::Lsdm => Some(m.lsdm.as_ref().ok_or_else(missing)?.layers.clone()),
        Method::Ft => Some(m.ft.as_ref().ok_or_else(missing)?.layers.clone()),
        Method::Dama => Some(m.dama.as_ref().ok_or_else(missing)?.layers.clone()),
        Method::Probe => m
            .probe
            .as_ref()
            .ok_or_else(missing)?
            .layers
            .clone()
            .map(Layers::List),
        Method::Tune => m
            .tune
            .as_ref()
            .ok_or_else(missing)?
            .layers
            .clone()
            .map(Layers::List),
    };
    Ok((e, layers))
}

/// The parts of an edit spec that decide its delta: the method's own hyperparameters, not the
/// other methods' tables (a report spec sets them for its other variants, and changing one
/// must not redo this edit), nor where statistics are cached.
fn edit_key_fields(edit: &EditSpec) -> Result<Value> {
    let mut v = serde_json::to_value(edit)?;
    if let Some(o) = v.as_object_mut() {
        for m in [
            Method::Lsdm,
            Method::Ft,
            Method::Dama,
            Method::Probe,
            Method::Tune,
        ] {
            if m != edit.method {
                o.remove(m.name());
            }
        }
        o.remove("cache_dir");
    }
    Ok(v)
}

impl EditStage {
    pub fn new(spec: &Spec, variant: Variant) -> Result<Self> {
        let (edit, layers) = edit_spec(spec, &variant)?;
        // The stages are built before any runs, so a missing word list fails here, not after
        // the base model's stages (the check `biaslens edit` makes before loading a model).
        edit.check_word_files()?;
        let uses_sites =
            layers.as_ref().is_some_and(Layers::is_from_sites) || variant.layer_count.is_some();
        Ok(EditStage {
            name: format!("edit_{}", variant.name),
            variant,
            layers,
            edit,
            model: spec.model.name.clone(),
            uses_sites,
            sites_file: spec.trace.sites.clone(),
        })
    }

    fn sites(&self, ctx: &Ctx) -> Result<LocatedSites> {
        match &self.sites_file {
            Some(path) => LocatedSites::load(path),
            None => Ok(serde_json::from_value(
                ctx.input("trace")?["sites"].clone(),
            )?),
        }
    }

    fn resolve_layers(&self, ctx: &Ctx, model: &Model) -> Result<Vec<usize>> {
        if !self.uses_sites {
            match &self.layers {
                Some(Layers::List(l)) => return Ok(l.clone()),
                None => {
                    // The probe's and tune's own default (a heads-only tune: the heads' layers);
                    // the other methods always name their layers (`edit_spec`).
                    let n = model.config().num_layers;
                    return Ok(self
                        .edit
                        .method_default_layers(n)
                        .unwrap_or_else(|| crate::edit::probe::default_layers(n)));
                }
                Some(Layers::Word(_)) => {}
            }
        }
        let sites = self.sites(ctx)?;
        match self.variant.layer_count {
            Some(n) => Ok(Kind::Mlp
                .window(sites.edit_center, n, sites.num_layers)
                .collect()),
            None => Ok(sites.default_edit_layers()),
        }
    }
}

/// Whether the delta a stored edit output names is in `out_dir` with the hash it recorded: the
/// later stages apply it.
fn delta_present(out_dir: &std::path::Path, output: &Value) -> bool {
    let (Some(rel), Some(want)) = (output["delta"].as_str(), output["delta_sha256"].as_str())
    else {
        return false;
    };
    crate::io::sha256_file(&out_dir.join(rel)).is_ok_and(|h| h == want)
}

impl Stage for EditStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn deps(&self) -> Vec<String> {
        if self.uses_sites && self.sites_file.is_none() {
            vec!["trace".into()]
        } else {
            vec![]
        }
    }
    fn settings(&self) -> Result<Value> {
        let mut v = json!({
            "version": STAGE_VERSION, "model": self.model, "variant": self.variant,
            "layers": self.layers, "edit": edit_key_fields(&self.edit)?,
        });
        if let (true, Some(path)) = (self.uses_sites, &self.sites_file) {
            // The edit depends on the file's content, not its name.
            v["sites_sha256"] = json!(crate::io::sha256_file(path)?);
        }
        Ok(v)
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let mut spec = self.edit.clone();
        let model = Model::load(&self.model, &super::device(ctx.spec)?)?;
        spec.layers = self.resolve_layers(ctx, &model)?;
        if spec.layers.is_empty() {
            return Err(Error::param("layers", "no layers to edit"));
        }
        let before = edit_prompt_bias(&model, &spec)?;
        let name = self.name.clone();
        let work_before = model.transformer.work.read();
        let outcome = edit_model(&model, &spec, |s| eprintln!("{name}: {s}"))?;
        // The method's own work: statistics may come from the cache, so they are counted apart.
        let work = model.transformer.work.read() - work_before - outcome.statistics_work;
        let weights = crate::edit::record::apply_delta(&model, &outcome.delta)?;
        let edited = model.with_weights(weights, "+edit")?;
        let after = edit_prompt_bias(&edited, &spec)?;
        let dir = ctx.artefact_dir(&self.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e.to_string()))?;
        let path = dir.join("delta.safetensors");
        outcome.delta.save(&path)?;
        outcome.release_checkpoint()?;
        let rel = path
            .strip_prefix(ctx.out_dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let out = EditOutput {
            variant: self.variant.name.clone(),
            method: self.variant.method,
            layers: spec.layers.clone(),
            delta: rel,
            delta_sha256: crate::io::sha256_file(&path)?,
            edit_prompts_before: before.mean_abs_gap,
            edit_prompts_after: after.mean_abs_gap,
            edit_s: outcome.seconds,
            passes: work.passes,
            token_layers: work.token_layers,
            statistics_tokens: outcome.statistics_tokens,
            wall_s: t0.elapsed().as_secs_f64(),
            report: outcome.report,
        };
        Ok(serde_json::to_value(out)?)
    }
    fn artefacts_present(&self, out_dir: &std::path::Path, output: &Value) -> bool {
        delta_present(out_dir, output)
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        if !super::is_method(&self.variant.name) {
            return Ok(());
        }
        let o: EditOutput = serde_json::from_value(output.clone())?;
        inputs.cost.push(CostRow {
            method: self.variant.name.clone(),
            wall_s: o.wall_s,
            forwards: Some(o.passes),
            token_layers: Some(o.token_layers),
            statistics_tokens: (o.statistics_tokens > 0).then_some(o.statistics_tokens),
            edit_s: o.edit_s,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_edit_needs_its_delta_with_the_recorded_hash() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "artefacts/edit_x/delta.safetensors";
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"delta bytes").unwrap();
        let output =
            json!({ "delta": rel, "delta_sha256": crate::io::sha256_file(&path).unwrap() });
        assert!(delta_present(dir.path(), &output));
        std::fs::write(&path, b"other bytes").unwrap();
        assert!(!delta_present(dir.path(), &output), "changed file");
        std::fs::remove_file(&path).unwrap();
        assert!(!delta_present(dir.path(), &output), "missing file");
        assert!(
            !delta_present(dir.path(), &json!({ "delta": rel })),
            "no recorded hash"
        );
    }
}
