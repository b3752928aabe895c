//! `biaslens edit` (LSDM, FT-L, DAMA), `apply` and `revert` of a stored delta.

use super::common::{
    at_least_one, first_duplicate, layer_head, non_negative, require_tokenizer, DefaultModelArgs,
    ModelOutArgs, SeedArg,
};
use biaslens::edit::delta::WeightDelta;
use biaslens::edit::record::{apply_delta, revert_delta, write_edit_outputs, EditRecord};
use biaslens::model::export::write_hf_dir;
use biaslens::model::Model;
use candle_core::Device;
use std::path::PathBuf;

/// Edit a model and write it (HF directory + delta.safetensors + edit.json).
#[derive(clap::Args)]
pub struct EditArgs {
    // The base model.
    #[command(flatten)]
    pub model: DefaultModelArgs,
    /// probe (the gap probe at the last token: it transfers to unseen professions and
    /// templates, docs/findings.md §6), tune, lsdm, ft (FT-L) or dama. Default: the --spec
    /// file's method, else the model's validated default with its hyperparameters (tune with
    /// --word-source wordnet --tune-steps 400 for smollm2-135m, tune with --tune-corpus-topk 10
    /// --word-source wordnet --tune-protect 4 for gemma-3-270m: fixtures/data/default_edits),
    /// else probe. Naming a method starts from its library defaults.
    #[arg(long)]
    pub method: Option<biaslens::edit::method::Method>,
    /// Edited layers, e.g. 1,2,3,4 (overrides --sites).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// sites.json from `biaslens trace`: edit its default layer window.
    #[arg(long)]
    pub sites: Option<PathBuf>,
    /// A TOML file with an EditSpec (every hyperparameter; see docs/method.md); flags override it.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Use this many edit professions (evenly spaced) instead of the whole edit split.
    #[arg(long, value_parser = at_least_one)]
    pub max_edit: Option<usize>,
    /// λ, weight of the corpus prior (LSDM and probe).
    #[arg(long, value_parser = non_negative)]
    pub lambda: Option<f64>,
    /// Fit without the validation professions and templates, for choosing hyperparameters:
    /// judge the result with `measure --split validation --template-split validation`.
    #[arg(long)]
    pub validation: bool,
    /// probe: multiplier on the rank-one update (1 removes the predicted gap to first order).
    #[arg(long)]
    pub scale: Option<f64>,
    /// probe: which projections of each layer to edit: both (attention output, then MLP
    /// down-projection; default), mlp or attn.
    #[arg(long)]
    pub probe_components: Option<biaslens::edit::probe::Components>,
    /// probe: sweeps over the layers (each stage removes its share of what is left).
    #[arg(long, value_parser = at_least_one)]
    pub passes: Option<usize>,
    /// probe: what each stage removes: `share` (the gap left / stages left, default) or `full`.
    #[arg(long)]
    pub probe_target: Option<biaslens::edit::probe::StageTarget>,
    /// probe: hold each protected prompt's key at zero change (default: each word's mean key).
    #[arg(long)]
    pub protect_each_prompt: bool,
    /// probe and tune: gendered words held at zero change: `pairs` (the equalize pairs, 37
    /// words; the probe's default), `persons` (plus 87 singular gendered persons from the seed
    /// list), `roles` (plus 56 gendered role nouns; tune's default) or `extended` (plus 96 more
    /// gendered persons; fixtures/data/protected/README.md).
    #[arg(long)]
    pub protect_set: Option<biaslens::edit::probe::ProtectSet>,
    /// probe and tune: `wordnet` also fits on WordNet's 614 occupations (their gap removed) and
    /// protects its 243 gendered person nouns (their gap kept); `project` (default) uses the
    /// project's lists only (fixtures/data/wordnet/README.md).
    #[arg(long)]
    pub word_source: Option<biaslens::edit::probe::WordSource>,
    /// probe and tune: `varied` also fits and protects on 24 project-written templates of
    /// other shapes than Vig et al.'s (fixtures/data/templates/README.md; a --validation fit
    /// leaves out the 8 that `measure --template-split varied-validation` reads); `vig`
    /// (default): the split's Vig templates only.
    #[arg(long)]
    pub fit_templates: Option<biaslens::edit::probe::FitTemplates>,
    /// tune: rank of each projection's change (default 4).
    #[arg(long, value_parser = at_least_one)]
    pub tune_rank: Option<usize>,
    /// tune: Adam steps (default 200).
    #[arg(long)]
    pub tune_steps: Option<usize>,
    /// tune: fits averaged into the edit, seeds tune.seed, tune.seed + 1, …; the edit is the mean
    /// of their changes (default 1; each fit costs a whole fit).
    #[arg(long, value_parser = at_least_one)]
    pub tune_seeds: Option<usize>,
    /// tune: Adam learning rate (default 3e-3).
    #[arg(long, value_parser = non_negative)]
    pub tune_lr: Option<f64>,
    /// tune: how the learning rate moves over the steps: `constant` (default) or `cosine`
    /// (half a cosine from --tune-lr toward 0, so the last steps settle).
    #[arg(long)]
    pub tune_lr_schedule: Option<biaslens::edit::tune::LrSchedule>,
    /// tune: β, weight of the corpus prior (relative output energy of each change; default 1).
    #[arg(long, value_parser = non_negative)]
    pub tune_prior: Option<f64>,
    /// tune: α, weight of keeping the protected words' gaps (default 1).
    #[arg(long, value_parser = non_negative)]
    pub tune_protect: Option<f64>,
    /// tune: α for the protected prompts whose base gap leans he (default: α for every protected
    /// prompt).
    #[arg(long, value_parser = non_negative)]
    pub tune_protect_he: Option<f64>,
    /// tune: ζ, weight of keeping each fit prompt's more likely pronoun at its base
    /// log-probability, so the gap closes by raising the other one (default: no such term).
    #[arg(long, value_parser = non_negative)]
    pub tune_hold_preferred: Option<f64>,
    /// tune: η, weight of keeping each fit prompt's p(he) + p(she) at the base model's, so the
    /// gap closes by moving probability between the pronouns (default: no such term).
    #[arg(long, value_parser = non_negative)]
    pub tune_hold_mass: Option<f64>,
    /// tune: τ in nats; fit prompts whose base |log p(he) − log p(she)| is at least τ keep their
    /// gap, the rest are pulled to zero (default: every fit prompt to zero).
    #[arg(long, value_parser = non_negative)]
    pub tune_keep_above: Option<f64>,
    /// tune: γ, weight of keeping log p(he) − log p(she) at every position of 4,096 corpus
    /// tokens at the base model's (default: no such term).
    #[arg(long, value_parser = non_negative)]
    pub tune_corpus_gap: Option<f64>,
    /// tune: δ, weight of keeping the base model's 16 most likely next tokens at every position
    /// of the same corpus tokens in their relations to each other (centred logits; default: no
    /// such term, 10 in gemma-3-270m's default edit). Protects what text predicts, e.g. copying
    /// a name from the context.
    #[arg(long, value_parser = non_negative)]
    pub tune_corpus_topk: Option<f64>,
    /// tune: k of --tune-corpus-topk (default 16).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tune_corpus_topk_k: Option<u64>,
    /// tune: edit only these attention heads, LAYER.HEAD, comma-separated (e.g. the heads
    /// `biaslens mediate` locates: 25.2,26.2 on SmolLM2): the output projections of their
    /// layers, each change reading only their outputs. Without --layers the edited layers are
    /// the heads' own.
    #[arg(long, value_delimiter = ',', value_parser = layer_head)]
    pub tune_heads: Option<Vec<(usize, usize)>>,
    /// LSDM: `invert` (default) fits the edit through a norm after the MLP (Gemma-3); `ignore`
    /// treats it as absent (MEMIT as written).
    #[arg(long)]
    pub post_norm: Option<biaslens::edit::lsdm::PostNorm>,
    /// Context prefixes per edit prompt (keys and DAMA's PLS data; 1 to 3, default 3).
    #[arg(long, value_parser = prefix_count)]
    pub prefixes: Option<usize>,
    /// DAMA: null-space dimension (PLS components) per layer (default 16).
    #[arg(long, value_parser = at_least_one)]
    pub components: Option<usize>,
    #[command(flatten)]
    pub rng: SeedArg,
    #[command(flatten)]
    pub output: ModelOutArgs,
}

