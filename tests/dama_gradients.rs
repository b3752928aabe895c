//! DAMA's value differences: the gradient of log p(he) − log p(she) w.r.t. the residual after a
//! layer at the subject token. The fast path tracks only the tokens from the subject on (the
//! tokens before it come from a cache); it must equal the slow reference, which tracks whole
//! rows, for prompts whose subject sits at different positions (context prefixes, multi-token
//! professions) and lengths, in the prompts' order.
//!
//! Needs models/smollm2-135m (harness/fetch-models.sh).

mod common;

use biaslens::data::{Profession, SplitSpec};
use biaslens::edit::context::edit_sets;
use biaslens::edit::dama::{gender_gradients, gender_gradients_reference};
use biaslens::edit::lsdm::edit_prompts;

#[test]
fn fast_gradients_equal_the_whole_row_reference() {
    let model = common::real_model("smollm2-135m");
    let data = biaslens::data::data_dir();
    let professions = Profession::load(&data.join("bolukbasi_debiaswe/professions.json")).unwrap();
    let sets = edit_sets(&professions, &SplitSpec::default(), Some(6), false).unwrap();
    let prompts = edit_prompts(&model, &sets, 2, 3).unwrap().keys;
    let positions: std::collections::BTreeSet<(usize, usize)> = prompts
        .iter()
        .map(|p| (p.last_subject_token, p.ids.len()))
        .collect();
    assert!(
        positions.len() >= 4,
        "too few shapes to test: {positions:?}"
    );
    let tok = model.tokenizer().unwrap();
    let pronouns = [
        tok.single_token_id(" he").unwrap(),
        tok.single_token_id(" she").unwrap(),
    ];
    for layer in [2, 7] {
        let fast = gender_gradients(&model.transformer, &prompts, layer, &pronouns, 16).unwrap();
        let slow =
            gender_gradients_reference(&model.transformer, &prompts, layer, &pronouns, 16).unwrap();
        assert_eq!(fast.dims(), slow.dims());
        let scale = slow
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let diff = common::max_abs_diff(&fast, &slow);
        assert!(scale > 0.0);
        eprintln!("layer {layer}: largest difference {diff:e}, largest gradient {scale:e}");
        assert!(
            diff < 1e-4 * scale,
            "layer {layer}: fast and reference differ by {diff} (scale {scale})"
        );
    }
}
