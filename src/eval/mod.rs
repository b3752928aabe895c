//! Bias and capability benchmarks: loaders for the vendored datasets and scorers that compute
//! the metrics as lm-evaluation-harness 0.4.13, the StereoSet official scorer, DAMA's WinoBias
//! form and CrowS-Pairs define them. Scorers are generic over [`lm::LanguageModel`], so they run
//! on the real transformer and on stub models in tests, and hand each task's requests to the
//! model in one call so it can batch.

pub mod lm;
pub mod load;
pub mod metrics;
pub mod registry;
pub mod tasks;

pub use lm::{
    encode_pair, loglikelihood_rolling, rolling_windows, LanguageModel, LlRequest, LlResult,
};
pub use load::{LoadOptions, LoadReport, Loaded};
pub use metrics::Metric;
pub use registry::{
    run_task, task, TaskKind, TaskOutput, TaskRegistry, TaskScores, TaskSpec, TASKS,
};
pub mod cache;
pub mod compare;
pub mod model_lm;
pub mod suite;
