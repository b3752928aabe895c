//! What scoring needs from a row of logits without materialising its log-softmax: the largest
//! logit, its index and the log of the normaliser. The eval path reads a handful of tokens'
//! log-probabilities per position; candle's composed log-softmax (max, subtract, exp, widen to
//! f64, sum, log, subtract, argmax) made seven passes and four vocabulary-sized tensors per
//! position, on a 262k vocabulary (Gemma-3) the largest cost of scoring every token.

use rayon::prelude::*;

/// One row's softmax summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowNormaliser {
    /// The largest logit (NaNs ignored).
    pub max: f32,
    /// Index of the largest logit, the first one on ties.
    pub argmax: usize,
    /// `ln Σ_j exp(x_j − max)`, the exponentials summed in f64 (a running f32 sum over 50k-262k
    /// terms is off by ~1e-4 relative). NaN when the row holds a NaN.
    pub log_sum: f64,
}

impl RowNormaliser {
    /// `log p` of a token whose logit is `logit`, rounded as biaslens's composed
    /// `log_softmax_accurate` rounds it: `(logit − max) − log_sum` in f32.
    pub fn log_prob(&self, logit: f32) -> f32 {
        (logit - self.max) - self.log_sum as f32
    }
}

/// The summary of every `vocab`-long row of `logits`, rows in parallel. With AVX-512 the
/// exponentials are a polynomial (within 2 ulp of `f32::exp`); without it, `f32::exp`.
pub fn row_normalisers(logits: &[f32], vocab: usize) -> Vec<RowNormaliser> {
    assert!(
        vocab > 0 && logits.len().is_multiple_of(vocab),
        "row_normalisers: rows are not {vocab} long"
    );
    let fast = crate::available();
    logits
        .par_chunks_exact(vocab)
        .map(|row| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: AVX-512F is present (checked by `available`).
                return unsafe { avx512::normaliser(row) };
            }
            let _ = fast;
            scalar_normaliser(row)
        })
        .collect()
}

/// The reference: plain loops and `f32::exp`.
pub fn scalar_normaliser(row: &[f32]) -> RowNormaliser {
    let mut max = f32::NEG_INFINITY;
    let mut argmax = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            max = x;
            argmax = i;
        }
    }
    let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
    RowNormaliser {
        max,
        argmax,
        log_sum: sum.ln(),
    }
}

/// Attention's row softmax in place: `row += mask`, then `exp(row − max) / Σ`, keys masked
/// with −inf exactly 0. The scalar form is the reference for the AVX-512 one.
pub fn masked_softmax_in_place(row: &mut [f32], mask: &[f32]) {
    assert_eq!(
        row.len(),
        mask.len(),
        "masked_softmax: row and mask differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::available() {
        // SAFETY: AVX-512F is present.
        return unsafe { avx512::masked_softmax(row, mask) };
    }
    masked_softmax_scalar(row, mask)
}

