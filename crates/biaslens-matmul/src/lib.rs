//! The AVX-512 f32 kernel behind biaslens's `model::matmul` (its doc says why and how; its
//! tests check it against f64 sums and candle's matmul). A crate of its own so that it is
//! compiled with optimisation even in biaslens's quickly built dev profile.

/// Output columns per packed weight panel (two 16-lane registers).
const NR: usize = 32;
/// Output rows per register block.
const MR: usize = 12;
/// k-block length: a packed panel slice of `KC × NR` floats (32 KiB) stays near the core.
const KC: usize = 256;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = MR * 8;
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
    use super::{pack_panels, KC, MR, NR, ROWS_PER_TASK};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    pub fn matmul_nt(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let packed = pack_panels(w, n, k);
        let mut c = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return c;
        }
        c.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, block)| {
                let row0 = task * ROWS_PER_TASK;
                let rows = block.len() / n;
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    for p in 0..n.div_ceil(NR) {
                        let panel = &packed[(p * k + k0) * NR..(p * k + k0 + kc) * NR];
                        let cols = NR.min(n - p * NR);
                        for i in (0..rows).step_by(MR) {
                            let r = MR.min(rows - i);
                            let a_block = &a[(row0 + i) * k + k0..];
                            let c_block = &mut block[i * n + p * NR..];
                            // SAFETY: `available()` checked AVX-512F before any call reaches
                            // here; the kernel reads r rows of `a_block` at stride k (kc each),
                            // kc × NR floats of `panel`, and writes r rows of `cols` floats of
                            // `c_block` at stride n, all inside the slices (asserted below).
                            debug_assert!(a_block.len() >= (r - 1) * k + kc);
                            debug_assert!(c_block.len() >= (r - 1) * n + cols);
                            unsafe {
                                block_kernel(r, a_block, k, panel, kc, c_block, n, cols, k0 == 0)
                            };
                        }
                    }
                }
            });
        c
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
