//! Writing a report to disk: Tables 1-5 as Markdown/CSV/JSON, figures as SVG (and PNG), the
//! manifest, the inputs they were built from, and `report.html`. Every file is written atomically.

use super::builders;
use super::figures::{standard_figures, Figure};
use super::inputs::ReportInputs;
use super::manifest::Manifest;
use super::spec::OutputSpec;
use super::table::Table;
use crate::io::{write_atomic, write_json_atomic};
use crate::Result;
use std::path::{Path, PathBuf};

/// The tables a set of inputs supports, in paper order; empty sections are skipped.
pub fn build_tables(inputs: &ReportInputs, decimals: usize) -> Result<Vec<Table>> {
    let mut t = vec![];
    if let Some(l) = &inputs.localisation {
        t.push(builders::table1_localisation(l, decimals));
    }
    if !inputs.bias.is_empty() {
        t.push(builders::table2_bias(&inputs.bias, decimals)?);
    }
    if !inputs.capability.is_empty() {
        t.push(builders::table3_capability(&inputs.capability, decimals)?);
    }
    if !inputs.cost.is_empty() {
        t.push(builders::table4_cost(&inputs.cost)?);
    }
    if let Some(x) = super::against_base::table5_against_base(&inputs.bias, &inputs.capability) {
        t.push(x);
    }
    for x in &t {
        x.check()?;
    }
    Ok(t)
}

/// Write everything under `out`; returns the paths written, in order.
pub fn write_report(
    out: &Path,
    inputs: &ReportInputs,
    manifest: &Manifest,
    opts: &OutputSpec,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    let put = |p: PathBuf, bytes: &[u8], written: &mut Vec<PathBuf>| -> Result<()> {
        write_atomic(&p, bytes)?;
        written.push(p);
        Ok(())
    };
    let tables = build_tables(inputs, opts.decimals)?;
    for t in &tables {
        let base = out.join("tables").join(&t.id);
        put(
            base.with_extension("md"),
            t.to_markdown().as_bytes(),
            &mut written,
        )?;
        put(
            base.with_extension("csv"),
            t.to_csv().as_bytes(),
            &mut written,
        )?;
        put(
            base.with_extension("json"),
            t.to_json()?.as_bytes(),
            &mut written,
        )?;
    }
    let figures: Vec<Figure> = standard_figures(inputs);
    for f in &figures {
        let base = out.join("figures").join(&f.id);
        put(
            base.with_extension("svg"),
            f.to_svg()?.as_bytes(),
            &mut written,
        )?;
        if opts.png {
            let p = base.with_extension("png");
            f.write_png(&p)?;
            written.push(p);
        }
    }
    let p = out.join("inputs.json");
    write_json_atomic(&p, inputs)?;
    written.push(p);
    let p = out.join("manifest.json");
    write_json_atomic(&p, manifest)?;
    written.push(p);
    if opts.html {
        let html = super::html::render(&inputs.title, &tables, &figures, manifest)?;
        let p = out.join("report.html");
        write_atomic(&p, html.as_bytes())?;
        written.push(p);
    }
    Ok(written)
}
