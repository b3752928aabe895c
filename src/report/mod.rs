//! The reporting layer: experiment specs, the cached stage pipeline, and the tables, figures and
//! self-contained HTML a run produces.
//!
//! Data flow: `spec` (TOML) → `pipeline` (stages with cache keys) → `inputs` (typed stage
//! summaries) → `builders` (Tables 1-4), `against_base` (Table 5) / `figures` (SVG, PNG) → `write` (files) and `html`.

pub mod against_base;
pub mod builders;
pub mod figures;
pub mod html;
pub mod inputs;
pub mod manifest;
pub mod pipeline;
pub mod spec;
pub mod stages;
pub mod table;
pub mod variant;
pub mod write;

pub use inputs::ReportInputs;
pub use manifest::Manifest;
pub use pipeline::{Ctx, Pipeline, Stage};
pub use spec::Spec;
pub use table::{Cell, Table};
pub use variant::ReportVariant;
