//! Eval tasks as data: the embedded registry file declares today's tasks, and a user's task
//! file adds a multiple-choice task with no Rust that scores exactly as the built-in one.

mod common;
use biaslens::eval::load::LoadOptions;
use biaslens::eval::model_lm::{LmOptions, ModelLm};
use biaslens::eval::registry::{
    parse_task_records, TaskKind, TaskRegistry, TaskScores, BUILTIN_TASKS_TOML, TASKS,
};
use biaslens::eval::suite::{parse_tasks_in, run_suite, SuiteOptions};
use biaslens::eval::tasks::choice::{ChoiceFormat, ChoiceMetric};
use biaslens::model::Model;
use candle_core::Device;
use std::path::Path;

const TODAY: [&str; 17] = [
    "arc_easy",
    "arc_challenge",
    "piqa",
    "boolq",
    "copa",
    "openbookqa",
    "winogrande",
    "lambada_openai",
    "wikitext2",
    "lama_trex",
    "winobias_type1",
    "winobias_type2",
    "winobias_type1_dev",
    "winobias_type2_dev",
    "winogender",
    "stereoset_gender",
    "crows_pairs_gender",
];

#[test]
fn embedded_registry_lists_exactly_todays_tasks() {
    let names: Vec<&str> = TASKS.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, TODAY);
    assert_eq!(TaskRegistry::builtin().names(), TODAY);
    assert_eq!(
        parse_task_records(BUILTIN_TASKS_TOML, "embedded").unwrap(),
        TASKS.to_vec()
    );
    for name in [
        "arc_easy",
        "arc_challenge",
        "piqa",
        "boolq",
        "copa",
        "openbookqa",
    ] {
        let spec = biaslens::eval::task(name).unwrap();
        assert_eq!(
            spec.kind,
            TaskKind::Choice(ChoiceFormat::default()),
            "{name}"
        );
    }
    let spec = biaslens::eval::task("winobias_type2_dev").unwrap();
    assert_eq!(
        (spec.path.as_str(), &spec.kind),
        (
            "winobias",
            &TaskKind::WinoBias {
                wtype: 2,
                split: "dev".into()
            }
        )
    );
    assert_eq!(
        biaslens::eval::task("crows_pairs_gender").unwrap().kind,
        TaskKind::Crows {
            bias_type: "gender".into()
        }
    );
    let err = biaslens::eval::task("hellaswag").unwrap_err().to_string();
    assert!(err.contains("hellaswag") && err.contains("crows_pairs_gender"));
}

/// The first five COPA items, as given and with renamed fields.
fn write_user_task(dir: &Path) -> std::path::PathBuf {
    let copa = std::fs::read_to_string(common::fixtures().join("data/copa/copa.jsonl")).unwrap();
    let lines: Vec<&str> = copa.lines().take(5).collect();
    std::fs::write(dir.join("mine.jsonl"), lines.join("\n") + "\n").unwrap();
    let renamed: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!({
                "question": v["query"], "options": v["choices"], "label": v["gold"], "id": 7
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("renamed.jsonl"), renamed.join("\n") + "\n").unwrap();
    let file = dir.join("my_tasks.toml");
    let d = dir.display();
    std::fs::write(
        &file,
        format!(
            r#"
[[task]]
name = "my_copa"
path = '{d}/mine.jsonl'
about = "COPA in llm-foundry form, from a user file"
[task.kind.choice]

[[task]]
name = "my_copa_renamed"
path = '{d}/renamed.jsonl'
about = "COPA with other field names, acc only"
[task.kind.choice]
query_field = "question"
choices_field = "options"
gold_field = "label"
context = "{{query}}"
continuation = " {{choice}}"
metrics = ["acc"]
"#
        ),
    )
    .unwrap();
    file
}

#[test]
fn user_choice_task_scores_exactly_as_builtin_copa() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_user_task(tmp.path());
    let registry = TaskRegistry::with_file(&file).unwrap();
    assert_eq!(registry.tasks().len(), TODAY.len() + 2);
    let specs = parse_tasks_in(&registry, "copa,my_copa,my_copa_renamed").unwrap();

    let model = Model::load_hf_dir("llama", &common::tiny_tok(tmp.path()), &Device::Cpu).unwrap();
    let lm_opts = LmOptions {
        max_length: 64,
        ..LmOptions::default()
    };
    let mut lm = ModelLm::new(&model, lm_opts).unwrap();
    let opts = SuiteOptions {
        data_dir: common::fixtures().join("data"),
        load: LoadOptions {
            limit: Some(5),
            ..LoadOptions::default()
        },
        lm: lm_opts,
        cache_dir: None,
        chunk_tokens: 1 << 15,
        shard: None,
        cache_only: false,
    };
    let res = run_suite(&mut lm, &model.info, &specs, &opts, &mut |_, _, _| {}).unwrap();
    let choice = |name: &str| match &res.task(name).unwrap().output.result {
        TaskScores::Choice(c) => c.clone(),
        other => panic!("{name}: not a choice result: {other:?}"),
    };
    let builtin = choice("copa");
    assert_eq!(builtin.n, 5);
    for name in ["my_copa", "my_copa_renamed"] {
        let mine = choice(name);
        assert_eq!(mine.records, builtin.records, "{name}");
        assert_eq!((mine.acc, mine.acc_norm), (builtin.acc, builtin.acc_norm));
    }
    let names = |task: &str| -> Vec<String> {
        res.task(task)
            .unwrap()
            .metrics
            .iter()
            .map(|m| m.name.clone())
            .collect()
    };
    assert_eq!(names("copa"), ["acc", "acc_norm"]);
    assert_eq!(names("my_copa"), ["acc", "acc_norm"]);
    assert_eq!(
        res.task("my_copa").unwrap().metrics,
        res.task("copa").unwrap().metrics
    );
    assert_eq!(names("my_copa_renamed"), ["acc"]);
}

