//! Options shared by subcommands: model, device, progress bars, output paths.

use anyhow::bail;
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

/// Refuse to overwrite an existing output unless `--force` was given.
pub fn check_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    Ok(())
}
