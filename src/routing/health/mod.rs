//! Endpoint health as the routing model holds it: pure, clock-free
//! decisions, one file each, tested without a runtime: [`threshold`] (probe
//! results → up/down), [`outlier`] (failure streaks → ejections and their
//! length, `max_ejection_percent`), [`panic`] (when to ignore health); and
//! [`state`], the live state as atomics inside each endpoint, read by the
//! workers' balancers. The probes that feed it run in `src/health/`.

pub mod outlier;
pub mod panic;
pub mod state;
pub mod threshold;

pub use state::{Ejection, EndpointHealth, ServiceHealth};
pub use threshold::{Tally, Thresholds, Verdict};

use std::sync::OnceLock;
use std::time::Instant;
use tokio::sync::Notify;

/// Woken (every waiter) whenever an endpoint is ejected, so the health
/// threads schedule its end. Workers may eject through a table that is no
/// longer published (a connection keeps the one it started with), so the
/// current table alone cannot tell the health thread when to look.
/// Process-wide: with several proxies in one process a wake-up meant for
/// another only makes a health thread look once for nothing.
pub static EJECTIONS: Notify = Notify::const_new();

/// Milliseconds on a process-wide monotonic clock: the time base of
/// ejections (a `u64` fits in an atomic, an `Instant` does not).
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
