//! One entry point for every edit method: the same layers, the same edit prompts, the same
//! budget; a typed, serialisable spec in and a delta plus a record out.

use super::context::{edit_sets, EditSets};
use super::dama::{dama, DamaSettings};
use super::delta::WeightDelta;
use super::ftl::{ft_l, FtParams};
use super::lsdm::{edit_prompts, lsdm, LsdmParams, Prior};
use super::probe::{probe, ProbeParams};
use super::tune::{tune, TuneParams};
use crate::data::{Profession, SplitSpec};
use crate::model::Model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Lsdm,
    Ft,
    Dama,
    /// The gap probe at the last token (`edit::probe`).
    Probe,
    /// Gap tuning: a low-rank edit of the probe's projections fitted end to end (`edit::tune`).
    Tune,
}

impl Method {
    /// The spelling in specs, edit.json, report stage names and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Lsdm => "lsdm",
            Method::Ft => "ft",
            Method::Dama => "dama",
            Method::Probe => "probe",
            Method::Tune => "tune",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // `ft-l`: the paper's name for FT, accepted as well.
        let s = if s == "ft-l" { "ft" } else { s };
        crate::error::parse_named(
            "method",
            s,
            &[
                Method::Lsdm,
                Method::Ft,
                Method::Dama,
                Method::Probe,
                Method::Tune,
            ],
            Method::name,
        )
    }
}

/// Everything that defines an edit; written to edit.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    pub method: Method,
    pub layers: Vec<usize>,
    pub split: SplitSpec,
    /// Use only this many edit professions (evenly spaced); None = the whole edit split.
    pub max_edit_professions: Option<usize>,
    /// Each method's hyperparameters; a missing table or field takes the library default.
    /// Report specs embed the same structs under `[methods.<method>.params]`.
    #[serde(default)]
    pub lsdm: LsdmParams,
    #[serde(default)]
    pub ft: FtParams,
    #[serde(default)]
    pub dama: DamaSettings,
    #[serde(default)]
    pub probe: ProbeParams,
    #[serde(default)]
    pub tune: TuneParams,
    /// Fit without the validation professions and templates (`data::validation_professions`,
    /// `data::VALIDATION_TEMPLATES`), so `measure --split validation --template-split
    /// validation` can judge hyperparameters on data the edit never saw.
    #[serde(default)]
    pub validation: bool,
    pub data_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
}

impl EditSpec {
    pub fn new(method: Method, layers: Vec<usize>) -> Self {
        EditSpec {
            method,
            layers,
            split: SplitSpec::default(),
            max_edit_professions: None,
            lsdm: LsdmParams::default(),
            ft: FtParams::default(),
            dama: DamaSettings::default(),
            probe: ProbeParams::default(),
            tune: TuneParams::default(),
            validation: false,
            data_dir: crate::data::data_dir(),
            cache_dir: Some(PathBuf::from(".biaslens-cache")),
        }
    }
}

impl EditSpec {
    /// The layers the method edits when none are given, for the methods with a default of their
    /// own: tune with `tune.heads` edits those heads' layers, the probe and tune otherwise the top
    /// [`super::probe::DEFAULT_TOP_LAYERS`]. `None` for LSDM, FT-L and DAMA, which edit the
    /// located sites. The one rule `biaslens edit` and the report both follow.
    pub fn method_default_layers(&self, num_layers: usize) -> Option<Vec<usize>> {
        match self.method {
            Method::Tune if !self.tune.heads.is_empty() => Some(self.tune.head_layers()),
            Method::Probe | Method::Tune => Some(super::probe::default_layers(num_layers)),
            Method::Lsdm | Method::Ft | Method::Dama => None,
        }
    }

    /// Range checks of the chosen method's hyperparameters; errors name the field.
    pub fn validate_params(&self) -> Result<()> {
        match self.method {
            Method::Lsdm => self.lsdm.validate(),
            Method::Ft => self.ft.validate(),
            Method::Dama => self.dama.validate(),
            Method::Probe => self.probe.validate(),
            Method::Tune => self.tune.validate(),
        }
    }

    /// Where the probe's or gap tuning's prompts come from; other methods read no word lists.
    pub fn prompt_sources(&self) -> Option<super::probe::PromptSources> {
        match self.method {
            Method::Probe => Some(self.probe.sources()),
            Method::Tune => Some(self.tune.sources()),
            Method::Lsdm | Method::Ft | Method::Dama => None,
        }
    }

    /// Read and parse the word lists and templates the probe or gap tuning will fit on, so a
    /// missing or malformed file fails before a model is loaded, naming the file.
    pub fn check_word_files(&self) -> Result<()> {
        match self.prompt_sources() {
            Some(sources) => sources.check(&self.data_dir, self.validation),
            None => Ok(()),
        }
    }
}

