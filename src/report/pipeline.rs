//! The orchestration skeleton: stages run in order, each with a cache key made from its settings
//! and the hashes of its inputs' outputs. A stage whose stored output (`<out>/stages/<name>.json`)
//! carries the same key is not rerun, so an interrupted or repeated report skips finished work.
//! Stage implementations (measure, trace, edit, eval) plug in through the [`Stage`] trait.

use super::inputs::ReportInputs;
use super::manifest::StageRecord;
use super::spec::Spec;
use crate::io::{sha256_bytes, write_json_atomic};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a running stage can see: the spec, the output folder and its dependencies' outputs.
pub struct Ctx<'a> {
    pub spec: &'a Spec,
    pub out_dir: &'a Path,
    outputs: &'a BTreeMap<String, Value>,
    /// A `--stored-only` render of a summary stage ([`Stage::renders_partially`]) whose inputs
    /// are not all stored yet.
    partial: bool,
}

impl Ctx<'_> {
    /// Output of an earlier stage; an error if `stage` has not run (a wiring bug).
    pub fn input(&self, stage: &str) -> Result<&Value> {
        self.outputs.get(stage).ok_or_else(|| {
            Error::param(
                "stage",
                format!("output of stage {stage:?} is not available; list it in deps()"),
            )
        })
    }
    /// Like [`Ctx::input`], but `None` where a partial render lacks the stage (not stored yet);
    /// in a full run a missing input is still an error.
    pub fn input_if_stored(&self, stage: &str) -> Result<Option<&Value>> {
        match self.outputs.get(stage) {
            Some(v) => Ok(Some(v)),
            None if self.partial => Ok(None),
            None => self.input(stage).map(Some),
        }
    }
    /// A per-stage folder for large artefacts (deltas, traces) the JSON output refers to.
    pub fn artefact_dir(&self, stage: &str) -> PathBuf {
        self.out_dir.join("artefacts").join(stage)
    }
}

pub trait Stage {
    /// Unique name, also the cache file name: `[a-z0-9_-]+`.
    fn name(&self) -> &str;
    /// Stages whose outputs this one reads; they must come earlier in the pipeline.
    fn deps(&self) -> Vec<String> {
        vec![]
    }
    /// Everything that changes the output: the spec section, file hashes, a format version.
    fn settings(&self) -> Result<Value>;
    fn run(&self, ctx: &Ctx) -> Result<Value>;
    /// Copy this stage's results into the report's typed inputs (tables and figures).
    fn contribute(&self, _output: &Value, _inputs: &mut ReportInputs) -> Result<()> {
        Ok(())
    }
    /// Whether the files a stored `output` refers to (under `out_dir/artefacts/`) are there and
    /// unchanged. A stored stage without them is still reused, unless a stage that has to run
    /// reads it: then it runs again. So a report's `stages/` folder alone (committed, copied to
    /// another machine) resumes a run without its large artefacts.
    fn artefacts_present(&self, _out_dir: &Path, _output: &Value) -> bool {
        true
    }
    /// A summary stage (cheap, no artefacts, reads its inputs through
    /// [`Ctx::input_if_stored`]) that a [`RunMode::StoredOnly`] render runs on whatever of its
    /// inputs is stored, so an unfinished report still shows, say, the trade-off of the
    /// variants done so far. That output feeds the tables and figures and is never stored.
    fn renders_partially(&self) -> bool {
        false
    }
}

/// Run `stage` on the outputs so far (`partial`: a `--stored-only` summary that may lack some);
/// an error names the stage.
fn run_stage(
    stage: &dyn Stage,
    spec: &Spec,
    out_dir: &Path,
    outputs: &BTreeMap<String, Value>,
    partial: bool,
) -> Result<Value> {
    let ctx = Ctx {
        spec,
        out_dir,
        outputs,
        partial,
    };
    stage
        .run(&ctx)
        .map_err(|e| Error::param(format!("stage {}", stage.name()), e.to_string()))
}

