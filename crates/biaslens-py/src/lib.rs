//! `biaslens._biaslens`: the Python bindings of biaslens, a thin layer over the library's typed
//! jobs and the command line's own functions (`biaslens::cli`).
//!
//! Every method turns its keyword arguments into the flags of the matching subcommand and lets
//! the command line's clap parser read them, so defaults, value checks and error messages are
//! the CLI's: `m.edit(out, max_edit=4)` is `biaslens edit --out OUT --max-edit 4` run on the
//! already loaded model. Long calls run on a worker thread ([`interruptible`]): the calling
//! thread releases the GIL, shows their progress and turns Ctrl-C into a stop of the model's
//! passes.

use biaslens::cli::{self, Cli, Command};
use biaslens::measure::MeasureResult;
use biaslens::stats::Estimate;
use biaslens::trace::run::{summarise_trace, TraceSummary};
use biaslens::trace::{Kind, TokenRole};
use clap::Parser;
use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray1, PyArray3};
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyTuple};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

create_exception!(
    _biaslens,
    BiaslensError,
    PyRuntimeError,
    "A biaslens failure; the message is the one the `biaslens` command prints after `error:`."
);

/// A library or CLI error as [`BiaslensError`], with the CLI's message text (`{e:#}`).
fn err(e: impl Into<anyhow::Error>) -> PyErr {
    BiaslensError::new_err(format!("{:#}", e.into()))
}

/// A progress line on stderr, one per stage.
fn stage(msg: &str) {
    eprintln!("biaslens: {msg}");
}

/// What a worker reports: a stage line, or `done` of `total` units of `what`.
enum Note {
    Line(String),
    Step {
        what: String,
        done: usize,
        total: usize,
    },
}

/// The worker's notes, queued for the calling thread to show.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<Vec<Note>>>);

impl Notes {
    fn push(&self, note: Note) {
        if let Ok(mut q) = self.0.lock() {
            q.push(note);
        }
    }
    fn line(&self, text: &str) {
        self.push(Note::Line(text.to_string()));
    }
    fn step(&self, what: &str, done: usize, total: usize) {
        self.push(Note::Step {
            what: what.to_string(),
            done,
            total,
        });
    }
    fn take(&self) -> Vec<Note> {
        self.0
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// The object that shows a call's progress: `progress=None` or `True` is
/// `biaslens._progress.Progress()` (tqdm when installed, else stderr lines), `False` shows
/// nothing, any other object is used as it is (it needs `line(text)` and
/// `step(what, done, total)`).
fn progress_display<'py>(
    py: Python<'py>,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let enabled = match progress {
        None => true,
        Some(p) => match p.cast::<PyBool>() {
            Ok(b) => b.is_true(),
            Err(_) => return Ok(p.clone()),
        },
    };
    py.import("biaslens._progress")?
        .getattr("Progress")?
        .call1((enabled,))
}

