//! A generic table and byte-stable writers (Markdown, CSV, JSON, HTML fragment). Numbers are
//! formatted with a fixed number of decimals, `-0` is printed as `0`, and nothing iterates a
//! hash map, so the same inputs always give the same bytes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cell {
    Text {
        text: String,
    },
    Number {
        value: f64,
        ci: Option<(f64, f64)>,
        n: Option<usize>,
        decimals: usize,
    },
    Missing,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text { text: s.into() }
    }
    pub fn number(value: f64, decimals: usize) -> Cell {
        Cell::Number {
            value,
            ci: None,
            n: None,
            decimals,
        }
    }
    pub fn estimate(e: &crate::stats::Estimate, decimals: usize) -> Cell {
        Cell::Number {
            value: e.value,
            ci: (!e.is_point()).then_some((e.ci_low, e.ci_high)),
            n: Some(e.n),
            decimals,
        }
    }

    /// The cell as shown to a reader: `0.123 [0.100, 0.150]`; `n` is left to the CSV/JSON,
    /// except that an estimate from fewer than 2 observations, or one reported without an
    /// interval, says so instead of showing a zero-width interval ("n too small" when it has
    /// fewer than [`crate::stats::MIN_N_FOR_CI`] items).
    pub fn display(&self) -> String {
        match self {
            Cell::Text { text } => text.clone(),
            Cell::Number {
                value,
                ci,
                n,
                decimals,
            } => match ci {
                Some(_) if n.is_some_and(|n| n < 2) => format!(
                    "{} (n = {}, no CI)",
                    fmt_num(*value, *decimals),
                    n.unwrap_or(0)
                ),
                Some((lo, hi)) => format!(
                    "{} [{}, {}]",
                    fmt_num(*value, *decimals),
                    fmt_num(*lo, *decimals),
                    fmt_num(*hi, *decimals)
                ),
                None if n.is_some_and(|n| n < crate::stats::MIN_N_FOR_CI) => format!(
                    "{} (n = {}, n too small)",
                    fmt_num(*value, *decimals),
                    n.unwrap_or(0)
                ),
                None if n.is_some() => format!("{} (no CI)", fmt_num(*value, *decimals)),
                None => fmt_num(*value, *decimals),
            },
            Cell::Missing => "—".into(),
        }
    }
}

