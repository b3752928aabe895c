//! Figures: causal-tracing heatmaps before/after an edit and the bias-vs-capability trade-off
//! scatter. Each figure is data plus one drawing routine generic over the plotters backend, so
//! the same code yields the SVG embedded in the HTML and the PNG written next to it.

use super::inputs::{TraceGrid, TradeoffPoint};
use super::variant::ReportVariant;
use crate::edit::method::Method;
pub use crate::plot::{diverging, ensure_font};
use crate::plot::{draw_colour_bar, draw_heatmap_cells, Heatmap};
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// What a figure shows; drawing is dispatched on this.
#[derive(Debug, Clone, PartialEq)]
pub enum FigureKind {
    /// Panels: one row per trace kind, one column per variant, shared colour scale per row.
    Heatmaps(Vec<TraceGrid>),
    Tradeoff {
        points: Vec<TradeoffPoint>,
        /// Which value of each point is the x axis (the y axis is always its bias).
        x: TradeoffX,
        x_label: String,
        y_label: String,
    },
}

/// The x axis of a trade-off figure: what an edit must keep while it removes bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeoffX {
    /// Mean accuracy over the capability tasks.
    Capability,
    /// The definitional controls' mean gap toward their gender (factual gender kept).
    Factual,
}

impl TradeoffX {
    /// The point's x value; `None` when the point does not carry it.
    pub fn of(self, p: &TradeoffPoint) -> Option<f64> {
        match self {
            TradeoffX::Capability => Some(p.capability),
            TradeoffX::Factual => p.factual,
        }
    }
    fn caption(self) -> &'static str {
        match self {
            TradeoffX::Capability => "Bias vs capability (lower right is better)",
            TradeoffX::Factual => "Bias vs factual gender kept (lower right is better)",
        }
    }
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
            FigureKind::Tradeoff { points, x, .. } => {
                if points.is_empty() {
                    return Err(plot_err(&self.id, "no trade-off points"));
                }
                if let Some(p) = points
                    .iter()
                    .find(|p| !(p.bias.is_finite() && x.of(p).is_some_and(f64::is_finite)))
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
                x,
                x_label,
                y_label,
            } => draw_tradeoff(&self.id, root, points, *x, x_label, y_label),
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
        draw_colour_bar(&bars[ki], scale, "AIE", true).map_err(|e| plot_err(id, e))?;
    }
    Ok(())
}

fn draw_one_heatmap<DB: DrawingBackend>(
    id: &str,
    area: &DrawingArea<DB, Shift>,
    g: &TraceGrid,
    scale: f64,
) -> Result<()> {
    let layers: Vec<String> = (0..g.layers()).map(|l| l.to_string()).collect();
    let h = Heatmap {
        title: format!("{} — {}", g.kind, g.variant),
        row_labels: g.roles.clone(),
        col_labels: layers,
        col_title: "layer".into(),
        value_label: "IE".into(),
        values: g.aie.clone(),
    };
    draw_heatmap_cells(area, &h, scale, true).map_err(|e| plot_err(id, e))
}

/// Axis range with 10% padding (or ±0.05 for a single value).
fn padded(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = xs.clone().fold(f64::INFINITY, f64::min);
    let hi = xs.fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo { (hi - lo) * 0.1 } else { 0.05 };
    (lo - pad, hi + pad)
}

/// Fixed colours per method so every report uses the same legend.
pub fn variant_colour(v: ReportVariant) -> RGBColor {
    match v {
        ReportVariant::Base => RGBColor(0, 0, 0),
        ReportVariant::Method(Method::Lsdm) => RGBColor(213, 94, 0),
        ReportVariant::Method(Method::Ft) => RGBColor(0, 114, 178),
        ReportVariant::Method(Method::Dama) => RGBColor(0, 158, 115),
        ReportVariant::Method(Method::Probe) => OTHER_COLOUR,
        ReportVariant::Method(Method::Tune) => RGBColor(230, 159, 0),
    }
}

/// Colour of a point's method family by name; names that are no variant get a neutral colour.
pub fn method_colour(method: &str) -> RGBColor {
    ReportVariant::from_name(method).map_or(OTHER_COLOUR, variant_colour)
}

const OTHER_COLOUR: RGBColor = RGBColor(204, 121, 167);

