//! Options shared by subcommands: model, device, seed, output paths; progress bars and value
//! parsers.
//!
//! Each shared flag is declared (and documented) once, in a small `clap::Args` struct that the
//! subcommands flatten. Where subcommands differ in a flag's default or required-ness, there is
//! one struct per variant (`ModelArgs` / `DefaultModelArgs`) or the flag stays local (`eval
//! --seed` defaults to 1234, `report --force` reruns stages, `trace --out` has no `--force`).

use anyhow::bail;
use biaslens::model::export::ExportOptions;
use biaslens::model::Model;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// The model `measure` and `edit` load when `--model` is not given.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// `--model`'s help, the same for the required and the defaulted flag.
const MODEL_HELP: &str = "Registry alias (smollm2-135m, gemma-3-270m), GGUF file or Hugging \
                          Face directory (with a tokenizer)";

/// `--device`: where the model runs.
#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeviceArg {
    /// Where the model runs: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArg {
    /// The parsed `--device`.
    pub fn device(&self) -> anyhow::Result<Device> {
        parse_device(&self.device)
    }
}

/// `--model` (required) and `--device`: trace, mediate and eval.
#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelArgs {
    #[arg(long, help = MODEL_HELP)]
    pub model: String,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArg,
}

impl ModelArgs {
    /// The parsed `--device`.
    pub fn device(&self) -> anyhow::Result<Device> {
        self.device.device()
    }
}

/// `--model` (default [`DEFAULT_MODEL`]) and `--device`: measure and edit.
#[derive(clap::Args)]
pub struct DefaultModelArgs {
    #[arg(long, help = MODEL_HELP, default_value = DEFAULT_MODEL)]
    pub model: String,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl DefaultModelArgs {
    /// The parsed `--device`.
    pub fn device(&self) -> anyhow::Result<Device> {
        self.device.device()
    }
}

/// `--seed` (default 0): measure, edit, trace and mediate. (`eval --seed` defaults to 1234 and
/// stays in `eval`.)
#[derive(clap::Args)]
pub struct SeedArg {
    /// Seed of the random draws (profession split, prompt sample, noise, bootstrap).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--json FILE` and `--force`: measure and compare.
#[derive(clap::Args)]
pub struct JsonOutArgs {
    /// Also write the full result as JSON to this file (never one of the command's inputs).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Overwrite an existing --json file.
    #[arg(long)]
    pub force: bool,
}

impl JsonOutArgs {
    /// Check `--json` before any work: it may exist only with `--force` and is none of `inputs`.
    pub fn check(&self, inputs: &[&Path]) -> anyhow::Result<()> {
        if let Some(p) = &self.json {
            biaslens::io::check_output_file(p, self.force, inputs)?;
        }
        Ok(())
    }
}

/// `--out DIR` (required) and `--force`: commands that write result files into a folder (eval,
/// merge).
#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutArgs {
    /// Output folder for the results.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite results already in --out.
    #[arg(long)]
    pub force: bool,
}

/// Where an edited (or restored) model is written: edit, apply and revert.
#[derive(clap::Args)]
pub struct ModelOutArgs {
    /// Output directory (HF model + delta.safetensors + edit.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out directory (only one biaslens wrote, never the input model).
    #[arg(long)]
    pub force: bool,
    /// Also write model.gguf (f32) for llama.cpp.
    #[arg(long)]
    pub gguf: bool,
}

impl ModelOutArgs {
    /// Check --out (and clean up after interrupted runs) before any work.
    pub fn prepare(&self, model: &str) -> anyhow::Result<()> {
        prepare_model_out(&self.out, self.force, model)
    }

    pub fn export_options(&self) -> ExportOptions {
        ExportOptions {
            force: self.force,
            gguf: self.gguf,
        }
    }
}

/// Parse `cpu`, `cuda` or `cuda:N` into a candle device (see [`biaslens::device::parse_device`]).
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    Ok(biaslens::device::parse_device(spec)?)
}

