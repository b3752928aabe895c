//! `biaslens trace` and `biaslens mediate`: resumable, shardable sweeps over occupation prompts.

use super::common::{
    at_least_one, first_duplicate, parse_device, positive, progress, require_tokenizer,
};
use anyhow::Context;
use biaslens::data::{occupation_prompts, vig_templates, OccupationPrompt, Profession};
use biaslens::model::Model;
use biaslens::rundir::{RunDir, Shard};
use biaslens::trace::mediation::{mediate, MediationCase};
use biaslens::trace::prompts::{pronoun_ids, select_prompts, subject_span, trace_case};
use biaslens::trace::run::{finalize, MediationRecord, TraceRecord};
use biaslens::trace::{
    embedding_std, sample_noise, stereotype_sign, trace_fast, trace_naive, Kind, NoiseLevel,
    TraceSettings,
};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Common {
    /// Registry alias, GGUF file or HF directory (with a tokenizer).
    #[arg(long)]
    pub model: String,
    /// Number of occupation prompts (a seeded shuffle of professions × 17 templates).
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub prompts: usize,
    /// Run directory (resumed when it exists with the same settings).
    #[arg(long)]
    pub out: PathBuf,
    /// This process's part, `i/n` (default: SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX).
    #[arg(long)]
    pub shard: Option<String>,
    /// Seed of the prompt selection and of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// professions.json ([name, definitional, stereotypical] triples); default:
    /// bolukbasi_debiaswe/professions.json in $BIASLENS_DATA, else in the crate's fixtures/data.
    #[arg(long)]
    pub professions: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub samples: usize,
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub window: usize,
    /// Comma-separated kinds: hidden, mlp, attn.
    #[arg(long, default_value = "hidden,mlp,attn")]
    pub kinds: String,
    /// Noise std as a multiple of the embedding output's std (ignored with --noise-std).
    #[arg(long, default_value_t = 3.0, value_parser = positive)]
    pub noise_times: f64,
    /// A fixed noise std.
    #[arg(long, value_parser = positive)]
    pub noise_std: Option<f64>,
    /// Rows per batched pass of the fast path.
    #[arg(long, default_value_t = biaslens::trace::fast::DEFAULT_BATCH_ROWS, value_parser = at_least_one)]
    pub batch_rows: usize,
    /// Instead of a run: time the fast and the naive path on this many prompts, print the speedup.
    #[arg(long, value_parser = at_least_one)]
    pub bench_naive: Option<usize>,
}

#[derive(clap::Args)]
pub struct MediateArgs {
    #[command(flatten)]
    pub common: Common,
}

fn shard(spec: &Option<String>) -> anyhow::Result<Shard> {
    Ok(match spec {
        Some(s) => Shard::parse(s)?,
        None => Shard::from_env()?.unwrap_or(Shard::WHOLE),
    })
}

fn load(c: &Common) -> anyhow::Result<(Model, Vec<OccupationPrompt>)> {
    let device = parse_device(&c.device)?;
    let model = Model::load(&c.model, &device).with_context(|| format!("--model {}", c.model))?;
    require_tokenizer(&model)?;
    let path = c
        .professions
        .clone()
        .unwrap_or_else(|| biaslens::data::data_dir().join("bolukbasi_debiaswe/professions.json"));
    let profs = Profession::load(&path)?;
    Ok((model, occupation_prompts(&profs, &vig_templates())))
}

