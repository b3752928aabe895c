//! The run manifest: everything needed to say which code, model, data, settings and seeds made a
//! report, plus what could not be made deterministic. It is shown in the HTML and written as JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One pipeline stage as it happened in this run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    /// Cache key (sha256 of the stage's settings and its inputs' output hashes).
    pub key: String,
    /// True when the stored output was reused instead of running the stage.
    pub cached: bool,
    /// Seconds this run spent (near zero when cached); `original_wall_s` is the run that made it.
    pub wall_s: f64,
    pub original_wall_s: f64,
    /// sha256 of the stage's output JSON.
    pub output_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub biaslens_version: String,
    /// `git describe`-style revision when known (set by the caller; absent in a tarball build).
    pub git_revision: Option<String>,
    pub command_line: Vec<String>,
    pub spec_path: String,
    pub spec_sha256: String,
    pub model: String,
    pub model_sha256: Option<String>,
    /// Data file name → sha256, sorted by name.
    pub data_sha256: BTreeMap<String, String>,
    /// Named seeds (split, trace, edit, bootstrap …), sorted by name.
    pub seeds: BTreeMap<String, u64>,
    pub device: String,
    pub threads: usize,
    pub stages: Vec<StageRecord>,
    /// Stages a `--stored-only` render left out (not stored yet): their cells are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages_not_run: Vec<String>,
    pub total_wall_s: f64,
    /// Things that can differ between runs or machines (e.g. wall times, GPU reductions).
    pub nondeterminism: Vec<String>,
}

impl Manifest {
    /// A manifest for this build with the command line of the current process.
    pub fn new(spec_path: &str, spec_sha256: &str, model: &str) -> Self {
        Manifest {
            biaslens_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: None,
            command_line: std::env::args().collect(),
            spec_path: spec_path.to_string(),
            spec_sha256: spec_sha256.to_string(),
            model: model.to_string(),
            model_sha256: None,
            data_sha256: BTreeMap::new(),
            seeds: BTreeMap::new(),
            device: "cpu".into(),
            threads: 1,
            stages: vec![],
            stages_not_run: vec![],
            total_wall_s: 0.0,
            nondeterminism: vec!["wall times in Table 4 and in this manifest".into()],
        }
    }

    /// Key/value lines for display, in a fixed order.
    pub fn display_rows(&self) -> Vec<(String, String)> {
        let mut r = vec![
            (
                "biaslens version".to_string(),
                self.biaslens_version.clone(),
            ),
            (
                "git revision".into(),
                self.git_revision
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            ("command line".into(), self.command_line.join(" ")),
            (
                "spec".into(),
                format!("{} (sha256 {})", self.spec_path, self.spec_sha256),
            ),
            ("model".into(), self.model.clone()),
            (
                "model sha256".into(),
                self.model_sha256
                    .clone()
                    .unwrap_or_else(|| "not recorded".into()),
            ),
            (
                "device / threads".into(),
                format!("{} / {}", self.device, self.threads),
            ),
            (
                "total wall time".into(),
                format!("{:.1} s", self.total_wall_s),
            ),
        ];
        for (k, v) in &self.seeds {
            r.push((format!("seed {k}"), v.to_string()));
        }
        for (k, v) in &self.data_sha256 {
            r.push((format!("data {k}"), v.clone()));
        }
        r
    }
}
