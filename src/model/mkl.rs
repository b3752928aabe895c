//! Intel MKL's `sgemm` as the CPU matmul (cargo feature `mkl`; build.rs links it, harness/mkl.sh
//! installs it from PyPI).
//!
//! With the feature on, [`super::stable_matmul::matmul`] and the eval path's
//! [`super::matmul::x_wt`] hand every f32 CPU product that tracks no gradient to [`matmul`]: one
//! `cblas_sgemm` per matrix of the batch, reading both operands where they lie (a transposed
//! weight `w.t()` is passed as `CblasTrans`, not copied). Products that track a gradient keep
//! the stable path, so edits' gradients are unchanged.
//!
//! What the feature gives up: MKL picks its kernels and blocking per CPU, so results are no
//! longer bit-identical across machines (the default build's promise, `stable_matmul`), and the
//! stored snapshots (made by the default build) are not asserted under it. `MKL_CBWR=AVX2,STRICT`
//! makes MKL's own results reproducible on every CPU with AVX2, at some speed.

use crate::Result;
use biaslens_matmul::parallel::ForEach;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

extern "C" {
    // CBLAS, LP64 interface (32-bit integers): libmkl_intel_lp64.
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

extern "C" {
    // GNU OpenMP's entry point for `#pragma omp parallel` (libgomp, linked with MKL by build.rs):
    // runs `f(data)` on every thread of a team; 0 threads = the default team size.
    fn GOMP_parallel(
        f: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
        threads: u32,
        flags: u32,
    );
    fn omp_in_parallel() -> i32;
}

/// The OpenMP team that runs MKL's products, as a [`ForEach`] for the fused kernels. Between two
/// products that team's other threads spin waiting (about a quarter of the `mkl` forward's wall
/// time, docs/performance.md "Where the time goes"); handing them the element-wise passes and
/// the attention uses that time and keeps a second pool (rayon's) from competing with the
/// spinning threads for the cores. Inside a parallel region it runs the pieces in order.
pub struct OpenMp;

/// One `for_each` call as the team sees it: pieces are taken from a shared counter.
struct Job<'a> {
    n: usize,
    f: &'a (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    panicked: AtomicBool,
}

unsafe extern "C" fn run_job(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `OpenMp::for_each` keeps alive until the team is done.
    let job = unsafe { &*(data as *const Job) };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n || job.panicked.load(Ordering::Relaxed) {
            return;
        }
        // A panic must not unwind into C: it is caught and raised again on the caller's thread.
        if catch_unwind(AssertUnwindSafe(|| (job.f)(i))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
            return;
        }
    }
}

impl ForEach for OpenMp {
    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: a plain query of the OpenMP runtime.
        if n <= 1 || unsafe { omp_in_parallel() } != 0 {
            (0..n).for_each(f);
            return;
        }
        let job = Job {
            n,
            f,
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // SAFETY: `run_job` reads `job` only while GOMP_parallel runs, and GOMP_parallel returns
        // after every thread of the team has left it.
        unsafe { GOMP_parallel(run_job, &job as *const Job as *mut c_void, 0, 0) };
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a fused kernel panicked on an OpenMP thread");
        }
    }
}

/// Where one operand's matrices lie in its storage: a row-major or transposed (column-major)
/// matrix with leading dimension `ld`, repeated every `batch_stride` elements.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Operand {
    offset: usize,
    batch_stride: usize,
    trans: bool,
    ld: usize,
}

/// The BLAS description of a strided `[.., rows, cols]` view, or `None` when neither its rows nor
/// its columns are unit-strided or its batch dimensions do not fold into one stride.
fn operand(layout: &Layout) -> Option<Operand> {
    let (dims, stride) = (layout.dims(), layout.stride());
    let r = dims.len();
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (sr, sc) = (stride[r - 2], stride[r - 1]);
    let (trans, ld) = if (sc == 1 || cols == 1) && (rows == 1 || sr >= cols) {
        (false, if rows == 1 { cols } else { sr })
    } else if (sr == 1 || rows == 1) && (cols == 1 || sc >= rows) {
        (true, if cols == 1 { rows } else { sc })
    } else {
        return None;
    };
    // Batch dimensions of size > 1, innermost last, must nest: outer stride = inner stride ×
    // inner size (stride 0, a broadcast, nests with stride 0).
    let batch: Vec<(usize, usize)> = dims[..r - 2]
        .iter()
        .zip(&stride[..r - 2])
        .filter(|(d, _)| **d > 1)
        .map(|(d, s)| (*d, *s))
        .collect();
    for w in batch.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 {
            return None;
        }
    }
    Some(Operand {
        offset: layout.start_offset(),
        batch_stride: batch.last().map_or(0, |b| b.1),
        trans,
        ld: ld.max(1),
    })
}

