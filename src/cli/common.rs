//! Options shared by subcommands: model, device, progress bars, output paths.

use anyhow::bail;
use biaslens::model::Model;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Parse `cpu`, `cuda` or `cuda:N` into a candle device (see [`biaslens::device::parse_device`]).
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    Ok(biaslens::device::parse_device(spec)?)
}

/// A progress bar with an ETA, drawn on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Before any work: check that the model directory `out` may be written for a model loaded
/// from `model` (see [`biaslens::io::check_output_dir`]: `--force` replaces only a model
/// directory biaslens wrote, never the base model), then remove staging directories of `out`
/// that interrupted runs left behind.
pub fn prepare_model_out(out: &Path, force: bool, model: &str) -> anyhow::Result<()> {
    use biaslens::model::registry::{resolve_model, ModelSource};
    let base = match resolve_model(model)? {
        ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
    };
    biaslens::io::check_output_dir(
        out,
        force,
        biaslens::edit::export::MODEL_DIR_MARKERS,
        &[&base],
    )?;
    for p in biaslens::io::remove_stale_staging(out)? {
        eprintln!(
            "removed {}: the staging directory of an interrupted run (its process is gone)",
            p.display()
        );
    }
    Ok(())
}

/// Refuse a model without a tokenizer, naming the file that is missing.
pub fn require_tokenizer(model: &Model) -> anyhow::Result<()> {
    if model.tokenizer.is_none() {
        bail!(
            "model `{}` has no tokenizer: {} is missing (this command tokenizes text)",
            model.info.name,
            model.info.path.join("tokenizer.json").display()
        );
    }
    Ok(())
}

/// clap value parser: an integer of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if !x.is_finite() {
        return Err("must be a finite number".into());
    }
    Ok(x)
}

/// clap value parser: a finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    finite(s).and_then(|x| {
        if x > 0.0 {
            Ok(x)
        } else {
            Err("must be > 0".into())
        }
    })
}

/// clap value parser: a finite number >= 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    finite(s).and_then(|x| {
        if x >= 0.0 {
            Ok(x)
        } else {
            Err("must be >= 0".into())
        }
    })
}

/// clap value parser: a fraction in (0, 1].
pub fn fraction(s: &str) -> Result<f64, String> {
    finite(s).and_then(|x| {
        if x > 0.0 && x <= 1.0 {
            Ok(x)
        } else {
            Err("must be in (0, 1]".into())
        }
    })
}

/// The first value that `items` holds twice.
pub fn first_duplicate<T: PartialEq>(items: &[T]) -> Option<&T> {
    items
        .iter()
        .enumerate()
        .find(|(i, x)| items[..*i].contains(x))
        .map(|(_, x)| x)
}