fn draw_tradeoff<DB: DrawingBackend>(
    id: &str,
    root: &DrawingArea<DB, Shift>,
    points: &[TradeoffPoint],
    x: TradeoffX,
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let e = |e| plot_err(id, e);
    // `check` has made sure every point has a finite x.
    let xs = |p: &TradeoffPoint| x.of(p).unwrap_or(f64::NAN);
    let goal = Goal::of(points, x);
    // The axes reach the goal's lines, so a figure whose points all miss it still shows it.
    let goal_xs = goal.iter().filter_map(|g| g.x);
    let goal_ys = goal.iter().map(|g| g.y);
    let (x0, x1) = padded(points.iter().map(xs).chain(goal_xs));
    let (y0, y1) = padded(points.iter().map(|p| p.bias).chain(goal_ys));
    // Empty band above the data for the legend, so it never hides a point.
    let y1 = y1 + 0.4 * (y1 - y0);
    let mut chart = ChartBuilder::on(root)
        .caption(x.caption(), ("sans-serif", 20))
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
    if let Some(g) = goal {
        draw_goal(&mut chart, g, (x0, x1), y0).map_err(e)?;
    }
    let mut methods: Vec<&str> = vec![];
    for p in points {
        if !methods.contains(&p.method.as_str()) {
            methods.push(&p.method);
        }
    }
    let pixels: Vec<(i32, i32)> = points
        .iter()
        .map(|p| chart.backend_coord(&(xs(p), p.bias)))
        .collect();
    let offsets = label_offsets(points, &pixels);
    for m in methods {
        let c = method_colour(m);
        let pts: Vec<(&TradeoffPoint, (i32, i32))> = points
            .iter()
            .zip(&offsets)
            .filter(|(p, _)| p.method == m)
            .map(|(p, o)| (p, *o))
            .collect();
        // Each point is a circle with its label beside it, placed so that labels do not overlap
        // each other or a marker where a free place is found (`label_offsets`).
        chart
            .draw_series(pts.iter().map(|(p, offset)| {
                EmptyElement::at((xs(p), p.bias))
                    + Circle::new((0, 0), 6, c.filled())
                    + Text::new(
                        p.label.clone(),
                        *offset,
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

/// The goal of issue 16 (docs/method.md §2b) in a trade-off figure's coordinates, from its Base
/// point: bias at most [`GOAL_BIAS_SHARE`] of Base's (a cut of 80% or more) and, on the
/// factual axis, the controls' gap at least [`GOAL_FACTUAL_SHARE`] of Base's.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Goal {
    /// The bias line.
    y: f64,
    /// The factual line; None on the capability axis, whose goal (every task within a point)
    /// is not a line in the mean accuracy.
    x: Option<f64>,
}

/// Largest residual bias, as a share of Base's, that meets the goal (−80%).
pub const GOAL_BIAS_SHARE: f64 = 0.2;
/// Smallest share of Base's gap toward their gender the controls must keep.
pub const GOAL_FACTUAL_SHARE: f64 = 0.8;

impl Goal {
    /// None without a Base point (nothing to take shares of).
    fn of(points: &[TradeoffPoint], x: TradeoffX) -> Option<Goal> {
        let base = points
            .iter()
            .find(|p| ReportVariant::from_name(&p.method) == Some(ReportVariant::Base))?;
        Some(Goal {
            y: GOAL_BIAS_SHARE * base.bias,
            x: match x {
                TradeoffX::Capability => None,
                TradeoffX::Factual => base.factual.map(|f| GOAL_FACTUAL_SHARE * f),
            },
        })
    }
}

/// The goal's lines, dashed; on the factual axis the region that meets both is shaded and named
/// (on the capability axis only the bias line is drawn: below it is not the goal's region, since
/// a point there may have lost capability).
fn draw_goal<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    g: Goal,
    (x0, x1): (f64, f64),
    y0: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let grey = RGBColor(90, 90, 90);
    let dashed =
        |a: (f64, f64), b: (f64, f64)| DashedLineSeries::new([a, b], 6, 4, grey.stroke_width(1));
    chart.draw_series(dashed((x0, g.y), (x1, g.y)))?;
    let font = ("sans-serif", 13).into_font().color(&grey);
    let (at, text, offset) = match g.x {
        Some(gx) => {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(gx, y0), (x1, g.y)],
                RGBColor(0, 158, 115).mix(0.08).filled(),
            )))?;
            chart.draw_series(dashed((gx, y0), (gx, g.y.max(y0))))?;
            // Above the region, against the right edge.
            let text = "goal: bias -80%, controls keep >= 80%";
            ((x1, g.y), text, (-label_size(text).0 - 4, -18))
        }
        // Above the line, at the left.
        None => ((x0, g.y), "goal: bias -80%", (4, -18)),
    };
    chart.draw_series(std::iter::once(
        EmptyElement::at(at) + Text::new(text, offset, font),
    ))?;
    Ok(())
}

