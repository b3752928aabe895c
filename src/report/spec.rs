//! Experiment specs as data: one TOML file says which model, prompts, tracing settings, edit
//! methods, sweeps and benchmarks a report runs. Unknown keys are errors (a typo must not
//! silently fall back to a default) and every value is range-checked with its dotted name.

use crate::data::split::SplitSpec;
use crate::edit::dama::DamaSettings;
use crate::edit::ftl::FtParams;
use crate::edit::lsdm::LsdmParams;
use crate::edit::method::Method;
use crate::error::{at_least_one, non_negative, positive};
use crate::report::variant::ReportVariant;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A whole experiment. Section names mirror the stages that consume them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Short name shown in the report title and used in output file names.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub model: ModelSpec,
    pub split: SplitSpec,
    pub trace: TraceSpec,
    #[serde(default)]
    pub measure: MeasureSpec,
    pub methods: MethodsSpec,
    #[serde(default)]
    pub sweeps: SweepSpec,
    pub benchmarks: BenchmarkSpec,
    pub run: RunSpec,
    #[serde(default)]
    pub output: OutputSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A registry alias (`smollm2-135m`), a `.gguf` path or a Hugging Face directory.
    pub name: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    /// Number of occupation prompts traced, drawn by a shuffle seeded with `seed` from the
    /// edit split's professions × the 17 templates.
    pub prompts: usize,
    /// Noised rows per prompt.
    pub samples: usize,
    /// Noise std as a multiple of the std of the embedding output over the traced prompts
    /// (ROME uses 3).
    pub noise: f64,
    /// Layers restored together around each layer for `mlp`/`attn` (ROME uses 10).
    pub window: usize,
    /// Restored activations (ROME's three kinds), each once, in the order hidden, mlp, attn.
    pub kinds: Vec<crate::trace::Kind>,
    /// Seed of the prompt draw and of the noise.
    pub seed: u64,
    /// Trace the LSDM-edited model too (the "after" heatmaps).
    #[serde(default)]
    pub after_edit: bool,
    /// Take the edits' located sites (`from_sites` layers, layer-count sweeps) from this
    /// `sites.json`, e.g. of a 100-prompt `biaslens trace` run, instead of from this spec's own
    /// smaller trace, whose peak layer is noisy at tens of prompts. Relative to the working
    /// directory. This spec's trace still runs for Table 1 and the heatmaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<std::path::PathBuf>,
}

impl TraceSpec {
    /// The library job this section describes (what `biaslens trace --split edit` runs with
    /// the same numbers): the edit professions of `split`, the default batch rows.
    pub fn job(&self, split: &SplitSpec) -> crate::trace::TraceJob {
        crate::trace::TraceJob {
            subset: crate::measure::Subset::Edit,
            split: split.clone(),
            prompts: self.prompts,
            settings: crate::trace::TraceSettings {
                samples: self.samples,
                window: self.window,
                kinds: self.kinds.clone(),
                noise: crate::trace::NoiseLevel::EmbedStdTimes(self.noise),
                seed: self.seed,
            },
            ..crate::trace::TraceJob::default()
        }
    }
}

/// Held-out bias measurement (occupation prompts, all 17 templates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    /// Held-out professions measured (evenly spaced over the held-out split); absent = all.
    pub max_professions: Option<usize>,
    /// Prompts per forward.
    #[serde(default = "default_measure_batch")]
    pub batch: usize,
    /// Which of the 17 templates held-out professions and controls are measured on: `all`
    /// (default), or `unseen`, the five no edit is fitted on (the generalisation protocol,
    /// docs/method.md).
    #[serde(default)]
    pub template_split: crate::data::split::TemplateSplit,
}

/// The measure job's own default (one set of defaults for the CLI and the report).
fn default_measure_batch() -> usize {
    crate::measure::MeasureOptions::default().batch_size
}

