//! What a trace / mediate run directory holds beyond `rundir`: per-prompt records and the
//! summaries, `sites.json` and plots written once every item is in (by the run or by `merge`).

use super::aggregate::{aggregate_roles, RoleSummary, TokenRole, Traced};
use super::mediation::{summarise, MediationResult};
use super::mediation_summary::Robust;
use super::sites_json::locate_sites;
use super::{Kind, TraceResult};
use crate::plot::{heatmap, line_plot, Heatmap, LinePlot, Series};
use crate::rundir::{RunDir, SETTINGS};
use crate::stats::Estimate;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One traced prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub profession: String,
    pub template_index: usize,
    pub text: String,
    pub ids: Vec<u32>,
    pub subject: (usize, usize),
    /// +1: male-stereotyped (m = p(he) - p(she)); -1: female-stereotyped.
    pub sign: f64,
    pub result: TraceResult,
}

impl TraceRecord {
    /// The record as an input of [`aggregate_roles`].
    pub fn traced(&self) -> Traced<'_> {
        Traced {
            result: &self.result,
            subject: self.subject,
            sign: self.sign,
        }
    }
}

/// One mediation prompt pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediationRecord {
    pub profession: String,
    pub template_index: usize,
    pub text: String,
    pub swapped_text: String,
    pub result: MediationResult,
}

/// Aggregate of a whole trace run (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub n_prompts: usize,
    pub te: Estimate,
    pub roles: Vec<RoleSummary>,
}

/// The summary of traced prompts (`summary.json`): the mean total effect and each kind ×
/// token role × layer's mean indirect effect, with 95% CIs.
pub fn summarise_trace<'a>(
    records: impl IntoIterator<Item = &'a TraceRecord>,
) -> Result<TraceSummary> {
    let recs: Vec<&TraceRecord> = records.into_iter().collect();
    let items: Vec<Traced> = recs.iter().map(|r| r.traced()).collect();
    let te: Vec<f64> = recs.iter().map(|r| r.result.effects(r.sign).te).collect();
    Ok(TraceSummary {
        n_prompts: recs.len(),
        te: super::aggregate::estimate(&te)?,
        roles: aggregate_roles(&items)?,
    })
}

fn settings(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join(SETTINGS);
    let t = std::fs::read_to_string(&p).map_err(|e| Error::file(&p, e.to_string()))?;
    serde_json::from_str(&t).map_err(|e| Error::file(&p, format!("not JSON: {e}")))
}

/// Write the summaries and plots of a finished run directory (trace or mediate, per its settings).
pub fn finalize(dir: &Path) -> Result<()> {
    let s = settings(dir)?;
    let run = RunDir::open(dir, &s)?;
    match s.get("command").and_then(|c| c.as_str()) {
        Some("trace") => finalize_trace(&run, &s),
        Some("mediate") => finalize_mediation(&run),
        other => Err(Error::file(
            dir.join(SETTINGS),
            format!("unknown command {other:?}"),
        )),
    }
}