pub fn masked_softmax_scalar(row: &mut [f32], mask: &[f32]) {
    let mut max = f32::NEG_INFINITY;
    for (s, &m) in row.iter_mut().zip(mask) {
        *s += m;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in row.iter_mut() {
        // Masked keys (-inf) are exactly 0: skip their exp.
        *s = if *s == f32::NEG_INFINITY {
            0.0
        } else {
            (*s - max).exp()
        };
        sum += *s;
    }
    for s in row.iter_mut() {
        *s /= sum;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::RowNormaliser;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn normaliser(row: &[f32]) -> RowNormaliser {
        let max = row_max(row);
        let argmax = first_index_of(row, max);
        RowNormaliser {
            max,
            argmax,
            log_sum: exp_sum(row, max).ln(),
        }
    }

    /// [`super::masked_softmax_in_place`] 16 keys at a time (the sum's order differs from the
    /// scalar loop's, and the exponentials by ≤ 2 ulp).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn masked_softmax(row: &mut [f32], mask: &[f32]) {
        let n = row.len().min(mask.len());
        let body = n - n % 16;
        let (rp, mp) = (row.as_mut_ptr(), mask.as_ptr());
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..body).step_by(16) {
            let s = _mm512_add_ps(_mm512_loadu_ps(rp.add(i)), _mm512_loadu_ps(mp.add(i)));
            _mm512_storeu_ps(rp.add(i), s);
            vmax = _mm512_max_ps(s, vmax);
        }
        let mut max = _mm512_reduce_max_ps(vmax);
        for i in body..n {
            row[i] += mask[i];
            max = max.max(row[i]);
        }
        let (vm, neg_inf) = (_mm512_set1_ps(max), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut vsum = _mm512_setzero_ps();
        for i in (0..body).step_by(16) {
            let s = _mm512_loadu_ps(rp.add(i));
            // Unordered compare: a NaN lane is kept (and poisons the sum, as in the scalar form).
            let live = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(s, neg_inf);
            let e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(s, vm)));
            _mm512_storeu_ps(rp.add(i), e);
            vsum = _mm512_add_ps(vsum, e);
        }
        let mut sum = _mm512_reduce_add_ps(vsum);
        for s in &mut row[body..n] {
            *s = if *s == f32::NEG_INFINITY {
                0.0
            } else {
                (*s - max).exp()
            };
            sum += *s;
        }
        let vs = _mm512_set1_ps(sum);
        for i in (0..body).step_by(16) {
            _mm512_storeu_ps(rp.add(i), _mm512_div_ps(_mm512_loadu_ps(rp.add(i)), vs));
        }
        for s in &mut row[body..n] {
            *s /= sum;
        }
    }

    /// Largest value; `_mm512_max_ps(x, acc)` returns `acc` where `x` is NaN.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(row: &[f32]) -> f32 {
        let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            acc = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), acc);
        }
        let mut max = _mm512_reduce_max_ps(acc);
        for &x in tail {
            if x > max {
                max = x;
            }
        }
        max
    }

    /// First index holding `value` (0 when none does: a row of NaNs or -inf).
    #[target_feature(enable = "avx512f")]
    unsafe fn first_index_of(row: &[f32], value: f32) -> usize {
        let target = _mm512_set1_ps(value);
        let chunks = row.chunks_exact(16);
        let tail_start = row.len() - chunks.remainder().len();
        for (ci, c) in chunks.enumerate() {
            let hits = _mm512_cmpeq_ps_mask(_mm512_loadu_ps(c.as_ptr()), target);
            if hits != 0 {
                return ci * 16 + hits.trailing_zeros() as usize;
            }
        }
        row[tail_start..]
            .iter()
            .position(|&x| x == value)
            .map_or(0, |i| tail_start + i)
    }

    /// `Σ exp(x − max)` in f64 (16 exponentials at a time, widened to two f64 accumulators).
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_sum(row: &[f32], max: f32) -> f64 {
        let vmax = _mm512_set1_ps(max);
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), vmax));
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            let upper = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(upper)));
        }
        let mut sum = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
        for &x in tail {
            sum += f64::from((x - max).exp());
        }
        sum
    }

    /// `exp(x)` for 16 lanes: `x = n·ln2 + r`, `|r| ≤ ln2/2`, Cephes' degree-6 polynomial for
    /// `exp(r)`, then `· 2ⁿ` by `scalef` (which flushes to 0 below the f32 range). NaN in, NaN
    /// out (`_mm512_max_ps` returns its second operand when either is NaN).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
        let x = _mm512_min_ps(_mm512_set1_ps(88.7), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so that n·ln2 is exact in the first.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let rr = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, rr, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }

    #[cfg(test)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_lanes(x: [f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data;

    /// Against f64 arithmetic on rows of every tail length, with logits spread over ±30.
    #[test]
    fn matches_f64_reference() {
        for vocab in [1, 15, 16, 17, 100, 4099] {
            let logits: Vec<f32> = test_data(3 * vocab, vocab)
                .iter()
                .map(|v| v * 60.0)
                .collect();
            let got = row_normalisers(&logits, vocab);
            for (row, g) in logits.chunks_exact(vocab).zip(&got) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let argmax = row.iter().position(|&x| x == max).unwrap();
                let sum: f64 = row
                    .iter()
                    .map(|&x| (f64::from(x) - f64::from(max)).exp())
                    .sum();
                assert_eq!((g.max, g.argmax), (max, argmax), "vocab {vocab}");
                assert!(
                    (g.log_sum - sum.ln()).abs() < 1e-6,
                    "vocab {vocab}: {} vs {}",
                    g.log_sum,
                    sum.ln()
                );
                let scalar = scalar_normaliser(row);
                assert_eq!((scalar.max, scalar.argmax), (max, argmax));
                assert!((scalar.log_sum - sum.ln()).abs() < 1e-6);
            }
        }
    }

    /// Ties go to the first index; very negative logits add nothing; a NaN poisons the sum.
    #[test]
    fn ties_underflow_and_nan() {
        let mut row = vec![-200.0f32; 40];
        row[5] = 3.0;
        row[37] = 3.0;
        let g = row_normalisers(&row, 40)[0];
        assert_eq!((g.max, g.argmax), (3.0, 5));
        assert!((g.log_sum - 2f64.ln()).abs() < 1e-7, "{}", g.log_sum);
        row[20] = f32::NAN;
        assert!(row_normalisers(&row, 40)[0].log_sum.is_nan());
        let scalar = scalar_normaliser(&row);
        assert!(scalar.log_sum.is_nan());
    }

    /// The AVX-512 row softmax against the scalar one, with masked keys and every tail length.
    #[test]
    fn masked_softmax_matches_scalar() {
        if !crate::available() {
            eprintln!("no AVX-512: only the scalar softmax exists here, nothing to compare");
            return;
        }
        for len in [1, 7, 16, 33, 200] {
            let row: Vec<f32> = test_data(len, len).iter().map(|v| v * 20.0).collect();
            let mask: Vec<f32> = (0..len)
                .map(|i| if i % 3 == 2 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let (mut fast, mut slow) = (row.clone(), row.clone());
            masked_softmax_in_place(&mut fast, &mask);
            masked_softmax_scalar(&mut slow, &mask);
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                if mask[i] == f32::NEG_INFINITY {
                    assert_eq!(*f, 0.0, "masked key {i} of {len}");
                }
                assert!(
                    (f - s).abs() <= 1e-6 * s.max(1e-3),
                    "len {len} key {i}: {f} vs {s}"
                );
            }
            let total: f32 = fast.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "len {len}: sums to {total}");
        }
    }

    /// The polynomial against `f32::exp` on a grid over the range scoring uses (x − max ≤ 0),
    /// down to where results are subnormal.
    #[test]
    fn exponential_within_two_ulp() {
        if !crate::available() {
            eprintln!("no AVX-512: the polynomial is never used here");
            return;
        }
        let xs: Vec<f32> = (0..16 * 1_100).map(|i| -(i as f32) * 0.005).collect();
        for lanes in xs.chunks_exact(16) {
            let x: [f32; 16] = lanes.try_into().unwrap();
            // SAFETY: AVX-512F checked above.
            let got = unsafe { avx512::exp_lanes(x) };
            for (&xi, &e) in x.iter().zip(&got) {
                let want = xi.exp();
                let ulp = (want.to_bits() as i64 - e.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({xi}) = {e}, want {want} ({ulp} ulp)");
            }
        }
    }
}
