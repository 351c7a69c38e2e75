//! Monitoring: the Prometheus text exposition of the per-worker counters
//! kept in the routing objects ([`crate::routing::stats`]), process metrics, discovery
//! and reload state, and the access log.

pub mod access_log;
mod discovery;
pub mod exposition;
pub mod names;
mod process;
mod reloads;

pub use discovery::{DiscoveryStats, SourceStatus};
pub use process::ProcessStats;
pub use reloads::ReloadStats;
