//! The gap probe end to end on SmolLM2 (one layer, attention then MLP, a few professions): the
//! delta holds exactly the two projections, each change is rank one, and the attention stage
//! leaves every protected word's mean head output (read by a plain forward, the slow reference)
//! unchanged: ΔW_o z̄ = 0 up to f32 rounding. Gap tuning likewise: the same two projections, rank
//! <= r, and both changes zero on the protected words' mean inputs; with `tune.heads`, only the
//! heads' columns of the output projection change.
//!
//! Needs models/smollm2-135m (fetched by tests/common).

mod common;

use biaslens::edit::context::DEFAULT_PREFIXES;
use biaslens::edit::method::{edit_model, EditSpec, Method};
use biaslens::edit::probe::{last_token_prompts, protected_words, Components};
use biaslens::model::Model;
use biaslens::model::{InterventionPlan, Site};
use candle_core::DType;
use nalgebra::DMatrix;

fn matrix(t: &candle_core::Tensor) -> DMatrix<f64> {
    let v = t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    DMatrix::from_fn(v.len(), v[0].len(), |i, j| v[i][j])
}

#[test]
fn probe_edits_two_projections_rank_one_and_keeps_protected_head_outputs() {
    let model = common::real_model("smollm2-135m");
    let l = 28;
    let mut spec = EditSpec::new(Method::Probe, vec![l]);
    spec.max_edit_professions = Some(6);
    spec.probe.components = Components::Both;
    // C needs more corpus tokens than the widest key (d_ff 1,536) to be positive definite.
    spec.probe.corpus_tokens = 4096;
    spec.cache_dir = None;
    let out = edit_model(&model, &spec, |_| {}).unwrap();

    let o = format!("model.layers.{l}.self_attn.o_proj.weight");
    let down = format!("model.layers.{l}.mlp.down_proj.weight");
    let mut names: Vec<&String> = out.delta.entries.keys().collect();
    names.sort();
    assert_eq!(
        names,
        vec![&down, &o],
        "the delta names exactly the edited projections"
    );
    for name in [&o, &down] {
        let dw = matrix(&out.delta.entries[name].delta);
        let sv = dw.singular_values();
        let top = sv.max();
        assert!(top > 0.0, "{name}: no change");
        let second = sv.iter().cloned().filter(|&s| s < top).fold(0.0, f64::max);
        assert!(second < 1e-5 * top, "{name}: rank > 1 ({second} vs {top})");
    }

    // The slow reference: the protected words' head outputs at the last token of the base model,
    // averaged per word as the probe does, and the attention change applied to them.
    let dw_o = matrix(&out.delta.entries[&o].delta);
    let typical = dw_o.norm() / (dw_o.ncols() as f64).sqrt();
    for (word, mean) in protected_means(&model, &spec, &out.sets.edit_templates, Site::HeadZ(l), 1)
    {
        let change = &dw_o * mean.transpose();
        let scale = typical * mean.norm();
        assert!(
            change.norm() < 1e-3 * scale,
            "{word}: attention change {} on its mean head output (scale {scale})",
            change.norm()
        );
    }
}

/// Each protected word's mean activation at `site` at the last token of its prompts, from plain
/// single-prompt forwards of the base model (the slow reference for the edits' protection).
/// Every `every`-th word only (each over all its prompts), to bound the test's forwards.
fn protected_means(
    model: &Model,
    spec: &EditSpec,
    edit_templates: &[usize],
    site: Site,
    every: usize,
) -> Vec<(String, DMatrix<f64>)> {
    let tok = model.tokenizer().unwrap();
    let professions: Vec<String> = biaslens::data::Profession::load(
        &spec.data_dir.join("bolukbasi_debiaswe/professions.json"),
    )
    .unwrap()
    .into_iter()
    .map(|p| p.raw)
    .collect();
    let words = protected_words(&spec.data_dir, &professions).unwrap();
    let all = biaslens::data::vig_templates();
    let templates: Vec<_> = edit_templates.iter().map(|&i| all[i].clone()).collect();
    let prompts: Vec<_> = last_token_prompts(tok, &words, &templates, &DEFAULT_PREFIXES[..1])
        .unwrap()
        .into_iter()
        .filter(|p| p.group % every == 0)
        .collect();
    let layer = match site {
        Site::HeadZ(l) | Site::MlpKey(l) => l,
        other => panic!("no layer for {other}"),
    };
    // Only the layers up to the captured one run.
    let plan = InterventionPlan {
        stop_after: Some(layer),
        ..Default::default()
    }
    .with_capture([site]);
    let mut sums: Vec<Option<DMatrix<f64>>> = vec![None; words.len()];
    let mut counts = vec![0usize; words.len()];
    for p in &prompts {
        let z = model
            .transformer
            .forward(std::slice::from_ref(&p.ids), &plan)
            .unwrap()
            .captures[&site]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec3::<f64>()
            .unwrap();
        let last = &z[0][p.ids.len() - 1];
        let row = DMatrix::from_row_slice(1, last.len(), last);
        sums[p.group] = Some(match sums[p.group].take() {
            Some(s) => s + row,
            None => row,
        });
        counts[p.group] += 1;
    }
    words
        .into_iter()
        .zip(sums)
        .zip(counts)
        .filter_map(|((w, s), c)| Some((w, s? / c as f64)))
        .collect()
}