/// Apply a delta to the base model it was made for and write the edited model.
#[derive(clap::Args)]
pub struct ApplyArgs {
    /// Base model: registry alias, GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: String,
    /// delta.safetensors written by `biaslens edit`.
    #[arg(long)]
    pub delta: PathBuf,
    #[command(flatten)]
    pub output: ModelOutArgs,
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
    #[command(flatten)]
    pub output: ModelOutArgs,
}

/// `--prefixes`: how many of the context prefixes the edit uses.
fn prefix_count(s: &str) -> Result<usize, String> {
    let max = biaslens::edit::context::DEFAULT_PREFIXES.len();
    match at_least_one(s)? {
        n if n > max => Err(format!("must be at most {max}")),
        n => Ok(n),
    }
}

impl EditArgs {
    /// What clap's value parsers cannot see on their own.
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(l) = self.layers.as_deref().and_then(first_duplicate) {
            anyhow::bail!("--layers: layer {l} is named twice");
        }
        Ok(())
    }
}

pub fn run_edit(a: EditArgs) -> anyhow::Result<()> {
    let spec = edit_spec(&a)?;
    let model = Model::load(&a.model.model, &a.model.device()?)?;
    edit_loaded(&a, spec, &model, &mut |s| eprintln!("{s}"))?;
    Ok(())
}

