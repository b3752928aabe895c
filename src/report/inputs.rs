//! Typed stage summaries the report is built from. They mirror what the measure, trace, edit and
//! eval stages produce, reduced to what a table or figure shows, so the presentation layer can be
//! tested on hand-written fixtures and re-rendered without rerunning any model.

use crate::stats::Estimate;
use serde::{Deserialize, Serialize};

/// One (token role, trace kind) cell of Table 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalisationRow {
    /// e.g. `last occupation token`, `last token`.
    pub role: String,
    /// `hidden`, `mlp` or `attn`.
    pub kind: String,
    /// AIE averaged over layers (the role's overall effect).
    pub aie: Estimate,
    pub peak_layer: usize,
    /// AIE at the peak layer.
    pub peak_aie: Estimate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalisationSummary {
    /// Total effect of the noise on the gender metric (clean minus noised).
    pub total_effect: Estimate,
    pub rows: Vec<LocalisationRow>,
}

/// A causal-tracing grid: AIE by token role (rows) × layer (columns) for one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceGrid {
    pub kind: String,
    /// `before` or `after` an edit (the variant name).
    pub variant: String,
    pub roles: Vec<String>,
    /// `aie[role][layer]`.
    pub aie: Vec<Vec<f64>>,
}

impl TraceGrid {
    pub fn layers(&self) -> usize {
        self.aie.first().map_or(0, Vec::len)
    }
}

/// One bias number of one model variant (Table 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BiasRow {
    /// `base`, `lsdm`, `ft`, `dama`.
    pub model_variant: String,
    pub dataset: String,
    pub metric: String,
    pub value: Estimate,
    /// The unbiased value of this metric (0 for differences, 50 for SS/CrowS), shown in the table.
    pub ideal: Option<f64>,
}

/// One capability number of one model variant (Table 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityRow {
    pub model_variant: String,
    pub dataset: String,
    pub metric: String,
    pub value: Estimate,
    /// Whether larger is better (accuracy) or worse (perplexity); shown as an arrow.
    pub higher_is_better: bool,
}

/// Cost of one method (Table 4). `edit_s` is the weight update alone; `wall_s` includes
/// computing targets, keys and statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostRow {
    pub method: String,
    pub wall_s: f64,
    /// Model passes run by the method (counted by the transformer; None: not counted).
    #[serde(default)]
    pub forwards: Option<u64>,
    /// Rows × tokens × layers run by those passes (None: not counted).
    #[serde(default)]
    pub token_layers: Option<u64>,
    /// Corpus tokens behind statistics the method caches between runs (LSDM's C); their passes
    /// are not in `forwards`, so the counted work does not depend on the cache.
    #[serde(default)]
    pub statistics_tokens: Option<u64>,
    pub edit_s: f64,
}

/// One point of the bias-vs-capability trade-off figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffPoint {
    /// Method family, one colour per method: `base`, `lsdm`, `ft`, `dama`.
    pub method: String,
    /// Label drawn next to the point, e.g. `λ=1e4` or `3 layers`.
    pub label: String,
    /// Residual bias (lower is better), e.g. mean |p(he) − p(she)| on held-out prompts.
    pub bias: f64,
    /// Capability summary (higher is better), e.g. mean accuracy over capability tasks.
    pub capability: f64,
    /// The definitional controls' mean p(he) − p(she) toward their own gender, on the same
    /// templates (higher is better: factual gender kept). Absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factual: Option<f64>,
}

/// Everything the tables and figures need, in one serialisable bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInputs {
    pub title: String,
    pub localisation: Option<LocalisationSummary>,
    #[serde(default)]
    pub traces: Vec<TraceGrid>,
    #[serde(default)]
    pub bias: Vec<BiasRow>,
    #[serde(default)]
    pub capability: Vec<CapabilityRow>,
    #[serde(default)]
    pub cost: Vec<CostRow>,
    #[serde(default)]
    pub tradeoff: Vec<TradeoffPoint>,
    /// Some summaries (the trade-off) were drawn from an unfinished report's stored stages only
    /// (`report --stored-only`), so they lack the variants still to run.
    #[serde(default)]
    pub partial: bool,
    /// Axis names of the trade-off figure.
    #[serde(default = "default_bias_axis")]
    pub tradeoff_bias_axis: String,
    #[serde(default = "default_capability_axis")]
    pub tradeoff_capability_axis: String,
}

fn default_bias_axis() -> String {
    "held-out mean |p(he) - p(she)|".into()
}
fn default_capability_axis() -> String {
    "mean capability accuracy".into()
}

impl ReportInputs {
    pub fn new(title: impl Into<String>) -> Self {
        ReportInputs {
            title: title.into(),
            localisation: None,
            traces: vec![],
            bias: vec![],
            capability: vec![],
            cost: vec![],
            tradeoff: vec![],
            partial: false,
            tradeoff_bias_axis: default_bias_axis(),
            tradeoff_capability_axis: default_capability_axis(),
        }
    }
}