/// A gap-tuning spec small enough for a test: layer `l`, `professions` edit professions, `steps`
/// Adam steps of rank 2, no cache. The prior needs no inverse, so a short corpus sample will
/// do; the 37 pair words are protected (protected_means reads them), since the default adds 143
/// more, which would cost thousands of single-prompt forwards.
fn small_tune_spec(l: usize, professions: usize, steps: usize) -> EditSpec {
    let mut spec = EditSpec::new(Method::Tune, vec![l]);
    spec.max_edit_professions = Some(professions);
    spec.tune.rank = 2;
    spec.tune.steps = steps;
    spec.tune.lr = 3e-3;
    spec.tune.batch = 16;
    spec.tune.corpus_tokens = 512;
    spec.tune.protect_set = biaslens::edit::probe::ProtectSet::Pairs;
    spec.cache_dir = None;
    spec
}

/// Gap tuning end to end on SmolLM2 (one layer, a few Adam steps): the delta names exactly the
/// attention output and MLP down-projections, each change has rank <= r, and both leave every
/// protected word's mean input on the base model (plain forwards) unchanged: ΔW p̄ = 0.
#[test]
fn tune_edits_two_projections_low_rank_and_keeps_protected_inputs() {
    let model = common::real_model("smollm2-135m");
    // A low layer: the readers and the reference forwards stop there, so the test stays cheap.
    let l = 10;
    let spec = small_tune_spec(l, 6, 4);
    let out = edit_model(&model, &spec, |_| {}).unwrap();
    let o = format!("model.layers.{l}.self_attn.o_proj.weight");
    let down = format!("model.layers.{l}.mlp.down_proj.weight");
    let mut names: Vec<&String> = out.delta.entries.keys().collect();
    names.sort();
    assert_eq!(names, vec![&down, &o]);
    for (name, site) in [(&o, Site::HeadZ(l)), (&down, Site::MlpKey(l))] {
        let dw = matrix(&out.delta.entries[name].delta);
        let sv = dw.singular_values();
        let top = sv.max();
        assert!(top > 0.0, "{name}: no change");
        let third = {
            let mut v: Vec<f64> = sv.iter().cloned().collect();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap());
            v[2]
        };
        assert!(third < 1e-5 * top, "{name}: rank > 2 ({third} vs {top})");
        let typical = dw.norm() / (dw.ncols() as f64).sqrt();
        for (word, mean) in protected_means(&model, &spec, &out.sets.edit_templates, site, 3) {
            let change = &dw * mean.transpose();
            let scale = typical * mean.norm();
            assert!(
                change.norm() < 1e-3 * scale,
                "{name}: change {} on {word}'s mean input (scale {scale})",
                change.norm()
            );
        }
    }
    let report = &out.report;
    assert_eq!(
        report["history"].as_array().unwrap().len(),
        2,
        "steps 0 and 3 logged"
    );
}

