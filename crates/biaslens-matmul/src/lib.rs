//! The AVX-512 f32 kernels of biaslens's eval path: fused attention (its two products run on
//! the register-blocked kernel below, whose tested entry point is [`matmul_nt`]), the masked
//! softmax and log-softmax normalisers, SwiGLU and RMS norm. The projections no longer use the
//! kernel: candle's gemm with its AVX-512 kernels is faster at those shapes (biaslens's
//! docs/performance.md). A crate of its own so that it is compiled with optimisation even in
//! biaslens's quickly built dev profile.

/// Output columns per packed weight panel (two 16-lane registers).
const NR: usize = 32;
/// Output rows per register block.
const MR: usize = 12;
/// k-block length: a packed panel slice of `KC × NR` floats (32 KiB) stays near the core.
const KC: usize = 256;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = MR * 8;

mod attention;
pub mod elementwise;
pub mod parallel;
pub mod softmax;
pub use attention::{attention, attention_with, AttentionShape};

/// Deterministic values in [-0.5, 0.5) for the kernels' tests, here and in the main crate
/// (the same inputs in both, no random-number dependency).
#[doc(hidden)]
pub fn test_data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 1999) as f32 / 1999.0 - 0.5)
        .collect()
}

/// Whether this CPU runs the fast kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a [m, k] · w [n, k]ᵀ` (both row-major) → `[m, n]`, or `None` without AVX-512.
pub fn matmul_nt(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Option<Vec<f32>> {
    assert_eq!(a.len(), m * k, "a is not [m, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        Some(avx512::matmul_nt(a, m, k, w, n))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Pack `b [k, n]` (row-major, the untransposed operand) into the same panels as
/// [`pack_panels`] packs `bᵀ`: panel p is `[k][NR]`, rows of b cut into `NR`-column pieces.
fn pack_rows(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0f32; panels * k * NR];
    for p in 0..panels {
        let cols = NR.min(n - p * NR);
        for kk in 0..k {
            out[(p * k + kk) * NR..][..cols].copy_from_slice(&b[kk * n + p * NR..][..cols]);
        }
    }
    out
}

/// Pack `w [n, k]` into panels of `NR` columns: panel p is `[k][NR]` (zero-padded columns).
fn pack_panels(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0f32; panels * k * NR];
    for col in 0..n {
        let (p, j) = (col / NR, col % NR);
        let src = &w[col * k..(col + 1) * k];
        let panel = &mut out[p * k * NR..(p + 1) * k * NR];
        for (kk, &v) in src.iter().enumerate() {
            panel[kk * NR + j] = v;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    pub(crate) use super::pack_rows;
    use super::{pack_panels, KC, MR, NR, ROWS_PER_TASK};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    pub fn matmul_nt(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        matmul_panels(a, m, k, &pack_panels(w, n, k), n)
    }

    /// `a [m, k]` times the weight packed by [`pack_panels`] (`n` output columns).
    pub fn matmul_panels(a: &[f32], m: usize, k: usize, packed: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return c;
        }
        c.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, block)| rows_into(a, task * ROWS_PER_TASK, k, packed, n, block));
        c
    }

    /// Rows `row0..row0 + block.len() / n` of the product into `block`.
    fn rows_into(a: &[f32], row0: usize, k: usize, packed: &[f32], n: usize, block: &mut [f32]) {
        packed_rows_into(&a[row0 * k..], k, k, packed, k, n, block);
    }

    /// `block [rows, n]` = `a [rows, kdim]` (row stride `lda`) times the first `kdim` rows of
    /// packed panels whose own length is `panel_len` (≥ kdim): a product over a prefix of the
    /// packed operand's inner dimension, and over its first `n` columns.
    pub(crate) fn packed_rows_into(
        a: &[f32],
        lda: usize,
        kdim: usize,
        packed: &[f32],
        panel_len: usize,
        n: usize,
        block: &mut [f32],
    ) {
        assert!(
            kdim <= panel_len && kdim <= lda,
            "inner dimension beyond the operands"
        );
        let rows = block.len() / n;
        for k0 in (0..kdim).step_by(KC) {
            let kc = KC.min(kdim - k0);
            for p in 0..n.div_ceil(NR) {
                let panel = &packed[(p * panel_len + k0) * NR..(p * panel_len + k0 + kc) * NR];
                let cols = NR.min(n - p * NR);
                for i in (0..rows).step_by(MR) {
                    let r = MR.min(rows - i);
                    let a_block = &a[i * lda + k0..];
                    let c_block = &mut block[i * n + p * NR..];
                    // SAFETY: `available()` checked AVX-512F before any call reaches
                    // here; the kernel reads r rows of `a_block` at stride lda (kc each),
                    // kc × NR floats of `panel`, and writes r rows of `cols` floats of
                    // `c_block` at stride n, all inside the slices (asserted below).
                    assert!(a_block.len() >= (r - 1) * lda + kc);
                    assert!(c_block.len() >= (r - 1) * n + cols);
                    unsafe { block_kernel(r, a_block, lda, panel, kc, c_block, n, cols, k0 == 0) };
                }
            }
        }
    }

    /// Dispatch on the number of rows left (the register block is a const generic).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_kernel(
        rows: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        kc: usize,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        first: bool,
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        macro_rules! go {
            ($r:literal) => {
                kernel::<$r>(a, lda, b, kc, c, ldc, cols, first)
            };
        }
        match rows {
            12 => go!(12),
            11 => go!(11),
            10 => go!(10),
            9 => go!(9),
            8 => go!(8),
            7 => go!(7),
            6 => go!(6),
            5 => go!(5),
            4 => go!(4),
            3 => go!(3),
            2 => go!(2),
            _ => go!(1),
        }
    }

    /// C[R × cols] (+)= A[R × kc] · B[kc × NR]: R rows of 2 × 16 lanes held in registers.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        first: bool,
    ) {
        const { assert!(R <= MR) };
        let lanes = |from: usize| -> __mmask16 {
            match cols.saturating_sub(from) {
                0 => 0,
                c if c >= 16 => 0xffff,
                c => ((1u32 << c) - 1) as u16,
            }
        };
        let (m0, m1) = (lanes(0), lanes(16));
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        if !first {
            for r in 0..R {
                acc0[r] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                acc1[r] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
            }
        }
        for kk in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
        for r in 0..R {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc0[r]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc1[r]);
        }
    }
}
