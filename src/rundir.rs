//! A resumable run directory shared by long sweeps (trace, mediate, eval).
//!
//! `settings.json` pins what the numbers depend on; `results.jsonl` gets one line
//! `{"index":i,"record":...}` per finished item, flushed as it is written, so a crash loses at
//! most the item in flight (a torn last line is cut off on resume). `--shard i/n` takes the items
//! with `index % n == i`; [`merge`] turns shard directories into exactly the single-run files.

use crate::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SETTINGS: &str = "settings.json";
pub const RESULTS: &str = "results.jsonl";

/// Which part of the items this process owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parse `i/n` with 0 <= i < n.
    pub fn parse(s: &str) -> Result<Shard> {
        let err = |m: &str| Error::param("shard", format!("`{s}`: {m} (expected i/n with 0 <= i < n)"));
        let (i, n) = s.split_once('/').ok_or_else(|| err("no `/`"))?;
        let index: usize = i.trim().parse().map_err(|_| err("i is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| err("n is not a number"))?;
        if count == 0 || index >= count {
            return Err(err("out of range"));
        }
        Ok(Shard { index, count })
    }

    /// From a scheduler: Slurm array (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, of
    /// `SLURM_ARRAY_TASK_COUNT`) or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` of
    /// `BIASLENS_SHARD_COUNT`). `None` when neither is set.
    pub fn from_env() -> Result<Option<Shard>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| Error::param(k, format!("`{v}` is not a number"))),
            }
        };
        let (idx, cnt, min) = if let Some(i) = num("SLURM_ARRAY_TASK_ID")? {
            (i, num("SLURM_ARRAY_TASK_COUNT")?, num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0))
        } else if let Some(i) = num("JOB_COMPLETION_INDEX")? {
            (i, num("BIASLENS_SHARD_COUNT")?, 0)
        } else {
            return Ok(None);
        };
        let count = cnt.ok_or_else(|| Error::param("shard", "a task index is set but not the task count (SLURM_ARRAY_TASK_COUNT or BIASLENS_SHARD_COUNT)"))?;
        let index = idx.checked_sub(min).ok_or_else(|| Error::param("SLURM_ARRAY_TASK_ID", "below SLURM_ARRAY_TASK_MIN"))?;
        Shard::parse(&format!("{index}/{count}")).map(Some)
    }

    pub fn owns(&self, item: usize) -> bool {
        item % self.count == self.index
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

/// Keys whose values differ between two JSON objects (nested keys joined by `.`).
pub fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match (a.as_object(), b.as_object()) {
            (Some(x), Some(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => walk(u, v, &p, out),
                        _ => out.push(p),
                    }
                }
            }
            _ if a != b => out.push(if prefix.is_empty() { "(whole settings)".into() } else { prefix.to_string() }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", &mut out);
    out
}

fn settings_bytes(settings: &serde_json::Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(settings)?;
    b.push(b'\n');
    Ok(b)
}

/// An open run directory; records already present are skipped by the caller via [`RunDir::is_done`].
pub struct RunDir {
    dir: PathBuf,
    done: BTreeMap<usize, String>,
    file: std::fs::File,
}

impl RunDir {
    /// Create `dir` with `settings`, or reopen it: refuse when its settings differ (naming the
    /// keys), drop a torn last line, and load the finished records.
    pub fn open(dir: &Path, settings: &serde_json::Value) -> Result<RunDir> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        let sp = dir.join(SETTINGS);
        if sp.exists() {
            let text = std::fs::read_to_string(&sp).map_err(|e| Error::file(&sp, e.to_string()))?;
            let old: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&sp, format!("not JSON: {e}")))?;
            let diff = differing_keys(&old, settings);
            if !diff.is_empty() {
                return Err(Error::file(&sp, format!("this run was made with different settings ({}); use another --out directory", diff.join(", "))));
            }
        } else {
            crate::io::write_atomic(&sp, &settings_bytes(settings)?)?;
        }
        let rp = dir.join(RESULTS);
        let mut done = BTreeMap::new();
        if rp.exists() {
            let bytes = std::fs::read(&rp).map_err(|e| Error::file(&rp, e.to_string()))?;
            let keep = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
            if keep < bytes.len() {
                // A crash mid-write left a partial line: cut it off, the item is redone.
                let f = std::fs::OpenOptions::new().write(true).open(&rp).map_err(|e| Error::file(&rp, e.to_string()))?;
                f.set_len(keep as u64).map_err(|e| Error::file(&rp, e.to_string()))?;
            }
            let text = std::str::from_utf8(&bytes[..keep]).map_err(|_| Error::file(&rp, "not UTF-8"))?;
            for (n, line) in text.lines().enumerate() {
                let index = line_index(line).map_err(|m| Error::line(&rp, n + 1, m))?;
                done.insert(index, line.to_string());
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&rp).map_err(|e| Error::file(&rp, e.to_string()))?;
        Ok(RunDir { dir: dir.to_path_buf(), done, file })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_done(&self, index: usize) -> bool {
        self.done.contains_key(&index)
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Append the record of item `index` and flush it to disk.
    pub fn append<T: Serialize>(&mut self, index: usize, record: &T) -> Result<()> {
        if self.done.contains_key(&index) {
            return Err(Error::param("index", format!("item {index} is already in {}", self.dir.display())));
        }
        let line = record_line(index, record)?;
        let rp = self.dir.join(RESULTS);
        self.file.write_all(format!("{line}\n").as_bytes()).map_err(|e| Error::file(&rp, e.to_string()))?;
        self.file.sync_data().map_err(|e| Error::file(&rp, e.to_string()))?;
        self.done.insert(index, line);
        Ok(())
    }

    /// Finished records in index order.
    pub fn records<T: DeserializeOwned>(&self) -> Result<Vec<(usize, T)>> {
        let rp = self.dir.join(RESULTS);
        self.done.iter().map(|(&i, line)| Ok((i, parse_record(line).map_err(|m| Error::file(&rp, format!("item {i}: {m}")))?))).collect()
    }

    /// Rewrite `results.jsonl` in index order (a resumed run may have appended out of order), so
    /// that a finished run's file does not depend on its history.
    pub fn normalise(&mut self) -> Result<()> {
        let rp = self.dir.join(RESULTS);
        crate::io::write_atomic(&rp, joined(&self.done).as_bytes())?;
        self.file = std::fs::OpenOptions::new().append(true).open(&rp).map_err(|e| Error::file(&rp, e.to_string()))?;
        Ok(())
    }
}

fn joined(done: &BTreeMap<usize, String>) -> String {
    done.values().map(|l| format!("{l}\n")).collect()
}

fn record_line<T: Serialize>(index: usize, record: &T) -> Result<String> {
    let v = serde_json::json!({ "index": index, "record": record });
    Ok(serde_json::to_string(&v)?)
}

fn line_index(line: &str) -> std::result::Result<usize, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    v.get("index").and_then(|i| i.as_u64()).map(|i| i as usize).ok_or_else(|| "no `index`".into())
}