/// Gap tuning's gap-size targets (`tune.keep_above`, findings §6f's hard threshold): with τ = 0
/// every fit prompt's target is its own base gap, so the loss and every gradient are zero at the
/// start and the edit is exactly zero; with τ above every gap the targets are all zero and the
/// edit is bit for bit the default's.
#[test]
fn tune_keep_above_zero_changes_nothing_and_above_every_gap_is_the_default() {
    let model = common::real_model("smollm2-135m");
    let l = 10;
    // One Adam step moves B off zero wherever a gradient is not zero.
    let spec = small_tune_spec(l, 4, 1);
    let run = |keep_above: Option<f64>| {
        let mut s = spec.clone();
        s.tune.keep_above = keep_above;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let kept_all = run(Some(0.0));
    assert_eq!(
        kept_all.report["n_fit_kept"], kept_all.report["n_fit_prompts"],
        "τ = 0 keeps every fit prompt's gap"
    );
    for (name, e) in &kept_all.delta.entries {
        let max = matrix(&e.delta).amax();
        assert_eq!(max, 0.0, "{name}: τ = 0 changed the weights by up to {max}");
    }
    let (default, above) = (run(None), run(Some(1e9)));
    assert_eq!(above.report["n_fit_kept"], 0);
    assert_same_nonzero_delta(&default, &above, "τ above every gap");
}

/// `other`'s delta is bit for bit `default`'s, which changes every projection it names.
fn assert_same_nonzero_delta(
    default: &biaslens::edit::method::EditOutcome,
    other: &biaslens::edit::method::EditOutcome,
    what: &str,
) {
    assert!(!default.delta.entries.is_empty());
    let mut names: Vec<&String> = other.delta.entries.keys().collect();
    names.sort();
    let mut want: Vec<&String> = default.delta.entries.keys().collect();
    want.sort();
    assert_eq!(names, want, "{what}: other projections than the default's");
    for (name, e) in &default.delta.entries {
        let (a, b) = (matrix(&e.delta), matrix(&other.delta.entries[name].delta));
        assert!(a.amax() > 0.0, "{name}: the default changed nothing");
        assert_eq!(a, b, "{name}: {what} differs from the default");
    }
}

/// Gap tuning averaged over seeds (`tune.seeds`): with k = 2 the delta is the mean of the two
/// separate fits' changes (seeds s and s + 1, which differ), it still maps every protected
/// word's mean input to zero, and the report keeps each seed's last losses, which are the
/// separate fits' own.
#[test]
fn tune_seeds_average_is_the_mean_of_the_separate_fits() {
    let model = common::real_model("smollm2-135m");
    let l = 10;
    let spec = small_tune_spec(l, 4, 2);
    let run = |seed: u64, seeds: usize| {
        let mut s = spec.clone();
        s.tune.seed = seed;
        s.tune.seeds = seeds;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let (first, second, mean) = (run(3, 1), run(4, 1), run(3, 2));
    let mut names: Vec<&String> = mean.delta.entries.keys().collect();
    names.sort();
    let mut want_names: Vec<&String> = first.delta.entries.keys().collect();
    want_names.sort();
    assert_eq!(names, want_names);
    for (name, e) in &mean.delta.entries {
        let a = matrix(&first.delta.entries[name].delta);
        let b = matrix(&second.delta.entries[name].delta);
        let m = matrix(&e.delta);
        assert!(
            (&a - &b).amax() > 1e-2 * a.amax(),
            "{name}: seeds 3 and 4 gave the same change"
        );
        let want = (&a + &b) / 2.0;
        let err = (&m - &want).amax();
        assert!(
            err <= 1e-6 * want.amax(),
            "{name}: the averaged edit is {err} from the separate fits' mean (max {})",
            want.amax()
        );
    }
    // |ΔW p| of the mean is at most the larger of the two (linearity), up to rounding.
    let max_abs = |o: &biaslens::edit::method::EditOutcome, i: usize| {
        o.report["protected_max_abs"][i].as_f64().unwrap()
    };
    for i in 0..names.len() {
        let bound = max_abs(&first, i).max(max_abs(&second, i));
        assert!(max_abs(&mean, i) <= bound + 1e-7, "stage {i}");
    }
    let losses = mean.report["seed_losses"].as_array().unwrap();
    assert_eq!(losses.len(), 2);
    for (row, single, seed) in [(&losses[0], &first, 3), (&losses[1], &second, 4)] {
        assert_eq!(row[0], seed);
        let last = single.report["history"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(
            row[1], last[1],
            "seed {seed}'s fit loss is its separate fit's"
        );
        assert_eq!(row[2], last[2]);
    }
    assert!(
        first.report.get("seed_losses").is_none(),
        "one seed writes none"
    );
    assert!(
        first.delta.meta.params.get("seeds").is_none(),
        "one seed's record is unchanged"
    );
}

/// Gap tuning of one attention head (`tune.heads`, the mediation-located site): the delta is the
/// output projection of the head's layer only, exactly zero outside the head's columns of the
/// concatenated head outputs, nonzero inside them, and it leaves every protected word's whole
/// mean head output (plain forwards, all heads) unchanged: ΔW z̄ = 0. This is the wiring that
/// `head_a`'s property test (src/edit/tune.rs) does not reach: the mask per stage and the
/// protected keys restricted to the head's columns.
#[test]
fn tune_heads_edits_only_the_heads_columns_and_keeps_protected_outputs() {
    let model = common::real_model("smollm2-135m");
    let (l, h) = (10, 3);
    let head_dim = model.config().head_dim;
    let mut spec = small_tune_spec(l, 4, 2);
    // The 37 pair words are fewer than the head's 64 columns (the default's 136 would be
    // refused).
    spec.tune.heads = vec![(l, h)];
    let out = edit_model(&model, &spec, |_| {}).unwrap();
    let o = format!("model.layers.{l}.self_attn.o_proj.weight");
    let names: Vec<&String> = out.delta.entries.keys().collect();
    assert_eq!(names, vec![&o]);
    let dw = matrix(&out.delta.entries[&o].delta);
    let cols = h * head_dim..(h + 1) * head_dim;
    for j in 0..dw.ncols() {
        let m = dw.column(j).amax();
        if cols.contains(&j) {
            continue;
        }
        assert!(m == 0.0, "column {j} outside head {l}.{h} changed by {m}");
    }
    let inside = dw.columns(cols.start, head_dim).norm();
    assert!(inside > 0.0, "no change inside the head");
    let typical = inside / (head_dim as f64).sqrt();
    for (word, mean) in protected_means(&model, &spec, &out.sets.edit_templates, Site::HeadZ(l), 3)
    {
        let change = &dw * mean.transpose();
        let scale = typical * mean.norm();
        assert!(
            change.norm() < 1e-3 * scale,
            "{word}: change {} on its mean head output (scale {scale})",
            change.norm()
        );
    }
}

/// A head cannot keep more protected words than it has columns: with the default `roles` set
/// (136 words) and one 64-column head the edit is refused, naming `tune.heads`, before the corpus
/// statistics are computed.
#[test]
fn tune_heads_that_cannot_keep_the_protected_words_are_refused_before_the_statistics() {
    let model = common::real_model("smollm2-135m");
    let mut spec = small_tune_spec(10, 4, 2);
    spec.tune.protect_set = biaslens::edit::probe::ProtectSet::Roles;
    spec.tune.heads = vec![(10, 3)];
    let mut lines = Vec::new();
    let err = edit_model(&model, &spec, |l| lines.push(l.to_string()))
        .err()
        .expect("136 protected words in 64 columns were accepted")
        .to_string();
    assert!(
        err.contains("tune.heads") && err.contains("span all 64 columns"),
        "{err}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("second moments")),
        "the statistics ran first: {lines:?}"
    );
}

/// The corpus gap reader (gap tuning's γ term reads L at every position of corpus windows,
/// resuming from a residual cached at layer `l`, through the two pronoun rows of the
/// unembedding) against the slow reference: a plain forward from the embeddings that returns
/// log p(he) and log p(she) at every position.
#[test]
fn corpus_gaps_at_every_position_match_a_plain_forward() {
    use biaslens::edit::probe::ProbeReader;
    use biaslens::model::LogitsRequest;
    let model = common::real_model("smollm2-135m");
    let tok = model.tokenizer().unwrap();
    let rows: Vec<Vec<u32>> = [
        " The nurse finished the night shift, and then she went home to her family.",
        " When the engineer arrived at the site he checked the beams before anyone else.",
    ]
    .iter()
    .map(|t| tok.encode_plain(t).unwrap()[..12].to_vec())
    .collect();
    let ids = |w: &str| tok.encode_plain(w).unwrap()[0];
    let (he, she) = (ids(" he"), ids(" she"));
    let reader = ProbeReader::from_rows(&model.transformer, &rows, 20, [he, she], 4).unwrap();
    assert_eq!(reader.n_batches(), 1);
    let got = reader
        .batch_gaps_all(&model.transformer, 0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let positions: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..rows[r].len()).map(move |t| (r, t)))
        .collect();
    let plan =
        InterventionPlan::logits(LogitsRequest::PositionIds(positions.clone(), vec![he, she]));
    let lp = model
        .transformer
        .forward(&rows, &plan)
        .unwrap()
        .logprobs
        .unwrap();
    let lp = lp.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mut spread = 0.0f64;
    for ((r, t), want) in positions.iter().zip(&lp) {
        let want = want[0] - want[1];
        spread = spread.max(want.abs());
        let diff = (got[*r][*t] - want).abs();
        // Measured: at most 1e-5 nats (f32 rounding of two product orders).
        assert!(
            diff < 1e-4,
            "row {r} token {t}: reader {} vs forward {want}",
            got[*r][*t]
        );
    }
    assert!(
        spread > 0.1,
        "the gaps are all near zero ({spread}): nothing was compared"
    );
}

/// Gap tuning's corpus gap term (`tune.corpus_gap`, γ): γ = 0 is bit for bit the default edit
/// (the term adds exact zeros), and a large γ moves he vs she in ordinary text less than the
/// default does (the report's `corpus_gap_mean_abs_shift`, read on the same corpus positions).
#[test]
fn tune_corpus_gap_zero_is_the_default_and_a_large_one_keeps_text_gaps() {
    let model = common::real_model("smollm2-135m");
    let l = 10;
    let spec = small_tune_spec(l, 4, 6);
    let run = |gamma: Option<f64>| {
        let mut s = spec.clone();
        s.tune.corpus_gap = gamma;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let (default, zero) = (run(None), run(Some(0.0)));
    assert_same_nonzero_delta(&default, &zero, "γ = 0");
    // 600 corpus tokens make four windows of 128 and one of 88: the short one (left-padded in
    // a batch) is left out, so the same 512 positions are read as the default's.
    let large = {
        let mut s = spec.clone();
        s.tune.corpus_gap = Some(1000.0);
        s.tune.corpus_tokens = 600;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    assert_eq!(default.report["corpus_gap_positions"], 512);
    assert_eq!(large.report["corpus_gap_positions"], 512);
    let shift = |o: &biaslens::edit::method::EditOutcome| {
        o.report["corpus_gap_mean_abs_shift"].as_f64().unwrap()
    };
    assert!(
        shift(&large) < 0.5 * shift(&default),
        "γ = 1000 moved the corpus gaps by {} against the default's {}",
        shift(&large),
        shift(&default)
    );
    assert!(large.report["corpus_gap_history"].as_array().unwrap().len() >= 2);
}

/// The corpus top-k reader (gap tuning's δ term) against the slow reference: a plain forward's
/// full log-softmax at every position. The ids are each position's k most likely tokens, largest
/// first, and the reader's logits at them differ pairwise as the forward's log-probabilities do
/// (the normaliser cancels).
#[test]
fn corpus_top_k_logits_at_every_position_match_a_plain_forward() {
    use biaslens::edit::probe::ProbeReader;
    use biaslens::model::LogitsRequest;
    let model = common::real_model("smollm2-135m");
    let tok = model.tokenizer().unwrap();
    let rows: Vec<Vec<u32>> = [
        " The Fiat Multipla is a car produced by Fiat, and the Nokia Lumia is made by Nokia.",
        " When the engineer arrived at the site he checked the beams before anyone else.",
    ]
    .iter()
    .map(|t| tok.encode_plain(t).unwrap()[..12].to_vec())
    .collect();
    let ids = |w: &str| tok.encode_plain(w).unwrap()[0];
    let reader =
        ProbeReader::from_rows(&model.transformer, &rows, 20, [ids(" he"), ids(" she")], 4)
            .unwrap();
    let k = 5;
    let top = reader.batch_top_ids(&model.transformer, 0, k).unwrap();
    let z = reader
        .batch_logits_at(&model.transformer, 0, &top)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let top = top.to_vec2::<u32>().unwrap();
    let positions: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..rows[r].len()).map(move |t| (r, t)))
        .collect();
    assert_eq!(top.len(), positions.len());
    let lp = model
        .transformer
        .forward(
            &rows,
            &InterventionPlan::logits(LogitsRequest::Positions(positions.clone())),
        )
        .unwrap()
        .logprobs
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    for (p, (r, t)) in positions.iter().enumerate() {
        let full = &lp[p];
        let mut order: Vec<usize> = (0..full.len()).collect();
        order.sort_by(|a, b| full[*b].total_cmp(&full[*a]));
        // Ties within f32 rounding may swap: compare the log-probabilities, not only the ids.
        for (j, &id) in top[p].iter().enumerate() {
            let want = full[order[j]];
            assert!(
                (full[id as usize] - want).abs() < 1e-4,
                "row {r} token {t}: top-{j} id {id} has log p {} where the {j}-th largest is {want}",
                full[id as usize]
            );
            let diff = (z[p][j] - z[p][0]) - (full[id as usize] - full[top[p][0] as usize]);
            assert!(
                diff.abs() < 1e-4,
                "row {r} token {t} rank {j}: log-odds off by {diff}"
            );
        }
    }
}

/// Gap tuning's corpus top-k term (`tune.corpus_topk`, δ): δ = 0 is bit for bit the default
/// edit, and a large δ moves the base model's likely next tokens in ordinary text less than
/// δ = 0 does (the report's `corpus_topk_mean_abs_shift`, read on the same positions; δ = 0
/// reads it too, so three edits, not four, cover both claims).
#[test]
fn tune_corpus_topk_zero_is_the_default_and_a_large_one_keeps_text_predictions() {
    let model = common::real_model("smollm2-135m");
    let l = 10;
    let spec = small_tune_spec(l, 4, 6);
    let run = |delta: Option<f64>| {
        let mut s = spec.clone();
        s.tune.corpus_topk = delta;
        s.tune.corpus_topk_k = 4;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let (default, zero) = (edit_model(&model, &spec, |_| {}).unwrap(), run(Some(0.0)));
    assert_same_nonzero_delta(&default, &zero, "δ = 0");
    assert!(default.report.get("corpus_topk_mean_abs_shift").is_none());
    let large = run(Some(1e4));
    let shift = |o: &biaslens::edit::method::EditOutcome| {
        o.report["corpus_topk_mean_abs_shift"].as_f64().unwrap()
    };
    assert!(
        shift(&large) < 0.5 * shift(&zero),
        "δ = 1e4 moved the corpus top-k log-odds by {} against δ = 0's {}",
        shift(&large),
        shift(&zero)
    );
    assert!(
        large.report["corpus_topk_history"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
}

/// Gap tuning's preferred-pronoun term (`tune.hold_preferred`, ζ): ζ = 0 is bit for bit the
/// default edit, and a large ζ moves each fit prompt's more likely pronoun less than ζ = 0 does
/// (the report's `fit_preferred_mean_abs_shift`, read on the same prompts), while still closing
/// the gap.
/// The pronoun-mass term (`tune.hold_mass`, η) likewise, on `fit_mass_mean_abs_shift`.
#[test]
fn tune_hold_preferred_or_mass_zero_is_the_default_and_a_large_one_holds_it() {
    let model = common::real_model("smollm2-135m");
    let l = 10;
    let spec = small_tune_spec(l, 4, 6);
    let run = |zeta: Option<f64>| {
        let mut s = spec.clone();
        s.tune.hold_preferred = zeta;
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let (default, zero) = (edit_model(&model, &spec, |_| {}).unwrap(), run(Some(0.0)));
    assert_same_nonzero_delta(&default, &zero, "ζ = 0");
    assert!(default.report.get("fit_preferred_mean_abs_shift").is_none());
    let large = run(Some(1e3));
    let shift = |o: &biaslens::edit::method::EditOutcome| {
        o.report["fit_preferred_mean_abs_shift"].as_f64().unwrap()
    };
    assert!(
        shift(&large) < 0.5 * shift(&zero),
        "ζ = 1000 moved the preferred pronoun by {} against ζ = 0's {}",
        shift(&large),
        shift(&zero)
    );
    let gap = |o: &biaslens::edit::method::EditOutcome| {
        let g = o.report["fit_mean_abs_gap"].as_array().unwrap().clone();
        (g[0].as_f64().unwrap(), g[1].as_f64().unwrap())
    };
    let (before, after) = gap(&large);
    assert!(
        after < before,
        "ζ = 1000: fit mean |gap| {before} -> {after}"
    );
    assert!(
        large.report["hold_preferred_history"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );

    // The mass term (η) the same way: η = 0 is the default, η = 1000 keeps p(he) + p(she)
    // closer than η = 0 does.
    let run_mass = |eta: f64| {
        let mut s = spec.clone();
        s.tune.hold_mass = Some(eta);
        edit_model(&model, &s, |_| {}).unwrap()
    };
    let (zero, large) = (run_mass(0.0), run_mass(1e3));
    assert_same_nonzero_delta(&default, &zero, "η = 0");
    assert!(default.report.get("fit_mass_mean_abs_shift").is_none());
    let mass = |o: &biaslens::edit::method::EditOutcome| {
        o.report["fit_mass_mean_abs_shift"].as_f64().unwrap()
    };
    assert!(
        mass(&large) < 0.5 * mass(&zero),
        "η = 1000 moved the pronoun mass by {} against η = 0's {}",
        mass(&large),
        mass(&zero)
    );
    assert!(large.report["hold_mass_history"].as_array().unwrap().len() >= 2);
}