/// Run `work` on a worker thread while the calling thread shows its notes on `progress`
/// ([`progress_display`]) and watches for Ctrl-C. On KeyboardInterrupt (a signal, or raised by
/// the display) it requests `stop`, so the model's passes end at their next layer, waits for
/// the worker and raises the KeyboardInterrupt. Nothing the work keeps on disk is lost: the
/// eval cache keeps every scored chunk, and outputs are written atomically or not at all.
/// Other errors of the display are ignored: showing progress must not stop the work.
fn interruptible<'py, T: Send>(
    py: Python<'py>,
    stop: &biaslens::model::StopFlag,
    progress: Option<&Bound<'py, PyAny>>,
    work: impl FnOnce(&Notes) -> anyhow::Result<T> + Send,
) -> PyResult<T> {
    let display = progress_display(py, progress)?;
    let show = |note: Note| -> PyResult<()> {
        match note {
            Note::Line(text) => display.call_method1("line", (text,))?,
            Note::Step { what, done, total } => {
                display.call_method1("step", (what, done, total))?
            }
        };
        Ok(())
    };
    let notes = Notes::default();
    stop.clear();
    let (result, interrupted) = std::thread::scope(|s| {
        let worker = {
            let notes = notes.clone();
            s.spawn(move || work(&notes))
        };
        let mut interrupted: Option<PyErr> = None;
        loop {
            let finished = worker.is_finished();
            for note in notes.take() {
                if let Err(e) = show(note) {
                    if interrupted.is_none() && e.is_instance_of::<PyKeyboardInterrupt>(py) {
                        stop.request();
                        interrupted = Some(e);
                    }
                }
            }
            if finished {
                break;
            }
            if interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    stop.request();
                    interrupted = Some(e);
                }
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(50)));
        }
        (worker.join(), interrupted)
    });
    let _ = display.call_method0("close");
    stop.clear();
    if let Some(e) = interrupted {
        return Err(e);
    }
    match result {
        Ok(r) => r.map_err(err),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The flag form of keyword arguments: `max_edit=4` → `--max-edit 4`, `True` → the bare flag,
/// `False` / `None` → nothing, a list or tuple → its items joined by commas. Numbers are
/// written by Python's `str`, which round-trips floats.
fn flags(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<OsString>> {
    let mut out = Vec::new();
    let Some(kw) = kwargs else {
        return Ok(out);
    };
    for (k, v) in kw.iter() {
        let name = format!("--{}", k.extract::<String>()?.replace('_', "-"));
        if v.is_none() {
            continue;
        }
        if let Ok(b) = v.cast::<PyBool>() {
            if b.is_true() {
                out.push(name.into());
            }
            continue;
        }
        let value = if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
            let items: Vec<String> = v
                .try_iter()?
                .map(|x| x.and_then(|x| Ok(x.str()?.to_string())))
                .collect::<PyResult<_>>()?;
            items.join(",")
        } else {
            v.str()?.to_string()
        };
        out.push(name.into());
        out.push(value.into());
    }
    Ok(out)
}

/// Parse `biaslens <args>` with the CLI's parser; a usage error is a [`BiaslensError`] with
/// clap's message.
fn parse(args: Vec<OsString>) -> PyResult<Command> {
    let argv = std::iter::once(OsString::from("biaslens")).chain(args);
    Cli::try_parse_from(argv)
        .map(|c| c.command)
        .map_err(|e| BiaslensError::new_err(e.render().to_string().trim_end().to_string()))
}

fn push(args: &mut Vec<OsString>, flag: &str, value: Option<String>) {
    if let Some(v) = value {
        args.push(flag.into());
        args.push(v.into());
    }
}

fn json_loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string_pretty(value).map_err(err)
}

/// A model loaded once, measured, traced and edited in place of `--model`.
#[pyclass(module = "biaslens", name = "Model", frozen)]
struct PyModel {
    model: biaslens::model::Model,
    /// What `--model` would say: registry alias, GGUF file or HF directory.
    spec: String,
    device: String,
}

/// Load a model as the CLI's `--model` / `--device` do.
#[pyfunction]
#[pyo3(signature = (model, device = "cpu"))]
fn load(py: Python<'_>, model: &str, device: &str) -> PyResult<PyModel> {
    let dev = biaslens::device::parse_device(device).map_err(err)?;
    stage(&format!("loading {model}"));
    let m = py
        .detach(|| biaslens::model::Model::load(model, &dev))
        .map_err(err)?;
    Ok(PyModel {
        model: m,
        spec: model.to_string(),
        device: device.to_string(),
    })
}

impl PyModel {
    fn model_flags(&self) -> Vec<OsString> {
        vec![
            "--model".into(),
            self.spec.clone().into(),
            "--device".into(),
            self.device.clone().into(),
        ]
    }
}

