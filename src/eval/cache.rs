//! A resumable layer in front of any [`LanguageModel`]: results are stored on disk per (model
//! weights hash, task) as JSONL, one line per request, keyed by a hash of the request's token ids, and
//! appended as soon as each chunk of requests is scored. A rerun, or a run after a crash, reads
//! the file and sends only the missing requests to the model. Keys are the request content
//! rather than the item index, so a changed data file or tokenizer can never return a stale
//! result, and a `--limit` run fills the cache for a later full one. Log-likelihoods are stored
//! as f64 bits so a resumed run is bit-identical to an uninterrupted one.

use crate::eval::lm::{LanguageModel, LlRequest, LlResult};
use crate::rundir::Shard;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One cached answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    key: String,
    /// `f64::to_bits` of the log-likelihood (exact round trip).
    bits: u64,
    /// The same value for people reading the file.
    logprob: f64,
    greedy: bool,
    n: usize,
}

/// Hex key of a request: sha256 of the context length and all token ids.
pub fn request_key(req: &LlRequest) -> String {
    let mut h = Sha256::new();
    h.update((req.context.len() as u64).to_le_bytes());
    for &t in req.context.iter().chain(&req.continuation) {
        h.update(t.to_le_bytes());
    }
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file of one (model, scorer, task) for a loaded model: keyed by its weights
/// ([`crate::model::ModelInfo::identity`]), so the same weights share their scored requests
/// whatever route loaded them (a GGUF, its HF export, an edited folder, a report's
/// base-plus-delta variant), and by the scorer's [`LanguageModel::cache_scope`], so results of
/// scorers whose bits differ stay apart.
pub fn model_cache_path(
    dir: &Path,
    info: &crate::model::ModelInfo,
    scope: &str,
    task: &str,
) -> PathBuf {
    let plain = cache_path(dir, info.identity(), task);
    if scope.is_empty() {
        return plain;
    }
    let mut folder = plain
        .parent()
        .map(Path::as_os_str)
        .unwrap_or_default()
        .to_owned();
    folder.push(format!("-{scope}"));
    PathBuf::from(folder).join(format!("{task}.jsonl"))
}

/// The cache file of one (model hash, task).
pub fn cache_path(dir: &Path, model_sha256: &str, task: &str) -> PathBuf {
    let short = &model_sha256[..model_sha256.len().min(16)];
    dir.join(short).join(format!("{task}.jsonl"))
}

/// Read a cache file; a truncated last line (a crash mid-write) is ignored, any other bad
/// line is an error naming it.
fn read_cache(path: &Path) -> Result<HashMap<String, LlResult>> {
    let mut map = HashMap::new();
    if !path.exists() {
        return Ok(map);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
    let complete = text.ends_with('\n');
    if !complete {
        // Drop the partial line so the next append starts on a fresh line.
        let keep = text.rfind('\n').map_or(0, |i| i + 1) as u64;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::file(path, e.to_string()))?;
        f.set_len(keep)
            .map_err(|e| Error::file(path, e.to_string()))?;
    }
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(l) => {
                let r = LlResult {
                    logprob: f64::from_bits(l.bits),
                    is_greedy: l.greedy,
                    n_tokens: l.n,
                };
                map.insert(l.key, r);
            }
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => return Err(Error::line(path, i + 1, format!("bad cache line: {e}"))),
        }
    }
    Ok(map)
}

/// Counters of one `loglikelihood` call, for the run record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub requests: usize,
    pub from_cache: usize,
    /// Requests left to other shards (answered with a placeholder, not scored) in a `--shard` run.
    #[serde(default)]
    pub other_shards: usize,
}

/// Wraps a model: answers from the cache file, scores the rest in chunks of about
/// `chunk_tokens` tokens (in lexicographic order so shared prefixes stay together), appends
/// each chunk's answers, and reports progress as (requests done, requests total).
pub struct CachedLm<'a> {
    inner: &'a mut dyn LanguageModel,
    file: Option<PathBuf>,
    chunk_tokens: usize,
    progress: Option<&'a mut dyn FnMut(usize, usize)>,
    shard: Shard,
    cache_only: bool,
    pub stats: CacheStats,
}