impl Default for MeasureSpec {
    fn default() -> Self {
        MeasureSpec {
            max_professions: None,
            batch: default_measure_batch(),
            template_split: Default::default(),
        }
    }
}

/// Edited layers: an explicit list, or the peak layers found by the trace stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    List(Vec<usize>),
    /// Must be the word `from_sites`.
    Word(String),
}

impl Layers {
    pub fn is_from_sites(&self) -> bool {
        matches!(self, Layers::Word(w) if w == "from_sites")
    }
    fn validate(&self, name: &str) -> Result<()> {
        match self {
            Layers::Word(w) if w == "from_sites" => Ok(()),
            Layers::Word(w) => Err(Error::param(
                name,
                format!("expected a list of layer indices or \"from_sites\", got {w:?}"),
            )),
            Layers::List(v) if v.is_empty() => Err(Error::param(name, "layer list is empty")),
            Layers::List(v) => {
                if v.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::param(name, "layers must be strictly increasing"));
                }
                Ok(())
            }
        }
    }
}

/// LSDM, FT-L or DAMA in a report: the library's own parameter struct (same field names and
/// defaults as `biaslens edit --spec`'s `[lsdm]` / `[ft]` / `[dama]` tables) on the layers
/// the trace stage located or on an explicit list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitesLayersSpec<P> {
    /// Edited layers: a strictly increasing list, or `from_sites` (the traced MLP window).
    pub layers: Layers,
    /// The method's hyperparameters (`edit::lsdm::LsdmParams`, `edit::ftl::FtParams`,
    /// `edit::dama::DamaSettings`). FT-L and DAMA build their edit prompts from
    /// `[methods.lsdm.params]`'s `target_templates` and `prefixes`, as `biaslens edit` does.
    #[serde(default)]
    pub params: P,
}

/// The gap probe or gap tuning in a report: the library's own parameter struct (same field
/// names and defaults as `biaslens edit --spec`'s `[probe]` / `[tune]` tables), on the top
/// layers the method picks by default unless `layers` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopLayersSpec<P> {
    /// Edited layers; absent = the method's default (`edit::probe::default_layers`, the top 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// The method's hyperparameters (`edit::probe::ProbeParams` / `edit::tune::TuneParams`).
    #[serde(default)]
    pub params: P,
}

/// Which edit methods run; absent sections are skipped. The base model always runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodsSpec {
    /// Edit professions used by every method (evenly spaced over the edit split); absent = all.
    #[serde(default)]
    pub max_edit_professions: Option<usize>,
    pub lsdm: Option<SitesLayersSpec<LsdmParams>>,
    pub ft: Option<SitesLayersSpec<FtParams>>,
    pub dama: Option<SitesLayersSpec<DamaSettings>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<TopLayersSpec<crate::edit::probe::ProbeParams>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<TopLayersSpec<crate::edit::tune::TuneParams>>,
}

impl MethodsSpec {
    /// Model variants in the fixed column order used by every table: base first.
    pub fn variants(&self) -> Vec<ReportVariant> {
        let mut v = vec![ReportVariant::Base];
        v.extend(self.edit_methods().into_iter().map(ReportVariant::Method));
        v
    }

    /// The methods whose sections are present, in table order.
    pub fn edit_methods(&self) -> Vec<Method> {
        [
            (Method::Lsdm, self.lsdm.is_some()),
            (Method::Ft, self.ft.is_some()),
            (Method::Dama, self.dama.is_some()),
            (Method::Probe, self.probe.is_some()),
            (Method::Tune, self.tune.is_some()),
        ]
        .into_iter()
        .filter_map(|(m, present)| present.then_some(m))
        .collect()
    }
}