/// Approximate size in pixels of a label in the 14-pixel sans-serif font.
fn label_size(label: &str) -> (i32, i32) {
    (8 * label.chars().count() as i32, 16)
}

/// Where each point's label goes, relative to its marker (pixels): the first of upper right,
/// lower right, upper left, lower left whose box overlaps no label placed before it and no
/// marker; upper right if none is free. Points close together (λ sweeps, methods that land
/// near each other) otherwise print their labels on top of one another.
fn label_offsets(points: &[TradeoffPoint], pixels: &[(i32, i32)]) -> Vec<(i32, i32)> {
    type Box = (i32, i32, i32, i32);
    let overlaps = |a: Box, b: Box| a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
    let markers: Vec<Box> = pixels
        .iter()
        .map(|&(x, y)| (x - 6, y - 6, x + 6, y + 6))
        .collect();
    let mut placed: Vec<Box> = vec![];
    let mut out = vec![];
    for (p, &(x, y)) in points.iter().zip(pixels) {
        let (w, h) = label_size(&p.label);
        let candidates = [(9, -16), (9, 4), (-9 - w, -16), (-9 - w, 4)];
        let free = candidates.iter().copied().find(|&(dx, dy)| {
            let b = (x + dx, y + dy, x + dx + w, y + dy + h);
            !placed.iter().chain(&markers).any(|&o| overlaps(b, o))
        });
        let (dx, dy) = free.unwrap_or(candidates[0]);
        placed.push((x + dx, y + dy, x + dx + w, y + dy + h));
        out.push((dx, dy));
    }
    out
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
    // An unfinished report's render (`--stored-only`) says that its points are not all there.
    let unfinished = if inputs.partial {
        " Drawn from the variants stored so far: the report is unfinished (report.html lists the \
         stages still to run)."
    } else {
        ""
    };
    if !inputs.tradeoff.is_empty() {
        out.push(Figure {
            id: "fig2_tradeoff".into(),
            title: "Figure 2: Bias vs capability across methods and sweeps".into(),
            caption: "Each point is one edited model (labels: λ or number of edited layers for LSDM sweeps). \
                      Lower bias at unchanged capability is better; Base marks the starting point. The dashed line \
                      is the goal's bias, 20% of Base's (issue 16; its capability goal, every task within a point, \
                      is in Table 5, not in this mean)."
                .to_string()
                + unfinished,
            kind: FigureKind::Tradeoff {
                points: inputs.tradeoff.clone(),
                x: TradeoffX::Capability,
                x_label: inputs.tradeoff_capability_axis.clone(),
                y_label: inputs.tradeoff_bias_axis.clone(),
            },
        });
    }
    // The second panel of the trade-off: an edit can reach low bias by erasing factual gender
    // (FT-L and DAMA do, findings §3), which the capability axis does not show.
    if !inputs.tradeoff.is_empty() && inputs.tradeoff.iter().all(|p| p.factual.is_some()) {
        out.push(Figure {
            id: "fig3_factual".into(),
            title: "Figure 3: Bias vs factual gender across methods and sweeps".into(),
            caption: "Each point is one edited model, as in Figure 2; x is the definitional controls' \
                      (actress, policeman, ...) mean p(he) − p(she) toward their own gender on the same \
                      templates. An edit that removes the stereotype keeps x at Base's; one that erases \
                      gender moves left. The shaded corner is the goal: bias at most 20% of Base's and at least \
                      80% of Base's x kept."
                .to_string()
                + unfinished,
            kind: FigureKind::Tradeoff {
                points: inputs.tradeoff.clone(),
                x: TradeoffX::Factual,
                x_label: FACTUAL_AXIS.into(),
                y_label: inputs.tradeoff_bias_axis.clone(),
            },
        });
    }
    out
}

