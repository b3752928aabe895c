//! FT-L and DAMA checkpoint after every step (layer), so a stopped edit resumes. The stop is
//! simulated by a panic inside the progress callback, which runs after the previous step's
//! checkpoint was written and before the next one: as a kill at that moment would leave it. The
//! resumed edit must equal an uninterrupted one bit for bit and do less work. A finished edit
//! keeps its last checkpoint until the caller has stored it and releases it (a crash in between
//! costs no steps).
//!
//! Needs models/smollm2-135m (harness/fetch-models.sh).

mod common;

use biaslens::edit::method::{edit_model, EditOutcome, EditSpec, Method};
use biaslens::model::Model;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn small_spec(method: Method, layers: Vec<usize>, cache: &Path) -> EditSpec {
    let mut spec = EditSpec::new(method, layers);
    spec.max_edit_professions = Some(4);
    spec.lsdm.target_templates = 2;
    spec.lsdm.prefixes = 1;
    spec.ft.steps = 3;
    spec.dama.components = 4;
    spec.cache_dir = Some(cache.to_path_buf());
    spec
}

fn checkpoints(cache: &Path) -> Vec<String> {
    match std::fs::read_dir(cache.join("checkpoints")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// Run `spec` and stop it when the progress line contains `stop_at`; the checkpoints left.
fn stop(model: &Model, spec: &EditSpec, stop_at: &str) -> Vec<String> {
    let stopped = catch_unwind(AssertUnwindSafe(|| {
        edit_model(model, spec, |line| {
            if line.contains(stop_at) {
                panic!("stopped at {line:?}");
            }
        })
    }));
    assert!(stopped.is_err(), "the run was not stopped at {stop_at:?}");
    checkpoints(spec.cache_dir.as_ref().unwrap())
}

/// Run `spec`, stopping it when the progress line contains `stop_at`; then run it again to the
/// end. Returns the stopped run's checkpoint files and the resumed run's outcome, work and log.
fn stop_and_resume(
    model: &Model,
    spec: &EditSpec,
    stop_at: &str,
) -> (Vec<String>, EditOutcome, u64, Vec<String>) {
    let left = stop(model, spec, stop_at);
    let before = model.transformer.work.read();
    let mut lines = Vec::new();
    let out = edit_model(model, spec, |l| lines.push(l.to_string())).unwrap();
    let work = (model.transformer.work.read() - before).passes;
    out.release_checkpoint().unwrap();
    (left, out, work, lines)
}

fn assert_same_edit(a: &EditOutcome, b: &EditOutcome) {
    assert_eq!(a.report, b.report);
    assert_eq!(
        a.delta.entries.keys().collect::<Vec<_>>(),
        b.delta.entries.keys().collect::<Vec<_>>()
    );
    for (name, e) in &a.delta.entries {
        let x = e.delta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b.delta.entries[name]
            .delta
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(x.iter().any(|v| *v != 0.0), "{name}: empty edit");
        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name}: the resumed edit differs");
    }
}

#[test]
fn a_stopped_ft_l_resumes_at_its_last_step_with_the_same_edit() {
    let model = common::real_model("smollm2-135m");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (full_cache, stop_cache) = (dir.path().join("full"), dir.path().join("stop"));

    let full_spec = small_spec(Method::Ft, vec![3], &full_cache);
    let before = model.transformer.work.read();
    let full = edit_model(&model, &full_spec, |_| {}).unwrap();
    let full_work = (model.transformer.work.read() - before).passes;
    // Finished but not yet released (as after a crash before the edit was stored): a rerun
    // runs no Adam step, only the final loss, and gives the same edit.
    assert_eq!(checkpoints(&full_cache).len(), 1);
    let mut lines = Vec::new();
    let before = model.transformer.work.read();
    let again = edit_model(&model, &full_spec, |l| lines.push(l.to_string())).unwrap();
    let again_work = (model.transformer.work.read() - before).passes;
    assert!(
        lines.iter().any(|l| l.contains("resuming at step 3 of 3")),
        "{lines:?}"
    );
    assert!(again_work < full_work / 2, "{again_work} vs {full_work}");
    assert_same_edit(&full, &again);
    again.release_checkpoint().unwrap();
    assert!(
        checkpoints(&full_cache).is_empty(),
        "released, yet the checkpoint is there"
    );

    let spec = small_spec(Method::Ft, vec![3], &stop_cache);
    // Stopped while running step 2: steps 0 and 1 are checkpointed.
    let (left, resumed, work, lines) = stop_and_resume(&model, &spec, "FT-L step 2/3");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("ft-l-"), "{left:?}");
    assert!(
        lines.iter().any(|l| l.contains("resuming at step 2 of 3")),
        "{lines:?}"
    );
    assert!(work < full_work, "resumed {work} passes, full {full_work}");
    assert_same_edit(&full, &resumed);
    assert!(checkpoints(&stop_cache).is_empty());

    // A checkpoint of another run (other hyperparameters) is not resumed from.
    let mut other = spec.clone();
    other.ft.lr *= 2.0;
    assert_eq!(stop(&model, &spec, "FT-L step 2/3").len(), 1);
    let mut lines = Vec::new();
    let out = edit_model(&model, &other, |l| lines.push(l.to_string())).unwrap();
    assert!(!lines.iter().any(|l| l.contains("resuming")), "{lines:?}");
    out.release_checkpoint().unwrap();
    // ... and is left for its own run.
    assert_eq!(checkpoints(&stop_cache), left);
}

#[test]
fn a_stopped_dama_resumes_after_its_last_layer_with_the_same_edit() {
    let model = common::real_model("smollm2-135m");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (full_cache, stop_cache) = (dir.path().join("full"), dir.path().join("stop"));

    let before = model.transformer.work.read();
    let full = edit_model(
        &model,
        &small_spec(Method::Dama, vec![2, 3], &full_cache),
        |_| {},
    )
    .unwrap();
    let full_work = (model.transformer.work.read() - before).passes;
    full.release_checkpoint().unwrap();
    assert!(checkpoints(&full_cache).is_empty());

    let spec = small_spec(Method::Dama, vec![2, 3], &stop_cache);
    // Stopped after layer 3's projection, before its checkpoint: layer 2 is saved.
    let (left, resumed, work, lines) = stop_and_resume(&model, &spec, "DAMA layer 3");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(work < full_work, "resumed {work} passes, full {full_work}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("resuming after layers [2]")),
        "{lines:?}"
    );
    assert_same_edit(&full, &resumed);
    assert!(checkpoints(&stop_cache).is_empty());
}