#[pymethods]
impl PyModel {
    /// The `--model` string it was loaded from.
    #[getter]
    fn spec(&self) -> &str {
        &self.spec
    }

    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// Name, path, sha256, architecture and sizes (the `model` record of every result).
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py, &to_json(&self.model.info)?)
    }

    fn __repr__(&self) -> String {
        format!(
            "biaslens.Model({:?}, device={:?}, layers={})",
            self.spec, self.device, self.model.info.num_layers
        )
    }

    /// `biaslens measure`: pronoun probabilities and bias metrics on occupation prompts.
    /// Other flags of the command go in `overrides` (`seed=1`, `batch_size=32`,
    /// `templates=PATH`, `json=PATH`, `force=True`).
    #[pyo3(signature = (split = None, template_split = None, progress = None, **overrides))]
    fn measure(
        &self,
        py: Python<'_>,
        split: Option<String>,
        template_split: Option<String>,
        progress: Option<&Bound<'_, PyAny>>,
        overrides: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyMeasureResult> {
        let mut args: Vec<OsString> = vec!["measure".into()];
        args.extend(self.model_flags());
        push(&mut args, "--split", split);
        push(&mut args, "--template-split", template_split);
        args.extend(flags(overrides)?);
        let Command::Measure(a) = parse(args)? else {
            unreachable!("parsed as measure")
        };
        let (job, base) = cli::measure::prepare(&a).map_err(err)?;
        cli::common::require_tokenizer(&self.model).map_err(err)?;
        let n = job.prompts().map_err(err)?.0.len();
        let mut result = interruptible(py, self.model.stop_flag(), progress, |notes| {
            let mut done = 0;
            Ok(job.run(&self.model, |k| {
                done += k;
                notes.step("measure: prompts", done, n);
            })?)
        })?;
        cli::measure::attach_against(&mut result, base.as_ref(), &a).map_err(err)?;
        if let Some(p) = &a.output.json {
            biaslens::io::write_json_atomic(p, &result).map_err(err)?;
            stage(&format!("wrote {}", p.display()));
        }
        Ok(PyMeasureResult { result })
    }

    /// `biaslens trace` in memory: the same job (`prompts`, `samples`, `kinds`, `seed`, and in
    /// `overrides` `split`, `window`, `noise_times`, `noise_std`, `batch_rows`,
    /// `professions`), traced prompt by prompt (Ctrl-C stops the pass in flight) and summarised
    /// as the run's summary.json. No run directory is written.
    #[pyo3(signature = (prompts = None, samples = None, kinds = None, seed = None, progress = None, **overrides))]
    #[allow(clippy::too_many_arguments)]
    fn trace(
        &self,
        py: Python<'_>,
        prompts: Option<usize>,
        samples: Option<usize>,
        kinds: Option<Vec<String>>,
        seed: Option<u64>,
        progress: Option<&Bound<'_, PyAny>>,
        overrides: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyTraceResult> {
        // `--out` is required by the command and unused here: nothing is written.
        let mut args: Vec<OsString> = vec!["trace".into(), "--out".into(), "-".into()];
        args.extend(self.model_flags());
        push(&mut args, "--prompts", prompts.map(|n| n.to_string()));
        push(&mut args, "--samples", samples.map(|n| n.to_string()));
        push(&mut args, "--kinds", kinds.map(|k| k.join(",")));
        push(&mut args, "--seed", seed.map(|n| n.to_string()));
        args.extend(flags(overrides)?);
        let Command::Trace(a) = parse(args)? else {
            unreachable!("parsed as trace")
        };
        if a.common.shard.is_some() || a.bench_naive.is_some() || a.noise_out.is_some() {
            return Err(BiaslensError::new_err(
                "shard, bench_naive and noise_out are options of the `biaslens trace` command \
                 (python -m biaslens trace ...), not of Model.trace",
            ));
        }
        let job = cli::trace::job_of(&a).map_err(err)?;
        cli::common::require_tokenizer(&self.model).map_err(err)?;
        let (records, skipped) = interruptible(py, self.model.stop_flag(), progress, |notes| {
            let prepared = job.prepare(&self.model)?;
            for s in &prepared.skipped {
                notes.line(&format!("skipping {:?}: {}", s.text, s.reason));
            }
            let n = prepared.items.len();
            let mut records = Vec::with_capacity(n);
            notes.step("trace: prompts", 0, n);
            for i in 0..n {
                records.push(prepared.run_item(i)?);
                notes.step("trace: prompts", i + 1, n);
            }
            let skipped: Vec<String> = prepared.skipped.iter().map(|s| s.text.clone()).collect();
            Ok((records, skipped))
        })?;
        let summary = summarise_trace(&records).map_err(err)?;
        let kinds = job.settings.kinds.clone();
        let layers = records.first().map_or(0, |r| r.result.layers);
        Ok(PyTraceResult {
            summary,
            kinds,
            layers,
            skipped,
        })
    }

    /// `biaslens edit --out OUT` on this model, with the command's defaults (method `probe`);
    /// every other flag of the command goes in `overrides` (`max_edit=4`, `layers=[1, 2]`,
    /// `tune_steps=50`, `force=True`, ...). Returns (out, the edit.json record as a dict).
    #[pyo3(signature = (out, method = None, progress = None, **overrides))]
    fn edit<'py>(
        &self,
        py: Python<'py>,
        out: PathBuf,
        method: Option<String>,
        progress: Option<&Bound<'_, PyAny>>,
        overrides: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(PathBuf, Bound<'py, PyAny>)> {
        let mut args: Vec<OsString> = vec!["edit".into(), "--out".into(), out.clone().into()];
        args.extend(self.model_flags());
        push(&mut args, "--method", method);
        args.extend(flags(overrides)?);
        let Command::Edit(a) = parse(args)? else {
            unreachable!("parsed as edit")
        };
        let spec = cli::edit::edit_spec(&a).map_err(err)?;
        interruptible(py, self.model.stop_flag(), progress, |notes| {
            notes.line(&format!("editing into {} (minutes)", out.display()));
            cli::edit::edit_loaded(&a, spec, &self.model, &mut |s| notes.line(s))
        })?;
        let record = biaslens::io::read_text(&out.join("edit.json")).map_err(err)?;
        Ok((out, json_loads(py, &record)?))
    }
}

/// What `biaslens measure --json` writes, with its metrics and prompts as Python values.
#[pyclass(module = "biaslens", name = "MeasureResult", frozen)]
struct PyMeasureResult {
    result: MeasureResult,
}

fn est_dict<'py>(py: Python<'py>, e: &Estimate) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("value", e.value)?;
    d.set_item("ci_low", e.ci_low)?;
    d.set_item("ci_high", e.ci_high)?;
    d.set_item("n", e.n)?;
    d.set_item("method", &e.method)?;
    Ok(d)
}

