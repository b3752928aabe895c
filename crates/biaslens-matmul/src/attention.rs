//! Masked softmax attention for the CPU eval path, fused per (row, head): scores, mask, softmax
//! and the weighted sum of values without leaving the head's cache-sized buffers. The two
//! products run through the register-blocked kernel; (row, head) pairs run on rayon's threads,
//! or on the caller's ([`attention_with`]).

use crate::parallel::{ForEach, Rayon, SharedOut};

/// The shapes of one attention call (queries already scaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Rows in the batch.
    pub rows: usize,
    /// Query heads; a multiple of `kv_heads` (grouped-query attention).
    pub heads: usize,
    pub kv_heads: usize,
    /// Query positions per row.
    pub queries: usize,
    /// Key positions per row (past + current).
    pub keys: usize,
    pub head_dim: usize,
}

/// `softmax(q kᵀ + mask) v` for `q [rows, heads, queries, head_dim]`, `k`, `v
/// [rows, kv_heads, keys, head_dim]` and an additive `mask [rows, queries, keys]` (0 or -inf,
/// every query with at least one 0), all row-major; returns `z [rows, queries, heads ×
/// head_dim]` (heads side by side, as the output projection reads them), or `None` without
/// AVX-512. The softmax is candle's (max, exp of the difference, sum, divide), so the result
/// differs from candle's composed attention only by the products' summation order.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    s: AttentionShape,
) -> Option<Vec<f32>> {
    attention_with(q, k, v, mask, s, &Rayon)
}

/// [`attention`] with its (row, head) pairs on `par`'s threads; the same result.
pub fn attention_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    s: AttentionShape,
    par: &dyn ForEach,
) -> Option<Vec<f32>> {
    let (t, tk, d) = (s.queries, s.keys, s.head_dim);
    assert!(
        s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
        "heads not a multiple of kv_heads"
    );
    assert_eq!(
        q.len(),
        s.rows * s.heads * t * d,
        "q is not [rows, heads, queries, dim]"
    );
    assert_eq!(
        k.len(),
        s.rows * s.kv_heads * tk * d,
        "k is not [rows, kv_heads, keys, dim]"
    );
    assert_eq!(v.len(), k.len(), "v and k differ in shape");
    assert_eq!(
        mask.len(),
        s.rows * t * tk,
        "mask is not [rows, queries, keys]"
    );
    if !crate::available() {
        return None;
    }
    let groups = s.heads / s.kv_heads;
    // Per query: one past its last readable key (scanned once, not once per head).
    let limits: Vec<usize> = mask
        .chunks_exact(tk)
        .map(|m| {
            m.iter()
                .rposition(|&x| x != f32::NEG_INFINITY)
                .map_or(1, |j| j + 1)
        })
        .collect();
    let width = s.heads * d;
    let mut z = vec![0f32; s.rows * t * width];
    let out = SharedOut::new(&mut z);
    par.for_each(s.rows * s.heads, &|rh| {
        let (r, h) = (rh / s.heads, rh % s.heads);
        let kv = r * s.kv_heads + h / groups;
        let qh = &q[rh * t * d..(rh + 1) * t * d];
        let kh = &k[kv * tk * d..(kv + 1) * tk * d];
        let vh = &v[kv * tk * d..(kv + 1) * tk * d];
        let mh = &mask[r * t * tk..(r + 1) * t * tk];
        let zh = head(qh, kh, vh, mh, &limits[r * t..(r + 1) * t], t, tk, d);
        for i in 0..t {
            // SAFETY: (row r, query i, head h) owns these d columns of z; no other pair writes them.
            let dst = unsafe { out.range((r * t + i) * width + h * d, d) };
            dst.copy_from_slice(&zh[i * d..(i + 1) * d]);
        }
    });
    Some(z)
}

/// Query rows per block: each block computes scores only up to its last readable key.
const QUERY_BLOCK: usize = 48;