/// A progress bar with an ETA, drawn on stderr; where stderr is not a terminal (CI logs,
/// `nohup`, pipes) it is written as a plain line at most every [`LOG_EVERY`], so a long run
/// still shows its progress in a log.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::term_like(Box::new(LineTerm(LogLines::new(
                Stderr, LOG_EVERY,
            )))),
        )
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// How often a progress bar writes a line when stderr is not a terminal.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a progress bar's plain lines go.
pub(crate) trait LineSink: std::fmt::Debug + Send + Sync {
    fn line(&self, line: &str);
}

/// Standard error, one line each.
#[derive(Debug)]
struct Stderr;

impl LineSink for Stderr {
    fn line(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// A "terminal" of plain lines for indicatif: each drawn line, trimmed and non-empty, goes to
/// the sink; cursor movements are dropped.
#[derive(Debug)]
pub(crate) struct LineTerm<S>(pub S);

impl<S: LineSink> indicatif::TermLike for LineTerm<S> {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let line = s.trim();
        if !line.is_empty() {
            self.0.line(line);
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink that passes a line on at most once per `every` (the first one at once), and the
/// last line it held back when it goes away (with the bar), so a log ends on the final count.
#[derive(Debug)]
struct LogLines<S: LineSink> {
    out: S,
    every: std::time::Duration,
    /// When a line was last passed on, and the newest line held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, Option<String>)>,
}

impl<S: LineSink> LogLines<S> {
    fn new(out: S, every: std::time::Duration) -> Self {
        LogLines {
            out,
            every,
            state: Default::default(),
        }
    }
}

impl<S: LineSink> LineSink for LogLines<S> {
    fn line(&self, line: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0.is_none_or(|t| t.elapsed() >= self.every) {
            *state = (Some(std::time::Instant::now()), None);
            self.out.line(line);
        } else {
            state.1 = Some(line.to_string());
        }
    }
}

impl<S: LineSink> Drop for LogLines<S> {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = state.1.take() {
            self.out.line(&line);
        }
    }
}

/// A sink that keeps every line (tests of progress output).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

#[cfg(test)]
impl Capture {
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
impl LineSink for Capture {
    fn line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
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
        biaslens::model::export::MODEL_DIR_MARKERS,
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

/// clap value parser: an attention head as LAYER.HEAD (e.g. `25.2`).
pub fn layer_head(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}`: expected LAYER.HEAD, e.g. 25.2");
    let (l, h) = s.trim().split_once('.').ok_or_else(bad)?;
    Ok((l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_head_parses_and_names_bad_values() {
        assert_eq!(layer_head("25.2"), Ok((25, 2)));
        assert_eq!(layer_head(" 9.0"), Ok((9, 0)));
        for bad in ["25", "a.2", "25.", "25.2.1"] {
            assert!(layer_head(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    /// A log gets the first line at once, holds back the lines within the interval (keeping
    /// only the newest) and writes that newest one when the bar goes away.
    #[test]
    fn log_lines_write_the_first_line_then_the_newest_held_one_at_the_end() {
        let cap = Capture::default();
        let log = LogLines::new(cap.clone(), std::time::Duration::from_secs(3600));
        for l in ["0/3", "1/3", "2/3", "3/3"] {
            log.line(l);
        }
        assert_eq!(cap.lines(), ["0/3"]);
        drop(log);
        assert_eq!(cap.lines(), ["0/3", "3/3"]);
    }

    /// With a zero interval every line is passed on, and nothing is left to write at the end.
    #[test]
    fn log_lines_with_no_interval_pass_every_line() {
        let cap = Capture::default();
        let log = LogLines::new(cap.clone(), std::time::Duration::ZERO);
        log.line("a");
        log.line("b");
        drop(log);
        assert_eq!(cap.lines(), ["a", "b"]);
    }
}