/// `a [.., m, k] · b [.., k, n]` by MKL; `None` where it does not apply (not f32 on the CPU, a
/// gradient tracked, batch dimensions that differ, an empty product), and the caller takes its
/// own path. Operands whose layout BLAS cannot read are made contiguous first.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let rank = a.rank();
    if a.track_op()
        || b.track_op()
        || !a.device().is_cpu()
        || !b.device().is_cpu()
        || a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || rank < 2
        || b.rank() != rank
    {
        return Ok(None);
    }
    let (ad, bd) = (a.dims(), b.dims());
    let (m, k, n) = (ad[rank - 2], ad[rank - 1], bd[rank - 1]);
    if ad[..rank - 2] != bd[..rank - 2] || bd[rank - 2] != k {
        return Ok(None);
    }
    let batch: usize = ad[..rank - 2].iter().product();
    let fits = |x: usize| i32::try_from(x).is_ok();
    if batch * m * n == 0 || k == 0 || ![m, n, k].iter().all(|&x| fits(x)) {
        return Ok(None);
    }
    let a = if operand(a.layout()).is_some() {
        a.clone()
    } else {
        a.contiguous()?
    };
    let b = if operand(b.layout()).is_some() {
        b.clone()
    } else {
        b.contiguous()?
    };
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(da)), Storage::Cpu(CpuStorage::F32(db))) = (&*sa, &*sb)
    else {
        return Ok(None);
    };
    let (Some(oa), Some(ob)) = (operand(la), operand(lb)) else {
        return Ok(None);
    };
    if !fits(oa.ld) || !fits(ob.ld) {
        return Ok(None);
    }
    // The last element each operand's matrices reach must lie in its storage (candle's layouts
    // guarantee it; checked because the pointers below go to C).
    let reach = |o: &Operand, rows: usize, cols: usize| {
        let (outer, inner) = if o.trans { (cols, rows) } else { (rows, cols) };
        o.offset + (batch - 1) * o.batch_stride + (outer - 1) * o.ld + inner
    };
    if reach(&oa, m, k) > da.len() || reach(&ob, k, n) > db.len() {
        return Err(crate::Error::Model(
            "mkl matmul: a layout reaches past its storage".into(),
        ));
    }
    // Not zeroed: with β = 0 sgemm writes every element of C and reads none (BLAS's definition),
    // and zeroing it cost a memset of the whole output per product (2.6% of a forward's profile).
    let len = batch * m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let flag = |t: bool| if t { TRANS } else { NO_TRANS };
    for i in 0..batch {
        // SAFETY: both operands' matrices lie inside their slices (checked above) and `out`
        // holds `batch` row-major m × n matrices.
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                flag(oa.trans),
                flag(ob.trans),
                m as i32,
                n as i32,
                k as i32,
                1.0,
                da.as_ptr().add(oa.offset + i * oa.batch_stride),
                oa.ld as i32,
                db.as_ptr().add(ob.offset + i * ob.batch_stride),
                ob.ld as i32,
                0.0,
                out.as_mut_ptr().add(i * m * n),
                n as i32,
            );
        }
    }
    // SAFETY: the `batch` calls above wrote all `len` elements (β = 0: C is output only).
    unsafe { out.set_len(len) };
    let mut shape = ad[..rank - 2].to_vec();
    shape.extend([m, n]);
    Ok(Some(Tensor::from_vec(out, shape, a.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// f64 reference of `a · b` for `[batch, m, k] · [batch, k, n]`.
    fn reference(a: &Tensor, b: &Tensor) -> Vec<f64> {
        let a = a.to_dtype(DType::F64).unwrap();
        let b = b.to_dtype(DType::F64).unwrap();
        let (batch, m, k) = a.dims3().unwrap();
        let n = b.dim(2).unwrap();
        let av: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        let mut out = vec![0f64; batch * m * n];
        for p in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    out[(p * m + i) * n + j] = (0..k)
                        .map(|c| av[(p * m + i) * k + c] * bv[(p * k + c) * n + j])
                        .sum();
                }
            }
        }
        out
    }

    fn check(a: &Tensor, b: &Tensor) {
        let got = matmul(a, b)
            .unwrap()
            .expect("mkl declined an f32 CPU product");
        let want = reference(&a.contiguous().unwrap(), &b.contiguous().unwrap());
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }

    /// Row-major, transposed (a weight's `.t()`), narrowed and batched operands all read where
    /// they lie and agree with the f64 product; a one-row and a one-column product too.
    #[test]
    fn strided_layouts_match_the_f64_product() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 7, 33), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 19, 33), &dev).unwrap();
        let wt = w.transpose(1, 2).unwrap();
        // A weight's transpose is read in place as CblasTrans, not copied.
        let o = operand(wt.layout()).expect("a transposed weight is readable");
        assert!(o.trans && o.ld == 33 && o.batch_stride == 19 * 33, "{o:?}");
        check(&x, &wt);
        let y = Tensor::randn(0f32, 1.0, (3, 33, 19), &dev).unwrap();
        check(&x, &y);
        check(
            &x.transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(1, 2)
                .unwrap(),
            &y,
        );
        // A narrowed view: rows with a stride larger than their length.
        let wide = Tensor::randn(0f32, 1.0, (3, 7, 50), &dev).unwrap();
        check(&wide.narrow(2, 5, 33).unwrap(), &y);
        check(&x.narrow(1, 0, 1).unwrap(), &y);
        check(&x, &y.narrow(2, 3, 1).unwrap());
    }

    /// The OpenMP runner runs every piece exactly once, nested calls too, and a piece's panic
    /// reaches the caller.
    #[test]
    fn openmp_runs_every_piece_once() {
        let seen: Vec<AtomicUsize> = (0..999).map(|_| AtomicUsize::new(0)).collect();
        OpenMp.for_each(seen.len(), &|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
            OpenMp.for_each(2, &|_| {
                seen[i].fetch_add(10, Ordering::Relaxed);
            });
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 21));
        let caught =
            catch_unwind(|| OpenMp.for_each(8, &|i| assert!(i != 5, "piece 5 panics on purpose")));
        assert!(caught.is_err(), "a piece's panic was lost");
    }

    /// A layout BLAS cannot read (no unit stride) is copied, not refused.
    #[test]
    fn unreadable_layouts_are_made_contiguous() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 10), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (2, 10, 8), &dev).unwrap();
        let every_other = Tensor::randn(0f32, 1.0, (2, 6, 20), &dev)
            .unwrap()
            .reshape((2, 6, 10, 2))
            .unwrap()
            .narrow(3, 0, 1)
            .unwrap()
            .squeeze(3)
            .unwrap();
        assert!(operand(every_other.layout()).is_none());
        check(&every_other, &y);
        check(&x, &y);
    }
}