fn parse_record<T: DeserializeOwned>(line: &str) -> std::result::Result<T, String> {
    let mut v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let r = v.get_mut("record").map(serde_json::Value::take).ok_or("no `record`")?;
    serde_json::from_value(r).map_err(|e| e.to_string())
}

/// Merge shard directories into `out`: the settings must agree; records are ordered by index and
/// an index found twice must carry the same record. Returns the number of records.
pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<usize> {
    let first = shards.first().ok_or_else(|| Error::param("shards", "name at least one shard directory"))?;
    let read_settings = |d: &Path| -> Result<serde_json::Value> {
        let p = d.join(SETTINGS);
        let t = std::fs::read_to_string(&p).map_err(|e| Error::file(&p, e.to_string()))?;
        serde_json::from_str(&t).map_err(|e| Error::file(&p, format!("not JSON: {e}")))
    };
    let settings = read_settings(first)?;
    let mut done: BTreeMap<usize, String> = BTreeMap::new();
    for d in shards {
        let s = read_settings(d)?;
        let diff = differing_keys(&settings, &s);
        if !diff.is_empty() {
            return Err(Error::file(d.join(SETTINGS), format!("differs from {} in {}", first.display(), diff.join(", "))));
        }
        let rp = d.join(RESULTS);
        let text = std::fs::read_to_string(&rp).map_err(|e| Error::file(&rp, e.to_string()))?;
        let complete = text.rfind('\n').map_or("", |p| &text[..p + 1]);
        for (n, line) in complete.lines().enumerate() {
            let i = line_index(line).map_err(|m| Error::line(&rp, n + 1, m))?;
            if let Some(prev) = done.insert(i, line.to_string()) {
                if prev != line {
                    return Err(Error::line(&rp, n + 1, format!("item {i} differs from another shard's record")));
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e.to_string()))?;
    crate::io::write_atomic(&out.join(SETTINGS), &settings_bytes(&settings)?)?;
    crate::io::write_atomic(&out.join(RESULTS), joined(&done).as_bytes())?;
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shard_parsing_and_env() {
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
        assert!(Shard::parse("3/3").is_err() && Shard::parse("x/2").is_err() && Shard::parse("1").is_err());
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string());
        assert_eq!(Shard::from_vars(env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "3")])).unwrap(), Some(Shard { index: 2, count: 4 }));
        assert_eq!(Shard::from_vars(env(&[("JOB_COMPLETION_INDEX", "0"), ("BIASLENS_SHARD_COUNT", "2")])).unwrap(), Some(Shard { index: 0, count: 2 }));
        assert!(Shard::from_vars(env(&[("JOB_COMPLETION_INDEX", "0")])).is_err());
        assert_eq!(Shard::from_vars(env(&[])).unwrap(), None);
    }

    #[test]
    fn resume_refuses_other_settings_and_drops_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        let s = json!({"samples": 10, "noise": {"fixed": 0.1}});
        let mut r = RunDir::open(&d, &s).unwrap();
        r.append(0, &json!({"x": 1})).unwrap();
        r.append(2, &json!({"x": 3})).unwrap();
        drop(r);
        std::fs::OpenOptions::new().append(true).open(d.join(RESULTS)).unwrap().write_all(b"{\"index\":4,\"rec").unwrap();
        let r = RunDir::open(&d, &s).unwrap();
        assert!(r.is_done(0) && r.is_done(2) && !r.is_done(4) && r.done_count() == 2);
        let recs: Vec<(usize, serde_json::Value)> = r.records().unwrap();
        assert_eq!(recs[1], (2, json!({"x": 3})));
        drop(r);
        let err = RunDir::open(&d, &json!({"samples": 5, "noise": {"fixed": 0.2}})).err().unwrap().to_string();
        assert!(err.contains("noise.fixed") && err.contains("samples"), "{err}");
    }

    #[test]
    fn merged_shards_equal_single_run() {
        let tmp = tempfile::tempdir().unwrap();
        let s = json!({"n": 7});
        let mut single = RunDir::open(&tmp.path().join("single"), &s).unwrap();
        let mut shards = Vec::new();
        for i in 0..7 {
            single.append(i, &json!({"v": i * i})).unwrap();
        }
        for k in 0..3 {
            let sh = Shard { index: k, count: 3 };
            let d = tmp.path().join(format!("s{k}"));
            let mut r = RunDir::open(&d, &s).unwrap();
            for i in (0..7).rev().filter(|&i| sh.owns(i)) {
                r.append(i, &json!({"v": i * i})).unwrap();
            }
            shards.push(d);
        }
        let out = tmp.path().join("merged");
        assert_eq!(merge(&out, &shards).unwrap(), 7);
        for f in [SETTINGS, RESULTS] {
            assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(tmp.path().join("single").join(f)).unwrap(), "{f}");
        }
    }
}