/// A flag given on the command line replaces the spec's value.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *field = v;
    }
}

/// The edit spec the flags describe (`--spec`, then the flags over it), after checking the
/// flags, `--out` and the hyperparameters: everything that fails before a model is loaded.
pub fn edit_spec(a: &EditArgs) -> anyhow::Result<biaslens::edit::method::EditSpec> {
    use anyhow::Context;
    use biaslens::edit::method::EditSpec;
    a.validate()?;
    a.output.prepare(&a.model.model)?;
    a.model.device()?;
    let mut spec = match &a.spec {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<EditSpec>(&text)
                .with_context(|| format!("{}: not a valid edit spec", p.display()))?
        }
        None => match a.method {
            Some(m) => EditSpec::new(m, Vec::new()),
            None => biaslens::edit::model_default::default_spec(
                &biaslens::data::data_dir(),
                &a.model.model,
            )?,
        },
    };
    // A --spec file keeps its own method unless --method names another.
    set(&mut spec.method, a.method);
    spec.split.seed = a.rng.seed;
    spec.validation |= a.validation;
    if let Some(l) = &a.layers {
        spec.layers = l.clone();
    } else if let Some(p) = &a.sites {
        spec.layers = sites_default_layers(p)?;
    }
    if a.max_edit.is_some() {
        spec.max_edit_professions = a.max_edit;
    }
    if let Some(l) = a.lambda {
        match spec.method {
            biaslens::edit::method::Method::Probe => spec.probe.lambda = l,
            _ => spec.lsdm.lambda = l,
        }
    }
    set(&mut spec.probe.scale, a.scale);
    set(&mut spec.probe.components, a.probe_components);
    set(&mut spec.probe.passes, a.passes);
    set(&mut spec.probe.target, a.probe_target);
    spec.probe.protect_each_prompt |= a.protect_each_prompt;
    set(&mut spec.probe.protect_set, a.protect_set);
    set(&mut spec.tune.protect_set, a.protect_set);
    set(&mut spec.probe.word_source, a.word_source);
    set(&mut spec.tune.word_source, a.word_source);
    set(&mut spec.probe.fit_templates, a.fit_templates);
    set(&mut spec.tune.fit_templates, a.fit_templates);
    set(&mut spec.tune.rank, a.tune_rank);
    set(&mut spec.tune.steps, a.tune_steps);
    set(&mut spec.tune.seeds, a.tune_seeds);
    set(&mut spec.tune.lr_schedule, a.tune_lr_schedule);
    set(&mut spec.tune.lr, a.tune_lr);
    set(&mut spec.tune.prior, a.tune_prior);
    set(&mut spec.tune.protect_weight, a.tune_protect);
    set(&mut spec.tune.keep_above, a.tune_keep_above.map(Some));
    set(&mut spec.tune.corpus_gap, a.tune_corpus_gap.map(Some));
    set(&mut spec.tune.corpus_topk, a.tune_corpus_topk.map(Some));
    set(
        &mut spec.tune.corpus_topk_k,
        a.tune_corpus_topk_k.map(|k| k as usize),
    );
    set(
        &mut spec.tune.protect_weight_he,
        a.tune_protect_he.map(Some),
    );
    set(
        &mut spec.tune.hold_preferred,
        a.tune_hold_preferred.map(Some),
    );
    set(&mut spec.tune.hold_mass, a.tune_hold_mass.map(Some));
    set(&mut spec.tune.components, a.probe_components);
    set(&mut spec.tune.heads, a.tune_heads.clone());
    set(&mut spec.lsdm.post_norm, a.post_norm);
    set(&mut spec.lsdm.prefixes, a.prefixes);
    set(&mut spec.probe.prefixes, a.prefixes);
    set(&mut spec.tune.prefixes, a.prefixes);
    set(&mut spec.dama.components, a.components);
    method_flags_apply(a, spec.method)?;
    // Bad hyperparameters fail here, before the model loads and the bias is measured.
    spec.validate_params()?;
    // So do missing or malformed word lists (e.g. a --data folder without wordnet/words.json).
    spec.check_word_files()?;
    Ok(spec)
}