/// The error of adding a task file with `text` to the built-in tasks.
fn file_error(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let err = TaskRegistry::with_file(&file).unwrap_err().to_string();
    assert!(
        err.contains(&file.display().to_string()),
        "{err} does not name the file"
    );
    err
}

#[test]
fn bad_task_files_are_errors_naming_the_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ok = "[[task]]\nname = \"x\"\npath = \"x.jsonl\"\nabout = \"x\"\n";

    let err = file_error(
        dir,
        "unknown.toml",
        &format!("{ok}kind = \"lambada\"\n\n[[task]]\nname = \"y\"\nkind = \"lambada\"\npath = \"y\"\nabout = \"y\"\ncolour = \"red\"\n"),
    );
    assert!(
        err.contains("task record 2 (\"y\")") && err.contains("colour"),
        "{err}"
    );
    let err = file_error(
        dir,
        "choice_key.toml",
        &format!("{ok}[task.kind.choice]\nquery = \"q\"\n"),
    );
    assert!(
        err.contains("task record 1 (\"x\")") && err.contains("query"),
        "{err}"
    );
    let err = file_error(dir, "kind.toml", &format!("{ok}kind = \"hellaswag\"\n"));
    assert!(
        err.contains("task record 1 (\"x\")") && err.contains("hellaswag"),
        "{err}"
    );
    let err = file_error(
        dir,
        "template.toml",
        &format!("{ok}[task.kind.choice]\ncontext = \"{{question}}\"\n"),
    );
    assert!(
        err.contains("task record 1 (\"x\")") && err.contains("{question}"),
        "{err}"
    );
    let err = file_error(
        dir,
        "metric.toml",
        &format!("{ok}[task.kind.choice]\nmetrics = [\"f1\"]\n"),
    );
    assert!(
        err.contains("task record 1 (\"x\")") && err.contains("f1"),
        "{err}"
    );
    let err = file_error(
        dir,
        "winobias.toml",
        &format!("{ok}kind = {{ winobias = {{ wtype = 3, split = \"test\" }} }}\n"),
    );
    assert!(err.contains("wtype"), "{err}");

    let err = file_error(
        dir,
        "builtin_dup.toml",
        "[[task]]\nname = \"copa\"\npath = \"c.jsonl\"\nabout = \"c\"\n[task.kind.choice]\n",
    );
    assert!(
        err.contains("\"copa\"") && err.contains("already known"),
        "{err}"
    );
    let err = file_error(
        dir,
        "self_dup.toml",
        &format!("{ok}kind = \"lambada\"\n{ok}kind = \"wikitext\"\n"),
    );
    assert!(err.contains("\"x\"") && err.contains("twice"), "{err}");
    let err = file_error(dir, "syntax.toml", "[[task]\nname = ");
    assert!(!err.is_empty());
    let err = file_error(dir, "empty.toml", "# nothing\n");
    assert!(err.contains("no [[task]] records"), "{err}");
    let err = file_error(
        dir,
        "top.toml",
        &format!("tasks = 1\n{ok}kind = \"lama\"\n"),
    );
    assert!(err.contains("tasks"), "{err}");

    let missing = dir.join("missing.toml");
    let err = TaskRegistry::with_file(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // A good file parses; the metric enum round-trips.
    let file = dir.join("good.toml");
    std::fs::write(
        &file,
        format!("{ok}[task.kind.choice]\nmetrics = [\"acc_norm\"]\n"),
    )
    .unwrap();
    let reg = TaskRegistry::with_file(&file).unwrap();
    let TaskKind::Choice(f) = &reg.task("x").unwrap().kind else {
        panic!("choice")
    };
    assert_eq!(f.metrics, [ChoiceMetric::AccNorm]);
}
