//! Memory-aware batching: pick a batch size from the device's free memory and an estimate of the
//! bytes one prompt row needs, and back off (halve the batch, retry) when an allocation fails
//! instead of crashing a long sweep.
//!
//! Free memory comes from the CUDA driver (`cuMemGetInfo`) in `--features cuda` builds, and from
//! `MemAvailable` in /proc/meminfo on the CPU. The per-row estimate is deliberately coarse (it
//! counts the largest live activations of one forward pass); [`run_adaptive`] covers the error.

use crate::model::ModelConfig;
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Fraction of the free memory a batch may use; the rest is headroom for the allocator,
/// fragmentation and whatever else runs on the device.
pub const MEMORY_FRACTION: f64 = 0.7;

/// Free bytes on `device` right now.
pub fn free_memory(device: &Device) -> Result<u64> {
    match device {
        Device::Cpu => {
            let path = "/proc/meminfo";
            let text =
                std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
            parse_mem_available(&text).ok_or_else(|| Error::file(path, "no `MemAvailable:` line"))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let (free, _total) = ctx
                .mem_get_info()
                .map_err(|e| Error::Model(format!("cuMemGetInfo: {e}")))?;
            Ok(free as u64)
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::param(
            "device",
            format!("free memory of {:?} is unknown", other.location()),
        )),
    }
}

/// `MemAvailable` of a /proc/meminfo text, in bytes (the file gives kB).
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// Bytes one prompt row of `tokens` tokens needs during an f32 forward pass: the residual stream
/// and attention/MLP intermediates of one layer (freed layer by layer), the attention scores and
/// probabilities, `captured_sites` retained activations of width d, and one row of logits with
/// the f64 normaliser. Times 2 for the temporaries candle keeps alive within an op chain.
pub fn bytes_per_row(cfg: &ModelConfig, tokens: usize, captured_sites: usize) -> u64 {
    let (t, d, ff) = (
        tokens as u64,
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
    );
    let heads = cfg.num_heads as u64;
    let qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) as u64 * cfg.head_dim as u64;
    let layer = t * (4 * d + qkv + 3 * ff) + 2 * heads * t * t;
    let captures = captured_sites as u64 * t * d;
    let logits = cfg.vocab_size as u64 * 3;
    let f32_values = layer + captures + logits + cfg.vocab_size as u64 * 2; // f64 = two f32 slots
    2 * 4 * f32_values
}

/// Largest batch that fits `MEMORY_FRACTION` of `free_bytes` at `row_bytes` per row, clamped to
/// `1..=max_batch`.
pub fn batch_for(free_bytes: u64, row_bytes: u64, max_batch: usize) -> usize {
    let budget = (free_bytes as f64 * MEMORY_FRACTION) as u64;
    let fit = budget / row_bytes.max(1);
    (fit as usize).clamp(1, max_batch.max(1))
}

/// Batch size for `device` now: [`free_memory`] and [`bytes_per_row`] through [`batch_for`].
pub fn choose_batch(
    device: &Device,
    cfg: &ModelConfig,
    tokens: usize,
    captured_sites: usize,
    max_batch: usize,
) -> Result<usize> {
    Ok(batch_for(
        free_memory(device)?,
        bytes_per_row(cfg, tokens, captured_sites),
        max_batch,
    ))
}

/// Whether an error is a failed allocation (CUDA out of memory, or an allocation error that
/// candle reported) that a smaller batch could avoid. Matched on the message because the error
/// may have been wrapped into a file or model error on its way up.
pub fn is_allocation_failure(e: &Error) -> bool {
    let msg = e.to_string().to_ascii_lowercase();
    [
        "out of memory",
        "out_of_memory",
        "memory allocation",
        "failed to allocate",
        "alloc failed",
    ]
    .iter()
    .any(|p| msg.contains(p))
}

/// How an adaptive run went: the batch size it ended with and how many times it backed off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveStats {
    pub initial_batch: usize,
    pub final_batch: usize,
    pub backoffs: usize,
}

/// Apply `f` to consecutive chunks of `items`, concatenating its per-item results in order.
/// When a chunk fails with an allocation failure the batch is halved and the same chunk retried;
/// other errors, a failure at batch size 1, or a result count that differs from the chunk's
/// length, are returned as errors.
pub fn run_adaptive<T, R>(
    items: &[T],
    initial_batch: usize,
    f: impl FnMut(&[T]) -> Result<Vec<R>>,
) -> Result<Vec<R>> {
    Ok(run_adaptive_stats(items, initial_batch, f)?.0)
}

