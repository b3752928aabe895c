//! The edit stage: LSDM's least-squares MLP weight update and the pieces around it.
//!
//! - [`solve`]: the closed-form update ΔW = Rᵀ K (λC + KᵀK + μPᵀP)⁻¹ on candle tensors (f32).
//! - [`mod@reference`]: an independent nalgebra f64 path for the same update (LU / SVD), for tests.
//! - [`second_moment`]: streaming C = E[k kᵀ] over a corpus, cacheable as safetensors.
//! - [`dama_projection`]: DAMA's PLS null-space projection baseline, M = I - B Bᵀ.
//! - [`delta`]: bit-exact store of per-layer edits, with apply and a guarded revert.
//! - [`context`], [`keys`], [`target`], [`corpus`], [`lsdm`]: the LSDM pipeline itself.
//! - [`record`]: `edit.json` and the transaction writing model + delta + record together.

pub mod dama_projection;
pub mod delta;
pub mod record;
pub mod reference;
pub mod second_moment;
pub mod solve;

// The edit pipeline (lead): prompts, keys, targets, corpus statistics, methods.
pub mod checkpoint;
pub mod context;
pub mod corpus;
pub mod dama;
pub mod ftl;
pub mod keys;
pub mod lsdm;
pub mod method;
pub mod model_default;
pub mod probe;
pub mod probe_solve;
pub mod target;
pub mod tune;
