//! Shared loading machinery: line-numbered parsing with an optional skip-bad mode, a load
//! report, and seeded sub-sampling (`--limit N` / a fraction) so runs are reproducible.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How to load a benchmark file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Skip lines that do not parse (and count them in the report) instead of failing.
    pub skip_bad: bool,
    /// Keep only the first N items (lm-eval `--limit N`), applied after `fraction`.
    pub limit: Option<usize>,
    /// Keep a seeded random fraction in (0, 1] of the items, in file order.
    pub fraction: Option<f64>,
    /// Seed for `fraction`.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            skip_bad: false,
            limit: None,
            fraction: None,
            seed: 1234,
        }
    }
}

/// One line that was skipped because it did not parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedLine {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// What a loader read: per-file item counts, skipped lines and notes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Items parsed, before sub-sampling.
    pub parsed: usize,
    /// Items kept after sub-sampling.
    pub kept: usize,
    pub skipped: Vec<SkippedLine>,
    /// Things the loader decided deliberately (e.g. a relation without a usable pattern).
    pub notes: Vec<String>,
}

impl LoadReport {
    pub fn merge(&mut self, other: LoadReport) {
        self.files.extend(other.files);
        self.parsed += other.parsed;
        self.kept += other.kept;
        self.skipped.extend(other.skipped);
        self.notes.extend(other.notes);
    }
}

/// Items and the report of how they were read.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub items: Vec<T>,
    pub report: LoadReport,
}

/// Read a whole UTF-8 file; an empty (or whitespace-only) file is an error.
pub fn read_nonempty(path: &Path) -> Result<String> {
    let text = crate::io::read_text(path)?;
    if text.trim().is_empty() {
        return Err(Error::file(path, "file is empty"));
    }
    Ok(text)
}

/// Parse every non-empty line of `path` with `parse(line_number, line)`. A parse error fails
/// with the file and 1-based line number unless `skip_bad`, in which case it is recorded.
pub fn parse_lines<T>(
    path: &Path,
    skip_bad: bool,
    mut parse: impl FnMut(usize, &str) -> std::result::Result<T, String>,
) -> Result<Loaded<T>> {
    let text = read_nonempty(path)?;
    let mut items = Vec::new();
    let mut report = LoadReport {
        files: vec![path.to_path_buf()],
        ..Default::default()
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        match parse(i + 1, line) {
            Ok(item) => items.push(item),
            Err(message) if skip_bad => report.skipped.push(SkippedLine {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            }),
            Err(message) => return Err(Error::line(path, i + 1, message)),
        }
    }
    if items.is_empty() {
        return Err(Error::file(path, "no usable items"));
    }
    report.parsed = items.len();
    report.kept = items.len();
    Ok(Loaded { items, report })
}

/// Parse one JSON line into `T`, with serde's message on failure.
pub fn json_line<T: serde::de::DeserializeOwned>(line: &str) -> std::result::Result<T, String> {
    serde_json::from_str(line).map_err(|e| format!("invalid JSON item: {e}"))
}

/// Apply `fraction` (seeded, order kept) then `limit` (first N) to loaded items.
pub fn subsample<T>(mut loaded: Loaded<T>, opts: &LoadOptions) -> Result<Loaded<T>> {
    if let Some(f) = opts.fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::param(
                "fraction",
                format!("must be in (0, 1], got {f}"),
            ));
        }
        let n = loaded.items.len();
        let k = ((n as f64) * f).round().max(1.0) as usize;
        let keep = sample_indices(n, k.min(n), opts.seed);
        let mut mask = vec![false; n];
        for i in keep {
            mask[i] = true;
        }
        let mut it = mask.into_iter();
        loaded.items.retain(|_| it.next().unwrap_or(false));
    }
    if let Some(limit) = opts.limit {
        if limit == 0 {
            return Err(Error::param("limit", "must be at least 1"));
        }
        loaded.items.truncate(limit);
    }
    loaded.report.kept = loaded.items.len();
    Ok(loaded)
}

/// `k` distinct indices in `0..n`, chosen by a seeded partial Fisher-Yates with SplitMix64
/// (own generator so the sample does not change with the `rand` version), sorted.
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + (next() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut out = idx[..k].to_vec();
    out.sort_unstable();
    out
}