/// The cache key: sha256 of the stage name, its settings and its inputs' output hashes. Paths
/// inside the crate's folder (the data folder, a sites file) enter relative to it, so a clone
/// at another path (another machine, CI) reuses a committed `stages/` folder.
pub fn stage_key(
    name: &str,
    settings: &Value,
    input_hashes: &BTreeMap<String, String>,
) -> Result<String> {
    #[derive(Serialize)]
    struct KeyData<'a> {
        stage: &'a str,
        settings: &'a Value,
        inputs: &'a BTreeMap<String, String>,
    }
    let settings = crate_relative(settings, Path::new(env!("CARGO_MANIFEST_DIR")));
    let bytes = serde_json::to_vec(&KeyData {
        stage: name,
        settings: &settings,
        inputs: input_hashes,
    })?;
    Ok(sha256_bytes(&bytes))
}

/// `v` with every string that is a path under `root` rewritten as `$CRATE/<rest>`.
fn crate_relative(v: &Value, root: &Path) -> Value {
    match v {
        Value::String(s) => match Path::new(s).strip_prefix(root) {
            Ok(rest) => Value::String(format!("$CRATE/{}", rest.display())),
            Err(_) => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| crate_relative(x, root)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), crate_relative(x, root)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// The stored form of a stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageFile {
    pub name: String,
    pub key: String,
    pub wall_s: f64,
    pub output: Value,
}

/// Result of a pipeline run: stage outputs, what happened, and the assembled report inputs.
pub struct RunOutcome {
    pub outputs: BTreeMap<String, Value>,
    pub records: Vec<StageRecord>,
    pub inputs: ReportInputs,
    /// Stages left out by [`RunMode::StoredOnly`], in run order, including those drawn from
    /// the stored stages only (which are also in `partial`).
    pub skipped: Vec<String>,
    /// Summary stages a [`RunMode::StoredOnly`] render drew from the stored stages only.
    pub partial: Vec<String>,
}

/// What the pipeline is doing, reported to the caller (the CLI prints one line per event) so a
/// run of hours says which stage it is in and which were reused.
#[derive(Debug, Clone, PartialEq)]
pub enum StageEvent {
    /// The stored output's key matched; the stage is not rerun.
    Reused {
        index: usize,
        total: usize,
        name: String,
    },
    /// The stage starts computing. `for_artefacts`: its stored output matched, but a stage that
    /// runs later reads its artefacts, which are missing.
    Started {
        index: usize,
        total: usize,
        name: String,
        for_artefacts: bool,
    },
    /// [`RunMode::StoredOnly`]: nothing is stored for the stage (or for one it reads), so it is
    /// left out of this run's tables and figures.
    Skipped {
        index: usize,
        total: usize,
        name: String,
    },
    /// [`RunMode::StoredOnly`]: a summary stage that is not stored was drawn from the stored
    /// stages only ([`Stage::renders_partially`]); its output is shown, not stored.
    Partial {
        index: usize,
        total: usize,
        name: String,
    },
    /// The stage finished and its output is stored.
    Finished {
        index: usize,
        total: usize,
        name: String,
        wall_s: f64,
    },
}

impl std::fmt::Display for StageEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageEvent::Reused { index, total, name } => {
                write!(
                    f,
                    "[{}/{total}] {name}: reused (stored output, same key)",
                    index + 1
                )
            }
            StageEvent::Started {
                index,
                total,
                name,
                for_artefacts,
            } => {
                write!(f, "[{}/{total}] {name}: running", index + 1)?;
                if *for_artefacts {
                    write!(f, " (stored output reused, but its artefacts are missing)")?;
                }
                Ok(())
            }
            StageEvent::Skipped { index, total, name } => {
                write!(
                    f,
                    "[{}/{total}] {name}: not stored yet, left out",
                    index + 1
                )
            }
            StageEvent::Partial { index, total, name } => write!(
                f,
                "[{}/{total}] {name}: not stored yet, drawn from the stored stages only",
                index + 1
            ),
            StageEvent::Finished {
                index,
                total,
                name,
                wall_s,
            } => write!(f, "[{}/{total}] {name}: done in {wall_s:.1} s", index + 1),
        }
    }
}

/// How a run treats the stage outputs stored in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Reuse every stored output whose key matches; run the others.
    Resume,
    /// Run every stage again.
    Force,
    /// Run nothing: reuse what is stored and leave out the rest (and every stage that reads a
    /// stage left out), so the tables and figures show the work finished so far.
    StoredOnly,
}