impl<'a> CachedLm<'a> {
    /// `file = None` disables caching but keeps chunked progress.
    pub fn new(
        inner: &'a mut dyn LanguageModel,
        file: Option<PathBuf>,
        chunk_tokens: usize,
    ) -> Self {
        CachedLm {
            inner,
            file,
            chunk_tokens: chunk_tokens.max(1),
            progress: None,
            shard: Shard::WHOLE,
            cache_only: false,
            stats: CacheStats::default(),
        }
    }

    /// Score only this shard's chunks: missing requests are cut into chunks exactly as an
    /// unsharded run would cut them and dealt round-robin (from an offset derived from the
    /// first request's key), so every request is
    /// scored in the same batch composition, hence bit for bit, as in the single run (batch
    /// shapes change float rounding by ~1e-5 nats). Requests of other shards' chunks are
    /// answered with a placeholder log-likelihood (0) and not sent to the model, so the metrics
    /// of such a run are meaningless: it fills its part of the cache, and the merged cache then
    /// gives the single-run result without scoring anything (`biaslens merge`). Shards must
    /// start from the same cache state as the single run they stand for (e.g. empty).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Answer from the cache alone: a request missing from it is an error (merging shards must
    /// never silently score what a shard did not).
    pub fn cache_only(mut self) -> Self {
        self.cache_only = true;
        self
    }

    pub fn with_progress(mut self, progress: &'a mut dyn FnMut(usize, usize)) -> Self {
        self.progress = Some(progress);
        self
    }

    fn append(&self, lines: &[Line]) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e.to_string()))?;
        }
        let mut buf = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut buf, l)?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, e.to_string()))?;
        f.write_all(&buf)
            .map_err(|e| Error::file(path, e.to_string()))?;
        f.sync_data()
            .map_err(|e| Error::file(path, e.to_string()))?;
        Ok(())
    }
}

