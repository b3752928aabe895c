//! `trace` (base model) and `trace_lsdm` (after the LSDM edit): causal tracing of the gender
//! metric over edit-split occupation prompts (the library's `TraceJob`, which `biaslens trace
//! --split edit` runs too), aggregated by token role. The base trace also
//! locates the sites (`LocatedSites`) whose MLP window the edits use when layers are `from_sites`.

use super::{edit_deps, load_variant, BASE, STAGE_VERSION};
use crate::report::inputs::{LocalisationRow, LocalisationSummary, ReportInputs, TraceGrid};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::Spec;
use crate::trace::aggregate::{estimate, token_roles, Traced};
use crate::trace::{aggregate_roles, locate_sites, Kind, LocatedSites, TraceJob};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceOutput {
    pub variant: String,
    pub n_prompts: usize,
    /// Absolute noise std (the spec's multiple of the embedding std over the selected prompts).
    pub noise_std: f64,
    pub localisation: LocalisationSummary,
    pub grids: Vec<TraceGrid>,
    /// Located sites (needs the `mlp` kind); the edits read `edit_layers` from here.
    pub sites: Option<LocatedSites>,
    pub wall_s: f64,
}

pub struct TraceStage {
    name: String,
    variant: String,
    job: TraceJob,
    model: String,
}

impl TraceStage {
    pub fn new(spec: &Spec, variant: &str) -> Self {
        TraceStage {
            name: if variant == BASE {
                "trace".into()
            } else {
                format!("trace_{variant}")
            },
            variant: variant.into(),
            job: spec.trace.job(&spec.split),
            model: spec.model.name.clone(),
        }
    }

    /// What this stage traces; `biaslens trace` runs the same job with the same numbers.
    pub fn job(&self) -> &TraceJob {
        &self.job
    }

    /// The heatmap column: before or after the edit.
    fn panel(&self) -> String {
        if self.variant == BASE {
            format!("before ({BASE})")
        } else {
            format!(
                "after {}",
                super::super::builders::variant_label(&self.variant)
            )
        }
    }
}

/// Table 1 rows: per (kind, role) the per-prompt mean IE over the role's tokens and all layers
/// (mean and CI over prompts), and the peak of the per-layer averages.
fn localisation(traced: &[Traced]) -> Result<LocalisationSummary> {
    let summaries = aggregate_roles(traced)?;
    let mut rows = vec![];
    for s in &summaries {
        let mut per_prompt = vec![];
        for it in traced {
            let eff = it.result.effects(it.sign);
            let Some((_, ie)) = eff.ie.iter().find(|(k, _)| *k == s.kind) else {
                continue;
            };
            let n = it.result.tokens;
            let toks: Vec<usize> = (0..n)
                .filter(|&t| token_roles(t, it.subject, n).contains(&s.role))
                .collect();
            if toks.is_empty() {
                continue;
            }
            let sum: f64 = toks.iter().map(|&t| ie[t].iter().sum::<f64>()).sum();
            per_prompt.push(sum / (toks.len() * it.result.layers) as f64);
        }
        let peak = (0..s.ie.len())
            .max_by(|&a, &b| s.ie[a].value.total_cmp(&s.ie[b].value).then(b.cmp(&a)))
            .ok_or_else(|| Error::param("trace", "no layers"))?;
        rows.push(LocalisationRow {
            role: s.role.label().into(),
            kind: s.kind.name().into(),
            aie: estimate(&per_prompt)?,
            peak_layer: peak,
            peak_aie: s.ie[peak].clone(),
        });
    }
    let te: Vec<f64> = traced.iter().map(|t| t.result.effects(t.sign).te).collect();
    Ok(LocalisationSummary {
        total_effect: estimate(&te)?,
        rows,
    })
}

fn grids(traced: &[Traced], panel: &str) -> Result<Vec<TraceGrid>> {
    let summaries = aggregate_roles(traced)?;
    let mut out: Vec<TraceGrid> = vec![];
    for s in &summaries {
        let row: Vec<f64> = s.ie.iter().map(|e| e.value).collect();
        match out.iter_mut().find(|g| g.kind == s.kind.name()) {
            Some(g) => {
                g.roles.push(s.role.label().into());
                g.aie.push(row);
            }
            None => out.push(TraceGrid {
                kind: s.kind.name().into(),
                variant: panel.into(),
                roles: vec![s.role.label().into()],
                aie: vec![row],
            }),
        }
    }
    Ok(out)
}

impl Stage for TraceStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn deps(&self) -> Vec<String> {
        edit_deps(&self.variant)
    }
    fn settings(&self) -> Result<Value> {
        Ok(json!({
            "version": STAGE_VERSION, "model": self.model, "variant": self.variant,
            "job": self.job,
        }))
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let (model, _) = load_variant(ctx, &self.variant)?;
        let prepared = self.job.prepare(&model)?;
        for s in &prepared.skipped {
            eprintln!("{}: skipping {:?}: {}", self.name, s.text, s.reason);
        }
        let records = (0..prepared.items.len())
            .map(|i| prepared.run_item(i))
            .collect::<Result<Vec<_>>>()?;
        let traced: Vec<Traced> = records.iter().map(|r| r.traced()).collect();
        let summaries = aggregate_roles(&traced)?;
        let settings = &self.job.settings;
        let sites = if settings.kinds.contains(&Kind::Mlp) {
            let nl = model.config().num_layers;
            Some(locate_sites(
                &model.info.name,
                &summaries,
                nl,
                settings.window,
                traced.len(),
                3,
            )?)
        } else {
            None
        };
        let out = TraceOutput {
            variant: self.variant.clone(),
            n_prompts: traced.len(),
            noise_std: prepared.noise_std,
            localisation: localisation(&traced)?,
            grids: grids(&traced, &self.panel())?,
            sites,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        Ok(serde_json::to_value(out)?)
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        let o: TraceOutput = serde_json::from_value(output.clone())?;
        if self.variant == BASE {
            inputs.localisation = Some(o.localisation);
        }
        inputs.traces.extend(o.grids);
        Ok(())
    }
}