#[derive(Default)]
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

fn output_hash(v: &Value) -> Result<String> {
    Ok(sha256_bytes(&serde_json::to_vec(v)?))
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline::default()
    }

    pub fn push(&mut self, stage: Box<dyn Stage>) -> &mut Self {
        self.stages.push(stage);
        self
    }

    pub fn stage_path(out_dir: &Path, name: &str) -> PathBuf {
        out_dir.join("stages").join(format!("{name}.json"))
    }

    /// Stage names in run order.
    pub fn names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name().to_string()).collect()
    }

    /// Names are unique and file-safe; dependencies refer to earlier stages.
    pub fn check(&self) -> Result<()> {
        for (i, s) in self.stages.iter().enumerate() {
            let n = s.name();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(Error::param(
                    "stage",
                    format!("name {n:?} must match [a-z0-9_-]+"),
                ));
            }
            let earlier: Vec<&str> = self.stages[..i].iter().map(|s| s.name()).collect();
            if earlier.contains(&n) {
                return Err(Error::param("stage", format!("{n:?} appears twice")));
            }
            if let Some(d) = s
                .deps()
                .into_iter()
                .find(|d| !earlier.contains(&d.as_str()))
            {
                return Err(Error::param(
                    "stage",
                    format!("{n:?} depends on {d:?}, which does not run before it"),
                ));
            }
        }
        Ok(())
    }

    /// Which stages must run although their stored output matches: those whose artefacts are
    /// missing while a stage that will run (not stored, or itself rebuilt) depends on them.
    /// Keys are chained through the stored outputs' hashes, as the run computes them when every
    /// rebuilt stage gives its stored output again.
    fn artefacts_to_rebuild(&self, out_dir: &Path, mode: RunMode) -> Result<Vec<bool>> {
        let n = self.stages.len();
        if mode != RunMode::Resume {
            return Ok(vec![false; n]);
        }
        let mut stored: Vec<Option<StageFile>> = Vec::with_capacity(n);
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        for s in &self.stages {
            let inputs: Option<BTreeMap<String, String>> = s
                .deps()
                .into_iter()
                .map(|d| hashes.get(&d).cloned().map(|h| (d, h)))
                .collect();
            // A dependency without a stored output: this stage cannot match either.
            let file = match inputs {
                None => None,
                Some(inputs) => {
                    let key = stage_key(s.name(), &s.settings()?, &inputs)?;
                    Self::cached(&Self::stage_path(out_dir, s.name()), &key)
                }
            };
            if let Some(f) = &file {
                hashes.insert(s.name().to_string(), output_hash(&f.output)?);
            }
            stored.push(file);
        }
        let index: BTreeMap<&str, usize> = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name(), i))
            .collect();
        let mut rebuild = vec![false; n];
        // Dependencies come first, so one backward sweep reaches every chain.
        for i in (0..n).rev() {
            if stored[i].is_some() && !rebuild[i] {
                continue;
            }
            for d in self.stages[i].deps() {
                let j = index[d.as_str()];
                if let Some(f) = &stored[j] {
                    if !self.stages[j].artefacts_present(out_dir, &f.output) {
                        rebuild[j] = true;
                    }
                }
            }
        }
        Ok(rebuild)
    }

    /// Reuse a stored output whose key matches; anything unreadable is simply recomputed.
    fn cached(path: &Path, key: &str) -> Option<StageFile> {
        let bytes = std::fs::read(path).ok()?;
        let f: StageFile = serde_json::from_slice(&bytes).ok()?;
        (f.key == key).then_some(f)
    }

    /// Run every stage (or reuse its cache unless `force`), then assemble the report inputs.
    pub fn run(&self, spec: &Spec, out_dir: &Path, force: bool) -> Result<RunOutcome> {
        let mode = if force {
            RunMode::Force
        } else {
            RunMode::Resume
        };
        self.run_with_events(spec, out_dir, mode, &mut |_| {})
    }

    /// [`Pipeline::run`] in `mode`, telling `on_event` when each stage is reused, starts,
    /// finishes or is left out.
    pub fn run_with_events(
        &self,
        spec: &Spec,
        out_dir: &Path,
        mode: RunMode,
        on_event: &mut dyn FnMut(&StageEvent),
    ) -> Result<RunOutcome> {
        self.check()?;
        let total = self.stages.len();
        let rebuild = self.artefacts_to_rebuild(out_dir, mode)?;
        let mut skipped: Vec<String> = vec![];
        std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e.to_string()))?;
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        let mut records = vec![];
        let mut partial: Vec<(String, Value)> = vec![];
        for (index, s) in self.stages.iter().enumerate() {
            let name = s.name().to_string();
            // A summary of what is stored, shown and never stored (StoredOnly only).
            let mut draw_partially =
                |skipped: &mut Vec<String>, on_event: &mut dyn FnMut(&StageEvent)| -> Result<()> {
                    skipped.push(name.clone());
                    if !s.renders_partially() {
                        on_event(&StageEvent::Skipped {
                            index,
                            total,
                            name: name.clone(),
                        });
                        return Ok(());
                    }
                    let output = run_stage(s.as_ref(), spec, out_dir, &outputs, true)?;
                    on_event(&StageEvent::Partial {
                        index,
                        total,
                        name: name.clone(),
                    });
                    partial.push((name.clone(), output));
                    Ok(())
                };
            // Only a stage left out has no hash, and only in StoredOnly mode.
            let Some(inputs) = s
                .deps()
                .into_iter()
                .map(|d| hashes.get(&d).cloned().map(|h| (d, h)))
                .collect::<Option<BTreeMap<String, String>>>()
            else {
                draw_partially(&mut skipped, on_event)?;
                continue;
            };
            let key = stage_key(&name, &s.settings()?, &inputs)?;
            let path = Self::stage_path(out_dir, &name);
            let start = Instant::now();
            let stored = (mode != RunMode::Force && !rebuild[index])
                .then(|| Self::cached(&path, &key))
                .flatten();
            if stored.is_none() && mode == RunMode::StoredOnly {
                draw_partially(&mut skipped, on_event)?;
                continue;
            }
            let (file, cached) = match stored {
                Some(f) => {
                    on_event(&StageEvent::Reused {
                        index,
                        total,
                        name: name.clone(),
                    });
                    (f, true)
                }
                None => {
                    on_event(&StageEvent::Started {
                        index,
                        total,
                        name: name.clone(),
                        for_artefacts: rebuild[index],
                    });
                    let output = run_stage(s.as_ref(), spec, out_dir, &outputs, false)?;
                    // Rebuilt for its artefacts: where they match what the stored output
                    // recorded, the stored output stays (its wall times and other run-to-run
                    // fields included), so the stages that read it keep their keys.
                    let kept = rebuild[index]
                        .then(|| Self::cached(&path, &key))
                        .flatten()
                        .filter(|stored| s.artefacts_present(out_dir, &stored.output));
                    let f = match kept {
                        Some(stored) => stored,
                        None => {
                            let f = StageFile {
                                name: name.clone(),
                                key: key.clone(),
                                wall_s: start.elapsed().as_secs_f64(),
                                output,
                            };
                            write_json_atomic(&path, &f)?;
                            f
                        }
                    };
                    on_event(&StageEvent::Finished {
                        index,
                        total,
                        name: name.clone(),
                        wall_s: f.wall_s,
                    });
                    (f, false)
                }
            };
            let h = output_hash(&file.output)?;
            records.push(StageRecord {
                name: name.clone(),
                key,
                cached,
                wall_s: start.elapsed().as_secs_f64(),
                original_wall_s: file.wall_s,
                output_sha256: h.clone(),
            });
            hashes.insert(name.clone(), h);
            outputs.insert(name, file.output);
        }
        let mut inputs = ReportInputs::new(spec.name.clone());
        for s in &self.stages {
            let output = outputs
                .get(s.name())
                .or_else(|| partial.iter().find(|(n, _)| n == s.name()).map(|(_, o)| o));
            if let Some(o) = output {
                s.contribute(o, &mut inputs)
                    .map_err(|e| Error::param(format!("stage {}", s.name()), e.to_string()))?;
            }
        }
        inputs.partial = !partial.is_empty();
        Ok(RunOutcome {
            outputs,
            records,
            inputs,
            skipped,
            partial: partial.into_iter().map(|(n, _)| n).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Outputs `factor × (sum of its inputs' "v" + 1)` and counts its runs.
    struct Counting {
        name: &'static str,
        deps: Vec<String>,
        factor: i64,
        runs: Rc<Cell<usize>>,
        /// Also output the run count: a field that differs between runs (as a wall time).
        stamp: bool,
    }

    /// The file `Counting` writes beside its output and reads from each dependency.
    fn artefact(out_dir: &Path, name: &str) -> PathBuf {
        out_dir.join("artefacts").join(name).join("v.txt")
    }

    impl Stage for Counting {
        fn name(&self) -> &str {
            self.name
        }
        fn deps(&self) -> Vec<String> {
            self.deps.clone()
        }
        fn settings(&self) -> Result<Value> {
            Ok(serde_json::json!({ "factor": self.factor }))
        }
        fn run(&self, ctx: &Ctx) -> Result<Value> {
            self.runs.set(self.runs.get() + 1);
            let mut sum = 1;
            for d in &self.deps {
                let v = ctx.input(d)?["v"].as_i64().unwrap_or(0);
                // A dependency's artefact must be there when this stage runs.
                let on_disk = std::fs::read_to_string(artefact(ctx.out_dir, d))
                    .map_err(|e| Error::Model(format!("artefact of {d}: {e}")))?;
                assert_eq!(on_disk, v.to_string());
                sum += v;
            }
            let v = self.factor * sum;
            let path = artefact(ctx.out_dir, self.name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, v.to_string()).unwrap();
            if self.stamp {
                return Ok(serde_json::json!({ "v": v, "run": self.runs.get() }));
            }
            Ok(serde_json::json!({ "v": v }))
        }
        fn artefacts_present(&self, out_dir: &Path, output: &Value) -> bool {
            std::fs::read_to_string(artefact(out_dir, self.name))
                .is_ok_and(|s| output["v"].as_i64().is_some_and(|v| s == v.to_string()))
        }
        fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
            inputs.cost.push(cost_row(self.name, output));
            Ok(())
        }
    }

    /// What a test stage contributes: a cost row carrying its `v`, to see which outputs reached
    /// the report's inputs.
    fn cost_row(name: &str, output: &Value) -> super::super::inputs::CostRow {
        super::super::inputs::CostRow {
            method: name.into(),
            wall_s: 0.0,
            forwards: output["v"].as_u64(),
            token_layers: None,
            statistics_tokens: None,
            edit_s: 0.0,
        }
    }

    fn spec() -> Spec {
        Spec::parse(crate::report::spec::tests::MINIMAL).unwrap()
    }

    /// A summary stage: the sum of its inputs' `v`, drawn from what is stored in a partial render.
    struct Summary {
        deps: Vec<String>,
        runs: Rc<Cell<usize>>,
    }

    impl Stage for Summary {
        fn name(&self) -> &str {
            "summary"
        }
        fn deps(&self) -> Vec<String> {
            self.deps.clone()
        }
        fn settings(&self) -> Result<Value> {
            Ok(serde_json::json!({}))
        }
        fn run(&self, ctx: &Ctx) -> Result<Value> {
            self.runs.set(self.runs.get() + 1);
            let mut sum = 0;
            for d in &self.deps {
                if let Some(o) = ctx.input_if_stored(d)? {
                    sum += o["v"].as_i64().unwrap_or(0);
                }
            }
            Ok(serde_json::json!({ "v": sum }))
        }
        fn renders_partially(&self) -> bool {
            true
        }
        fn contribute(&self, output: &Value, inputs: &mut ReportInputs) -> Result<()> {
            inputs.cost.push(cost_row("summary", output));
            Ok(())
        }
    }

    /// An unfinished report's `--stored-only` render draws a summary stage from the stored stages
    /// alone, shows it and stores nothing; the full run then stores the complete summary.
    #[test]
    fn a_stored_only_render_draws_summaries_from_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        let summary_runs = Rc::new(Cell::new(0));
        let with_summary = |fb: i64| {
            let mut p = pipeline(2, fb, &r);
            p.push(Box::new(Summary {
                deps: vec!["a".into(), "b".into()],
                runs: summary_runs.clone(),
            }));
            p
        };
        // a and b stored; then b's settings change, so only a is stored for that spec.
        pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        let mut events = vec![];
        let out = with_summary(4)
            .run_with_events(&spec(), dir.path(), RunMode::StoredOnly, &mut |e| {
                events.push(e.to_string())
            })
            .unwrap();
        assert_eq!((r.a.get(), r.b.get(), summary_runs.get()), (1, 1, 1));
        assert_eq!(out.skipped, ["b", "summary"]);
        assert_eq!(out.partial, ["summary"]);
        assert_eq!(
            events[2],
            "[3/3] summary: not stored yet, drawn from the stored stages only"
        );
        assert!(out.inputs.partial);
        let drawn = out.inputs.cost.iter().find(|c| c.method == "summary");
        assert_eq!(drawn.and_then(|c| c.forwards), Some(2), "a's v alone");
        assert!(!out.outputs.contains_key("summary"));
        assert!(!Pipeline::stage_path(dir.path(), "summary").exists());
        // The full run stores the summary of both, and nothing is partial.
        let out = with_summary(4).run(&spec(), dir.path(), false).unwrap();
        assert_eq!(out.outputs["summary"]["v"], 2 + 4 * (2 + 1));
        assert!(out.partial.is_empty() && !out.inputs.partial);
        assert!(Pipeline::stage_path(dir.path(), "summary").exists());
        // A stage that does not render partially is only left out (b, in the first render).
        let out = with_summary(5)
            .run_with_events(&spec(), dir.path(), RunMode::StoredOnly, &mut |_| {})
            .unwrap();
        assert_eq!(out.skipped, ["b", "summary"]);
        assert_eq!(out.outputs.len(), 1);
    }

    struct Rig {
        a: Rc<Cell<usize>>,
        b: Rc<Cell<usize>>,
    }

    fn pipeline(fa: i64, fb: i64, rig: &Rig) -> Pipeline {
        let mut p = Pipeline::new();
        p.push(Box::new(Counting {
            name: "a",
            deps: vec![],
            factor: fa,
            runs: rig.a.clone(),
            stamp: false,
        }));
        p.push(Box::new(Counting {
            name: "b",
            deps: vec!["a".into()],
            factor: fb,
            runs: rig.b.clone(),
            stamp: false,
        }));
        p
    }

    fn rig() -> Rig {
        Rig {
            a: Rc::new(Cell::new(0)),
            b: Rc::new(Cell::new(0)),
        }
    }

    #[test]
    fn unchanged_keys_are_not_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        let out1 = pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!(out1.outputs["b"]["v"], 3 * (2 + 1));
        let out2 = pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!((r.a.get(), r.b.get()), (1, 1));
        assert!(out2.records.iter().all(|s| s.cached));
        assert_eq!(out1.outputs, out2.outputs);
        assert_eq!(out2.inputs.cost[1].forwards, Some(9));
        // No temporary files are left next to the outputs.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("stages"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn events_say_which_stages_ran_and_which_were_reused() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        let run = |fb: i64| {
            let mut events = vec![];
            pipeline(2, fb, &r)
                .run_with_events(&spec(), dir.path(), RunMode::Resume, &mut |e| {
                    events.push(e.clone())
                })
                .unwrap();
            events
        };
        let kinds = |events: &[StageEvent]| -> Vec<String> {
            events
                .iter()
                .map(|e| match e {
                    StageEvent::Reused { index, total, name } => {
                        format!("reused {index}/{total} {name}")
                    }
                    StageEvent::Skipped { .. } | StageEvent::Partial { .. } => {
                        panic!("nothing is left out when resuming")
                    }
                    StageEvent::Started {
                        index, total, name, ..
                    } => {
                        format!("started {index}/{total} {name}")
                    }
                    StageEvent::Finished {
                        index,
                        total,
                        name,
                        wall_s,
                    } => {
                        assert!(*wall_s >= 0.0);
                        format!("finished {index}/{total} {name}")
                    }
                })
                .collect()
        };
        assert_eq!(
            kinds(&run(3)),
            [
                "started 0/2 a",
                "finished 0/2 a",
                "started 1/2 b",
                "finished 1/2 b"
            ]
        );
        // b's settings change: a is reused, b reruns.
        assert_eq!(
            kinds(&run(4)),
            ["reused 0/2 a", "started 1/2 b", "finished 1/2 b"]
        );
        let all = run(4);
        assert_eq!(kinds(&all), ["reused 0/2 a", "reused 1/2 b"]);
        assert_eq!(
            all[1].to_string(),
            "[2/2] b: reused (stored output, same key)"
        );
    }

    /// A copied `stages/` folder without `artefacts/` resumes: stored stages are reused where
    /// nothing that runs needs their files, and rebuilt (then reused downstream) where it does.
    #[test]
    fn missing_artefacts_rebuild_only_what_a_running_stage_reads() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        std::fs::remove_dir_all(dir.path().join("artefacts")).unwrap();
        let out = pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!(
            (r.a.get(), r.b.get()),
            (1, 1),
            "nothing runs, nothing is rebuilt"
        );
        assert!(out.records.iter().all(|s| s.cached));
        // b's settings change: b runs and reads a's artefact, so a runs again first.
        let mut events = vec![];
        let out = pipeline(2, 4, &r)
            .run_with_events(&spec(), dir.path(), RunMode::Resume, &mut |e| {
                events.push(e.to_string())
            })
            .unwrap();
        assert_eq!((r.a.get(), r.b.get()), (2, 2));
        assert_eq!(out.outputs["b"]["v"], 4 * 3);
        assert_eq!(
            events[0],
            "[1/2] a: running (stored output reused, but its artefacts are missing)"
        );
        assert!(artefact(dir.path(), "a").is_file());
    }

    /// StoredOnly runs nothing: a stored stage is reused, one not stored is left out with every
    /// stage that reads it, and only the stored ones contribute to the report.
    #[test]
    fn stored_only_renders_what_is_stored_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        let mut events = vec![];
        let out = pipeline(2, 3, &r)
            .run_with_events(&spec(), dir.path(), RunMode::StoredOnly, &mut |e| {
                events.push(e.to_string())
            })
            .unwrap();
        assert_eq!((r.a.get(), r.b.get()), (0, 0));
        assert_eq!(out.skipped, ["a", "b"]);
        assert!(out.records.is_empty() && out.inputs.cost.is_empty());
        assert_eq!(events[0], "[1/2] a: not stored yet, left out");
        // a stored, b's settings changed: a is reused and contributes, b is left out.
        pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        let out = pipeline(2, 4, &r)
            .run_with_events(&spec(), dir.path(), RunMode::StoredOnly, &mut |_| {})
            .unwrap();
        assert_eq!((r.a.get(), r.b.get()), (1, 1), "nothing ran");
        assert_eq!(out.skipped, ["b"]);
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.inputs.cost.len(), 1);
        // Artefacts are not needed when nothing runs.
        std::fs::remove_dir_all(dir.path().join("artefacts")).unwrap();
        let out = pipeline(2, 3, &r)
            .run_with_events(&spec(), dir.path(), RunMode::StoredOnly, &mut |_| {})
            .unwrap();
        assert!(out.skipped.is_empty() && out.records.iter().all(|s| s.cached));
        assert_eq!((r.a.get(), r.b.get()), (1, 1));
    }

    /// A stage rebuilt only for its artefacts keeps its stored output when the artefacts match
    /// it, even if the run's other fields (wall times) differ, so its other readers stay stored.
    #[test]
    fn a_rebuild_with_matching_artefacts_keeps_the_stored_output() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<Rc<Cell<usize>>> = (0..3).map(|_| Rc::new(Cell::new(0))).collect();
        let p = |fc: i64| {
            let mut p = Pipeline::new();
            for (i, (name, factor)) in [("a", 2), ("b", 3), ("c", fc)].into_iter().enumerate() {
                p.push(Box::new(Counting {
                    name,
                    deps: if i == 0 { vec![] } else { vec!["a".into()] },
                    factor,
                    runs: runs[i].clone(),
                    stamp: i == 0,
                }));
            }
            p
        };
        let first = p(4).run(&spec(), dir.path(), false).unwrap();
        std::fs::remove_dir_all(dir.path().join("artefacts")).unwrap();
        // c's settings change: a is rebuilt for c (its "run" field now differs), b stays stored.
        let out = p(5).run(&spec(), dir.path(), false).unwrap();
        let counts: Vec<usize> = runs.iter().map(|r| r.get()).collect();
        assert_eq!(counts, [2, 1, 2]);
        assert_eq!(out.outputs["a"], first.outputs["a"], "stored output kept");
        assert!(out.records[1].cached, "b keeps its key");
        assert_eq!(out.outputs["c"]["v"], 5 * 3);
    }

    #[test]
    fn changed_settings_rerun_the_stage_and_changed_outputs_rerun_dependents() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        pipeline(2, 4, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!((r.a.get(), r.b.get()), (1, 2), "only b's settings changed");
        let out = pipeline(5, 4, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!(
            (r.a.get(), r.b.get()),
            (2, 3),
            "a's output changed, so b reruns"
        );
        assert_eq!(out.outputs["b"]["v"], 4 * 6);
        pipeline(5, 4, &r).run(&spec(), dir.path(), true).unwrap();
        assert_eq!((r.a.get(), r.b.get()), (3, 4), "force reruns everything");
    }

    #[test]
    fn corrupt_cache_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        std::fs::write(Pipeline::stage_path(dir.path(), "a"), b"{ truncated").unwrap();
        let out = pipeline(2, 3, &r).run(&spec(), dir.path(), false).unwrap();
        assert_eq!(
            (r.a.get(), r.b.get()),
            (2, 1),
            "a recomputed with the same output, b kept"
        );
        assert!(!out.records[0].cached && out.records[1].cached);
    }

    #[test]
    fn wiring_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let r = rig();
        let mut p = Pipeline::new();
        p.push(Box::new(Counting {
            name: "b",
            deps: vec!["a".into()],
            factor: 1,
            runs: r.b.clone(),
            stamp: false,
        }));
        let e = p.run(&spec(), dir.path(), false).err().unwrap().to_string();
        assert!(e.contains("does not run before"), "{e}");
        let mut p = Pipeline::new();
        p.push(Box::new(Counting {
            name: "A b",
            deps: vec![],
            factor: 1,
            runs: r.a.clone(),
            stamp: false,
        }));
        assert!(p.run(&spec(), dir.path(), false).is_err());
    }

    #[test]
    fn key_depends_on_name_settings_and_inputs() {
        let s = serde_json::json!({"x": 1});
        let mut i = BTreeMap::new();
        let k0 = stage_key("a", &s, &i).unwrap();
        assert_eq!(k0, stage_key("a", &s, &i).unwrap());
        assert_ne!(k0, stage_key("b", &s, &i).unwrap());
        assert_ne!(
            k0,
            stage_key("a", &serde_json::json!({"x": 2}), &i).unwrap()
        );
        i.insert("d".to_string(), "h".to_string());
        assert_ne!(k0, stage_key("a", &s, &i).unwrap());
    }

    /// Two clones at different paths give a stage the same settings once paths are made
    /// crate-relative; paths outside the clone, and look-alike prefixes, are kept as they are.
    #[test]
    fn keys_do_not_depend_on_where_the_crate_is() {
        use serde_json::json;
        let at = |root: &str| {
            json!({"data_dir": format!("{root}/fixtures/data"),
                   "job": {"files": [format!("{root}/docs/sites.json"), "/elsewhere/x"]},
                   "near": format!("{root}x/fixtures"), "n": 3})
        };
        let (a, b) = (at("/work/main"), at("/home/me/biaslens"));
        assert_ne!(a, b);
        let a = crate_relative(&a, Path::new("/work/main"));
        let b = crate_relative(&b, Path::new("/home/me/biaslens"));
        assert_eq!(a["data_dir"], "$CRATE/fixtures/data");
        assert_eq!(a["job"]["files"][1], "/elsewhere/x");
        assert_eq!(a["near"], "/work/mainx/fixtures");
        assert_eq!(a["n"], 3);
        assert_eq!(a["job"], b["job"]);
        assert_eq!(a["data_dir"], b["data_dir"]);
        // The key itself uses this crate's own folder.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let i = BTreeMap::new();
        assert_eq!(
            stage_key("s", &json!({"d": here.join("fixtures/data")}), &i).unwrap(),
            stage_key("s", &json!({"d": "$CRATE/fixtures/data"}), &i).unwrap()
        );
    }
}
