//! What is counted, per listener, service and endpoint; one slot per worker
//! (see [`super::counters`]).

use super::counters::{CONNECT_BUCKETS, Counter, DURATION_BUCKETS, Histogram, PerWorker};

/// Why a connect attempt failed, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Reset: nothing listens.
    Refused = 0,
    /// No answer within `connect_timeout`.
    Timeout = 1,
    /// Anything else.
    Other = 2,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 3] = [
        FailureReason::Refused,
        FailureReason::Timeout,
        FailureReason::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Other => "other",
        }
    }
}

/// What made l4mesh end a connection with a reset, as the `cause` label
/// says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// The client's socket failed (it reset, usually): the upstream was reset.
    Client = 0,
    /// The upstream's socket failed: the client was reset.
    Upstream = 1,
    /// No byte moved either way for `idle_timeout`: both were reset.
    IdleTimeout = 2,
    /// A graceful shutdown ran out of time: both were reset.
    Drained = 3,
}

impl ResetCause {
    /// Every cause, in label order.
    pub const ALL: [ResetCause; 4] = [
        ResetCause::Client,
        ResetCause::Upstream,
        ResetCause::IdleTimeout,
        ResetCause::Drained,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ResetCause::Client => "client",
            ResetCause::Upstream => "upstream",
            ResetCause::IdleTimeout => "idle_timeout",
            ResetCause::Drained => "drained_at_shutdown",
        }
    }
}

/// One worker's counts for a listener.
#[derive(Debug, Default)]
pub struct ListenerSlot {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections closed (accepted − closed = open).
    pub closed: Counter,
    /// Bytes read from clients.
    pub rx_bytes: Counter,
    /// Bytes written to clients.
    pub tx_bytes: Counter,
    /// Clients closed at once because the listener was at `max_connections`.
    pub rejected: Counter,
    /// Connections ended with a reset both ways, by [`ResetCause`].
    pub resets: [Counter; 4],
    /// How long connections lasted, from accept to close.
    pub duration: Histogram<{ DURATION_BUCKETS.len() }>,
}

/// One worker's counts for a service.
#[derive(Debug, Default)]
pub struct ServiceSlot {
    /// Clients closed because no endpoint was usable.
    pub no_endpoint: Counter,
    /// Connections balanced in panic mode (health ignored).
    pub panic: Counter,
    /// How long successful connects took.
    pub connect_duration: Histogram<{ CONNECT_BUCKETS.len() }>,
}

/// One worker's counts for an endpoint.
#[derive(Debug, Default)]
pub struct EndpointSlot {
    /// Upstream connections established.
    pub connections: Counter,
    /// Failed connect attempts, by [`FailureReason`].
    pub failures: [Counter; 3],
    /// Times outlier detection ejected it.
    pub ejections: Counter,
}

/// A listener's statistics.
pub type ListenerStats = PerWorker<ListenerSlot>;
/// A service's statistics.
pub type ServiceStats = PerWorker<ServiceSlot>;
/// An endpoint's statistics.
pub type EndpointStats = PerWorker<EndpointSlot>;
