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

/// Why a PROXY protocol header was not taken, as the `reason` label says
/// it; the client was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFailure {
    /// No whole header within `proxy_header_timeout`.
    Timeout = 0,
    /// Not a valid header of an accepted version.
    Malformed = 1,
    /// The client closed (or reset) before its header was whole.
    Closed = 2,
    /// The client's address is not in `trusted_sources` and
    /// `untrusted_sources = "reject"`.
    Untrusted = 3,
}

impl HeaderFailure {
    /// Every reason, in label order.
    pub const ALL: [HeaderFailure; 4] = [
        HeaderFailure::Timeout,
        HeaderFailure::Malformed,
        HeaderFailure::Closed,
        HeaderFailure::Untrusted,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HeaderFailure::Timeout => "timeout",
            HeaderFailure::Malformed => "malformed",
            HeaderFailure::Closed => "closed",
            HeaderFailure::Untrusted => "untrusted",
        }
    }
}

/// Why an SNI listener could not route by a client's hello, as the
/// `reason` label says it; the client went to `default_service`, or was
/// reset without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloFailure {
    /// The first bytes are not a TLS handshake record.
    NotTls = 0,
    /// A TLS record or ClientHello that breaks the format.
    Malformed = 1,
    /// A ClientHello larger than `client_hello_max_size`.
    Oversized = 2,
    /// The client sent its EOF before the hello was whole.
    Truncated = 3,
    /// No whole hello within `client_hello_timeout`.
    Timeout = 4,
    /// A hello without a server name.
    NoSni = 5,
    /// A server name that no rule takes.
    NoMatch = 6,
}

impl HelloFailure {
    /// Every reason, in label order.
    pub const ALL: [HelloFailure; 7] = [
        HelloFailure::NotTls,
        HelloFailure::Malformed,
        HelloFailure::Oversized,
        HelloFailure::Truncated,
        HelloFailure::Timeout,
        HelloFailure::NoSni,
        HelloFailure::NoMatch,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HelloFailure::NotTls => "not_tls",
            HelloFailure::Malformed => "malformed",
            HelloFailure::Oversized => "oversized",
            HelloFailure::Truncated => "truncated",
            HelloFailure::Timeout => "timeout",
            HelloFailure::NoSni => "no_sni",
            HelloFailure::NoMatch => "no_match",
        }
    }
}

/// Which per-client limit turned a client away, as the `reason` label says
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimitReason {
    /// `max_connections_per_client`.
    Connections = 0,
    /// `connection_rate_per_client`.
    Rate = 1,
}

impl ClientLimitReason {
    /// Every reason, in label order.
    pub const ALL: [ClientLimitReason; 2] =
        [ClientLimitReason::Connections, ClientLimitReason::Rate];

    /// The label value: the key that set the limit.
    pub fn label(self) -> &'static str {
        match self {
            ClientLimitReason::Connections => "max_connections_per_client",
            ClientLimitReason::Rate => "connection_rate_per_client",
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
    /// Clients reset for their PROXY protocol header, by [`HeaderFailure`].
    pub header_failures: [Counter; 4],
    /// Hellos an SNI listener could not route by, by [`HelloFailure`].
    pub hello_failures: [Counter; 7],
    /// Clients reset at once for a per-client limit, by
    /// [`ClientLimitReason`].
    pub client_limited: [Counter; 2],
    /// Clients admitted untracked because the per-client table had no room
    /// for them.
    pub client_untracked: Counter,
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
