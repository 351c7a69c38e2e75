//! Reload outcomes: applied, rejected, and when the last one applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Reload outcomes, for monitoring.
#[derive(Debug, Default)]
pub struct ReloadStats {
    successes: AtomicU64,
    failures: AtomicU64,
    last_success_unix: AtomicU64,
}

impl ReloadStats {
    /// Counts a rejected reload.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads applied.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Reloads rejected.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Unix time in seconds of the last applied reload (or the start).
    pub fn last_success_unix(&self) -> u64 {
        self.last_success_unix.load(Ordering::Relaxed)
    }

    /// Counts an applied reload.
    pub fn record_success(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.mark_success_time();
    }

    /// Marks now as the last success (the start counts as one).
    pub fn mark_success_time(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success_unix.store(now, Ordering::Relaxed);
    }
}