/// The result of an edit: the delta and a JSON report of the method's internals.
pub struct EditOutcome {
    pub delta: WeightDelta,
    /// sha256 of the data files the edit read.
    pub data_hashes: std::collections::BTreeMap<String, String>,
    pub sets: EditSets,
    pub report: serde_json::Value,
    pub seconds: f64,
    /// Work spent this run on cacheable corpus statistics (LSDM's C), included in the
    /// transformer's counter; subtract it for the method's own, cache-independent work.
    pub statistics_work: crate::model::Work,
    /// Corpus tokens behind those statistics (0 when the method uses none).
    pub statistics_tokens: u64,
    /// FT-L's and DAMA's last checkpoint, kept until the caller has stored the edit.
    pub checkpoint: Option<super::checkpoint::Checkpoint>,
}

impl EditOutcome {
    /// The edit is stored: remove its checkpoint. Until then a rerun after a crash resumes
    /// from the finished state instead of starting over.
    pub fn release_checkpoint(&self) -> Result<()> {
        self.checkpoint.as_ref().map_or(Ok(()), |c| c.finish())
    }
}

pub fn edit_model(model: &Model, spec: &EditSpec, log: impl FnMut(&str)) -> Result<EditOutcome> {
    let t0 = std::time::Instant::now();
    let prof_path = spec.data_dir.join("bolukbasi_debiaswe/professions.json");
    let professions = Profession::load(&prof_path)?;
    let mut data_hashes = std::collections::BTreeMap::new();
    data_hashes.insert(
        prof_path.to_string_lossy().into_owned(),
        crate::io::sha256_file(&prof_path)?,
    );
    let sets = edit_sets(
        &professions,
        &spec.split,
        spec.max_edit_professions,
        spec.validation,
    )?;
    if sets.edit.is_empty() {
        return Err(Error::param("split", "the edit split is empty"));
    }
    let corpus: &Path = &spec.data_dir.join("wikitext2/wikitext-2-v1.valid.tokens");
    let uses_corpus = match spec.method {
        Method::Lsdm => spec.lsdm.prior == Prior::Moment,
        Method::Probe => spec.probe.lambda > 0.0,
        Method::Tune => true,
        _ => false,
    };
    if uses_corpus {
        data_hashes.insert(
            corpus.to_string_lossy().into_owned(),
            crate::io::sha256_file(corpus)?,
        );
    }
    let word_files = spec
        .prompt_sources()
        .map(|s| s.files(&spec.data_dir))
        .unwrap_or_default();
    for path in word_files {
        data_hashes.insert(
            path.to_string_lossy().into_owned(),
            crate::io::sha256_file(&path)?,
        );
    }
    let none = super::corpus::CorpusCost::default();
    let cache = spec.cache_dir.as_deref();
    let mut checkpoint = None;
    let (delta, report, statistics) = match spec.method {
        Method::Lsdm => {
            let (d, r) = lsdm(model, &sets, &spec.layers, &spec.lsdm, corpus, cache, log)?;
            let stats = r.statistics;
            (d, serde_json::to_value(r)?, stats)
        }
        Method::Ft => {
            let prompts =
                edit_prompts(model, &sets, spec.lsdm.target_templates, spec.lsdm.prefixes)?;
            let (d, r, c) = ft_l(model, &prompts, &spec.layers, &spec.ft, cache, log)?;
            checkpoint = Some(c);
            (d, serde_json::to_value(r)?, none)
        }
        Method::Probe => {
            let (d, r) = probe(
                model,
                &sets,
                &spec.layers,
                &spec.probe,
                &spec.data_dir,
                corpus,
                cache,
                log,
            )?;
            let stats = r.statistics;
            (d, serde_json::to_value(r)?, stats)
        }
        Method::Tune => {
            let (d, r) = tune(
                model,
                &sets,
                &spec.layers,
                &spec.tune,
                &spec.data_dir,
                corpus,
                cache,
                log,
            )?;
            let stats = r.statistics;
            (d, serde_json::to_value(r)?, stats)
        }
        Method::Dama => {
            let prompts =
                edit_prompts(model, &sets, spec.lsdm.target_templates, spec.lsdm.prefixes)?;
            let (d, r, c) = dama(model, &prompts, &spec.layers, &spec.dama, cache, log)?;
            checkpoint = Some(c);
            (d, serde_json::to_value(r)?, none)
        }
    };
    Ok(EditOutcome {
        delta,
        data_hashes,
        sets,
        report,
        seconds: t0.elapsed().as_secs_f64(),
        statistics_work: statistics.work(),
        statistics_tokens: statistics.statistics_tokens,
        checkpoint,
    })
}

