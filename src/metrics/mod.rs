//! Monitoring: per-worker lock-free counters kept in the routing objects,
//! their Prometheus text exposition, process metrics, the admin HTTP
//! endpoint and the access log.

pub mod access_log;
pub mod admin;
mod counters;
mod discovery;
pub mod exposition;
mod http;
pub mod names;
mod process;
mod stats;

pub use counters::{CONNECT_BUCKETS, Counter, DURATION_BUCKETS, Histogram, PerWorker};
pub use discovery::{DiscoveryStats, SourceStatus};
pub use process::ProcessStats;
pub use stats::{
    EndpointSlot, EndpointStats, FailureReason, ListenerSlot, ListenerStats, ResetCause,
    ServiceSlot, ServiceStats,
};
