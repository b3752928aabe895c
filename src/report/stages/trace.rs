//! `trace` (base model) and `trace_lsdm` (after the LSDM edit): causal tracing of the gender
//! metric over edit-split occupation prompts, aggregated by token role. The base trace also
//! locates the sites (`LocatedSites`) whose MLP window the edits use when layers are `from_sites`.

use super::{edit_deps, load_variant, STAGE_VERSION};
use crate::measure::occupations::subset_prompts;
use crate::measure::{MeasureOptions, Subset};
use crate::report::inputs::{LocalisationRow, LocalisationSummary, ReportInputs, TraceGrid};
use crate::report::pipeline::{Ctx, Stage};
use crate::report::spec::{Spec, TraceSpec};
use crate::trace::aggregate::{estimate, token_roles, Traced};
use crate::trace::fast::{trace_fast_batched, DEFAULT_BATCH_ROWS};
use crate::trace::prompts::{pronoun_ids, select_prompts, trace_case};
use crate::trace::{
    aggregate_roles, embedding_std, locate_sites, sample_noise, stereotype_sign, Kind,
    LocatedSites, NoiseLevel, TraceResult, TraceSettings,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceOutput {
    pub variant: String,
    pub n_prompts: usize,
    /// Absolute noise std (the spec's multiple of the occupation-token embedding std).
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
    trace: TraceSpec,
    split: crate::data::SplitSpec,
    model: String,
}

impl TraceStage {
    pub fn new(spec: &Spec, variant: &str) -> Self {
        TraceStage {
            name: if variant == "base" {
                "trace".into()
            } else {
                format!("trace_{variant}")
            },
            variant: variant.into(),
            trace: spec.trace.clone(),
            split: spec.split.clone(),
            model: spec.model.name.clone(),
        }
    }

    /// The heatmap column: before or after the edit.
    fn panel(&self) -> String {
        if self.variant == "base" {
            "before (base)".into()
        } else {
            format!(
                "after {}",
                super::super::builders::variant_label(&self.variant)
            )
        }
    }
}

fn kind_of(k: crate::report::spec::TraceKind) -> Kind {
    match k {
        crate::report::spec::TraceKind::Hidden => Kind::Hidden,
        crate::report::spec::TraceKind::Mlp => Kind::Mlp,
        crate::report::spec::TraceKind::Attn => Kind::Attn,
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
            "trace": self.trace, "split": self.split, "batch_rows": DEFAULT_BATCH_ROWS,
        }))
    }
    fn run(&self, ctx: &Ctx) -> Result<Value> {
        let t0 = Instant::now();
        let (model, _) = load_variant(ctx, &self.variant)?;
        let tok = model.tokenizer()?;
        let pronouns = pronoun_ids(tok)?;
        let (all, _) = subset_prompts(&MeasureOptions {
            subset: Subset::Edit,
            split: self.split.clone(),
            ..MeasureOptions::default()
        })?;
        let ids: Vec<Vec<u32>> = all
            .iter()
            .map(|p| tok.encode(&p.text))
            .collect::<Result<_>>()?;
        let std = self.trace.noise * embedding_std(&model.transformer, &ids)?;
        let t = &self.trace;
        let settings = TraceSettings {
            samples: t.samples,
            window: t.window,
            kinds: t.kinds.iter().map(|&k| kind_of(k)).collect(),
            noise: NoiseLevel::Fixed(std),
            seed: t.seed,
        };
        settings.validate()?;
        let d = model.config().hidden_size;
        let mut results: Vec<(TraceResult, (usize, usize), f64)> = vec![];
        for (i, p) in select_prompts(&all, t.prompts, t.seed).iter().enumerate() {
            let case = match trace_case(tok, p, pronouns) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: skipping {:?}: {e}", self.name, p.text);
                    continue;
                }
            };
            let seed = t.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let noise = sample_noise(
                seed,
                t.samples,
                case.subject.1 - case.subject.0,
                d,
                std,
                &model.transformer.device,
            )?;
            let r = trace_fast_batched(
                &model.transformer,
                &case,
                &noise,
                &settings,
                DEFAULT_BATCH_ROWS,
            )?;
            results.push((r, case.subject, stereotype_sign(p.stereotypical)));
        }
        if results.is_empty() {
            return Err(Error::param("trace.prompts", "no prompt could be traced"));
        }
        let traced: Vec<Traced> = results
            .iter()
            .map(|(r, s, sign)| Traced {
                result: r,
                subject: *s,
                sign: *sign,
            })
            .collect();
        let summaries = aggregate_roles(&traced)?;
        let sites = if settings.kinds.contains(&Kind::Mlp) {
            let nl = model.config().num_layers;
            Some(locate_sites(
                &model.info.name,
                &summaries,
                nl,
                t.window,
                traced.len(),
                3,
            )?)
        } else {
            None
        };
        let out = TraceOutput {
            variant: self.variant.clone(),
            n_prompts: traced.len(),
            noise_std: std,
            localisation: localisation(&traced)?,
            grids: grids(&traced, &self.panel())?,
            sites,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        Ok(serde_json::to_value(out)?)
    }
    fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
        let o: TraceOutput = serde_json::from_value(output.clone())?;
        if self.variant == "base" {
            inputs.localisation = Some(o.localisation);
        }
        inputs.traces.extend(o.grids);
        Ok(())
    }
}
