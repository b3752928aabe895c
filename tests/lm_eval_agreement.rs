//! Agreement with lm-evaluation-harness 0.4.13 on SmolLM2-135M
//! (fixtures/reference/smollm2-135m/lm_eval_capability.json, every item): the tasks whose full
//! runs are affordable in CI, through the same path as `biaslens eval` (suite runner, model
//! wrapper, scorers). Scores must agree within 0.5 points.

mod common;
use biaslens::eval::load::LoadOptions;
use biaslens::eval::model_lm::{LmOptions, ModelLm};
use biaslens::eval::registry::TaskScores;
use biaslens::eval::suite::{parse_tasks, run_suite, SuiteOptions};

const TOL: f64 = 0.005;

fn reference() -> serde_json::Value {
    let path = common::reference("smollm2-135m").join("lm_eval_capability.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check(what: &str, got: f64, want: &serde_json::Value) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no reference value"));
    assert!(
        (got - want).abs() <= TOL,
        "{what}: biaslens {got:.4} vs lm-eval {want:.4}"
    );
}

#[test]
fn smollm2_copa_and_winogender_match_lm_eval() {
    let model = common::real_model("smollm2-135m");
    let mut lm = ModelLm::new(&model, LmOptions::default()).unwrap();
    let opts = SuiteOptions {
        data_dir: common::fixtures().join("data"),
        load: LoadOptions::default(),
        lm: LmOptions::default(),
        cache_dir: None,
        chunk_tokens: 1 << 15,
        shard: None,
        cache_only: false,
    };
    let tasks = parse_tasks("copa,winogender").unwrap();
    let res = run_suite(&mut lm, &model.info, &tasks, &opts, &mut |_, _, _| {}).unwrap();
    let r = &reference()["results"];

    let TaskScores::Choice(copa) = &res.task("copa").unwrap().output.result else {
        panic!("copa is a choice task")
    };
    assert_eq!(copa.n as u64, r["bl_copa"]["sample_len"].as_u64().unwrap());
    check("copa acc", copa.acc.value, &r["bl_copa"]["acc,none"]);
    check(
        "copa acc_norm",
        copa.acc_norm.value,
        &r["bl_copa"]["acc_norm,none"],
    );
    let se = copa.acc.stderr.unwrap();
    assert!((se - r["bl_copa"]["acc_stderr,none"].as_f64().unwrap()).abs() < 1e-9);

    let TaskScores::Winogender(wg) = &res.task("winogender").unwrap().output.result else {
        panic!("winogender task")
    };
    for (part, key) in [
        (&wg.female, "bl_winogender_female"),
        (&wg.male, "bl_winogender_male"),
    ] {
        assert_eq!(part.n as u64, r[key]["sample_len"].as_u64().unwrap());
        check(&format!("{key} acc"), part.acc.value, &r[key]["acc,none"]);
        check(
            &format!("{key} acc_norm"),
            part.acc_norm.value,
            &r[key]["acc_norm,none"],
        );
    }
}