#[pymethods]
impl PyMeasureResult {
    /// Every metric of the result as name → {value, ci_low, ci_high, n, method}; None where
    /// the CLI's JSON has null (the regression's a_s, a_f, b and r2 when it has no fit).
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.result.metrics;
        let d = PyDict::new(py);
        let put = |name: &str, e: Option<&Estimate>| -> PyResult<()> {
            match e {
                Some(e) => d.set_item(name, est_dict(py, e)?),
                None => d.set_item(name, py.None()),
            }
        };
        put("mean_abs_gap", Some(&m.mean_abs_gap))?;
        put("mean_gap", Some(&m.mean_gap))?;
        put("mean_p_he", Some(&m.mean_p_he))?;
        put("mean_p_she", Some(&m.mean_p_she))?;
        let r = m.regression.as_ref();
        put("a_s", r.map(|r| &r.a_s))?;
        put("a_f", r.map(|r| &r.a_f))?;
        put("b", r.map(|r| &r.b))?;
        put("r2", r.map(|r| &r.r2))?;
        put("pearson_stereotype", m.pearson_stereotype.as_ref())?;
        put("spearman_stereotype", m.spearman_stereotype.as_ref())?;
        put("pearson_bls", m.pearson_bls.as_ref())?;
        put("spearman_bls", m.spearman_bls.as_ref())?;
        put(
            "gap_toward_definitional",
            m.gap_toward_definitional.as_ref(),
        )?;
        Ok(d)
    }

    /// With `against=BASE_JSON`: this model against the base result, as the CLI's JSON has it
    /// (`abs_gap_ratio`, `pronoun_mass_ratio`, `abs_gap_ratio_at_base_mass`, `definitional_kept`
    /// as {value, ci_low, ci_high, n, method} or None,
    /// `n_prompts`, `n_professions`); None without it.
    #[getter]
    fn against_base<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(a) = &self.result.against_base else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("abs_gap_ratio", est_dict(py, &a.abs_gap_ratio)?)?;
        match &a.definitional_kept {
            Some(e) => d.set_item("definitional_kept", est_dict(py, e)?)?,
            None => d.set_item("definitional_kept", py.None())?,
        }
        for (name, e) in [
            ("pronoun_mass_ratio", &a.pronoun_mass_ratio),
            ("abs_gap_ratio_at_base_mass", &a.abs_gap_ratio_at_base_mass),
        ] {
            match e {
                Some(e) => d.set_item(name, est_dict(py, e)?)?,
                None => d.set_item(name, py.None())?,
            }
        }
        d.set_item("n_prompts", a.n_prompts)?;
        d.set_item("n_professions", a.n_professions)?;
        Ok(Some(d))
    }

    #[getter]
    fn n_prompts(&self) -> usize {
        self.result.metrics.n_prompts
    }

    #[getter]
    fn n_professions(&self) -> usize {
        self.result.metrics.n_professions
    }

    /// Per-prompt columns: text, profession, name, template_index (lists) and definitional,
    /// stereotypical, p_he, p_she, p_they (float64 arrays), in the JSON's order.
    #[getter]
    fn prompts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ps = &self.result.prompts;
        let d = PyDict::new(py);
        d.set_item("text", ps.iter().map(|p| &p.text).collect::<Vec<_>>())?;
        d.set_item(
            "profession",
            ps.iter().map(|p| &p.profession).collect::<Vec<_>>(),
        )?;
        d.set_item("name", ps.iter().map(|p| &p.name).collect::<Vec<_>>())?;
        d.set_item(
            "template_index",
            ps.iter().map(|p| p.template_index).collect::<Vec<_>>(),
        )?;
        let col = |f: fn(&biaslens::measure::PromptProbs) -> f64| -> Bound<'py, PyArray1<f64>> {
            ps.iter().map(f).collect::<Vec<f64>>().into_pyarray(py)
        };
        d.set_item("definitional", col(|p| p.definitional))?;
        d.set_item("stereotypical", col(|p| p.stereotypical))?;
        d.set_item("p_he", col(|p| p.p_he))?;
        d.set_item("p_she", col(|p| p.p_she))?;
        d.set_item("p_they", col(|p| p.p_they))?;
        Ok(d)
    }

    /// The JSON `biaslens measure --json` writes, byte for byte.
    fn to_json(&self) -> PyResult<String> {
        to_json(&self.result)
    }

    /// The same JSON as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py, &self.to_json()?)
    }

    fn __repr__(&self) -> String {
        let m = &self.result.metrics;
        format!(
            "biaslens.MeasureResult({:?}, n_prompts={}, mean_abs_gap={:.4})",
            self.result.options.subset, m.n_prompts, m.mean_abs_gap.value
        )
    }
}

