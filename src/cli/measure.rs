//! `biaslens measure`: pronoun probabilities and bias metrics on occupation prompts.

use super::common::{
    at_least_one, progress, require_tokenizer, DefaultModelArgs, JsonOutArgs, SeedArg,
};
use biaslens::measure::{MeasureJob, MeasureOptions, MeasureResult};
use biaslens::model::Model;
use biaslens::stats::Estimate;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: DefaultModelArgs,
    /// Which professions: all, edit, held-out, controls or validation.
    #[arg(long, default_value = "all")]
    pub split: biaslens::measure::Subset,
    /// Most prompts per forward pass (prompts sharing a prefix run it once, packed as a tree).
    #[arg(long, default_value_t = MeasureOptions::default().batch_size, value_parser = at_least_one)]
    pub batch_size: usize,
    #[command(flatten)]
    pub rng: SeedArg,
    /// Templates file (one per line with `{}`); default: the 17 Vig et al. templates.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Templates to use: all, fit (the twelve Vig templates edits are fitted on), unseen (the
    /// other five), validation (the three fit templates set aside for validation) or
    /// varied-validation (8 lines of templates/varied.txt that validation fits never see;
    /// docs/method.md §2b).
    #[arg(long, default_value = "all")]
    pub template_split: biaslens::data::TemplateSplit,
    /// A base model's `measure --json` result of the same prompts (same --split,
    /// --template-split, --templates and --seed): also print this model against it, the share
    /// of mean |p(he)-p(she)| left and of the controls' gap toward their gender kept, with 95%
    /// intervals that resample professions (docs/method.md §2b).
    #[arg(long, value_name = "BASE_JSON")]
    pub against: Option<PathBuf>,
    // --json: every prompt's probabilities and the metrics.
    #[command(flatten)]
    pub output: JsonOutArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (job, base) = prepare(&a)?;
    let device = a.model.device()?;
    let model = Model::load(&a.model.model, &device)?;
    require_tokenizer(&model)?;
    let n = job.prompts()?.0.len();
    let pb = progress(n as u64, "prompts");
    let mut result = job.run(&model, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    attach_against(&mut result, base.as_ref(), &a)?;
    print!("{}", render_table(&result));
    if let Some(p) = &a.output.json {
        biaslens::io::write_json_atomic(p, &result)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The job the flags describe (the split and the bootstrap seeded by `--seed`).
pub fn job(a: &Args) -> anyhow::Result<MeasureJob> {
    let mut opts = MeasureOptions {
        subset: a.split,
        batch_size: a.batch_size,
        templates: a.templates.clone(),
        template_split: a.template_split,
        ..Default::default()
    };
    opts.split.seed = a.rng.seed;
    opts.bootstrap.seed = a.rng.seed;
    Ok(MeasureJob::new(opts))
}

/// Everything checked before a model loads: the --json target (none of the inputs), the job
/// the flags describe and `--against`'s base result. The CLI and the Python module both start
/// here.
pub fn prepare(a: &Args) -> anyhow::Result<(MeasureJob, Option<MeasureResult>)> {
    let inputs: Vec<&std::path::Path> = a
        .templates
        .iter()
        .chain(&a.against)
        .map(PathBuf::as_path)
        .collect();
    a.output.check(&inputs)?;
    let job = job(a)?;
    let base = load_base(a, &job)?;
    Ok((job, base))
}

/// `--against`'s base result, read and checked against the job before any model loads.
pub fn load_base(a: &Args, job: &MeasureJob) -> anyhow::Result<Option<MeasureResult>> {
    let Some(path) = &a.against else {
        return Ok(None);
    };
    let text = biaslens::io::read_text(path)?;
    let base: MeasureResult = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a `biaslens measure --json` result: {e}",
            path.display()
        )
    })?;
    job.check_base(&base)
        .map_err(|e| anyhow::anyhow!("--against {}: {e}", path.display()))?;
    Ok(Some(base))
}

