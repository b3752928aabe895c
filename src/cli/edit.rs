//! `biaslens edit` (filled by the editing work), `apply` and `revert` of a stored delta.

use biaslens::edit::delta::WeightDelta;
use biaslens::edit::export::{write_hf_dir, ExportOptions};
use biaslens::edit::record::{apply_delta, revert_delta, write_edit_outputs, EditRecord};
use biaslens::model::Model;
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EditArgs {}

/// Apply a delta to the base model it was made for and write the edited model.
#[derive(clap::Args)]
pub struct ApplyArgs {
    /// Base model: registry alias, GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: String,
    /// delta.safetensors written by `biaslens edit`.
    #[arg(long)]
    pub delta: PathBuf,
    /// Output directory (HF model + delta.safetensors + edit.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out directory.
    #[arg(long)]
    pub force: bool,
    /// Also write model.gguf (f32) for llama.cpp.
    #[arg(long)]
    pub gguf: bool,
}

/// Revert a delta from an edited model, restoring the base weights bit for bit.
#[derive(clap::Args)]
pub struct RevertArgs {
    /// Edited model directory.
    #[arg(long)]
    pub model: String,
    /// The delta that was applied.
    #[arg(long)]
    pub delta: PathBuf,
    /// Output directory for the restored model.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out directory.
    #[arg(long)]
    pub force: bool,
    /// Also write model.gguf (f32) for llama.cpp.
    #[arg(long)]
    pub gguf: bool,
}

pub fn run_edit(_a: EditArgs) -> anyhow::Result<()> {
    anyhow::bail!("edit is not available in this build yet")
}

pub fn run_apply(a: ApplyArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.model, &Device::Cpu)?;
    let delta = WeightDelta::load(&a.delta, &Device::Cpu)?;
    let edited = apply_delta(&model, &delta)?;
    let mut record = EditRecord::new(&delta.meta.method, &model);
    record.hyperparameters = delta.meta.params.clone();
    record.layers = edited_layers(&delta);
    let opts = ExportOptions {
        force: a.force,
        gguf: a.gguf,
    };
    write_edit_outputs(&model, &edited, &delta, &record, &a.out, &opts)?;
    eprintln!(
        "wrote {} ({} tensors edited)",
        a.out.display(),
        delta.entries.len()
    );
    Ok(())
}

pub fn run_revert(a: RevertArgs) -> anyhow::Result<()> {
    let edited = Model::load(&a.model, &Device::Cpu)?;
    let delta = WeightDelta::load(&a.delta, &Device::Cpu)?;
    let rec_path = edited.info.path.join("edit.json");
    let record = if rec_path.is_file() {
        Some(EditRecord::load(&rec_path)?)
    } else {
        None
    };
    let base = revert_delta(&edited, &delta, record.as_ref())?;
    let opts = ExportOptions {
        force: a.force,
        gguf: a.gguf,
    };
    write_hf_dir(&edited, &base, &a.out, &opts)?;
    eprintln!(
        "wrote {} (base model {} restored)",
        a.out.display(),
        delta.meta.model_hash
    );
    Ok(())
}

/// Layer indices named by the delta's tensors (`model.layers.N.` / `transformer.h.N.`).
fn edited_layers(delta: &WeightDelta) -> Vec<usize> {
    let mut layers: Vec<usize> = delta
        .entries
        .keys()
        .filter_map(|n| {
            let rest = n
                .strip_prefix("model.layers.")
                .or_else(|| n.strip_prefix("transformer.h."))?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers
}