/// LSDM sweeps for the trade-off figure; each point is one extra edit + evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    #[serde(default)]
    pub lambda: Vec<f64>,
    /// Numbers of consecutive layers (centred on the traced peak) edited.
    #[serde(default)]
    pub layer_count: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// Task names from `eval::registry`.
    pub bias: Vec<String>,
    pub capability: Vec<String>,
    /// Default item limit per task; absent means every item.
    pub limit: Option<usize>,
    /// Per-task overrides of `limit`.
    #[serde(default)]
    pub limits: BTreeMap<String, usize>,
    /// The CPU kernels the eval stages score with.
    #[serde(default)]
    pub kernels: EvalKernels,
}

/// Which CPU kernels the report's eval stages score with (`[benchmarks] kernels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalKernels {
    /// candle's composed ops: the same numbers on every CPU, as the snapshot tests need.
    #[default]
    Composed,
    /// The fused kernels of `biaslens eval` (AVX-512 where the CPU has it): 1.5-1.8× faster
    /// (docs/performance.md, "Report"); the last bits of a score depend on the CPU and the batch.
    Fused,
}

impl BenchmarkSpec {
    /// The item limit in force for `task`.
    pub fn limit_for(&self, task: &str) -> Option<usize> {
        self.limits.get(task).copied().or(self.limit)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Seeds for the stochastic stages (target optimisation, bootstrap); one edit per seed.
    pub seeds: Vec<u64>,
    /// Worker threads; fixed so reductions are reproducible.
    pub threads: usize,
    /// Bootstrap resamples for confidence intervals.
    pub bootstrap: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Also write PNG copies of the figures (the HTML always embeds SVG).
    #[serde(default = "yes")]
    pub png: bool,
    #[serde(default = "yes")]
    pub html: bool,
    /// Decimals shown for metrics in Markdown/CSV/HTML tables.
    #[serde(default = "default_decimals")]
    pub decimals: usize,
}

fn yes() -> bool {
    true
}
fn default_decimals() -> usize {
    3
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            png: true,
            html: true,
            decimals: default_decimals(),
        }
    }
}

/// An explicit layer list, if given, is non-empty and strictly increasing.
fn top_layers(name: &str, layers: Option<&[usize]>) -> Result<()> {
    match layers {
        None => Ok(()),
        Some(l) => Layers::List(l.to_vec()).validate(name),
    }
}

fn check_tasks(name: &str, tasks: &[String]) -> Result<()> {
    for (i, t) in tasks.iter().enumerate() {
        crate::eval::registry::task(t)
            .map_err(|e| Error::param(format!("{name}[{i}]"), e.to_string()))?;
        if tasks[..i].contains(t) {
            return Err(Error::param(
                format!("{name}[{i}]"),
                format!("task {t:?} listed twice"),
            ));
        }
    }
    Ok(())
}