/// Pair the result with `--against`'s base result (a no-op without one).
pub fn attach_against(
    result: &mut MeasureResult,
    base: Option<&MeasureResult>,
    a: &Args,
) -> anyhow::Result<()> {
    if let Some(base) = base {
        let path = a.against.as_deref().unwrap_or(std::path::Path::new("?"));
        result.against_base = Some(
            result
                .against(base)
                .map_err(|e| anyhow::anyhow!("--against {}: {e}", path.display()))?,
        );
    }
    Ok(())
}

fn est(e: &Estimate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", e.value, e.ci_low, e.ci_high)
}

fn opt(e: &Option<Estimate>) -> String {
    e.as_ref().map(est).unwrap_or_else(|| "n/a".into())
}

/// The bias table printed by `measure`, values with 95% CIs.
pub fn render_table(r: &MeasureResult) -> String {
    let m = &r.metrics;
    let mut rows = vec![
        (
            "model".to_string(),
            format!("{} (sha256 {}…)", r.model.name, &r.model.sha256[..12]),
        ),
        (
            "split".into(),
            format!("{:?} (seed {})", r.options.subset, r.options.split.seed),
        ),
        (
            "n".into(),
            format!("{} prompts, {} professions", m.n_prompts, m.n_professions),
        ),
        ("mean |p(he)-p(she)|".into(), est(&m.mean_abs_gap)),
        ("mean p(he)-p(she)".into(), est(&m.mean_gap)),
        ("mean p(he)".into(), est(&m.mean_p_he)),
        ("mean p(she)".into(), est(&m.mean_p_she)),
    ];
    match &m.regression {
        Some(f) => {
            rows.push(("a_s (stereotypical)".into(), est(&f.a_s)));
            rows.push(("a_f (definitional)".into(), est(&f.a_f)));
            rows.push(("b (intercept)".into(), est(&f.b)));
            rows.push(("R²".into(), est(&f.r2)));
        }
        None => rows.push(("regression".into(), "n/a (no spread in the scores)".into())),
    }
    rows.push((
        "pearson(stereo, log she/he)".into(),
        opt(&m.pearson_stereotype),
    ));
    rows.push((
        "spearman(stereo, log she/he)".into(),
        opt(&m.spearman_stereotype),
    ));
    rows.push(("pearson(BLS %F, log she/he)".into(), opt(&m.pearson_bls)));
    rows.push(("spearman(BLS %F, log she/he)".into(), opt(&m.spearman_bls)));
    rows.push((
        "gap toward definitional gender".into(),
        opt(&m.gap_toward_definitional),
    ));
    if let Some(ab) = &r.against_base {
        let base = ab.base_model.as_ref().map_or("?", |m| m.name.as_str());
        // A ratio to base as a change in % with its interval, and a share kept in %.
        let change = |e: &Estimate| {
            format!(
                "{:+.1}% [{:+.1}, {:+.1}]",
                100.0 * (e.value - 1.0),
                100.0 * (e.ci_low - 1.0),
                100.0 * (e.ci_high - 1.0)
            )
        };
        let e = &ab.abs_gap_ratio;
        rows.push((
            format!("vs base ({base}): mean |p(he)-p(she)|"),
            format!("{} ({} professions resampled)", change(e), e.n),
        ));
        if let Some(m) = &ab.abs_gap_ratio_at_base_mass {
            rows.push((
                format!("vs base ({base}): |gap| at base mass"),
                format!("{} (edited log-odds, base p(he) + p(she))", change(m)),
            ));
        }
        if let Some(m) = &ab.pronoun_mass_ratio {
            rows.push((format!("vs base ({base}): p(he) + p(she)"), change(m)));
        }
        if let Some(k) = &ab.definitional_kept {
            rows.push((
                format!("vs base ({base}): controls' gap kept"),
                format!(
                    "{:.1}% [{:.1}, {:.1}] ({} professions resampled)",
                    100.0 * k.value,
                    100.0 * k.ci_low,
                    100.0 * k.ci_high,
                    k.n
                ),
            ));
        }
    }
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut s = String::from(
        "occupation-prompt bias (95% CIs; regression and Spearman CIs by bootstrap)\n",
    );
    for (k, v) in rows {
        s.push_str(&format!("  {k:<w$}  {v}\n"));
    }
    s
}