impl LanguageModel for CachedLm<'_> {
    fn cache_scope(&self) -> &'static str {
        self.inner.cache_scope()
    }
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.tokenize(text)
    }
    fn tokenize_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.tokenize_plain(text)
    }
    fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }
    fn max_length(&self) -> usize {
        self.inner.max_length()
    }

    fn loglikelihood(&mut self, requests: &[LlRequest]) -> Result<Vec<LlResult>> {
        let cached = match &self.file {
            Some(p) => read_cache(p)?,
            None => HashMap::new(),
        };
        let keys: Vec<String> = requests.iter().map(request_key).collect();
        let mut out: Vec<Option<LlResult>> = keys.iter().map(|k| cached.get(k).copied()).collect();
        let total = requests.len();
        let mut done = out.iter().filter(|o| o.is_some()).count();
        self.stats.requests += total;
        self.stats.from_cache += done;
        if let Some(p) = self.progress.as_mut() {
            p(done, total);
        }
        let mut missing: Vec<usize> = (0..total).filter(|&i| out[i].is_none()).collect();
        if self.cache_only && !missing.is_empty() {
            return Err(Error::Model(format!(
                "{} of {total} requests are not in the result cache, and --cache-only scores \
                 nothing (run the evaluation without it first; under `biaslens merge`, a shard is \
                 missing or unfinished)",
                missing.len()
            )));
        }
        // Score each distinct request once (a duplicate scored in another chunk could differ in
        // the last bits, since packing makes a row depend on its neighbours) and copy the answer.
        let mut copies: HashMap<&str, Vec<usize>> = HashMap::new();
        missing.retain(|&i| {
            let same = copies.entry(keys[i].as_str()).or_default();
            same.push(i);
            same.len() == 1
        });
        missing.sort_by(|&a, &b| {
            let (ra, rb) = (&requests[a], &requests[b]);
            ra.context
                .iter()
                .chain(&ra.continuation)
                .cmp(rb.context.iter().chain(&rb.continuation))
        });
        let mut start = 0;
        // Deal chunks round-robin from a content-derived offset, so the first chunk of every
        // task (call) does not always land on shard 0.
        let mut n_chunks = missing.first().map_or(0, |&i| {
            usize::from_str_radix(&keys[i][..8.min(keys[i].len())], 16).unwrap_or(0)
        });
        while start < missing.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < missing.len() && (end == start || tokens < self.chunk_tokens) {
                let r = &requests[missing[end]];
                tokens += r.context.len() + r.continuation.len();
                end += 1;
            }
            let idx = &missing[start..end];
            let chunk_index = n_chunks;
            n_chunks += 1;
            if !self.shard.owns(chunk_index) {
                // Another shard scores this chunk, in exactly this composition.
                for &j in idx.iter().flat_map(|&i| &copies[keys[i].as_str()]) {
                    out[j] = Some(LlResult {
                        logprob: 0.0,
                        is_greedy: false,
                        n_tokens: requests[j].continuation.len(),
                    });
                    self.stats.other_shards += 1;
                    done += 1;
                }
                start = end;
                continue;
            }
            let chunk: Vec<LlRequest> = idx.iter().map(|&i| requests[i].clone()).collect();
            let res = self.inner.loglikelihood(&chunk)?;
            if res.len() != chunk.len() {
                return Err(Error::Model(format!(
                    "model returned {} results for {} requests",
                    res.len(),
                    chunk.len()
                )));
            }
            let lines: Vec<Line> = idx
                .iter()
                .zip(&res)
                .map(|(&i, r)| Line {
                    key: keys[i].clone(),
                    bits: r.logprob.to_bits(),
                    logprob: r.logprob,
                    greedy: r.is_greedy,
                    n: r.n_tokens,
                })
                .collect();
            self.append(&lines)?;
            for (&i, r) in idx.iter().zip(res) {
                for &j in &copies[keys[i].as_str()] {
                    out[j] = Some(r);
                    done += 1;
                }
            }
            if let Some(p) = self.progress.as_mut() {
                p(done, total);
            }
            start = end;
        }
        out.into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| Error::Model(format!("request {i} was not scored"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic stub: log-likelihood from the token ids; counts calls.
    struct Stub {
        scored: usize,
    }
    impl LanguageModel for Stub {
        fn tokenize(&self, t: &str) -> Result<Vec<u32>> {
            Ok(t.bytes().map(u32::from).collect())
        }
        fn tokenize_plain(&self, t: &str) -> Result<Vec<u32>> {
            self.tokenize(t)
        }
        fn bos_id(&self) -> Option<u32> {
            Some(0)
        }
        fn eos_id(&self) -> Option<u32> {
            None
        }
        fn max_length(&self) -> usize {
            64
        }
        fn loglikelihood(&mut self, r: &[LlRequest]) -> Result<Vec<LlResult>> {
            self.scored += r.len();
            Ok(r.iter()
                .map(|q| LlResult {
                    logprob: -(q.context.iter().chain(&q.continuation).sum::<u32>() as f64) / 7.0,
                    is_greedy: q.continuation.len() == 1,
                    n_tokens: q.continuation.len(),
                })
                .collect())
        }
    }

    fn reqs() -> Vec<LlRequest> {
        (1..20u32)
            .map(|i| LlRequest {
                context: vec![i, i + 1],
                continuation: vec![i; (i % 3 + 1) as usize],
            })
            .collect()
    }

    #[test]
    fn rerun_reads_everything_from_the_cache_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let file = cache_path(dir.path(), "abcdef0123456789ffff", "copa");
        let mut stub = Stub { scored: 0 };
        let first = CachedLm::new(&mut stub, Some(file.clone()), 8)
            .loglikelihood(&reqs())
            .unwrap();
        assert_eq!(stub.scored, 19);
        let mut stub2 = Stub { scored: 0 };
        let second = CachedLm::new(&mut stub2, Some(file.clone()), 8)
            .loglikelihood(&reqs())
            .unwrap();
        assert_eq!(stub2.scored, 0);
        assert_eq!(first, second);
        // A crash mid-line leaves a truncated last line: ignored, the rest still served.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("{\"key\":\"dead");
        std::fs::write(&file, text).unwrap();
        let mut stub3 = Stub { scored: 0 };
        let third = CachedLm::new(&mut stub3, Some(file), 8)
            .loglikelihood(&reqs())
            .unwrap();
        assert_eq!(stub3.scored, 0);
        assert_eq!(first, third);
    }

    #[test]
    fn a_corrupt_middle_line_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.jsonl");
        std::fs::write(&file, "not json\n{}\n").unwrap();
        let mut stub = Stub { scored: 0 };
        let err = CachedLm::new(&mut stub, Some(file), 8)
            .loglikelihood(&reqs())
            .unwrap_err();
        assert!(err.to_string().contains(":1:"), "{err}");
    }
}
