//! Figures: causal-tracing heatmaps before/after an edit and the bias-vs-capability trade-off
//! scatter. Each figure is data plus one drawing routine generic over the plotters backend, so
//! the same code yields the SVG embedded in the HTML and the PNG written next to it.

use super::inputs::{TraceGrid, TradeoffPoint};
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Font files tried first (Debian's fonts-dejavu-core, then common alternatives).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn find_ttf(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && depth > 0 {
            find_ttf(&p, depth - 1, out);
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
            out.push(p);
        }
    }
}

/// The font used for all text: `$BIASLENS_FONT`, a known sans font, else any TTF under the
/// system font folders (sorted, so the choice is stable).
fn font_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BIASLENS_FONT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::file(p, "BIASLENS_FONT does not name a font file"))
        };
    }
    if let Some(p) = FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    let mut found = vec![];
    for d in ["/usr/share/fonts", "/usr/local/share/fonts"] {
        find_ttf(Path::new(d), 4, &mut found);
    }
    found.into_iter().next().ok_or_else(|| {
        Error::param(
            "font",
            "no TrueType font found for figure text; install one (apt-get install -y fonts-dejavu-core) or set BIASLENS_FONT=/path/to/font.ttf",
        )
    })
}

/// Register a system font as plotters' `sans-serif` once per process.
pub fn ensure_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = font_path().map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|m| Error::param("font", m))
}

/// Diverging map: blue for negative, white at zero, red for positive; `t` in [-1, 1].
pub fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (end, a) = if t >= 0.0 {
        ((178.0, 24.0, 43.0), t)
    } else {
        ((33.0, 102.0, 172.0), -t)
    };
    let mix = |e: f64| (255.0 + (e - 255.0) * a).round() as u8;
    RGBColor(mix(end.0), mix(end.1), mix(end.2))
}

/// What a figure shows; drawing is dispatched on this.
#[derive(Debug, Clone, PartialEq)]
pub enum FigureKind {
    /// Panels: one row per trace kind, one column per variant, shared colour scale per row.
    Heatmaps(Vec<TraceGrid>),
    Tradeoff {
        points: Vec<TradeoffPoint>,
        x_label: String,
        y_label: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub id: String,
    pub title: String,
    pub caption: String,
    pub kind: FigureKind,
}

fn plot_err(id: &str, e: impl std::fmt::Display) -> Error {
    Error::param(format!("figure {id}"), e.to_string())
}

/// Row (kind) and column (variant) labels of a heatmap grid, in first-appearance order.
fn heatmap_layout(grids: &[TraceGrid]) -> (Vec<String>, Vec<String>) {
    let mut kinds: Vec<String> = vec![];
    let mut variants: Vec<String> = vec![];
    for g in grids {
        if !kinds.contains(&g.kind) {
            kinds.push(g.kind.clone());
        }
        if !variants.contains(&g.variant) {
            variants.push(g.variant.clone());
        }
    }
    (kinds, variants)
}

impl Figure {
    /// Pixel size; heatmaps grow with the number of kinds.
    pub fn size(&self) -> (u32, u32) {
        match &self.kind {
            FigureKind::Heatmaps(g) => {
                let (kinds, variants) = heatmap_layout(g);
                (
                    560 * variants.len().max(1) as u32 + 90,
                    280 * kinds.len().max(1) as u32,
                )
            }
            FigureKind::Tradeoff { .. } => (900, 600),
        }
    }