/// Axis label of Figure 3's x.
pub const FACTUAL_AXIS: &str = "definitional controls: mean gap toward their gender";

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
                x: TradeoffX::Capability,
                x_label: "x".into(),
                y_label: "y".into(),
            },
        };
        assert!(t.to_svg().is_err());
    }

    /// Two points a few pixels apart (Probe and Tune in the SmolLM2 report) get labels that do
    /// not overlap each other or either marker.
    #[test]
    fn labels_of_close_points_do_not_overlap() {
        let p = |l: &str| TradeoffPoint {
            method: "probe".into(),
            label: l.into(),
            bias: 0.0,
            capability: 0.0,
            factual: None,
        };
        let points = [p("Tune"), p("Probe"), p("λ=100")];
        let pixels = [(400, 300), (420, 300), (410, 303)];
        let offsets = label_offsets(&points, &pixels);
        let boxes: Vec<(i32, i32, i32, i32)> = points
            .iter()
            .zip(&pixels)
            .zip(&offsets)
            .map(|((p, &(x, y)), &(dx, dy))| {
                let (w, h) = label_size(&p.label);
                (x + dx, y + dy, x + dx + w, y + dy + h)
            })
            .collect();
        let overlaps = |a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)| {
            a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
        };
        for i in 0..boxes.len() {
            for j in 0..i {
                assert!(
                    !overlaps(boxes[i], boxes[j]),
                    "labels {i} and {j}: {boxes:?}"
                );
            }
            for &(x, y) in &pixels {
                assert!(
                    !overlaps(boxes[i], (x - 6, y - 6, x + 6, y + 6)),
                    "label {i}"
                );
            }
        }
        // A lone point keeps the usual place, upper right.
        assert_eq!(label_offsets(&points[..1], &pixels[..1]), [(9, -16)]);
    }

    #[test]
    fn tradeoff_labels_every_point() {
        let p = |m: &str, l: &str, b, c| TradeoffPoint {
            method: m.into(),
            label: l.into(),
            bias: b,
            capability: c,
            factual: None,
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
                x: TradeoffX::Capability,
                x_label: "cap".into(),
                y_label: "bias".into(),
            },
        };
        let svg = f.to_svg().unwrap();
        for l in ["λ=1e4", "λ=1e3", "LSDM", "Base", "cap", "bias"] {
            assert!(svg.contains(l), "{l}");
        }
        // Points without the controls cannot be drawn on the factual axis: an error, not a
        // point at 0.
        let FigureKind::Tradeoff { points, .. } = &f.kind else {
            unreachable!()
        };
        let factual = Figure {
            kind: FigureKind::Tradeoff {
                points: points.clone(),
                x: TradeoffX::Factual,
                x_label: "kept".into(),
                y_label: "bias".into(),
            },
            ..f.clone()
        };
        assert!(factual.to_svg().is_err());
    }

    #[test]
    fn factual_panel_only_when_every_point_has_the_controls() {
        let mut inputs = crate::report::ReportInputs::new("t");
        let p = |m: &str, b, k: Option<f64>| TradeoffPoint {
            method: m.into(),
            label: m.into(),
            bias: b,
            capability: 0.5,
            factual: k,
        };
        inputs.tradeoff = vec![p("base", 0.2, Some(0.37)), p("probe", 0.05, None)];
        let ids = |i: &crate::report::ReportInputs| -> Vec<String> {
            standard_figures(i).into_iter().map(|f| f.id).collect()
        };
        assert_eq!(ids(&inputs), ["fig2_tradeoff"]);
        inputs.tradeoff[1].factual = Some(0.25);
        assert_eq!(ids(&inputs), ["fig2_tradeoff", "fig3_factual"]);
        let f = standard_figures(&inputs).pop().unwrap();
        let svg = f.to_svg().unwrap();
        for l in ["factual gender", FACTUAL_AXIS, "Base"] {
            assert!(svg.contains(l), "{l}");
        }
        assert!(svg.contains("goal: bias -80%, controls keep &gt;= 80%"));
    }

    /// The goal's lines come from the Base point (bias × 0.2; controls × 0.8 on the factual
    /// axis only) and are absent without one.
    #[test]
    fn goal_lines_are_shares_of_base() {
        let p = |m: &str, b, k| TradeoffPoint {
            method: m.into(),
            label: m.into(),
            bias: b,
            capability: 0.5,
            factual: Some(k),
        };
        let points = vec![p("tune", 0.05, 0.3), p("base", 0.25, 0.4)];
        let g = Goal::of(&points, TradeoffX::Factual).unwrap();
        assert!((g.y - 0.05).abs() < 1e-12 && (g.x.unwrap() - 0.32).abs() < 1e-12);
        assert_eq!(Goal::of(&points, TradeoffX::Capability).unwrap().x, None);
        assert_eq!(Goal::of(&points[..1], TradeoffX::Factual), None);
        // Every point far above the goal: the axis still reaches its line (one label drawn).
        let f = Figure {
            id: "g".into(),
            title: "".into(),
            caption: "".into(),
            kind: FigureKind::Tradeoff {
                points: vec![p("base", 0.25, 0.4), p("lsdm", 0.24, 0.39)],
                x: TradeoffX::Capability,
                x_label: "cap".into(),
                y_label: "bias".into(),
            },
        };
        let svg = f.to_svg().unwrap();
        assert_eq!(svg.matches("goal: bias -80%").count(), 1);
    }
}