impl Spec {
    /// Read, parse and validate a spec; every error names the file.
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        Spec::parse(&text).map_err(|e| match e {
            Error::Param { name, message } => {
                Error::file(path, format!("parameter `{name}`: {message}"))
            }
            other => Error::file(path, other.to_string()),
        })
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text).map_err(|e| Error::param("spec", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Range checks that TOML types cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::param(
                "name",
                "must be non-empty and use only [A-Za-z0-9_-]",
            ));
        }
        if self.model.name.trim().is_empty() {
            return Err(Error::param("model.name", "must not be empty"));
        }
        let d = self.model.device.as_str();
        let cuda_n = d.strip_prefix("cuda:").map(|n| n.parse::<usize>().is_ok());
        if !(d == "cpu" || d == "cuda" || cuda_n == Some(true)) {
            return Err(Error::param(
                "model.device",
                format!("expected cpu, cuda or cuda:N, got {d:?}"),
            ));
        }
        self.split.validate().map_err(|e| match e {
            Error::Param { name, message } => Error::param(format!("split.{name}"), message),
            other => other,
        })?;
        let t = &self.trace;
        at_least_one("trace.prompts", t.prompts)?;
        at_least_one("trace.samples", t.samples)?;
        positive("trace.noise", t.noise)?;
        at_least_one("trace.window", t.window)?;
        if t.kinds.is_empty() {
            return Err(Error::param(
                "trace.kinds",
                "list at least one of hidden, mlp, attn",
            ));
        }
        if t.kinds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::param(
                "trace.kinds",
                "list each kind once, in the order hidden, mlp, attn",
            ));
        }
        if let Some(p) = &t.sites {
            if !p.is_file() {
                return Err(Error::param(
                    "trace.sites",
                    format!(
                        "{} is not a file (a sites.json from `biaslens trace`)",
                        p.display()
                    ),
                ));
            }
        }
        // The library names its parameters `lsdm.x`, `probe.x`, ...; here they sit under
        // `methods.<method>.params`.
        let in_params = |e: Error| match e {
            Error::Param { name, message } => {
                let (method, field) = name.split_once('.').unwrap_or(("", name.as_str()));
                Error::param(format!("methods.{method}.params.{field}"), message)
            }
            other => other,
        };
        if let Some(m) = &self.methods.lsdm {
            m.layers.validate("methods.lsdm.layers")?;
            m.params.validate().map_err(in_params)?;
        }
        if let Some(m) = &self.methods.ft {
            m.layers.validate("methods.ft.layers")?;
            m.params.validate().map_err(in_params)?;
        }
        if let Some(m) = &self.methods.dama {
            m.layers.validate("methods.dama.layers")?;
            m.params.validate().map_err(in_params)?;
        }
        if let Some(m) = &self.methods.probe {
            top_layers("methods.probe.layers", m.layers.as_deref())?;
            m.params.validate().map_err(in_params)?;
        }
        if let Some(m) = &self.methods.tune {
            top_layers("methods.tune.layers", m.layers.as_deref())?;
            m.params.validate().map_err(in_params)?;
        }
        if let Some(n) = self.methods.max_edit_professions {
            at_least_one("methods.max_edit_professions", n)?;
        }
        if let Some(n) = self.measure.max_professions {
            at_least_one("measure.max_professions", n)?;
        }
        at_least_one("measure.batch", self.measure.batch)?;
        if (!self.sweeps.lambda.is_empty() || !self.sweeps.layer_count.is_empty())
            && self.methods.lsdm.is_none()
        {
            return Err(Error::param(
                "sweeps",
                "sweeps vary LSDM; add a [methods.lsdm] section",
            ));
        }
        for (i, &l) in self.sweeps.lambda.iter().enumerate() {
            non_negative(&format!("sweeps.lambda[{i}]"), l)?;
        }
        for (i, &n) in self.sweeps.layer_count.iter().enumerate() {
            at_least_one(&format!("sweeps.layer_count[{i}]"), n)?;
        }
        let b = &self.benchmarks;
        check_tasks("benchmarks.bias", &b.bias)?;
        check_tasks("benchmarks.capability", &b.capability)?;
        if let Some(l) = b.limit {
            at_least_one("benchmarks.limit", l)?;
        }
        for (task, &l) in &b.limits {
            let name = format!("benchmarks.limits.{task}");
            crate::eval::registry::task(task).map_err(|e| Error::param(&name, e.to_string()))?;
            if !b.bias.contains(task) && !b.capability.contains(task) {
                return Err(Error::param(
                    &name,
                    "task is not listed in benchmarks.bias or benchmarks.capability",
                ));
            }
            at_least_one(&name, l)?;
        }
        if self.run.seeds.is_empty() {
            return Err(Error::param("run.seeds", "list at least one seed"));
        }
        at_least_one("run.threads", self.run.threads)?;
        at_least_one("run.bootstrap", self.run.bootstrap)?;
        if self.output.decimals > 12 {
            return Err(Error::param("output.decimals", "must be at most 12"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::edit::lsdm::Prior;
    use crate::edit::target::{Optimizer, TargetParams};

    pub(crate) const MINIMAL: &str = r#"
name = "t"
[model]
name = "smollm2-135m"
[split]
definitional_threshold = 0.5
held_out_fraction = 0.5
seed = 0
[trace]
prompts = 4
samples = 2
noise = 3.0
window = 3
kinds = ["mlp", "attn"]
seed = 1
[methods.lsdm]
layers = "from_sites"
[methods.lsdm.params]
lambda = 10.0
mu = 1.0
target.steps = 5
target.lr = 0.5
target.kl_weight = 0.0625
target.clamp = 0.75
[benchmarks]
bias = ["winobias_type1"]
capability = ["copa"]
limit = 10
[run]
seeds = [0]
threads = 2
bootstrap = 100
"#;

    fn variant_names(m: &MethodsSpec) -> Vec<&'static str> {
        m.variants().into_iter().map(ReportVariant::name).collect()
    }

    fn err_of(text: &str) -> String {
        Spec::parse(text)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let s = Spec::parse(MINIMAL).unwrap();
        assert_eq!(s.model.device, "cpu");
        assert!(s.methods.lsdm.as_ref().unwrap().layers.is_from_sites());
        assert_eq!(variant_names(&s.methods), vec!["base", "lsdm"]);
        // Fields the spec leaves out take the library's defaults.
        let want = LsdmParams {
            lambda: 10.0,
            mu: 1.0,
            target: TargetParams {
                steps: 5,
                lr: 0.5,
                kl_weight: 0.0625,
                clamp: 0.75,
                ..TargetParams::default()
            },
            ..LsdmParams::default()
        };
        assert_eq!(s.methods.lsdm.as_ref().unwrap().params, want);
        assert_eq!(s.output, OutputSpec::default());
        assert_eq!(s.benchmarks.limit_for("copa"), Some(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&MINIMAL.replace("samples = 2", "samples = 2\nsampels = 3"));
        assert!(e.contains("sampels"), "{e}");
        let e = err_of(&MINIMAL.replace("[run]", "[run]\nfoo = 1"));
        assert!(e.contains("foo"), "{e}");
    }

    /// Inside a method's `params` (the library's structs) and beside `layers`, a misspelt or
    /// misplaced key is an error naming it.
    #[test]
    fn unknown_method_fields_are_named() {
        let sections = "[methods.ft]\nlayers = [3, 4]\n[methods.ft.params]\neps = 1e-3\n\
                        [methods.dama]\nlayers = [3, 4]\n[methods.dama.params]\ncomponents = 8\n\
                        [benchmarks]";
        let text = MINIMAL.replace("[benchmarks]", sections);
        Spec::parse(&text).unwrap();
        for (from, to, field) in [
            ("mu = 1.0", "mu = 1.0\nlamda = 3.0", "lamda"),
            ("target.steps = 5", "target.stpes = 5", "stpes"),
            ("eps = 1e-3", "eps = 1e-3\nepsilon = 1e-3", "epsilon"),
            (
                "components = 8",
                "components = 8\ncomponent = 8",
                "component",
            ),
            // A parameter beside `layers` instead of under `params`.
            (
                "layers = [3, 4]\n[methods.ft.params]",
                "layers = [3, 4]\nsteps = 5\n[methods.ft.params]",
                "steps",
            ),
            (
                "layers = \"from_sites\"",
                "layers = \"from_sites\"\nclamp = 0.75",
                "clamp",
            ),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{from}");
            let e = err_of(&bad);
            assert!(
                e.contains(&format!("unknown field `{field}`")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let cases = [
            ("noise = 3.0", "noise = -1.0", "trace.noise"),
            ("lr = 0.5", "lr = 0.0", "methods.lsdm.params.target.lr"),
            ("mu = 1.0", "mu = -1.0", "methods.lsdm.params.mu"),
            (
                "layers = \"from_sites\"",
                "layers = \"all\"",
                "methods.lsdm.layers",
            ),
            (
                "layers = \"from_sites\"",
                "layers = [3, 2]",
                "methods.lsdm.layers",
            ),
            (
                "capability = [\"copa\"]",
                "capability = [\"copaa\"]",
                "benchmarks.capability[0]",
            ),
            (
                "held_out_fraction = 0.5",
                "held_out_fraction = 1.5",
                "split.held_out_fraction",
            ),
            ("seeds = [0]", "seeds = []", "run.seeds"),
            (
                "kinds = [\"mlp\", \"attn\"]",
                "kinds = [\"attn\", \"mlp\"]",
                "trace.kinds",
            ),
            (
                "name = \"smollm2-135m\"",
                "name = \"smollm2-135m\"\ndevice = \"gpu\"",
                "model.device",
            ),
        ];
        for (from, to, param) in cases {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from}");
            let e = err_of(&text);
            assert!(e.contains(param), "{param}: {e}");
        }
    }

    #[test]
    fn prior_and_optimizer_are_enums_spelled_as_before() {
        let with = |extra: &str| MINIMAL.replace("mu = 1.0", &format!("mu = 1.0\n{extra}"));
        let s = Spec::parse(&with("prior = \"identity\"\ntarget.optimizer = \"adam\"")).unwrap();
        let l = &s.methods.lsdm.as_ref().unwrap().params;
        assert_eq!(
            (l.prior, l.target.optimizer),
            (Prior::Identity, Optimizer::Adam)
        );
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("prior = \"identity\""), "{text}");
        assert!(text.contains("optimizer = \"adam\""), "{text}");
        let s = Spec::parse(&with(
            "prior = \"moment\"\ntarget.optimizer = \"gauss-newton\"",
        ))
        .unwrap();
        let l = &s.methods.lsdm.as_ref().unwrap().params;
        assert_eq!(
            (l.prior, l.target.optimizer),
            (Prior::Moment, Optimizer::GaussNewton)
        );
    }

    #[test]
    fn unknown_prior_or_optimizer_is_a_parse_error_naming_the_allowed_values() {
        let e = err_of(&MINIMAL.replace("mu = 1.0", "mu = 1.0\nprior = \"ridge\""));
        for want in ["prior", "ridge", "moment", "identity"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = err_of(&MINIMAL.replace("mu = 1.0", "mu = 1.0\ntarget.optimizer = \"sgd\""));
        for want in ["optimizer", "sgd", "gauss-newton", "adam"] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn probe_and_tune_sections_embed_the_library_parameters() {
        use crate::edit::probe::ProbeParams;
        use crate::edit::tune::TuneParams;
        let text = MINIMAL.replace(
            "[benchmarks]",
            "[methods.probe]\n[methods.tune]\nlayers = [27, 28, 29]\n\
             [methods.tune.params]\nrank = 2\nprior = 10.0\n[benchmarks]",
        );
        let s = Spec::parse(&text).unwrap();
        assert_eq!(
            variant_names(&s.methods),
            vec!["base", "lsdm", "probe", "tune"]
        );
        let p = s.methods.probe.as_ref().unwrap();
        assert_eq!(
            (p.layers.as_ref(), &p.params),
            (None, &ProbeParams::default())
        );
        let t = s.methods.tune.as_ref().unwrap();
        assert_eq!(t.layers, Some(vec![27, 28, 29]));
        let want = TuneParams {
            rank: 2,
            prior: 10.0,
            ..TuneParams::default()
        };
        assert_eq!(t.params, want);
        // The edit stage hands exactly these parameters to the library.
        for v in crate::report::stages::variants(&s) {
            let (e, layers) = crate::report::stages::edit::edit_spec(&s, &v).unwrap();
            match v.method {
                Method::Probe => assert_eq!((e.probe, layers), (ProbeParams::default(), None)),
                Method::Tune => {
                    assert_eq!(e.tune, want);
                    assert_eq!(layers, Some(Layers::List(vec![27, 28, 29])));
                }
                _ => {}
            }
        }
        // Library names, report paths; unknown fields and bad layer lists are errors.
        let e = err_of(&text.replace("rank = 2", "rank = 2\nlr = -1.0"));
        assert!(e.contains("methods.tune.params.lr"), "{e}");
        let e = err_of(&text.replace("rank = 2", "rank = 2\nrnk = 3"));
        assert!(e.contains("rnk"), "{e}");
        let e = err_of(&text.replace("[27, 28, 29]", "[28, 27]"));
        assert!(e.contains("methods.tune.layers"), "{e}");
    }

    /// `[methods.<m>.params]` of a report and `[<m>]` of `biaslens edit --spec` are one schema:
    /// the same text gives the same library struct, and the edit stage hands it on unchanged.
    #[test]
    fn lsdm_ft_dama_params_read_as_edit_spec_tables() {
        use crate::edit::lsdm::PostNorm;
        use crate::edit::method::EditSpec;
        // Every value differs from the library default, so a dropped field would show.
        let lsdm = "lambda = 3.0\nmu = 2.0\nprior = \"identity\"\ncorpus_tokens = 1024\n\
                    corpus_seq_len = 64\ntarget_templates = 4\nprefixes = 2\nbatch = 16\n\
                    average_keys = true\npost_norm = \"ignore\"\n\
                    target.optimizer = \"adam\"\ntarget.steps = 7\ntarget.lr = 0.25\n\
                    target.kl_weight = 0.5\ntarget.weight_decay = 0.125\ntarget.clamp = 2.0\n\
                    target.chunk = 32\n";
        let ft = "eps = 1e-3\nsteps = 4\nlr = 2e-3\nkl_weight = 0.25\nchunk = 64\n";
        let dama = "components = 8\nbatch = 32\n";
        let report = MINIMAL.replace(
            "[methods.lsdm]\nlayers = \"from_sites\"\n[methods.lsdm.params]\nlambda = 10.0\nmu = 1.0\n\
             target.steps = 5\ntarget.lr = 0.5\ntarget.kl_weight = 0.0625\ntarget.clamp = 0.75\n",
            &format!(
                "[methods.lsdm]\nlayers = [1, 2]\n[methods.lsdm.params]\n{lsdm}\
                 [methods.ft]\nlayers = [1, 2]\n[methods.ft.params]\n{ft}\
                 [methods.dama]\nlayers = [1, 2]\n[methods.dama.params]\n{dama}"
            ),
        );
        let edit = format!(
            "method = \"lsdm\"\nlayers = [1, 2]\ndata_dir = \"data\"\n\
             [split]\ndefinitional_threshold = 0.5\nheld_out_fraction = 0.5\nseed = 0\n\
             [lsdm]\n{lsdm}[ft]\n{ft}[dama]\n{dama}"
        );
        let s = Spec::parse(&report).unwrap();
        let e: EditSpec = toml::from_str(&edit).unwrap();
        let m = &s.methods;
        assert_eq!(m.lsdm.as_ref().unwrap().params, e.lsdm);
        assert_eq!(m.ft.as_ref().unwrap().params, e.ft);
        assert_eq!(m.dama.as_ref().unwrap().params, e.dama);
        assert_ne!(e.lsdm, LsdmParams::default());
        assert_eq!(e.lsdm.post_norm, PostNorm::Ignore);
        assert_eq!(e.lsdm.target.chunk, 32);
        assert_ne!(e.ft, FtParams::default());
        assert_ne!(e.dama, DamaSettings::default());
        for v in crate::report::stages::variants(&s) {
            let (got, layers) = crate::report::stages::edit::edit_spec(&s, &v).unwrap();
            assert_eq!(
                (&got.lsdm, &got.ft, &got.dama),
                (&e.lsdm, &e.ft, &e.dama),
                "{}",
                v.name
            );
            assert_eq!(layers, Some(Layers::List(vec![1, 2])), "{}", v.name);
        }
        // A λ sweep point changes λ alone.
        let swept = Spec::parse(
            &report.replace("[benchmarks]", "[sweeps]\nlambda = [100.0]\n[benchmarks]"),
        )
        .unwrap();
        let point = crate::report::stages::variants(&swept)
            .into_iter()
            .find(|v| v.lambda.is_some())
            .unwrap();
        let (got, _) = crate::report::stages::edit::edit_spec(&swept, &point).unwrap();
        assert_eq!(
            got.lsdm,
            LsdmParams {
                lambda: 100.0,
                ..e.lsdm.clone()
            }
        );
        // Range errors use the report's path to the field.
        let e = err_of(&report.replace("eps = 1e-3", "eps = 0.0"));
        assert!(e.contains("methods.ft.params.eps"), "{e}");
        let e = err_of(&report.replace("components = 8", "components = 0"));
        assert!(e.contains("methods.dama.params.components"), "{e}");
        let e = err_of(&report.replace("target.chunk = 32", "target.chunk = 0"));
        assert!(e.contains("methods.lsdm.params.target.chunk"), "{e}");
    }

    #[test]
    fn limits_override_and_must_name_listed_tasks() {
        let s = Spec::parse(
            &MINIMAL.replace("limit = 10", "limit = 10\n[benchmarks.limits]\ncopa = 3"),
        )
        .unwrap();
        assert_eq!(s.benchmarks.limit_for("copa"), Some(3));
        assert_eq!(s.benchmarks.limit_for("winobias_type1"), Some(10));
        let e = err_of(&MINIMAL.replace("limit = 10", "limit = 10\n[benchmarks.limits]\npiqa = 3"));
        assert!(e.contains("benchmarks.limits.piqa"), "{e}");
    }

    #[test]
    fn sweeps_need_lsdm() {
        let mut s = Spec::parse(MINIMAL).unwrap();
        s.sweeps.lambda = vec![1.0];
        s.validate().unwrap();
        s.methods.lsdm = None;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sweeps"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, MINIMAL.replace("window = 3", "window = 0")).unwrap();
        let e = Spec::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("trace.window"), "{e}");
    }

    #[test]
    fn harness_specs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness");
        // The full specs leave DAMA out (their comments say why); the others run all three.
        for (f, want) in [
            ("quick.toml", vec!["base", "lsdm", "ft", "dama"]),
            ("full-smollm2.toml", vec!["base", "lsdm", "ft"]),
            ("full-gemma3.toml", vec!["base", "lsdm", "ft"]),
            (
                "mitigation-smollm2.toml",
                vec!["base", "lsdm", "ft", "dama", "probe", "tune"],
            ),
            (
                "mitigation-gemma3.toml",
                vec!["base", "lsdm", "ft", "dama", "probe", "tune"],
            ),
            ("snapshot.toml", vec!["base", "lsdm", "ft", "dama"]),
        ] {
            let s = Spec::load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(variant_names(&s.methods), want, "{f}");
        }
    }

    /// The mitigation reports' probe and tune rows are the edits `biaslens edit --model M`
    /// makes: each model's shipped default record's hyperparameters, not the library's.
    #[test]
    fn mitigation_specs_use_the_shipped_default_hyperparameters() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness");
        for (f, model) in [
            ("mitigation-smollm2.toml", "smollm2-135m"),
            ("mitigation-gemma3.toml", "gemma-3-270m"),
        ] {
            let s = Spec::load(&root.join(f)).unwrap();
            assert_eq!(s.model.name, model, "{f}");
            let record = crate::edit::model_default::record(&crate::data::data_dir(), model)
                .unwrap()
                .unwrap_or_else(|| panic!("{model} has no default-edit record"));
            let methods = &s.methods;
            assert_eq!(methods.probe.as_ref().unwrap().params, record.probe, "{f}");
            assert_eq!(methods.tune.as_ref().unwrap().params, record.tune, "{f}");
        }
    }
}