/// Fixed-decimal formatting that never prints `-0.000` and spells non-finite values out.
pub fn fmt_num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{x:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// File stem and HTML anchor, e.g. `table1_localisation`.
    pub id: String,
    pub title: String,
    pub caption: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

impl Table {
    /// Error unless every row has one cell per column (a builder bug, never user input).
    pub fn check(&self) -> crate::Result<()> {
        for (i, r) in self.rows.iter().enumerate() {
            if r.len() != self.columns.len() {
                return Err(crate::Error::param(
                    format!("{}.rows[{i}]", self.id),
                    format!("has {} cells for {} columns", r.len(), self.columns.len()),
                ));
            }
        }
        Ok(())
    }

    pub fn to_markdown(&self) -> String {
        let mut o = format!("### {}\n\n", md_escape(&self.title));
        o.push_str(&format!(
            "| {} |\n",
            self.columns
                .iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        o.push_str(&format!("|{}\n", " --- |".repeat(self.columns.len())));
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| md_escape(&c.display())).collect();
            o.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        if !self.caption.is_empty() {
            o.push_str(&format!("\n{}\n", self.caption));
        }
        o
    }

    /// Which of a column's extra fields (CI, n) occur in any row, so CSV stays rectangular.
    fn column_extras(&self, j: usize) -> (bool, bool) {
        let mut ci = false;
        let mut n = false;
        for r in &self.rows {
            if let Some(Cell::Number { ci: c, n: k, .. }) = r.get(j) {
                ci |= c.is_some();
                n |= k.is_some();
            }
        }
        (ci, n)
    }

    /// Tidy CSV: a number column with intervals gains `<col> ci_low`, `<col> ci_high`, `<col> n`.
    pub fn to_csv(&self) -> String {
        let extras: Vec<(bool, bool)> = (0..self.columns.len())
            .map(|j| self.column_extras(j))
            .collect();
        let mut header = vec![];
        for (c, &(ci, n)) in self.columns.iter().zip(&extras) {
            header.push(csv_field(c));
            if ci {
                header.push(csv_field(&format!("{c} ci_low")));
                header.push(csv_field(&format!("{c} ci_high")));
            }
            if n {
                header.push(csv_field(&format!("{c} n")));
            }
        }
        let mut o = header.join(",") + "\n";
        for r in &self.rows {
            let mut f = vec![];
            for (cell, &(has_ci, has_n)) in r.iter().zip(&extras) {
                let (main, ci, n) = match cell {
                    Cell::Text { text } => (text.clone(), None, None),
                    Cell::Number {
                        value,
                        ci,
                        n,
                        decimals,
                    } => (
                        fmt_num(*value, *decimals),
                        ci.map(|(l, h)| (fmt_num(l, *decimals), fmt_num(h, *decimals))),
                        n.map(|k| k.to_string()),
                    ),
                    Cell::Missing => (String::new(), None, None),
                };
                f.push(csv_field(&main));
                if has_ci {
                    let (l, h) = ci.unwrap_or_default();
                    f.push(l);
                    f.push(h);
                }
                if has_n {
                    f.push(n.unwrap_or_default());
                }
            }
            o.push_str(&(f.join(",") + "\n"));
        }
        o
    }

    /// Pretty JSON of the table with full-precision values (struct field order is fixed).
    pub fn to_json(&self) -> crate::Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// An HTML `<table>` with caption, for embedding in the report.
    pub fn to_html(&self) -> String {
        let mut o = format!(
            "<table id=\"{}\">\n<caption><strong>{}</strong>",
            html_escape(&self.id),
            html_escape(&self.title)
        );
        if !self.caption.is_empty() {
            o.push_str(&format!(
                "<br><span class=\"cap\">{}</span>",
                html_escape(&self.caption)
            ));
        }
        o.push_str("</caption>\n<thead><tr>");
        for c in &self.columns {
            o.push_str(&format!("<th>{}</th>", html_escape(c)));
        }
        o.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            o.push_str("<tr>");
            for c in r {
                let class = match c {
                    Cell::Text { .. } => "t",
                    Cell::Number { .. } => "n",
                    Cell::Missing => "m",
                };
                let title = match c {
                    Cell::Number { n: Some(k), .. } => format!(" title=\"n = {k}\""),
                    _ => String::new(),
                };
                o.push_str(&format!(
                    "<td class=\"{class}\"{title}>{}</td>",
                    html_escape(&c.display())
                ));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("</tbody>\n</table>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Table {
        Table {
            id: "t".into(),
            title: "T | x".into(),
            caption: "cap".into(),
            columns: vec!["name".into(), "v".into()],
            rows: vec![
                vec![
                    Cell::text("a,b"),
                    Cell::Number {
                        value: -0.0001,
                        ci: Some((-0.2, 0.3)),
                        n: Some(7),
                        decimals: 3,
                    },
                ],
                vec![Cell::text("c"), Cell::Missing],
            ],
        }
    }

    #[test]
    fn numbers_are_fixed_and_never_negative_zero() {
        assert_eq!(fmt_num(-0.0001, 3), "0.000");
        assert_eq!(fmt_num(-0.0, 2), "0.00");
        assert_eq!(fmt_num(-0.0016, 3), "-0.002");
        assert_eq!(fmt_num(12.5, 0), "12");
        assert_eq!(fmt_num(f64::NAN, 3), "NaN");
        assert_eq!(fmt_num(f64::NEG_INFINITY, 3), "-inf");
    }

    #[test]
    fn markdown_escapes_and_shows_ci() {
        let md = t().to_markdown();
        assert!(md.starts_with("### T \\| x\n"), "{md}");
        assert!(md.contains("| a,b | 0.000 [-0.200, 0.300] |"), "{md}");
        assert!(md.contains("| c | — |"), "{md}");
    }

    /// A value reported without an interval says so; a plain number (a time) does not.
    #[test]
    fn point_estimates_say_no_ci() {
        let point = Cell::estimate(&crate::stats::Estimate::point(77.6614, 40), 3);
        assert_eq!(point.display(), "77.661 (no CI)");
        assert_eq!(Cell::number(12.25, 1).display(), "12.2");
        let single = Cell::estimate(&crate::stats::mean_ci(&[1.0, 1.0]).unwrap(), 1);
        assert_eq!(single.display(), "1.0 [1.0, 1.0]");
        let few = Cell::estimate(&crate::stats::Estimate::too_few(0.3333, 6), 3);
        assert_eq!(few.display(), "0.333 (n = 6, n too small)");
        let few = Cell::estimate(&crate::stats::Estimate::point(20.3127, 1), 2);
        assert_eq!(few.display(), "20.31 (n = 1, n too small)");
    }

    #[test]
    fn csv_is_rectangular_and_quoted() {
        let csv = t().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "name,v,v ci_low,v ci_high,v n");
        assert_eq!(lines[1], "\"a,b\",0.000,-0.200,0.300,7");
        assert_eq!(lines[2], "c,,,,");
    }

    #[test]
    fn json_round_trips_and_html_escapes() {
        let tb = t();
        let back: Table = serde_json::from_str(&tb.to_json().unwrap()).unwrap();
        assert_eq!(back, tb);
        let h = tb.to_html();
        assert!(h.contains("T | x") && h.contains("title=\"n = 7\""));
        assert!(!Table {
            title: "<b>".into(),
            ..tb
        }
        .to_html()
        .contains("<b>"));
    }

    #[test]
    fn check_finds_ragged_rows() {
        let mut tb = t();
        tb.rows[1].pop();
        assert!(tb.check().unwrap_err().to_string().contains("t.rows[1]"));
    }
}
