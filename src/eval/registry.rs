//! Tasks as data: each name maps to a data path (relative to the data directory, e.g.
//! `fixtures/data`), a loader and a scorer, so the CLI and reports iterate over one table.
//!
//! The table is the `[[task]]` records of `tasks.toml`, embedded in the binary and parsed once
//! ([`TASKS`]); a [`TaskRegistry`] adds the records of a user's task file to them
//! (`biaslens eval --task-file`), so a multiple-choice task in a known format needs a record and
//! a data file, no Rust.

use crate::eval::lm::LanguageModel;
use crate::eval::load::{LoadOptions, LoadReport};
use crate::eval::tasks::choice::ChoiceFormat;
use crate::eval::tasks::{
    choice, crows, lama, lambada, stereoset, wikitext, winobias, winogender, winogrande,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::OnceLock;

/// Which loader and scorer a task uses, with their parameters: in a record, `kind = "lambada"`
/// or `kind = { winobias = { wtype = 1, split = "test" } }` or a `[task.kind.choice]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskKind {
    Choice(ChoiceFormat),
    Winogrande,
    Lambada,
    Wikitext,
    Lama,
    #[serde(rename = "winobias")]
    WinoBias {
        wtype: u8,
        split: String,
    },
    Winogender,
    #[serde(rename = "stereoset_intra")]
    StereoSetIntra {
        bias_type: String,
    },
    Crows {
        bias_type: String,
    },
}

/// One `[[task]]` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    /// File or folder under the data directory (an absolute path is taken as it is).
    pub path: String,
    pub about: String,
}

impl TaskSpec {
    /// Check what serde cannot: a usable name, path and kind parameters.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err("name must be non-empty ASCII letters, digits, `_`, `-` or `.`".into());
        }
        if self.path.is_empty() {
            return Err("path is empty".into());
        }
        match &self.kind {
            TaskKind::Choice(format) => format.validate(),
            TaskKind::WinoBias { wtype, split } => {
                if ![1, 2].contains(wtype) || !["dev", "test"].contains(&split.as_str()) {
                    return Err(format!(
                        "winobias needs wtype 1 or 2 and split \"dev\" or \"test\", got {wtype} and {split:?}"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Which of a task's metric rows it reports (None: all of them).
    pub fn reported_metrics(&self) -> Option<Vec<&'static str>> {
        match &self.kind {
            TaskKind::Choice(format) => Some(format.metrics.iter().map(|m| m.name()).collect()),
            _ => None,
        }
    }
}

/// The task registry file built into the binary.
pub const BUILTIN_TASKS_TOML: &str = include_str!("tasks.toml");

/// Where [`BUILTIN_TASKS_TOML`] is named in errors.
const BUILTIN_ORIGIN: &str = "built-in src/eval/tasks.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    #[serde(default)]
    task: Vec<toml::Value>,
}

/// Parse the `[[task]]` records of a registry file's text; `origin` (the file) is named in
/// every error, with the record's number and name when one record is bad.
pub fn parse_task_records(text: &str, origin: &str) -> Result<Vec<TaskSpec>> {
    let bad = |message: String| Error::file(origin, message);
    let file: TaskFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if file.task.is_empty() {
        return Err(bad("no [[task]] records".into()));
    }
    let mut specs: Vec<TaskSpec> = Vec::with_capacity(file.task.len());
    for (i, record) in file.task.into_iter().enumerate() {
        let label = match record.get("name").and_then(|n| n.as_str()) {
            Some(name) => format!("task record {} ({name:?})", i + 1),
            None => format!("task record {}", i + 1),
        };
        let spec = TaskSpec::deserialize(record)
            .map_err(|e| bad(format!("{label}: {}", e.to_string().trim_end())))?;
        spec.validate().map_err(|e| bad(format!("{label}: {e}")))?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(bad(format!("task {:?} is declared twice", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Known tasks: the built-in records, plus those of any task files added.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRegistry {
    tasks: Vec<TaskSpec>,
}

impl TaskRegistry {
    /// The built-in tasks, parsed from the embedded file once.
    pub fn builtin() -> &'static TaskRegistry {
        static BUILTIN: OnceLock<TaskRegistry> = OnceLock::new();
        BUILTIN.get_or_init(|| TaskRegistry {
            tasks: parse_task_records(BUILTIN_TASKS_TOML, BUILTIN_ORIGIN)
                .unwrap_or_else(|e| panic!("{e}")),
        })
    }

    /// The built-in tasks plus the records of `file`.
    pub fn with_file(file: &Path) -> Result<TaskRegistry> {
        let mut registry = TaskRegistry::builtin().clone();
        registry.add_file(file)?;
        Ok(registry)
    }

    /// Add the records of a task registry file; a name already known is an error naming the
    /// file and the task.
    pub fn add_file(&mut self, file: &Path) -> Result<()> {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| Error::file(file, e.to_string()))?;
        self.add_records(&text, &origin)
    }

    /// Add the records of a registry file's text, `origin` naming it in errors.
    pub fn add_records(&mut self, text: &str, origin: &str) -> Result<()> {
        let specs = parse_task_records(text, origin)?;
        if let Some(dup) = specs.iter().find(|s| self.get(&s.name).is_some()) {
            return Err(Error::file(
                origin,
                format!("task {:?} is already known", dup.name),
            ));
        }
        self.tasks.extend(specs);
        Ok(())
    }

    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    pub fn names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Look a task up by name; the error lists the known names.
    pub fn task(&self, name: &str) -> Result<&TaskSpec> {
        self.get(name).ok_or_else(|| {
            Error::param(
                "task",
                format!("unknown task {name:?}; known: {}", self.names().join(", ")),
            )
        })
    }
}

/// The built-in tasks as a slice (`TASKS.iter()`, `for spec in TASKS`).
#[derive(Debug, Clone, Copy)]
pub struct BuiltinTasks;

pub const TASKS: BuiltinTasks = BuiltinTasks;

impl std::ops::Deref for BuiltinTasks {
    type Target = [TaskSpec];
    fn deref(&self) -> &'static [TaskSpec] {
        TaskRegistry::builtin().tasks()
    }
}

impl IntoIterator for BuiltinTasks {
    type Item = &'static TaskSpec;
    type IntoIter = std::slice::Iter<'static, TaskSpec>;
    fn into_iter(self) -> Self::IntoIter {
        TaskRegistry::builtin().tasks().iter()
    }
}

/// Look a built-in task up by name; the error lists the known names.
pub fn task(name: &str) -> Result<&'static TaskSpec> {
    TaskRegistry::builtin().task(name)
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
    let path = data_dir.join(&spec.path);
    let (load, result) = match &spec.kind {
        TaskKind::Choice(format) => {
            let l = choice::load_choice_with(&path, format, opts)?;
            (
                l.report,
                TaskScores::Choice(choice::score_choice_with(&l.items, format, lm)?),
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
            let l = winobias::load_winobias(&path, *wtype, split, opts)?;
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
            let l = stereoset::load_stereoset(
                &path,
                Some(("intrasentence", bias_type.as_str())),
                opts,
            )?;
            (
                l.report,
                TaskScores::StereoSet(stereoset::score_stereoset_intra(&l.items, lm)?),
            )
        }
        TaskKind::Crows { bias_type } => {
            let l = crows::load_crows(&path, Some(bias_type.as_str()), opts)?;
            (
                l.report,
                TaskScores::Crows(crows::score_crows(&l.items, lm)?),
            )
        }
    };
    Ok(TaskOutput {
        task: spec.name.clone(),
        load,
        result,
    })
}
