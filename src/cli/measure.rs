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
    // --json: every prompt's probabilities and the metrics.
    #[command(flatten)]
    pub output: JsonOutArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let inputs: Vec<&std::path::Path> = a.templates.iter().map(PathBuf::as_path).collect();
    a.output.check(&inputs)?;
    let device = a.model.device()?;
    let job = job(&a)?;
    let model = Model::load(&a.model.model, &device)?;
    require_tokenizer(&model)?;
    let n = job.prompts()?.0.len();
    let pb = progress(n as u64, "prompts");
    let result = job.run(&model, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
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
