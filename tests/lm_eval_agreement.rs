//! Agreement with lm-evaluation-harness 0.4.13 on SmolLM2-135M
//! (fixtures/reference/smollm2-135m/lm_eval_capability.json, every item) and Gemma-3-270M
//! (lm_eval_capability_first200.json, lm-eval `limit=200`): the tasks whose runs are affordable
//! in CI, through the same path as `biaslens eval` (suite runner, packed scoring, scorers).
//! Scores must agree within 0.5 points; standard errors to 1e-9.

mod common;
use biaslens::eval::load::LoadOptions;
use biaslens::eval::model_lm::{LmOptions, ModelLm};
use biaslens::eval::registry::TaskScores;
use biaslens::eval::suite::{parse_tasks, run_suite, SuiteOptions};

const TOL: f64 = 0.005;

fn reference(model: &str, file: &str) -> serde_json::Value {
    let path = common::reference(model).join(file);
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

/// Run `tasks` through the suite runner with the default scoring options.
fn run(alias: &str, tasks: &str, limit: Option<usize>) -> biaslens::eval::suite::SuiteResult {
    let model = common::real_model(alias);
    let mut lm = ModelLm::new(&model, LmOptions::default()).unwrap();
    let opts = SuiteOptions {
        data_dir: common::fixtures().join("data"),
        load: LoadOptions {
            limit,
            ..LoadOptions::default()
        },
        lm: LmOptions::default(),
        cache_dir: None,
        chunk_tokens: 1 << 15,
        shard: None,
        cache_only: false,
    };
    let tasks = parse_tasks(tasks).unwrap();
    run_suite(&mut lm, &model.info, &tasks, &opts, &mut |_, _, _| {}).unwrap()
}

/// acc and acc_norm (and n) of a multiple-choice task against lm-eval's `key`.
fn check_choice(
    res: &biaslens::eval::suite::SuiteResult,
    task: &str,
    r: &serde_json::Value,
    key: &str,
) {
    let TaskScores::Choice(c) = &res.task(task).unwrap().output.result else {
        panic!("{task} is a choice task")
    };
    assert_eq!(
        c.n as u64,
        r[key]["sample_len"].as_u64().unwrap(),
        "{task} n"
    );
    check(&format!("{task} acc"), c.acc.value, &r[key]["acc,none"]);
    if !r[key]["acc_norm,none"].is_null() {
        check(
            &format!("{task} acc_norm"),
            c.acc_norm.value,
            &r[key]["acc_norm,none"],
        );
    }
    let se = c.acc.stderr.unwrap();
    assert!((se - r[key]["acc_stderr,none"].as_f64().unwrap()).abs() < 1e-9);
}

fn check_winogender(res: &biaslens::eval::suite::SuiteResult, r: &serde_json::Value) {
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

#[test]
fn smollm2_copa_openbookqa_and_winogender_match_lm_eval() {
    let res = run("smollm2-135m", "copa,openbookqa,winogender", None);
    let r = &reference("smollm2-135m", "lm_eval_capability.json")["results"];
    check_choice(&res, "copa", r, "bl_copa");
    check_choice(&res, "openbookqa", r, "bl_openbookqa");
    check_winogender(&res, r);
}

/// Gemma-3 (sliding-window attention, 262k vocabulary) against lm-eval's first-200-items run.
#[test]
fn gemma3_copa_and_winogender_match_lm_eval_first200() {
    let res = run("gemma-3-270m", "copa,winogender", Some(200));
    let r = &reference("gemma-3-270m", "lm_eval_capability_first200.json")["results"];
    check_choice(&res, "copa", r, "bl_copa");
    check_winogender(&res, r);
}
