//! Small plot primitives (plotters): a labelled heatmap with a colour bar and a line plot with CI
//! bands, each written as SVG and PNG. Text needs a TTF: the first of a few system paths (or
//! `BIASLENS_FONT`) is registered at run time; without one the plots are drawn without text.

use crate::{Error, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Register a sans-serif font once; false when none was found (plots then carry no text).
pub fn font_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let mut paths: Vec<PathBuf> = std::env::var_os("BIASLENS_FONT").map(PathBuf::from).into_iter().collect();
        paths.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// A matrix to draw: `values[r][c]`, with row and column labels.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

/// One series of a line plot: y with a lower/upper band per x.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub y: Vec<f64>,
    pub low: Vec<f64>,
    pub high: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Diverging white-centred map for signed effects: blue < 0 < red, scaled by `max_abs`.
fn colour(v: f64, max_abs: f64) -> RGBColor {
    let x = if max_abs > 0.0 { (v / max_abs).clamp(-1.0, 1.0) } else { 0.0 };
    let f = |a: f64| (255.0 * (1.0 - a.abs())).round() as u8;
    if x >= 0.0 {
        RGBColor(255, f(x), f(x))
    } else {
        RGBColor(f(x), f(x), 255)
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("plot: {e}"))
}

fn draw_heatmap<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, h: &Heatmap, path: &Path) -> Result<()> {
    let text = font_available();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (nr, nc) = (h.values.len(), h.values.first().map_or(0, |r| r.len()));
    let max_abs = h.values.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 90);
    let mut b = ChartBuilder::on(&main);
    b.margin(10);
    if text {
        b.caption(&h.title, ("sans-serif", 18)).x_label_area_size(30).y_label_area_size(170);
    }
    let mut chart = b.build_cartesian_2d(0..nc.max(1), 0..nr.max(1)).map_err(|e| err(path, e))?;
    if text {
        let (rl, cl) = (h.row_labels.clone(), h.col_labels.clone());
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nc.min(30))
            .y_labels(nr)
            .x_label_formatter(&|c| cl.get(*c).cloned().unwrap_or_default())
            .y_label_formatter(&|r| rl.get(nr.saturating_sub(1 + *r)).cloned().unwrap_or_default())
            .draw()
            .map_err(|e| err(path, e))?;
    }
    chart
        .draw_series(h.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| Rectangle::new([(c, nr - 1 - r), (c + 1, nr - r)], colour(v, max_abs).filled()))
        }))
        .map_err(|e| err(path, e))?;
    // Colour bar: -max .. +max from bottom to top.
    let (bw, bh) = bar.dim_in_pixel();
    let steps = 50;
    for i in 0..steps {
        let v = max_abs * (2.0 * (i as f64 + 0.5) / steps as f64 - 1.0);
        let y1 = (bh as f64 * (1.0 - i as f64 / steps as f64) * 0.8 + bh as f64 * 0.1) as i32;
        let y0 = y1 - (bh as f64 * 0.8 / steps as f64).ceil() as i32;
        bar.draw(&Rectangle::new([(10, y0), (30, y1)], colour(v, max_abs).filled())).map_err(|e| err(path, e))?;
    }
    if text && bw > 40 {
        let style = ("sans-serif", 12).into_font();
        bar.draw(&Text::new(format!("{max_abs:+.3}"), (32, (bh as f64 * 0.1) as i32 - 6), style.clone())).map_err(|e| err(path, e))?;
        bar.draw(&Text::new(format!("{:+.3}", -max_abs), (32, (bh as f64 * 0.9) as i32 - 6), style)).map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, p: &LinePlot, path: &Path) -> Result<()> {
    let text = font_available();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let n = p.series.iter().map(|s| s.y.len()).max().unwrap_or(1).max(2);
    let all = p.series.iter().flat_map(|s| s.low.iter().chain(&s.high).chain(&s.y)).copied().filter(|v| v.is_finite());
    let (lo, hi) = all.fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut b = ChartBuilder::on(&root);
    b.margin(10);
    if text {
        b.caption(&p.title, ("sans-serif", 18)).x_label_area_size(35).y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(0f64..(n - 1) as f64, (lo - pad)..(hi + pad)).map_err(|e| err(path, e))?;
    if text {
        chart.configure_mesh().x_desc(&p.x_label).y_desc(&p.y_label).draw().map_err(|e| err(path, e))?;
    }
    for (i, s) in p.series.iter().enumerate() {
        let c = Palette99::pick(i);
        let band: Vec<(f64, f64)> = s.high.iter().enumerate().map(|(x, &v)| (x as f64, v)).chain(s.low.iter().enumerate().rev().map(|(x, &v)| (x as f64, v))).collect();
        chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.2).filled()))).map_err(|e| err(path, e))?;
        let line = chart.draw_series(LineSeries::new(s.y.iter().enumerate().map(|(x, &v)| (x as f64, v)), c.stroke_width(2))).map_err(|e| err(path, e))?;
        if text {
            line.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2)));
        }
    }
    if text && !p.series.is_empty() {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// Write `<stem>.svg` and `<stem>.png`.
pub fn heatmap(h: &Heatmap, stem: &Path) -> Result<()> {
    let size = (280 + 22 * h.values.first().map_or(1, |r| r.len()) as u32, 120 + 40 * h.values.len() as u32);
    let svg = stem.with_extension("svg");
    draw_heatmap(SVGBackend::new(&svg, size).into_drawing_area(), h, &svg)?;
    let png = stem.with_extension("png");
    draw_heatmap(BitMapBackend::new(&png, size).into_drawing_area(), h, &png)
}

/// Write `<stem>.svg` and `<stem>.png`.
pub fn line_plot(p: &LinePlot, stem: &Path) -> Result<()> {
    let svg = stem.with_extension("svg");
    draw_lines(SVGBackend::new(&svg, (720, 420)).into_drawing_area(), p, &svg)?;
    let png = stem.with_extension("png");
    draw_lines(BitMapBackend::new(&png, (720, 420)).into_drawing_area(), p, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Heatmap {
            title: "IE".into(),
            row_labels: vec!["a".into(), "b".into()],
            col_labels: (0..5).map(|i| i.to_string()).collect(),
            values: vec![vec![0.1, -0.2, 0.3, 0.0, 0.05], vec![0.0; 5]],
        };
        heatmap(&h, &tmp.path().join("h")).unwrap();
        let p = LinePlot { title: "t".into(), x_label: "layer".into(), y_label: "IE".into(), series: vec![Series { label: "s".into(), y: vec![0.0, 1.0, 0.5], low: vec![-0.1, 0.8, 0.4], high: vec![0.1, 1.2, 0.6] }] };
        line_plot(&p, &tmp.path().join("l")).unwrap();
        for f in ["h.svg", "h.png", "l.svg", "l.png"] {
            let bytes = std::fs::read(tmp.path().join(f)).unwrap();
            assert!(bytes.len() > 200, "{f} is nearly empty");
        }
        let svg = std::fs::read_to_string(tmp.path().join("h.svg")).unwrap();
        assert!(svg.contains("<rect"), "heatmap has no cells");
        assert_eq!(&std::fs::read(tmp.path().join("h.png")).unwrap()[1..4], b"PNG");
    }

    #[test]
    fn colours_are_signed() {
        assert_eq!(colour(1.0, 1.0), RGBColor(255, 0, 0));
        assert_eq!(colour(-1.0, 1.0), RGBColor(0, 0, 255));
        assert_eq!(colour(0.0, 1.0), RGBColor(255, 255, 255));
    }
}
