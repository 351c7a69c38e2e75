//! The routing model every layer reads, and depends on nothing above it
//! (only `config`, `balance` and `log_limit`): endpoints and their live
//! state ([`endpoint`], [`health`], per-worker counters in [`stats`]),
//! services with their pick ([`service`]), admission counts
//! ([`admission`]), what a discovery source reports ([`Discovered`],
//! [`Source`]), and the immutable [`Snapshot`] the workers route by, built
//! by merging the config with every source ([`snapshot`]).

pub mod admission;
pub mod client_limits;
pub mod counters;
mod discovered;
pub mod endpoint;
pub mod health;
pub mod service;
pub mod snapshot;
pub mod sni;
pub mod sni_routes;
mod source;
pub mod stats;

pub use admission::{ClientCount, ClientGuard};
pub use counters::{CONNECT_BUCKETS, Counter, DURATION_BUCKETS, Histogram, PerWorker};
pub use discovered::Discovered;
pub use endpoint::{ActiveGuard, Endpoint, EndpointState, Member};
pub use service::{Choice, Outlier, Service};
pub use snapshot::{ConfigOnly, Inputs, Listener, Snapshot, Table};
pub use source::Source;
pub use stats::{
    ClientLimitReason, EndpointSlot, EndpointStats, FailureReason, HeaderFailure, HelloFailure,
    ListenerSlot, ListenerStats, ResetCause, ServiceSlot, ServiceStats,
};