/// Bias on the edit prompts (edit professions × edit templates, no prefix): what the edit was
/// asked to change. Held-out professions and templates are measured by `biaslens measure`.
pub fn edit_prompt_bias(model: &Model, spec: &EditSpec) -> Result<crate::measure::BiasMetrics> {
    use crate::measure::{bias_metrics, prompt_probs};
    let professions = Profession::load(&spec.data_dir.join("bolukbasi_debiaswe/professions.json"))?;
    let sets = edit_sets(
        &professions,
        &spec.split,
        spec.max_edit_professions,
        spec.validation,
    )?;
    let templates = crate::data::vig_templates();
    let edited: Vec<Profession> = professions
        .into_iter()
        .filter(|p| sets.edit.contains(&p.name))
        .collect();
    let chosen: Vec<crate::data::Template> = sets
        .edit_templates
        .iter()
        .map(|&t| templates[t].clone())
        .collect();
    let mut prompts = crate::data::occupation_prompts(&edited, &chosen);
    // occupation_prompts numbers templates within `chosen`; record the Vig index instead.
    for p in &mut prompts {
        p.template_index = sets.edit_templates[p.template_index];
    }
    let batch = crate::measure::MeasureOptions::default().batch_size;
    let (_, out) = prompt_probs(model, &prompts, batch, |_| {})?;
    bias_metrics(
        &out,
        None,
        &crate::stats::BootstrapSpec {
            resamples: 200,
            seed: spec.split.seed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::target::TargetParams;

    /// The default layers of each method: heads-only tune edits its heads' layers (so a head
    /// below the top five, Gemma-3's 9.2, is edited rather than refused), probe and tune the top
    /// five, the located-site methods none of their own.
    #[test]
    fn method_default_layers_follow_the_method_and_the_heads() {
        let mut s = EditSpec::new(Method::Tune, vec![]);
        assert_eq!(s.method_default_layers(18), Some(vec![13, 14, 15, 16, 17]));
        s.tune.heads = vec![(14, 3), (9, 2)];
        assert_eq!(s.method_default_layers(18), Some(vec![9, 14]));
        s.method = Method::Probe;
        assert_eq!(s.method_default_layers(18), Some(vec![13, 14, 15, 16, 17]));
        for m in [Method::Lsdm, Method::Ft, Method::Dama] {
            s.method = m;
            assert_eq!(s.method_default_layers(18), None, "{m:?}");
        }
    }

    /// `biaslens edit --spec`: a missing method table or field takes the library default, a
    /// misspelt field is an error naming it, and range errors name the field.
    #[test]
    fn method_tables_default_per_field_and_name_unknown_fields() {
        let head = "method = \"ft\"\nlayers = [3]\ndata_dir = \"data\"\n\
                    [split]\ndefinitional_threshold = 0.5\nheld_out_fraction = 0.5\nseed = 0\n";
        let e: EditSpec = toml::from_str(&format!(
            "{head}[lsdm.target]\nsteps = 5\n[ft]\neps = 1e-3\n"
        ))
        .unwrap();
        let want = LsdmParams {
            target: TargetParams {
                steps: 5,
                ..TargetParams::default()
            },
            ..LsdmParams::default()
        };
        assert_eq!(e.lsdm, want);
        let want = FtParams {
            eps: 1e-3,
            ..FtParams::default()
        };
        assert_eq!(e.ft, want);
        assert_eq!(e.dama, DamaSettings::default());
        for (table, field) in [
            ("lsdm", "lamda"),
            ("lsdm.target", "stpes"),
            ("ft", "epsilon"),
            ("dama", "component"),
        ] {
            let err = toml::from_str::<EditSpec>(&format!("{head}[{table}]\n{field} = 1\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("unknown field `{field}`")), "{err}");
        }
        let mut bad = e.clone();
        bad.lsdm.target.clamp = 0.0;
        let err = bad.lsdm.validate().unwrap_err().to_string();
        assert!(err.contains("lsdm.target.clamp"), "{err}");
        bad.ft.steps = 0;
        let err = bad.ft.validate().unwrap_err().to_string();
        assert!(err.contains("ft.steps"), "{err}");
        bad.dama.components = 0;
        let err = bad.dama.validate().unwrap_err().to_string();
        assert!(err.contains("dama.components"), "{err}");
        e.lsdm.validate().unwrap();
        e.ft.validate().unwrap();
        e.dama.validate().unwrap();
    }
}
