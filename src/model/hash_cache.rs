//! Cached model hashes. Loading a model records two hashes: the sha256 of its files (kept in
//! every result) and the sha256 of its weights (its identity for deltas, see
//! [`super::weights_sha256`]); a registry alias is also checked against its file's known sha256.
//! Each reads every byte (100 MB to 1 GB: up to seconds without SHA instructions), so both are
//! cached on disk, keyed by the canonical path, size, modification time (ns) and inode of every
//! file they cover: a file rewritten in place gets a new mtime and one replaced by rename a new
//! inode, so a changed file is hashed again. (A change that restores size and mtime on the same
//! inode would go unseen; the cache guards against the wrong file, not against tampering.)
//!
//! The cache is `$XDG_CACHE_HOME/biaslens/model-hashes/` (else `~/.cache/biaslens/...`), one
//! small JSON file per model; without either variable, or when it cannot be written, the
//! hashes are computed on every load. Lookups are also memoised within the process.

use crate::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bumped when what a hash covers changes (old entries are then ignored).
const SCHEME: u32 = 1;

/// Which hash of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// sha256 of the file (GGUF) or of the weight files' hashes (HF directory).
    Files,
    /// sha256 of the loaded weights.
    Weights,
}

/// What identifies one file's content for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    inode: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Entry {
    scheme: u32,
    stamps: Vec<Stamp>,
    files_sha256: Option<String>,
    weights_sha256: Option<String>,
}

impl Entry {
    fn get(&self, kind: Kind) -> Option<&String> {
        match kind {
            Kind::Files => self.files_sha256.as_ref(),
            Kind::Weights => self.weights_sha256.as_ref(),
        }
    }
}

static MEMO: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

fn stamp(path: &Path) -> Result<Stamp> {
    let err = |e: std::io::Error| crate::Error::file(path, e.to_string());
    let canonical = path.canonicalize().map_err(err)?;
    let meta = std::fs::metadata(&canonical).map_err(err)?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        path: canonical,
        size: meta.len(),
        mtime_ns,
        inode,
    })
}

fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("biaslens/model-hashes"))
}

/// The `kind` hash of the model made of `files`, from the cache when every file's stamp still
/// matches, else from `compute` (and then cached).
pub fn cached(
    files: &[PathBuf],
    kind: Kind,
    compute: impl FnOnce() -> Result<String>,
) -> Result<String> {
    cached_in(cache_dir().as_deref(), files, kind, compute)
}

fn cached_in(
    dir: Option<&Path>,
    files: &[PathBuf],
    kind: Kind,
    compute: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let stamps = files.iter().map(|f| stamp(f)).collect::<Result<Vec<_>>>()?;
    let key_text: Vec<String> = stamps
        .iter()
        .map(|s| s.path.to_string_lossy().into_owned())
        .collect();
    let key = crate::io::sha256_bytes(key_text.join("\n").as_bytes());
    let file = dir.map(|d| d.join(format!("{key}.json")));
    let memo = || MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let known = memo().as_ref().and_then(|m| m.get(&key).cloned());
    let mut entry = known
        .or_else(|| {
            let bytes = std::fs::read(file.as_ref()?).ok()?;
            serde_json::from_slice::<Entry>(&bytes).ok()
        })
        .filter(|e| e.scheme == SCHEME && e.stamps == stamps)
        .unwrap_or_else(|| Entry {
            scheme: SCHEME,
            stamps,
            ..Entry::default()
        });
    if let Some(h) = entry.get(kind) {
        return Ok(h.clone());
    }
    let h = compute()?;
    match kind {
        Kind::Files => entry.files_sha256 = Some(h.clone()),
        Kind::Weights => entry.weights_sha256 = Some(h.clone()),
    }
    if let Some(f) = &file {
        // Best effort: a cache that cannot be written only costs time.
        if let Ok(bytes) = serde_json::to_vec_pretty(&entry) {
            let _ = crate::io::write_atomic(f, &bytes);
        }
    }
    memo().get_or_insert_with(HashMap::new).insert(key, entry);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash is computed once per file content: the second lookup comes from the cache, a
    /// rewritten file is hashed again.
    #[test]
    fn hashes_are_cached_until_the_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("m.bin");
        let cache = tmp.path().join("cache");
        std::fs::write(&f, b"one").unwrap();
        let files = vec![f.clone()];
        let get = |calls: &mut usize| {
            cached_in(Some(&cache), &files, Kind::Files, || {
                *calls += 1;
                crate::io::sha256_file(&f)
            })
            .unwrap()
        };
        let mut calls = 0;
        let a = get(&mut calls);
        assert_eq!(get(&mut calls), a);
        assert_eq!(calls, 1);
        // Another process: the entry comes from the cache file.
        MEMO.lock().unwrap().take();
        assert_eq!(get(&mut calls), a);
        assert_eq!(calls, 1);
        std::fs::write(&f, b"two, longer").unwrap();
        let b = get(&mut calls);
        assert_eq!(calls, 2);
        assert_eq!(b, crate::io::sha256_bytes(b"two, longer"));
    }
}
