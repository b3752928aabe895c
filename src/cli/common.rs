//! Options shared by subcommands: model, device, progress bars, output paths.

use anyhow::{bail, Context};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Parse `cpu`, `cuda` or `cuda:N` into a candle device.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda: no CUDA device (build with --features cuda)"),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().with_context(|| format!("--device {s}: N must be an integer"))?;
            Device::new_cuda(n).with_context(|| format!("--device {s}: no such CUDA device (build with --features cuda)"))
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
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
        bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}