/// The summary of a trace (summary.json) with its indirect effects as arrays.
#[pyclass(module = "biaslens", name = "TraceResult", frozen)]
struct PyTraceResult {
    summary: TraceSummary,
    kinds: Vec<Kind>,
    layers: usize,
    skipped: Vec<String>,
}

impl PyTraceResult {
    /// [kind, token role, layer] of one field of each layer's estimate; NaN where no prompt
    /// has the role (a one-token occupation has no middle tokens).
    fn grid<'py>(
        &self,
        py: Python<'py>,
        f: fn(&Estimate) -> f64,
    ) -> PyResult<Bound<'py, PyArray3<f64>>> {
        let (nk, nr, nl) = (self.kinds.len(), TokenRole::ALL.len(), self.layers);
        let mut a = Array3::from_elem((nk, nr, nl), f64::NAN);
        for r in &self.summary.roles {
            let (Some(k), Some(t)) = (
                self.kinds.iter().position(|&k| k == r.kind),
                TokenRole::ALL.iter().position(|&t| t == r.role),
            ) else {
                continue;
            };
            for (l, e) in r.ie.iter().enumerate().take(nl) {
                a[[k, t, l]] = f(e);
            }
        }
        Ok(a.into_pyarray(py))
    }
}

#[pymethods]
impl PyTraceResult {
    /// Mean indirect effect, float64 [kind, token role, layer].
    #[getter]
    fn effects<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f64>>> {
        self.grid(py, |e| e.value)
    }

