//! The work counter: passes and token-layers a transformer (and its clones) ran, read by cost
//! tables.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counted work: `passes` (calls that run layers: forward, forward_resume, forward_from_layer)
/// and `token_layers` (rows × tokens × layers run, the unit matmul work scales with).
#[derive(Debug, Default)]
pub struct WorkCounter {
    passes: AtomicU64,
    token_layers: AtomicU64,
}

/// A reading of a [`WorkCounter`]; subtract two readings to get the work in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub passes: u64,
    pub token_layers: u64,
}

impl WorkCounter {
    pub(super) fn record(&self, token_layers: u64) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.token_layers.fetch_add(token_layers, Ordering::Relaxed);
    }
    pub fn read(&self) -> Work {
        Work {
            passes: self.passes.load(Ordering::Relaxed),
            token_layers: self.token_layers.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for Work {
    type Output = Work;
    fn sub(self, earlier: Work) -> Work {
        Work {
            passes: self.passes.saturating_sub(earlier.passes),
            token_layers: self.token_layers.saturating_sub(earlier.token_layers),
        }
    }
}
