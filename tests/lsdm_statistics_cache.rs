//! LSDM's corpus statistics C are cached between runs (as MEMIT caches its second moments). A
//! cached C must give the same edit as a fresh one, and the method's counted work must not depend
//! on the cache (Table 4 is snapshot-tested; CI starts with an empty cache, this machine does not).
//!
//! Needs models/smollm2-135m (harness/fetch-models.sh).

mod common;

use biaslens::edit::method::{edit_model, EditSpec, Method};

#[test]
fn cached_statistics_give_the_same_edit_and_the_same_counted_work() {
    let model = common::real_model("smollm2-135m");
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut spec = EditSpec::new(Method::Lsdm, vec![3]);
    spec.max_edit_professions = Some(4);
    spec.lsdm.target_templates = 2;
    spec.lsdm.prefixes = 1;
    spec.lsdm.corpus_tokens = 512;
    spec.lsdm.target.steps = 2;
    spec.cache_dir = Some(cache.path().to_path_buf());

    let run = || {
        let before = model.transformer.work.read();
        let out = edit_model(&model, &spec, |_| {}).unwrap();
        let counted = model.transformer.work.read() - before;
        (out, counted)
    };
    let (fresh, fresh_work) = run();
    let (cached, cached_work) = run();

    assert_eq!(fresh.statistics_tokens, 512);
    assert_eq!(cached.statistics_tokens, 512);
    // The first run computed C (one pass per corpus chunk, up to layer 3); the second read it.
    assert!(fresh.statistics_work.passes > 0);
    assert_eq!(fresh.statistics_work.token_layers, 512 * 4);
    assert_eq!(cached.statistics_work, Default::default());
    // Without the statistics, both runs did the same work.
    assert_eq!(
        fresh_work - fresh.statistics_work,
        cached_work - cached.statistics_work
    );
    // And made the same edit, bit for bit.
    let name = "model.layers.3.mlp.down_proj.weight";
    let a = fresh.delta.entries[name].delta.flatten_all().unwrap();
    let b = cached.delta.entries[name].delta.flatten_all().unwrap();
    assert_eq!(
        a.to_vec1::<f32>().unwrap(),
        b.to_vec1::<f32>().unwrap(),
        "cached C changed the edit"
    );
}
