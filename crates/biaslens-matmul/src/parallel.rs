//! How a kernel's independent pieces are spread over threads. The caller picks the runner, so a
//! kernel can run on rayon's pool, on the calling thread alone, or on another team: biaslens's
//! `mkl` build hands the kernels the OpenMP threads that run MKL's products, which otherwise
//! spin idle while the calling thread runs everything between two products.

use rayon::prelude::*;

/// Runs `f(i)` once for every `i` in `0..n`, in any order, possibly at the same time.
pub trait ForEach: Sync {
    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// rayon's global pool.
pub struct Rayon;

impl ForEach for Rayon {
    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).into_par_iter().for_each(f);
    }
}

/// The calling thread, in order.
pub struct Serial;

impl ForEach for Serial {
    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(f);
    }
}

/// An output buffer whose disjoint ranges are written by different pieces of one `for_each`.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: every user writes ranges that no other piece of the same call touches, and the
// buffer outlives the call (`for_each` returns only when every piece has run).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        SharedOut(buf.as_mut_ptr())
    }

    /// Over a vector's spare capacity, to be written in full before `set_len`.
    pub(crate) fn spare(buf: &mut Vec<f32>) -> Self {
        SharedOut(buf.as_mut_ptr())
    }

    /// # Safety
    /// `start` lies inside the buffer (or its capacity) and no other piece writes where the
    /// caller writes through the pointer.
    pub(crate) unsafe fn ptr(&self, start: usize) -> *mut f32 {
        self.0.add(start)
    }

    /// # Safety
    /// `start..start + len` lies inside the buffer and no other piece writes it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_index_runs_once() {
        for runner in [&Rayon as &dyn ForEach, &Serial] {
            let seen: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            runner.for_each(seen.len(), &|i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        }
    }
}
