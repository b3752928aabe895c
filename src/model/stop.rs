//! A request to stop long work, shared by a model and everything running on it. The model's
//! passes check it before each layer and fail with [`Error::Interrupted`], so a measure, edit,
//! trace or eval on that model ends at its next layer. Whoever holds a clone asks for it: the
//! Python bindings do when Ctrl-C arrives while the work runs with the GIL released. Work that
//! keeps its results on disk (the eval cache, trace run directories) resumes from them.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Ask every pass that checks this flag to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Withdraw the request (before the next piece of work starts).
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Interrupted)` once a stop was requested.
    pub fn check(&self) -> Result<()> {
        if self.is_requested() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_request() {
        let a = StopFlag::default();
        let b = a.clone();
        assert!(b.check().is_ok());
        a.request();
        assert!(matches!(b.check(), Err(Error::Interrupted)));
        b.clear();
        assert!(a.check().is_ok());
    }
}
