//! One self-contained `report.html`: inline CSS, the tables, the figures as inline SVG and the
//! run manifest. No scripts and no external resources, so it opens offline and archives whole.

use super::figures::Figure;
use super::manifest::Manifest;
use super::table::{html_escape, Table};
use crate::Result;

const CSS: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;}\
h1{font-size:26px;}h2{font-size:20px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px;}\
table{border-collapse:collapse;margin:12px 0 24px 0;font-size:13px;}\
caption{text-align:left;min-width:640px;padding:4px 0 8px 0;caption-side:top;}caption .cap{color:#555;font-size:12px;}\
th,td{border:1px solid #bbb;padding:4px 8px;}th{background:#f0f0f0;}\
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;}td.m{text-align:center;color:#999;}\
figure{margin:12px 0 28px 0;}figcaption{font-size:12px;color:#555;max-width:1100px;}\
figure svg{max-width:100%;height:auto;border:1px solid #ddd;}\
table.manifest td{font-family:'DejaVu Sans Mono',monospace;font-size:12px;word-break:break-all;}";

/// Render the full page. Figures are drawn here, so a figure that cannot be drawn is an error.
pub fn render(
    title: &str,
    tables: &[Table],
    figures: &[Figure],
    manifest: &Manifest,
) -> Result<String> {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str(&format!(
        "<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        html_escape(title)
    ));
    o.push_str(&format!("<h1>{}</h1>\n", html_escape(title)));
    if !manifest.stages_not_run.is_empty() {
        o.push_str(&format!(
            "<p><strong>Partial report:</strong> {} stages are not stored yet, so their cells \
             are missing: {}.</p>\n",
            manifest.stages_not_run.len(),
            html_escape(&manifest.stages_not_run.join(", "))
        ));
    }
    o.push_str("<nav><ul>\n");
    for t in tables {
        o.push_str(&format!(
            "<li><a href=\"#{}\">{}</a></li>\n",
            html_escape(&t.id),
            html_escape(&t.title)
        ));
    }
    for f in figures {
        o.push_str(&format!(
            "<li><a href=\"#{}\">{}</a></li>\n",
            html_escape(&f.id),
            html_escape(&f.title)
        ));
    }
    o.push_str("<li><a href=\"#manifest\">Run manifest</a></li>\n</ul></nav>\n");
    o.push_str("<h2>Tables</h2>\n");
    for t in tables {
        t.check()?;
        o.push_str(&t.to_html());
    }
    o.push_str("<h2>Figures</h2>\n");
    for f in figures {
        let svg = f.to_svg()?;
        o.push_str(&format!(
            "<figure id=\"{}\">\n<figcaption><strong>{}</strong><br>{}</figcaption>\n{}\n</figure>\n",
            html_escape(&f.id),
            html_escape(&f.title),
            html_escape(&f.caption),
            svg
        ));
    }
    o.push_str("<h2 id=\"manifest\">Run manifest</h2>\n<table class=\"manifest\">\n<tbody>\n");
    for (k, v) in manifest.display_rows() {
        o.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            html_escape(&k),
            html_escape(&v)
        ));
    }
    o.push_str("</tbody>\n</table>\n");
    if !manifest.stages.is_empty() {
        o.push_str("<table class=\"stages\">\n<caption><strong>Stages</strong></caption>\n");
        o.push_str("<thead><tr><th>Stage</th><th>Cache key</th><th>Cached</th><th>Wall (s)</th><th>Original wall (s)</th></tr></thead>\n<tbody>\n");
        for s in &manifest.stages {
            o.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td></tr>\n",
                html_escape(&s.name),
                html_escape(s.key.get(..16).unwrap_or(&s.key)),
                if s.cached { "yes" } else { "no" },
                s.wall_s,
                s.original_wall_s
            ));
        }
        o.push_str("</tbody>\n</table>\n");
    }
    if !manifest.nondeterminism.is_empty() {
        o.push_str("<p><strong>Not bit-reproducible:</strong></p>\n<ul>\n");
        for n in &manifest.nondeterminism {
            o.push_str(&format!("<li>{}</li>\n", html_escape(n)));
        }
        o.push_str("</ul>\n");
    }
    o.push_str("</body>\n</html>\n");
    Ok(o)
}