fn finalize_trace(run: &RunDir, s: &serde_json::Value) -> Result<()> {
    let recs: Vec<(usize, TraceRecord)> = run.records()?;
    let summary = summarise_trace(recs.iter().map(|(_, r)| r))?;
    let dir = run.dir();
    crate::io::write_json_atomic(&dir.join("summary.json"), &summary)?;
    let nl = recs.first().map_or(0, |(_, r)| r.result.layers);
    let window = s
        .pointer("/trace/window")
        .and_then(|w| w.as_u64())
        .unwrap_or(10) as usize;
    let model = s.get("model").and_then(|m| m.as_str()).unwrap_or("");
    if summary.roles.iter().any(|r| r.kind == Kind::Mlp) {
        let sites = locate_sites(model, &summary.roles, nl, window, recs.len(), 3)?;
        crate::io::write_json_atomic(&dir.join("sites.json"), &sites)?;
    }
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::file(&plots, e.to_string()))?;
    for kind in Kind::ALL {
        let rows: Vec<&RoleSummary> = summary.roles.iter().filter(|r| r.kind == kind).collect();
        if rows.is_empty() {
            continue;
        }
        heatmap(
            &Heatmap {
                title: format!(
                    "{model}: average IE of restoring {} (n = {})",
                    kind.name(),
                    recs.len()
                ),
                row_labels: rows.iter().map(|r| r.role.label().to_string()).collect(),
                col_labels: (0..nl).map(|l| l.to_string()).collect(),
                col_title: "layer".into(),
                value_label: "IE".into(),
                values: rows
                    .iter()
                    .map(|r| r.ie.iter().map(|e| e.value).collect())
                    .collect(),
            },
            &plots.join(format!("heatmap_{}", kind.name())),
        )?;
        let series = rows
            .iter()
            .filter(|r| matches!(r.role, TokenRole::LastSubject | TokenRole::Last))
            .map(|r| Series {
                label: r.role.label().into(),
                y: r.ie.iter().map(|e| e.value).collect(),
                low: r.ie.iter().map(|e| e.ci_low).collect(),
                high: r.ie.iter().map(|e| e.ci_high).collect(),
            })
            .collect();
        line_plot(
            &LinePlot {
                title: format!("{model}: {} IE by layer, 95% CI", kind.name()),
                x_label: "layer".into(),
                y_label: "IE of signed p(he) - p(she)".into(),
                series,
            },
            &plots.join(format!("layers_{}", kind.name())),
        )?;
    }
    Ok(())
}

fn finalize_mediation(run: &RunDir) -> Result<()> {
    let recs: Vec<(usize, MediationRecord)> = run.records()?;
    let results: Vec<MediationResult> = recs.into_iter().map(|(_, r)| r.result).collect();
    let summary = summarise(&results)?;
    let dir = run.dir();
    crate::io::write_json_atomic(&dir.join("summary.json"), &summary)?;
    crate::io::write_atomic(&dir.join("summary.md"), summary.markdown(10).as_bytes())?;
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::file(&plots, e.to_string()))?;
    let heads = summary.nie_head.first().map_or(0, |h| h.len());
    heatmap(
        &Heatmap {
            title: format!("NIE per attention head (n = {})", summary.n_prompts),
            row_labels: (0..summary.nie_head.len())
                .map(|l| format!("layer {l}"))
                .collect(),
            col_labels: (0..heads).map(|h| h.to_string()).collect(),
            col_title: "head".into(),
            value_label: "NIE".into(),
            values: summary.nie_head.clone(),
        },
        &plots.join("heads_nie"),
    )?;
    heatmap(
        &Heatmap {
            title: format!(
                "mean ln(1 + NIE) per attention head (n = {})",
                summary.n_prompts
            ),
            row_labels: (0..summary.nie_head_log.len())
                .map(|l| format!("layer {l}"))
                .collect(),
            col_labels: (0..heads).map(|h| h.to_string()).collect(),
            col_title: "head".into(),
            value_label: "ln(1 + NIE)".into(),
            values: summary
                .nie_head_log
                .iter()
                .map(|row| row.iter().map(|e| e.value).collect())
                .collect(),
        },
        &plots.join("heads_nie_log"),
    )?;
    let ser = |label: &str, e: &[Estimate]| Series {
        label: label.into(),
        y: e.iter().map(|x| x.value).collect(),
        low: e.iter().map(|x| x.ci_low).collect(),
        high: e.iter().map(|x| x.ci_high).collect(),
    };
    line_plot(
        &LinePlot {
            title: "NIE by layer, 95% CI".into(),
            x_label: "layer".into(),
            y_label: "NIE".into(),
            series: vec![
                ser("MLP", &summary.nie_mlp),
                ser("attention", &summary.nie_attn),
            ],
        },
        &plots.join("layers_nie"),
    )?;
    let log = |r: &[Robust]| -> Vec<Estimate> { r.iter().map(|x| x.log_ratio.clone()).collect() };
    line_plot(
        &LinePlot {
            title: "mean ln(1 + NIE) by layer, 95% CI (ln(1 + TE) = te_robust.log_ratio)".into(),
            x_label: "layer".into(),
            y_label: "mean ln(1 + NIE)".into(),
            series: vec![
                ser("MLP", &log(&summary.nie_mlp_robust)),
                ser("attention", &log(&summary.nie_attn_robust)),
            ],
        },
        &plots.join("layers_nie_log"),
    )
}