/// One head: `[t, d]` output. Keys after a block's last unmasked one are skipped (causal and
/// tree masks leave the upper triangle out: about half of the products). Keys and values are
/// packed once per head; each block reads a prefix of the packed panels.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    limits: &[usize],
    t: usize,
    tk: usize,
    d: usize,
) -> Vec<f32> {
    use crate::avx512::{pack_rows, packed_rows_into};
    // kᵀ as panels of keys ([d][32 keys]); v as panels of its d columns ([tk][32]).
    let packed_k = crate::pack_panels(k, tk, d);
    let packed_v = pack_rows(v, tk, d);
    let mut out = vec![0f32; t * d];
    let mut scores = Vec::new();
    for i0 in (0..t).step_by(QUERY_BLOCK) {
        let rows = QUERY_BLOCK.min(t - i0);
        let block_mask = &mask[i0 * tk..(i0 + rows) * tk];
        let keys = limits[i0..i0 + rows].iter().copied().max().unwrap_or(1);
        scores.clear();
        scores.resize(rows * keys, 0.0);
        packed_rows_into(
            &q[i0 * d..(i0 + rows) * d],
            d,
            d,
            &packed_k,
            d,
            keys,
            &mut scores,
        );
        for (row, m) in scores
            .chunks_exact_mut(keys)
            .zip(block_mask.chunks_exact(tk))
        {
            // SAFETY: `head` runs only where AVX-512F is present (`attention` checks).
            unsafe { crate::softmax::avx512::masked_softmax(row, &m[..row.len()]) };
        }
        // probs [rows, keys] · v[..keys] [keys, d].
        let out_block = &mut out[i0 * d..(i0 + rows) * d];
        packed_rows_into(&scores, keys, keys, &packed_v, tk, d, out_block);
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
fn head(
    _: &[f32],
    _: &[f32],
    _: &[f32],
    _: &[f32],
    _: &[usize],
    _: usize,
    _: usize,
    _: usize,
) -> Vec<f32> {
    unreachable!("attention() returns None before reaching here without AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data as data;

    /// Against a scalar f64 attention, with grouped heads, a causal mask with a padded query
    /// and past keys, and shapes off every block size.
    #[test]
    fn matches_scalar_reference() {
        if !crate::available() {
            eprintln!("no AVX-512 on this CPU: the fused attention is never used here");
            return;
        }
        let s = AttentionShape {
            rows: 2,
            heads: 6,
            kv_heads: 2,
            queries: 61,
            keys: 70,
            head_dim: 24,
        };
        let (t, tk, d) = (s.queries, s.keys, s.head_dim);
        let q = data(s.rows * s.heads * t * d, 1);
        let k = data(s.rows * s.kv_heads * tk * d, 2);
        let v = data(s.rows * s.kv_heads * tk * d, 3);
        let past = tk - t;
        let mut mask = vec![f32::NEG_INFINITY; s.rows * t * tk];
        for r in 0..s.rows {
            for i in 0..t {
                let row = &mut mask[(r * t + i) * tk..(r * t + i + 1) * tk];
                if r == 1 && i == 0 {
                    row[past] = 0.0; // a pad query reads only itself
                    continue;
                }
                for m in row.iter_mut().take(past + i + 1) {
                    *m = 0.0;
                }
            }
        }
        let z = attention(&q, &k, &v, &mask, s).expect("AVX-512 is available");
        let groups = s.heads / s.kv_heads;
        let mut worst = 0f64;
        for r in 0..s.rows {
            for h in 0..s.heads {
                let kv = r * s.kv_heads + h / groups;
                for i in 0..t {
                    let qi = &q[((r * s.heads + h) * t + i) * d..][..d];
                    let mrow = &mask[(r * t + i) * tk..][..tk];
                    let scores: Vec<f64> = (0..tk)
                        .map(|j| {
                            let kj = &k[(kv * tk + j) * d..][..d];
                            let dot: f64 =
                                qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                            dot + mrow[j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..tk)
                            .map(|j| e[j] / sum * v[(kv * tk + j) * d + c] as f64)
                            .sum();
                        let got = z[(r * t + i) * s.heads * d + h * d + c] as f64;
                        worst = worst.max((got - want).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-5, "largest difference {worst}");
        let serial = attention_with(&q, &k, &v, &mask, s, &crate::parallel::Serial);
        assert_eq!(
            serial.as_deref(),
            Some(&z[..]),
            "the runner changed the result"
        );
    }
}