/// [`run_adaptive`], also returning [`AdaptiveStats`].
pub fn run_adaptive_stats<T, R>(
    items: &[T],
    initial_batch: usize,
    mut f: impl FnMut(&[T]) -> Result<Vec<R>>,
) -> Result<(Vec<R>, AdaptiveStats)> {
    if initial_batch == 0 {
        return Err(Error::param(
            "batch",
            "initial batch size must be at least 1",
        ));
    }
    let mut batch = initial_batch;
    let mut backoffs = 0;
    let mut out = Vec::with_capacity(items.len());
    let mut start = 0;
    while start < items.len() {
        let chunk = &items[start..(start + batch).min(items.len())];
        match f(chunk) {
            Ok(rs) if rs.len() == chunk.len() => {
                out.extend(rs);
                start += chunk.len();
            }
            Ok(rs) => {
                return Err(Error::Model(format!(
                    "batch function returned {} results for {} items",
                    rs.len(),
                    chunk.len()
                )))
            }
            Err(e) if is_allocation_failure(&e) && batch > 1 => {
                batch = batch.div_ceil(2).min(chunk.len().div_ceil(2));
                backoffs += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((
        out,
        AdaptiveStats {
            initial_batch,
            final_batch: batch,
            backoffs,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake device that holds `capacity` rows: larger chunks fail like a CUDA allocation.
    fn fake_forward(
        capacity: usize,
        calls: &mut Vec<usize>,
    ) -> impl FnMut(&[u32]) -> Result<Vec<u64>> + '_ {
        move |chunk: &[u32]| {
            calls.push(chunk.len());
            if chunk.len() > capacity {
                return Err(Error::Candle(candle_core::Error::Msg(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
                )));
            }
            Ok(chunk.iter().map(|&x| x as u64 * x as u64).collect())
        }
    }

    #[test]
    fn backs_off_and_keeps_order() {
        let items: Vec<u32> = (0..37).collect();
        let mut calls = Vec::new();
        let (out, stats) = run_adaptive_stats(&items, 32, fake_forward(5, &mut calls)).unwrap();
        assert_eq!(
            out,
            items
                .iter()
                .map(|&x| x as u64 * x as u64)
                .collect::<Vec<_>>()
        );
        assert_eq!(stats.final_batch, 4, "32 → 16 → 8 → 4");
        assert_eq!(stats.backoffs, 3);
        assert_eq!(&calls[..4], &[32, 16, 8, 4]);
        assert!(calls[3..].iter().all(|&c| c <= 5));
    }

    #[test]
    fn no_backoff_when_everything_fits() {
        let items: Vec<u32> = (0..10).collect();
        let mut calls = Vec::new();
        let (out, stats) = run_adaptive_stats(&items, 4, fake_forward(100, &mut calls)).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(calls, vec![4, 4, 2]);
        assert_eq!(
            stats,
            AdaptiveStats {
                initial_batch: 4,
                final_batch: 4,
                backoffs: 0
            }
        );
    }

    #[test]
    fn gives_up_at_batch_one() {
        let items: Vec<u32> = (0..3).collect();
        let mut calls = Vec::new();
        let e = run_adaptive(&items, 8, fake_forward(0, &mut calls)).unwrap_err();
        assert!(is_allocation_failure(&e));
        assert_eq!(
            calls,
            vec![3, 2, 1],
            "a short first chunk halves from its own length"
        );
    }

    #[test]
    fn other_errors_are_not_retried() {
        let mut calls = 0;
        let e = run_adaptive(&[1u32, 2, 3], 2, |_| -> Result<Vec<u32>> {
            calls += 1;
            Err(Error::param("x", "bad"))
        })
        .unwrap_err();
        assert!(!is_allocation_failure(&e));
        assert_eq!(calls, 1);
        assert!(run_adaptive(&[1u32], 0, |c| Ok(c.to_vec())).is_err());
        assert!(
            run_adaptive(&[1u32, 2], 2, |_| Ok(vec![0u8])).is_err(),
            "wrong result count"
        );
    }

    #[test]
    fn meminfo_and_budget() {
        let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(batch_for(1000, 70, 64), 10);
        assert_eq!(batch_for(1000, 7000, 64), 1, "never below one row");
        assert_eq!(batch_for(u64::MAX / 2, 1, 64), 64, "clamped to the maximum");
        let free = free_memory(&Device::Cpu).unwrap();
        assert!(free > 0);
    }

    #[test]
    fn estimate_grows_with_tokens_and_captures() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/reference/tiny/llama/config.json"
        );
        let cfg = ModelConfig::from_hf_json(std::path::Path::new(path)).unwrap();
        let a = bytes_per_row(&cfg, 8, 0);
        assert!(bytes_per_row(&cfg, 16, 0) > a);
        assert!(bytes_per_row(&cfg, 8, 4) > a);
    }
}