    #[getter]
    fn ci_low<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f64>>> {
        self.grid(py, |e| e.ci_low)
    }

    #[getter]
    fn ci_high<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f64>>> {
        self.grid(py, |e| e.ci_high)
    }

    /// Labels of the first axis: hidden, mlp, attn (those traced, in the job's order).
    #[getter]
    fn kinds(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    /// Labels of the second axis (the heatmaps' rows).
    #[getter]
    fn roles(&self) -> Vec<&'static str> {
        TokenRole::ALL.iter().map(|r| r.label()).collect()
    }

    #[getter]
    fn n_prompts(&self) -> usize {
        self.summary.n_prompts
    }

    /// The mean total effect with its CI.
    #[getter]
    fn te<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        est_dict(py, &self.summary.te)
    }

    /// Selected prompts that could not be traced (their occupation is not in their tokens).
    #[getter]
    fn skipped(&self) -> Vec<String> {
        self.skipped.clone()
    }

    /// The summary.json `biaslens trace` writes for the same job, byte for byte.
    fn to_json(&self) -> PyResult<String> {
        to_json(&self.summary)
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py, &self.to_json()?)
    }

    fn __repr__(&self) -> String {
        format!(
            "biaslens.TraceResult(n_prompts={}, kinds={:?}, layers={}, te={:.4})",
            self.summary.n_prompts,
            self.kinds(),
            self.layers,
            self.summary.te.value
        )
    }
}

/// `biaslens eval --out OUT`: scores the tasks and returns results.json as a dict. `model` is
/// a loaded [`PyModel`] (scored as it is, not loaded again) or a
/// `--model` string. With `out=None` the results go to a temporary folder that is removed.
#[pyfunction]
#[pyo3(signature = (model, tasks = None, limit = None, out = None, progress = None, **overrides))]
fn eval<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    tasks: Option<Vec<String>>,
    limit: Option<usize>,
    out: Option<PathBuf>,
    progress: Option<&Bound<'_, PyAny>>,
    overrides: Option<&Bound<'_, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut args: Vec<OsString> = vec!["eval".into()];
    let held = model.cast::<PyModel>().ok();
    match &held {
        Some(m) => args.extend(m.get().model_flags()),
        None => args.extend(["--model".into(), model.extract::<String>()?.into()]),
    }
    let tmp = match out {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(err)?),
    };
    let out = out.unwrap_or_else(|| tmp.as_ref().expect("made above").path().to_path_buf());
    args.extend(["--out".into(), out.clone().into()]);
    push(&mut args, "--tasks", tasks.map(|t| t.join(",")));
    push(&mut args, "--limit", limit.map(|n| n.to_string()));
    args.extend(flags(overrides)?);
    let Command::Eval(a) = parse(args)? else {
        unreachable!("parsed as eval")
    };
    if a.shard.is_some() {
        return Err(BiaslensError::new_err(
            "shard is an option of the `biaslens eval` command, not of biaslens.eval",
        ));
    }
    // The model this Python object holds, not a second copy loaded from its path; a `--model`
    // string is loaded by the eval job (after its inputs are checked), stopped by `own_stop`.
    let held_model = held.as_ref().map(|m| &m.get().model);
    let own_stop = biaslens::model::StopFlag::default();
    let stop = held_model.map_or(&own_stop, |m| m.stop_flag());
    interruptible(py, stop, progress, |notes| {
        let mut on_progress = |task: &str, done: usize, total: usize| {
            notes.step(&format!("eval: {task}"), done, total)
        };
        cli::eval::run_eval_with(a, held_model, &own_stop, &mut on_progress)
    })?;
    let text = biaslens::io::read_text(&out.join("results.json")).map_err(err)?;
    json_loads(py, &text)
}

/// Run the `biaslens` command line on `argv` (argv[0] is the program name); returns its exit
/// code. `python -m biaslens ...` calls it.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> i32 {
    py.detach(|| cli::main_with_args(argv))
}

#[pymodule]
fn _biaslens(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BiaslensError", m.py().get_type::<BiaslensError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyModel>()?;
    m.add_class::<PyMeasureResult>()?;
    m.add_class::<PyTraceResult>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(eval, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    Ok(())
}
