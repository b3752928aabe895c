//! Small plot primitives (plotters), shared by `biaslens trace` and the report's figures: the
//! figure font, the diverging colour map, heatmap cells with row/column labels, a colour bar,
//! and a line plot with CI bands; `heatmap` and `line_plot` write SVG and PNG. Text needs a TTF
//! (`BIASLENS_FONT` or a system font); without one the trace plots are drawn without text.

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

/// Whether figure text can be drawn; the trace plots are drawn without text when not.
pub fn font_available() -> bool {
    ensure_font().is_ok()
}

/// A matrix to draw: `values[r][c]`, with row and column labels.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// What the columns are ("layer", "head") and what the colour shows ("IE", "ln(1 + NIE)").
    pub col_title: String,
    pub value_label: String,
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

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("plot: {e}"))
}

/// Heatmap cells of `h.values[r][c]` on `area`, row 0 at the top, coloured by
/// `diverging(v / scale)`; labels (and the title) only when `text`. Column labels are thinned
/// to about 12 so 30-layer axes stay legible.
pub fn draw_heatmap_cells<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    h: &Heatmap,
    scale: f64,
    text: bool,
) -> std::result::Result<(), String> {
    let (caption, row_labels, col_labels, x_desc, values) = (
        h.title.as_str(),
        &h.row_labels,
        &h.col_labels,
        h.col_title.as_str(),
        &h.values,
    );
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (nr, nc) = (values.len(), values.first().map_or(0, |r| r.len()));
    let mut b = ChartBuilder::on(area);
    b.margin(8);
    if text {
        b.caption(caption, ("sans-serif", 18))
            .x_label_area_size(34)
            .y_label_area_size(170);
    }
    // An i32 range a..b is inclusive in plotters, so 0..n-1 gives exactly n segments.
    let mut chart = b
        .build_cartesian_2d(
            (0..nc.max(1) as i32 - 1).into_segmented(),
            (0..nr.max(1) as i32 - 1).into_segmented(),
        )
        .map_err(e)?;
    if text {
        let step = nc.div_ceil(12).max(1);
        let centre = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => Some(*i as usize),
            _ => None,
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_desc)
            .x_labels(nc)
            .y_labels(nr)
            .x_label_formatter(&|x| match centre(x) {
                Some(c) if c % step == 0 => col_labels.get(c).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| match centre(y) {
                Some(r) => row_labels
                    .get(nr.saturating_sub(1 + r))
                    .cloned()
                    .unwrap_or_default(),
                None => String::new(),
            })
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(e)?;
    }
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    chart
        .draw_series(values.iter().enumerate().flat_map(|(r, row)| {
            let y = (nr - 1 - r) as i32;
            row.iter().enumerate().map(move |(c, v)| {
                let c = c as i32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    diverging(v / scale).filled(),
                )
            })
        }))
        .map_err(e)?;
    Ok(())
}

/// A vertical colour bar from +scale (top) to -scale (bottom), labelled when `text`.
pub fn draw_colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scale: f64,
    label: &str,
    text: bool,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
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
    if !text {
        return Ok(());
    }
    let style = ("sans-serif", 12).into_font();
    for (y, v) in [(top, scale), ((top + bottom) / 2, 0.0), (bottom, -scale)] {
        area.draw(&Text::new(
            crate::report::table::fmt_num(v, 3),
            (34, y - 6),
            style.clone(),
        ))
        .map_err(e)?;
    }
    area.draw(&Text::new(label.to_string(), (8, top - 24), style))
        .map_err(e)?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    h: &Heatmap,
    path: &Path,
) -> Result<()> {
    let text = font_available();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let max_abs = h
        .values
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()));
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 90);
    draw_heatmap_cells(&main, h, max_abs, text).map_err(|e| err(path, e))?;
    draw_colour_bar(&bar, max_abs, &h.value_label, text).map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    p: &LinePlot,
    path: &Path,
) -> Result<()> {
    let text = font_available();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let n = p.series.iter().map(|s| s.y.len()).max().unwrap_or(1).max(2);
    let all = p
        .series
        .iter()
        .flat_map(|s| s.low.iter().chain(&s.high).chain(&s.y))
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut b = ChartBuilder::on(&root);
    b.margin(10);
    if text {
        b.caption(&p.title, ("sans-serif", 18))
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..(n - 1) as f64, (lo - pad)..(hi + pad))
        .map_err(|e| err(path, e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    for (i, s) in p.series.iter().enumerate() {
        let c = Palette99::pick(i);
        let band: Vec<(f64, f64)> = s
            .high
            .iter()
            .enumerate()
            .map(|(x, &v)| (x as f64, v))
            .chain(s.low.iter().enumerate().rev().map(|(x, &v)| (x as f64, v)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.2).filled())))
            .map_err(|e| err(path, e))?;
        let line = chart
            .draw_series(LineSeries::new(
                s.y.iter().enumerate().map(|(x, &v)| (x as f64, v)),
                c.stroke_width(2),
            ))
            .map_err(|e| err(path, e))?;
        if text {
            line.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2))
            });
        }
    }
    if text && !p.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// Write `<stem>.svg` and `<stem>.png`.
pub fn heatmap(h: &Heatmap, stem: &Path) -> Result<()> {
    let size = (
        280 + 22 * h.values.first().map_or(1, |r| r.len()) as u32,
        120 + 40 * h.values.len() as u32,
    );
    let svg = stem.with_extension("svg");
    draw_heatmap(SVGBackend::new(&svg, size).into_drawing_area(), h, &svg)?;
    let png = stem.with_extension("png");
    draw_heatmap(BitMapBackend::new(&png, size).into_drawing_area(), h, &png)
}

/// Write `<stem>.svg` and `<stem>.png`.
pub fn line_plot(p: &LinePlot, stem: &Path) -> Result<()> {
    let svg = stem.with_extension("svg");
    draw_lines(
        SVGBackend::new(&svg, (720, 420)).into_drawing_area(),
        p,
        &svg,
    )?;
    let png = stem.with_extension("png");
    draw_lines(
        BitMapBackend::new(&png, (720, 420)).into_drawing_area(),
        p,
        &png,
    )
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
            col_title: "layer".into(),
            value_label: "IE".into(),
            values: vec![vec![0.1, -0.2, 0.3, 0.0, 0.05], vec![0.0; 5]],
        };
        heatmap(&h, &tmp.path().join("h")).unwrap();
        let p = LinePlot {
            title: "t".into(),
            x_label: "layer".into(),
            y_label: "IE".into(),
            series: vec![Series {
                label: "s".into(),
                y: vec![0.0, 1.0, 0.5],
                low: vec![-0.1, 0.8, 0.4],
                high: vec![0.1, 1.2, 0.6],
            }],
        };
        line_plot(&p, &tmp.path().join("l")).unwrap();
        for f in ["h.svg", "h.png", "l.svg", "l.png"] {
            let bytes = std::fs::read(tmp.path().join(f)).unwrap();
            assert!(bytes.len() > 200, "{f} is nearly empty");
        }
        let svg = std::fs::read_to_string(tmp.path().join("h.svg")).unwrap();
        assert!(svg.contains("<rect"), "heatmap has no cells");
        assert_eq!(
            &std::fs::read(tmp.path().join("h.png")).unwrap()[1..4],
            b"PNG"
        );
    }

    #[test]
    fn colours_are_signed() {
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(1.0), RGBColor(178, 24, 43));
        assert_eq!(diverging(-1.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(f64::NAN), RGBColor(255, 255, 255));
    }
}