    /// Check the data can be drawn (rectangular grids, finite points) before any backend runs.
    pub fn check(&self) -> Result<()> {
        match &self.kind {
            FigureKind::Heatmaps(grids) => {
                if grids.is_empty() {
                    return Err(plot_err(&self.id, "no trace grids"));
                }
                for g in grids {
                    let l = g.layers();
                    if l == 0 || g.aie.len() != g.roles.len() || g.aie.iter().any(|r| r.len() != l)
                    {
                        return Err(plot_err(
                            &self.id,
                            format!("grid {}/{} is not roles × layers", g.kind, g.variant),
                        ));
                    }
                }
            }
            FigureKind::Tradeoff { points, .. } => {
                if points.is_empty() {
                    return Err(plot_err(&self.id, "no trade-off points"));
                }
                if let Some(p) = points
                    .iter()
                    .find(|p| !(p.bias.is_finite() && p.capability.is_finite()))
                {
                    return Err(plot_err(
                        &self.id,
                        format!("point {} {} is not finite", p.method, p.label),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        self.check()?;
        ensure_font()?;
        root.fill(&WHITE).map_err(|e| plot_err(&self.id, e))?;
        match &self.kind {
            FigureKind::Heatmaps(g) => draw_heatmaps(&self.id, root, g),
            FigureKind::Tradeoff {
                points,
                x_label,
                y_label,
            } => draw_tradeoff(&self.id, root, points, x_label, y_label),
        }?;
        root.present().map_err(|e| plot_err(&self.id, e))
    }

    /// The figure as an SVG document (embedded inline in the HTML).
    pub fn to_svg(&self) -> Result<String> {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size()).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(s)
    }

    pub fn write_png(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        }
        let root = BitMapBackend::new(path, self.size()).into_drawing_area();
        self.draw(&root)
            .map_err(|e| Error::file(path, e.to_string()))
    }
}

fn draw_heatmaps<DB: DrawingBackend>(
    id: &str,
    root: &DrawingArea<DB, Shift>,
    grids: &[TraceGrid],
) -> Result<()> {
    let (kinds, variants) = heatmap_layout(grids);
    let (w, _) = root.dim_in_pixel();
    let (body, bar) = root.split_horizontally(w.saturating_sub(90));
    let rows = body.split_evenly((kinds.len(), variants.len()));
    let bars = bar.split_evenly((kinds.len(), 1));
    for (ki, kind) in kinds.iter().enumerate() {
        let scale = grids
            .iter()
            .filter(|g| &g.kind == kind)
            .flat_map(|g| g.aie.iter().flatten())
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = if scale > 0.0 { scale } else { 1.0 };
        for (vi, variant) in variants.iter().enumerate() {
            let area = &rows[ki * variants.len() + vi];
            match grids
                .iter()
                .find(|g| &g.kind == kind && &g.variant == variant)
            {
                Some(g) => draw_one_heatmap(id, area, g, scale)?,
                None => {
                    area.draw(&Text::new(
                        format!("{kind} / {variant}: not traced"),
                        (20, 40),
                        ("sans-serif", 16),
                    ))
                    .map_err(|e| plot_err(id, e))?;
                }
            }
        }
        draw_colour_bar(id, &bars[ki], scale)?;
    }
    Ok(())
}

fn draw_one_heatmap<DB: DrawingBackend>(
    id: &str,
    area: &DrawingArea<DB, Shift>,
    g: &TraceGrid,
    scale: f64,
) -> Result<()> {
    let layers = g.layers();
    let roles = g.roles.len();
    let e = |e| plot_err(id, e);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} — {}", g.kind, g.variant), ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(170)
        // An i32 range a..b is inclusive in plotters, so 0..n-1 gives exactly n segments.
        .build_cartesian_2d(
            (0..layers as i32 - 1).into_segmented(),
            (0..roles as i32 - 1).into_segmented(),
        )
        .map_err(e)?;
    let step = layers.div_ceil(12).max(1);
    let centre = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => Some(*i as usize),
        _ => None,
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("layer")
        .x_labels(layers)
        .y_labels(roles)
        .x_label_formatter(&|x| match centre(x) {
            Some(l) if l % step == 0 => l.to_string(),
            _ => String::new(),
        })
        // Row 0 is drawn at the top, like a table.
        .y_label_formatter(&|y| match centre(y) {
            Some(r) => g
                .roles
                .get(roles.saturating_sub(1 + r))
                .cloned()
                .unwrap_or_default(),
            None => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(g.aie.iter().enumerate().flat_map(|(r, row)| {
            let y = (roles - 1 - r) as i32;
            row.iter().enumerate().map(move |(l, v)| {
                let l = l as i32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(l), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(l + 1), SegmentValue::Exact(y + 1)),
                    ],
                    diverging(v / scale).filled(),
                )
            })
        }))
        .map_err(e)?;
    Ok(())
}

fn draw_colour_bar<DB: DrawingBackend>(
    id: &str,
    area: &DrawingArea<DB, Shift>,
    scale: f64,
) -> Result<()> {
    let e = |e| plot_err(id, e);
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = (40i32, h as i32 - 40);
    let steps = 40;
    for i in 0..steps {
        let y0 = top + (bottom - top) * i / steps;
        let y1 = top + (bottom - top) * (i + 1) / steps;
        let t = 1.0 - 2.0 * (i as f64 + 0.5) / steps as f64;
        area.draw(&Rectangle::new([(10, y0), (30, y1)], diverging(t).filled()))
            .map_err(e)?;
    }
    let style = ("sans-serif", 12).into_font();
    for (y, v) in [(top, scale), ((top + bottom) / 2, 0.0), (bottom, -scale)] {
        area.draw(&Text::new(
            super::table::fmt_num(v, 3),
            (34, y - 6),
            style.clone(),
        ))
        .map_err(e)?;
    }
    area.draw(&Text::new("AIE", (8, top - 24), style))
        .map_err(e)?;
    Ok(())
}

/// Axis range with 10% padding (or ±0.05 for a single value).
fn padded(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = xs.clone().fold(f64::INFINITY, f64::min);
    let hi = xs.fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo { (hi - lo) * 0.1 } else { 0.05 };
    (lo - pad, hi + pad)
}

/// Fixed colours per method so every report uses the same legend.
pub fn method_colour(method: &str) -> RGBColor {
    match method {
        "base" => RGBColor(0, 0, 0),
        "lsdm" => RGBColor(213, 94, 0),
        "ft" => RGBColor(0, 114, 178),
        "dama" => RGBColor(0, 158, 115),
        _ => RGBColor(204, 121, 167),
    }
}

fn draw_tradeoff<DB: DrawingBackend>(
    id: &str,
    root: &DrawingArea<DB, Shift>,
    points: &[TradeoffPoint],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let e = |e| plot_err(id, e);
    let (x0, x1) = padded(points.iter().map(|p| p.capability));
    let (y0, y1) = padded(points.iter().map(|p| p.bias));
    // Empty band above the data for the legend, so it never hides a point.
    let y1 = y1 + 0.4 * (y1 - y0);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Bias vs capability (lower right is better)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    let mut methods: Vec<&str> = vec![];
    for p in points {
        if !methods.contains(&p.method.as_str()) {
            methods.push(&p.method);
        }
    }
    for m in methods {
        let c = method_colour(m);
        let pts: Vec<&TradeoffPoint> = points.iter().filter(|p| p.method == m).collect();
        // Each point is a circle with its label offset to the upper right, so text never covers a marker.
        chart
            .draw_series(pts.iter().map(|p| {
                EmptyElement::at((p.capability, p.bias))
                    + Circle::new((0, 0), 6, c.filled())
                    + Text::new(
                        p.label.clone(),
                        (9, -16),
                        ("sans-serif", 14).into_font().color(&c),
                    )
            }))
            .map_err(e)?
            .label(super::builders::variant_label(m))
            .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The standard figures of a report: heatmaps (if traced) and the trade-off (if any points).
pub fn standard_figures(inputs: &super::ReportInputs) -> Vec<Figure> {
    let mut out = vec![];
    if !inputs.traces.is_empty() {
        out.push(Figure {
            id: "fig1_trace_heatmaps".into(),
            title: "Figure 1: Causal tracing before and after the LSDM edit".into(),
            caption: "AIE of restoring each (token role, layer) site; rows are trace kinds, columns the model before \
                      and after the edit, one colour scale per row (red: restoring moves the metric back towards the \
                      clean run). A successful edit darkens the located site in the 'after' panel."
                .into(),
            kind: FigureKind::Heatmaps(inputs.traces.clone()),
        });
    }
    if !inputs.tradeoff.is_empty() {
        out.push(Figure {
            id: "fig2_tradeoff".into(),
            title: "Figure 2: Bias vs capability across methods and sweeps".into(),
            caption: "Each point is one edited model (labels: λ or number of edited layers for LSDM sweeps). \
                      Lower bias at unchanged capability is better; Base marks the starting point."
                .into(),
            kind: FigureKind::Tradeoff {
                points: inputs.tradeoff.clone(),
                x_label: inputs.tradeoff_capability_axis.clone(),
                y_label: inputs.tradeoff_bias_axis.clone(),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(kind: &str, variant: &str) -> TraceGrid {
        TraceGrid {
            kind: kind.into(),
            variant: variant.into(),
            roles: vec!["first".into(), "last".into()],
            aie: vec![vec![0.1, 0.2, -0.05], vec![0.0, 0.3, 0.02]],
        }
    }

    #[test]
    fn colour_map_ends_and_middle() {
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(1.0), RGBColor(178, 24, 43));
        assert_eq!(diverging(-2.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(f64::NAN), RGBColor(255, 255, 255));
    }

    #[test]
    fn heatmap_svg_has_one_cell_per_site_and_labels() {
        let f = Figure {
            id: "h".into(),
            title: "t".into(),
            caption: "c".into(),
            kind: FigureKind::Heatmaps(vec![grid("mlp", "before"), grid("mlp", "after")]),
        };
        let svg = f.to_svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        // The peak cell (0.3) is the full red end of the scale, once per panel.
        assert_eq!(svg.matches("#B2182B").count(), 2, "peak colour");
        for label in ["mlp — before", "mlp — after"] {
            assert_eq!(svg.matches(&format!("\n{label}\n")).count(), 1, "{label}");
        }
        // One role label per row and panel, no extra segment.
        assert_eq!(svg.matches("\nlast\n").count(), 2);
        assert_eq!(svg.matches("\nfirst\n").count(), 2);
    }

    #[test]
    fn ragged_grid_and_empty_tradeoff_are_errors() {
        let mut g = grid("mlp", "before");
        g.aie[1].pop();
        let f = Figure {
            id: "h".into(),
            title: "".into(),
            caption: "".into(),
            kind: FigureKind::Heatmaps(vec![g]),
        };
        assert!(f.to_svg().unwrap_err().to_string().contains("figure h"));
        let t = Figure {
            id: "t".into(),
            title: "".into(),
            caption: "".into(),
            kind: FigureKind::Tradeoff {
                points: vec![],
                x_label: "x".into(),
                y_label: "y".into(),
            },
        };
        assert!(t.to_svg().is_err());
    }

    #[test]
    fn tradeoff_labels_every_point() {
        let p = |m: &str, l: &str, b, c| TradeoffPoint {
            method: m.into(),
            label: l.into(),
            bias: b,
            capability: c,
        };
        let f = Figure {
            id: "t".into(),
            title: "".into(),
            caption: "".into(),
            kind: FigureKind::Tradeoff {
                points: vec![
                    p("base", "base", 0.3, 0.6),
                    p("lsdm", "λ=1e4", 0.1, 0.59),
                    p("lsdm", "λ=1e3", 0.05, 0.55),
                ],
                x_label: "cap".into(),
                y_label: "bias".into(),
            },
        };
        let svg = f.to_svg().unwrap();
        for l in ["λ=1e4", "λ=1e3", "LSDM", "Base", "cap", "bias"] {
            assert!(svg.contains(l), "{l}");
        }
    }
}