/// Process the owned, unfinished items; finalise when this process ran the whole set.
fn sweep<T: serde::Serialize>(
    out: &std::path::Path,
    settings: serde_json::Value,
    n: usize,
    sh: Shard,
    what: &str,
    mut f: impl FnMut(usize) -> anyhow::Result<T>,
) -> anyhow::Result<()> {
    let mut run = RunDir::open(out, &settings)?;
    let todo: Vec<usize> = (0..n).filter(|&i| sh.owns(i) && !run.is_done(i)).collect();
    let pb = progress(todo.len() as u64, what);
    let start = Instant::now();
    for &i in &todo {
        let rec = f(i)?;
        run.append(i, &rec)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!(
        "{what}: {} items in {:.1} s ({} already done)",
        todo.len(),
        start.elapsed().as_secs_f64(),
        run.done_count() - todo.len()
    );
    if sh.is_whole() && run.done_count() == n {
        run.normalise()?;
        drop(run);
        finalize(out)?;
        eprintln!("{what}: wrote summary.json and plots to {}", out.display());
    }
    Ok(())
}

pub fn run_trace(a: TraceArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let sh = shard(&c.shard)?;
    // Every setting is checked before the model is loaded and anything is written.
    let kinds = a
        .kinds
        .split(',')
        .map(|k| Kind::parse(k.trim()))
        .collect::<biaslens::Result<Vec<_>>>()
        .with_context(|| format!("--kinds {}", a.kinds))?;
    if let Some(k) = first_duplicate(&kinds) {
        anyhow::bail!("--kinds {}: `{}` is named twice", a.kinds, k.name());
    }
    let noise = match a.noise_std {
        Some(s) => NoiseLevel::Fixed(s),
        None => NoiseLevel::EmbedStdTimes(a.noise_times),
    };
    let settings = TraceSettings {
        samples: a.samples,
        window: a.window,
        kinds,
        noise,
        seed: c.seed,
    };
    settings.validate()?;
    let (model, all) = load(c)?;
    let tok = model.tokenizer()?;
    let pronouns = pronoun_ids(tok)?;
    let std = match noise {
        NoiseLevel::Fixed(s) => s,
        NoiseLevel::EmbedStdTimes(k) => {
            let ids = all
                .iter()
                .map(|p| tok.encode(&p.text))
                .collect::<biaslens::Result<Vec<_>>>()?;
            k * embedding_std(&model.transformer, &ids)?
        }
    };
    let mut items = Vec::new();
    for p in select_prompts(&all, c.prompts, c.seed) {
        match trace_case(tok, &p, pronouns) {
            Ok(case) => items.push((p, case)),
            Err(e) => eprintln!("skipping {:?}: {e}", p.text),
        }
    }
    let d = model.config().hidden_size;
    let noise_for = |i: usize, case: &biaslens::trace::TraceCase| {
        sample_noise(
            c.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            settings.samples,
            case.subject.1 - case.subject.0,
            d,
            std,
            &model.transformer.device,
        )
    };
    if let Some(k) = a.bench_naive {
        return bench(&model, &items[..k.min(items.len())], &settings, &noise_for);
    }
    let s = json!({
        "command": "trace", "model": model.info.name, "model_sha256": model.info.sha256,
        "prompts": c.prompts, "items": items.len(), "seed": c.seed, "trace": settings, "noise_std": std,
    });
    let n = items.len();
    sweep(&c.out, s, n, sh, "trace", |i| {
        let (p, case) = &items[i];
        let noise = noise_for(i, case)?;
        let result = biaslens::trace::fast::trace_fast_batched(
            &model.transformer,
            case,
            &noise,
            &settings,
            a.batch_rows,
        )?;
        Ok(TraceRecord {
            profession: p.profession.clone(),
            template_index: p.template_index,
            text: p.text.clone(),
            ids: case.ids.clone(),
            subject: case.subject,
            sign: stereotype_sign(p.stereotypical),
            result,
        })
    })
}

type NoiseFor<'a> =
    dyn Fn(usize, &biaslens::trace::TraceCase) -> biaslens::Result<candle_core::Tensor> + 'a;

/// Fast vs naive on the same prompts and noise, in one process.
fn bench(
    model: &Model,
    items: &[(OccupationPrompt, biaslens::trace::TraceCase)],
    settings: &TraceSettings,
    noise_for: &NoiseFor,
) -> anyhow::Result<()> {
    let (mut tf, mut tn, mut worst) = (0f64, 0f64, 0f64);
    for (i, (p, case)) in items.iter().enumerate() {
        let noise = noise_for(i, case)?;
        let t0 = Instant::now();
        let f = trace_fast(&model.transformer, case, &noise, settings)?;
        let t1 = Instant::now();
        let n = trace_naive(&model.transformer, case, &noise, settings)?;
        let t2 = Instant::now();
        tf += (t1 - t0).as_secs_f64();
        tn += (t2 - t1).as_secs_f64();
        for (gf, gn) in f.grids.iter().zip(&n.grids) {
            for (a, b) in gf.probs.iter().flatten().zip(gn.probs.iter().flatten()) {
                worst = (0..3).map(|k| (a[k] - b[k]).abs()).fold(worst, f64::max);
            }
        }
        eprintln!(
            "{:?} ({} tokens): fast {:.2} s, naive {:.2} s",
            p.text,
            case.ids.len(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    println!("{{\"prompts\": {}, \"fast_s\": {tf:.3}, \"naive_s\": {tn:.3}, \"speedup\": {:.2}, \"max_abs_diff\": {worst:.2e}}}", items.len(), tn / tf);
    Ok(())
}

pub fn run_mediate(a: MediateArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let sh = shard(&c.shard)?;
    let (model, all) = load(c)?;
    let tok = model.tokenizer()?;
    let pronouns = pronoun_ids(tok)?;
    let mut items = Vec::new();
    let mut differ = std::collections::BTreeSet::new();
    for p in select_prompts(&all, c.prompts, c.seed) {
        let male = p.stereotypical >= 0.0;
        let noun = if male { "woman" } else { "man" };
        let (base, _) = subject_span(tok, &p.template, &p.name)?;
        let swapped_text = p.template.replacen("{}", noun, 1);
        let swapped = tok.encode(&swapped_text)?;
        if swapped.len() != base.len() {
            differ.insert(p.profession.clone());
            continue;
        }
        items.push((
            p,
            swapped_text,
            MediationCase {
                base,
                swapped,
                pronouns,
                male_stereotype: male,
            },
        ));
    }
    let s = json!({
        "command": "mediate", "model": model.info.name, "model_sha256": model.info.sha256,
        "prompts": c.prompts, "items": items.len(), "seed": c.seed,
        "intervention": "occupation replaced by the anti-stereotypical noun (man / woman)",
        "professions_tokenised_differently": differ,
    });
    if !differ.is_empty() {
        eprintln!("mediate: {} professions tokenise to a different length than man/woman and are left out: {:?}", differ.len(), differ);
    }
    let n = items.len();
    sweep(&c.out, s, n, sh, "mediate", |i| {
        let (p, swapped_text, case) = &items[i];
        let result = mediate(&model.transformer, case)?;
        Ok(MediationRecord {
            profession: p.profession.clone(),
            template_index: p.template_index,
            text: p.text.clone(),
            swapped_text: swapped_text.clone(),
            result,
        })
    })
}
