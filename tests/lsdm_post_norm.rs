//! LSDM through a norm after the MLP, end to end on the tiny Gemma-3 reference model (which has
//! a post-feedforward RMSNorm): the down-projection change solved for
//! `down_output_change(norm, m, r)` must move the layer's normed MLP output onto y + r (as far
//! as the norm can reach: parallel to y + r), measured by a second forward of the edited model.
mod common;

use biaslens::edit::lsdm::down_output_change;
use biaslens::edit::solve::{solve_update, LsqInput, Prior};
use biaslens::model::{InterventionPlan, LogitsRequest, Model, Site};
use candle_core::{Device, Tensor, D};

const LAYER: usize = 1;

fn rows() -> Vec<Vec<u32>> {
    (0..6u32)
        .map(|i| (0..5u32).map(|j| (i * 17 + j * 5 + 3) % 90 + 2).collect())
        .collect()
}

/// Activations at the last token of every row: [rows, width] per site.
fn last_token(model: &Model, sites: &[Site]) -> Vec<Tensor> {
    let plan = InterventionPlan::logits(LogitsRequest::None).with_capture(sites.to_vec());
    let out = model.transformer.forward(&rows(), &plan).unwrap();
    sites
        .iter()
        .map(|s| {
            let t = &out.captures[s];
            let n = t.dim(1).unwrap();
            t.narrow(1, n - 1, 1).unwrap().squeeze(1).unwrap()
        })
        .collect()
}

/// Solve ΔW for `keys → residuals` (six keys in d_ff dimensions, negligible ridge: an almost
/// exact fit) and add it to the layer's down-projection, as LSDM does.
fn add_down_update(model: &mut Model, keys: &Tensor, residuals: &Tensor) {
    let dw = solve_update(&LsqInput {
        keys,
        residuals,
        prior: Prior::Identity,
        lambda: 1e-6,
        preserved: None,
        mu: 0.0,
    })
    .unwrap();
    let down = &mut model.transformer.layers[LAYER].down;
    down.weight = (&down.weight + &dw).unwrap();
}

/// Cosine between matching rows.
fn row_cosines(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let dot = (a * b).unwrap().sum(D::Minus1).unwrap();
    let na = a.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    let nb = b.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    (dot / (na * nb).unwrap()).unwrap().to_vec1().unwrap()
}

#[test]
fn edit_through_the_post_mlp_norm_reaches_the_requested_direction() {
    let dir = common::reference("tiny").join("gemma3");
    let mut model = Model::load_hf_dir("gemma3", &dir, &Device::Cpu).expect("tiny gemma3");
    let norm = model.transformer.layers[LAYER]
        .post_mlp_norm
        .clone()
        .expect("Gemma-3 has a post-feedforward norm");
    let [key, m] = &last_token(&model, &[Site::MlpKey(LAYER), Site::MlpOut(LAYER)])[..] else {
        panic!("two sites")
    };
    let y = norm.forward(m).unwrap();
    // A requested change of 0.3 × (the next row's output − this one's), different for every row.
    let shifted = Tensor::cat(
        &[&y.narrow(0, 1, 5).unwrap(), &y.narrow(0, 0, 1).unwrap()],
        0,
    )
    .unwrap();
    let r = ((shifted - &y).unwrap() * 0.3).unwrap();
    let r_down = down_output_change(Some(&norm), Some(m), &r).unwrap();
    add_down_update(&mut model, key, &r_down);
    let [m_after] = &last_token(&model, &[Site::MlpOut(LAYER)])[..] else {
        panic!("one site")
    };
    let y_after = norm.forward(m_after).unwrap();
    let want = (&y + &r).unwrap();
    for (i, c) in row_cosines(&y_after, &want).into_iter().enumerate() {
        assert!(c > 0.9999, "row {i}: cos(y', y + r) = {c}");
    }
    // The edit moved the output by about |r| (y' is y + r rescaled onto the norm's reachable
    // set, so Δy = y' − y also has a component along y and is not parallel to r).
    let norms = |t: &Tensor| -> Vec<f32> {
        t.sqr()
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let moved = norms(&(&y_after - &y).unwrap());
    for (i, (dy, rr)) in moved.into_iter().zip(norms(&r)).enumerate() {
        assert!(
            dy > 0.5 * rr && dy < 2.0 * rr,
            "row {i}: |Δy| {dy} vs |r| {rr}"
        );
    }
    // Ignoring the norm (MEMIT as written) misses the direction on the same rows.
    let mut plain = Model::load_hf_dir("gemma3", &dir, &Device::Cpu).unwrap();
    add_down_update(
        &mut plain,
        key,
        &down_output_change(None, None, &r).unwrap(),
    );
    let [m_plain] = &last_token(&plain, &[Site::MlpOut(LAYER)])[..] else {
        panic!("one site")
    };
    let worst = row_cosines(&norm.forward(m_plain).unwrap(), &want)
        .into_iter()
        .fold(1f32, f32::min);
    assert!(
        worst < 0.9999,
        "ignoring the norm reached y + r too ({worst})"
    );
}