/// Refuse a method-specific flag that the edit's method would not read (e.g. `--tune-rank`
/// with the probe), naming the flag and the methods it applies to: before, such a flag was
/// ignored without a word.
fn method_flags_apply(a: &EditArgs, method: biaslens::edit::method::Method) -> anyhow::Result<()> {
    use biaslens::edit::method::Method::{Dama, Lsdm, Probe, Tune};
    let flags: [(&str, bool, &[biaslens::edit::method::Method]); 26] = [
        ("--lambda", a.lambda.is_some(), &[Lsdm, Probe]),
        ("--scale", a.scale.is_some(), &[Probe]),
        (
            "--probe-components",
            a.probe_components.is_some(),
            &[Probe, Tune],
        ),
        ("--passes", a.passes.is_some(), &[Probe]),
        ("--probe-target", a.probe_target.is_some(), &[Probe]),
        ("--protect-each-prompt", a.protect_each_prompt, &[Probe]),
        ("--protect-set", a.protect_set.is_some(), &[Probe, Tune]),
        ("--word-source", a.word_source.is_some(), &[Probe, Tune]),
        ("--fit-templates", a.fit_templates.is_some(), &[Probe, Tune]),
        ("--tune-rank", a.tune_rank.is_some(), &[Tune]),
        ("--tune-steps", a.tune_steps.is_some(), &[Tune]),
        ("--tune-seeds", a.tune_seeds.is_some(), &[Tune]),
        ("--tune-lr-schedule", a.tune_lr_schedule.is_some(), &[Tune]),
        ("--tune-lr", a.tune_lr.is_some(), &[Tune]),
        ("--tune-prior", a.tune_prior.is_some(), &[Tune]),
        ("--tune-protect", a.tune_protect.is_some(), &[Tune]),
        ("--tune-protect-he", a.tune_protect_he.is_some(), &[Tune]),
        (
            "--tune-hold-preferred",
            a.tune_hold_preferred.is_some(),
            &[Tune],
        ),
        ("--tune-hold-mass", a.tune_hold_mass.is_some(), &[Tune]),
        ("--tune-keep-above", a.tune_keep_above.is_some(), &[Tune]),
        ("--tune-corpus-gap", a.tune_corpus_gap.is_some(), &[Tune]),
        ("--tune-corpus-topk", a.tune_corpus_topk.is_some(), &[Tune]),
        (
            "--tune-corpus-topk-k",
            a.tune_corpus_topk_k.is_some(),
            &[Tune],
        ),
        ("--tune-heads", a.tune_heads.is_some(), &[Tune]),
        ("--post-norm", a.post_norm.is_some(), &[Lsdm]),
        ("--components", a.components.is_some(), &[Dama]),
    ];
    for (flag, given, methods) in flags {
        if given && !methods.contains(&method) {
            let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
            anyhow::bail!(
                "{flag} applies to --method {}, but this edit's method is {} (from --method, \
                 else --spec, else the model's default)",
                names.join(" or "),
                method.name()
            );
        }
    }
    Ok(())
}

