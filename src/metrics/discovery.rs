//! The health of each discovery source, as `l4mesh_discovery_*` reports it:
//! whether it answers, when it last delivered a complete view, and how often
//! it failed. Written by the discovery thread, read at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// One source's state.
#[derive(Debug, Default)]
pub struct SourceStatus {
    up: AtomicBool,
    last_sync_ms: AtomicU64,
    errors: AtomicU64,
}

impl SourceStatus {
    /// The source answered and its endpoints are current.
    pub fn synced(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_sync_ms.store(now, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
    }

    /// The source failed (unreachable, timed out, refused): counted, and it
    /// is down until it syncs again. Its last endpoints keep serving.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
    }

    /// Whether its last attempt succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// When it last synced, in seconds since the Unix epoch (0: never).
    pub fn last_sync_seconds(&self) -> f64 {
        self.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Failures so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Every source's status by name (`etcd`, `dns:SERVICE`).
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    sources: Mutex<BTreeMap<String, Arc<SourceStatus>>>,
}

impl DiscoveryStats {
    /// The status of source `name`, created on first use.
    pub fn source(&self, name: &str) -> Arc<SourceStatus> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(sources.entry(name.to_string()).or_default())
    }

    /// Forgets source `name` (a service that no longer uses it).
    pub fn remove(&self, name: &str) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.remove(name);
    }

    /// Every source by name, for the exposition.
    pub fn all(&self) -> Vec<(String, Arc<SourceStatus>)> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .iter()
            .map(|(n, s)| (n.clone(), Arc::clone(s)))
            .collect()
    }
}
