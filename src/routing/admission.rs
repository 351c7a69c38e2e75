//! Admission counts: a listener's open clients (`max_connections`) and the
//! one-atomic-step check both it and an endpoint's limit use.

use crate::log_limit::LogLimit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A listener's open clients across all workers: one process-wide atomic,
/// kept across reloads by listener name. Counted even without a limit, so a
/// limit that a reload adds sees the clients already open.
#[derive(Debug)]
pub struct ClientCount {
    open: AtomicU64,
    /// "At max_connections" lines: one every 10 s.
    pub reject_log: LogLimit,
}

impl Default for ClientCount {
    fn default() -> Self {
        ClientCount {
            open: AtomicU64::new(0),
            reject_log: LogLimit::new(Duration::from_secs(10)),
        }
    }
}

impl ClientCount {
    /// Clients open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts one more client until the guard is dropped, unless `limit`
    /// are open already (then `None`): one atomic step, so workers racing
    /// for the last slot never overshoot.
    pub fn try_admit(self: &Arc<Self>, limit: Option<u64>) -> Option<ClientGuard> {
        count_under(&self.open, limit).then(|| ClientGuard(Arc::clone(self)))
    }
}

/// Adds one to `count` unless that would take it past `limit`; returns
/// whether it did. Without a limit it is one atomic add; with one, a
/// compare-and-swap loop, so racing workers never overshoot.
pub(super) fn count_under(count: &AtomicU64, limit: Option<u64>) -> bool {
    match limit {
        None => {
            count.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(max) => count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok(),
    }
}

/// Holds one client's place in a [`ClientCount`].
#[derive(Debug)]
pub struct ClientGuard(Arc<ClientCount>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