/// Run the edit `spec` ([`edit_spec`] of `a`) on `model` (loaded from `a`'s `--model`), write
/// --out, print the before / after bias, and return the record written to `edit.json`. The
/// edit's stage lines go to `log` (stderr for the command).
pub fn edit_loaded(
    a: &EditArgs,
    mut spec: biaslens::edit::method::EditSpec,
    model: &Model,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<EditRecord> {
    use biaslens::edit::method::edit_model;
    require_tokenizer(model)?;
    if spec.layers.is_empty() {
        spec.layers = default_layers(&a.model.model, model, &spec)?;
    }
    log(&format!(
        "editing {} with {:?} on layers {:?}",
        model.info.name, spec.method, spec.layers
    ));
    let before = biaslens::edit::method::edit_prompt_bias(model, &spec)?;
    let outcome = edit_model(model, &spec, &mut *log)?;
    let weights_after = apply_delta(model, &outcome.delta)?;
    let edited = model.with_weights(weights_after.clone(), "+edit")?;
    let after = biaslens::edit::method::edit_prompt_bias(&edited, &spec)?;
    let mut record = EditRecord::new(outcome.delta.meta.method.as_str(), model);
    record.layers = spec.layers.clone();
    record.hyperparameters = serde_json::to_value(&spec)?;
    record.seed = spec.split.seed;
    record.data_hashes = outcome.data_hashes.clone();
    record.metrics_before = serde_json::to_value(&before)?;
    record.metrics_after = serde_json::to_value(&after)?;
    record.wall_times_s.insert("edit".into(), outcome.seconds);
    record.method_report = outcome.report.clone();
    write_edit_outputs(
        model,
        &weights_after,
        &outcome.delta,
        &record,
        &a.output.out,
        &a.output.export_options(),
    )?;
    outcome.release_checkpoint()?;
    println!(
        "edit prompts mean |p(he)-p(she)|: {:.4} -> {:.4} (n = {}); wrote {}",
        before.mean_abs_gap.value,
        after.mean_abs_gap.value,
        after.n_prompts,
        a.output.out.display()
    );
    print_unseen(model, &edited, &spec)?;
    Ok(record)
}

/// Held-out professions and the definitional controls on the five templates no edit is fitted
/// on, before and after: what the edit is for, printed when it finishes (the validation
/// professions and templates instead for a `--validation` edit).
fn print_unseen(
    base: &Model,
    edited: &Model,
    spec: &biaslens::edit::method::EditSpec,
) -> anyhow::Result<()> {
    use biaslens::data::TemplateSplit;
    use biaslens::measure::Subset;
    // A --validation edit is being tuned: show it the validation professions and templates
    // (Vig's and the other-shaped ones) only, never the held-out ones (docs/method.md §2b).
    let (first, template_sets) = if spec.validation {
        (
            Subset::Validation,
            &[TemplateSplit::Validation, TemplateSplit::VariedValidation][..],
        )
    } else {
        (Subset::HeldOut, &[TemplateSplit::Unseen][..])
    };
    for &templates in template_sets {
        let name = templates.name();
        println!("{name} templates (measure --template-split {name}):");
        print_subsets(base, edited, spec, first, templates)?;
    }
    Ok(())
}

/// Before and after on `first` and on the controls, at `templates`.
fn print_subsets(
    base: &Model,
    edited: &Model,
    spec: &biaslens::edit::method::EditSpec,
    first: biaslens::measure::Subset,
    templates: biaslens::data::TemplateSplit,
) -> anyhow::Result<()> {
    use biaslens::measure::{measure_occupations, MeasureOptions, Subset};
    for subset in [first, Subset::Controls] {
        let opts = MeasureOptions {
            subset,
            split: spec.split.clone(),
            template_split: templates,
            data_dir: spec.data_dir.clone(),
            ..Default::default()
        };
        let base_result = measure_occupations(base, &opts, |_| {})?;
        let edited_result = measure_occupations(edited, &opts, |_| {})?;
        let against = edited_result.against(&base_result)?;
        let (b, e) = (base_result.metrics, edited_result.metrics);
        let pct = |x: f64, y: f64| 100.0 * (y - x) / x.abs().max(1e-12);
        if subset == Subset::Controls {
            let toward = |m: &biaslens::measure::BiasMetrics| {
                m.gap_toward_definitional
                    .as_ref()
                    .map_or(f64::NAN, |e| e.value)
            };
            let (bt, et) = (toward(&b), toward(&e));
            let kept = against.definitional_kept.as_ref().map_or_else(
                || "n/a".to_string(),
                |k| {
                    format!(
                        "{:.0}% [{:.0}, {:.0}] over {} words",
                        100.0 * k.value,
                        100.0 * k.ci_low,
                        100.0 * k.ci_high,
                        k.n
                    )
                },
            );
            println!(
                "  controls  gap toward their gender {bt:.4} -> {et:.4} (kept {kept}), n = {}",
                e.n_prompts
            );
        } else {
            let a_s = |m: &biaslens::measure::BiasMetrics| {
                m.regression.as_ref().map_or(f64::NAN, |r| r.a_s.value)
            };
            let r = &against.abs_gap_ratio;
            let at_base_mass = against
                .abs_gap_ratio_at_base_mass
                .as_ref()
                .map_or_else(String::new, |m| {
                    format!("; {:+.0}% at base pronoun mass", 100.0 * (m.value - 1.0))
                });
            println!(
                "  {}  mean |p(he)-p(she)| {:.4} -> {:.4} ({:+.0}% [{:+.0}, {:+.0}] over {} \
                 professions{}), a_s {:.4} -> {:.4} ({:+.0}%), n = {}",
                subset,
                b.mean_abs_gap.value,
                e.mean_abs_gap.value,
                100.0 * (r.value - 1.0),
                100.0 * (r.ci_low - 1.0),
                100.0 * (r.ci_high - 1.0),
                r.n,
                at_base_mass,
                a_s(&b),
                a_s(&e),
                pct(a_s(&b), a_s(&e)),
                e.n_prompts
            );
        }
    }
    Ok(())
}

/// Layers to edit when neither --layers nor --sites is given: the method's own default
/// (`EditSpec::method_default_layers`: probe and tune), else the window located by the
/// 100-prompt trace shipped for registry models (data/located_sites).
fn default_layers(
    model_spec: &str,
    model: &Model,
    edit: &biaslens::edit::method::EditSpec,
) -> anyhow::Result<Vec<usize>> {
    if let Some(layers) = edit.method_default_layers(model.config().num_layers) {
        return Ok(layers);
    }
    let spec = model_spec;
    let shipped = edit
        .data_dir
        .join("located_sites")
        .join(format!("{spec}.json"));
    if shipped.is_file() {
        return sites_default_layers(&shipped);
    }
    anyhow::bail!(
        "no located sites for `{spec}`: pass --layers 1,2,3, or run `biaslens trace --model \
         {spec} --out DIR` and pass --sites DIR/sites.json (sites are shipped for the registry \
         models only)"
    )
}

pub fn run_apply(a: ApplyArgs) -> anyhow::Result<()> {
    a.output.prepare(&a.model)?;
    let delta = load_delta(&a.delta)?;
    let model = Model::load(&a.model, &Device::Cpu)?;
    let edited = apply_delta(&model, &delta)?;
    let mut record = EditRecord::new(&delta.meta.method, &model);
    record.hyperparameters = delta.meta.params.clone();
    record.layers = edited_layers(&delta);
    let opts = a.output.export_options();
    write_edit_outputs(&model, &edited, &delta, &record, &a.output.out, &opts)?;
    eprintln!(
        "wrote {} ({} tensors edited)",
        a.output.out.display(),
        delta.entries.len()
    );
    Ok(())
}

pub fn run_revert(a: RevertArgs) -> anyhow::Result<()> {
    a.output.prepare(&a.model)?;
    let delta = load_delta(&a.delta)?;
    let edited = Model::load(&a.model, &Device::Cpu)?;
    let rec_path = edited.info.path.join("edit.json");
    let record = if rec_path.is_file() {
        Some(EditRecord::load(&rec_path)?)
    } else {
        None
    };
    let base = revert_delta(&edited, &delta, record.as_ref())?;
    let opts = a.output.export_options();
    write_hf_dir(&edited, &base, &a.output.out, &opts)?;
    eprintln!(
        "wrote {} (base model {} restored)",
        a.output.out.display(),
        delta.meta.model_hash
    );
    Ok(())
}

/// Read a delta (checksum and finiteness verified); warn when it records no checksum.
fn load_delta(path: &std::path::Path) -> anyhow::Result<WeightDelta> {
    let delta = WeightDelta::load(path, &Device::Cpu)?;
    if delta.checksum.is_none() {
        eprintln!(
            "warning: {} records no checksum (written by an older biaslens): only its values' \
             finiteness was checked, not its integrity",
            path.display()
        );
    }
    Ok(delta)
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

/// The default edit layers recorded in a sites.json written by `biaslens trace`.
fn sites_default_layers(path: &std::path::Path) -> anyhow::Result<Vec<usize>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let sites: biaslens::trace::LocatedSites = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a sites.json", path.display()))?;
    Ok(sites.default_edit_layers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use biaslens::edit::method::{EditSpec, Method};
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        edit: EditArgs,
    }

    fn spec_of(args: &[&str]) -> EditSpec {
        let cmd = Cmd::try_parse_from(std::iter::once("edit").chain(args.iter().copied()))
            .expect("flags parse");
        edit_spec(&cmd.edit).expect("a valid spec")
    }

    /// `--spec` chooses the method unless `--method` is given; without either it is the model's
    /// default record, method and hyperparameters: the probe for SmolLM2 (and any model without
    /// a record), tune for Gemma-3.
    #[test]
    fn a_spec_files_method_holds_unless_method_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tune.toml");
        let mut written = EditSpec::new(Method::Tune, vec![3]);
        written.tune.rank = 2;
        std::fs::write(&file, toml::to_string(&written).unwrap()).unwrap();
        let out = dir.path().join("out");
        let (f, o) = (file.to_str().unwrap(), out.to_str().unwrap());
        let s = spec_of(&["--spec", f, "--out", o]);
        assert_eq!(
            (s.method, s.tune.rank, s.layers),
            (Method::Tune, 2, vec![3])
        );
        let s = spec_of(&["--spec", f, "--method", "lsdm", "--out", o]);
        assert_eq!(s.method, Method::Lsdm);
        assert_eq!(spec_of(&["--out", o]).method, Method::Tune);
        let gemma = ["--model", "gemma-3-270m", "--out", o];
        assert_eq!(spec_of(&gemma).method, Method::Tune);
        // The record's validated hyperparameters come with its method, and flags override them;
        // `--method` alone starts from the library defaults.
        let record =
            biaslens::edit::model_default::record(&biaslens::data::data_dir(), "gemma-3-270m")
                .unwrap()
                .unwrap();
        assert_eq!(spec_of(&gemma).tune, record.tune);
        let smol =
            biaslens::edit::model_default::record(&biaslens::data::data_dir(), "smollm2-135m")
                .unwrap()
                .unwrap();
        assert_eq!(spec_of(&["--out", o]).tune, smol.tune);
        let s = spec_of(&[
            "--model",
            "gemma-3-270m",
            "--tune-corpus-topk",
            "7",
            "--out",
            o,
        ]);
        assert_eq!(s.tune.corpus_topk, Some(7.0));
        let s = spec_of(&["--model", "gemma-3-270m", "--method", "tune", "--out", o]);
        assert_eq!(s.tune, biaslens::edit::tune::TuneParams::default());
        let s = spec_of(&["--model", "gemma-3-270m", "--method", "probe", "--out", o]);
        assert_eq!(s.method, Method::Probe);
        let s = spec_of(&["--model", "gemma-3-270m", "--tune-rank", "2", "--out", o]);
        assert_eq!((s.method, s.tune.rank), (Method::Tune, 2));
        let e = error_of(&["--model", "gemma-3-270m", "--scale", "0.5", "--out", o]);
        assert!(e.contains("this edit's method is tune"), "{e}");
    }

    fn error_of(args: &[&str]) -> String {
        let cmd = Cmd::try_parse_from(std::iter::once("edit").chain(args.iter().copied()))
            .expect("flags parse");
        match edit_spec(&cmd.edit) {
            Ok(_) => panic!("{args:?}: accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// A method-specific flag with a method that does not read it is refused before any work,
    /// naming the flag and its methods; with its own method (given, from --spec, or the model's
    /// default) it is taken.
    #[test]
    fn a_flag_of_another_method_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let o = out.to_str().unwrap();
        // SmolLM2's default is tune: a probe-only flag names the default's method.
        let e = error_of(&["--scale", "0.5", "--out", o]);
        assert!(
            e.contains("--scale") && e.contains("this edit's method is tune"),
            "{e}"
        );
        let e = error_of(&["--method", "probe", "--tune-heads", "3.1", "--out", o]);
        assert!(
            e.contains("--tune-heads") && e.contains("tune") && e.contains("probe"),
            "{e}"
        );
        let e = error_of(&["--method", "ft", "--lambda", "5", "--out", o]);
        assert!(
            e.contains("--lambda applies to --method lsdm or probe"),
            "{e}"
        );
        let e = error_of(&["--method", "lsdm", "--components", "8", "--out", o]);
        assert!(e.contains("--components applies to --method dama"), "{e}");
        assert_eq!(
            spec_of(&["--method", "probe", "--scale", "0.5", "--out", o])
                .probe
                .scale,
            0.5
        );
        assert_eq!(spec_of(&["--tune-steps", "7", "--out", o]).tune.steps, 7);
        let s = spec_of(&["--method", "tune", "--tune-rank", "2", "--out", o]);
        assert_eq!(s.tune.rank, 2);
        let file = dir.path().join("dama.toml");
        let written = EditSpec::new(Method::Dama, vec![3]);
        std::fs::write(&file, toml::to_string(&written).unwrap()).unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(
            spec_of(&["--spec", f, "--components", "4", "--out", o])
                .dama
                .components,
            4
        );
        let e = error_of(&["--spec", f, "--tune-rank", "2", "--out", o]);
        assert!(e.contains("this edit's method is dama"), "{e}");
    }
}
