//! An upstream endpoint with its live, process-wide state, and its place in
//! a service (weight, source, draining, tier).

use super::Source;
use super::admission::count_under;
use super::health::{EndpointHealth, Verdict};
use super::stats::EndpointStats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One upstream address of a service and its live, process-wide state.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Per-worker counters.
    pub stats: EndpointStats,
    /// Active checks' verdict and outlier ejection.
    pub health: EndpointHealth,
    active: AtomicU64,
}

impl Endpoint {
    pub(super) fn new(addr: SocketAddr, workers: usize, verdict: Verdict) -> Endpoint {
        Endpoint {
            addr,
            stats: EndpointStats::new(workers),
            health: EndpointHealth::new(verdict),
            active: AtomicU64::new(0),
        }
    }

    /// Connections open to this endpoint now, across all workers.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one more open connection until the guard is dropped, unless
    /// `limit` are open already (then `None`). The check and the count are
    /// one atomic step, so workers racing for the last slot never overshoot.
    pub fn try_acquire(self: &Arc<Self>, limit: Option<u64>) -> Option<ActiveGuard> {
        count_under(&self.active, limit).then(|| ActiveGuard(Arc::clone(self)))
    }
}

/// Holds one active connection on an [`Endpoint`].
#[derive(Debug)]
pub struct ActiveGuard(Arc<Endpoint>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint as a member of a service, with its weight there.
#[derive(Debug, Clone)]
pub struct Member {
    /// The endpoint and its live state.
    pub endpoint: Arc<Endpoint>,
    /// Its relative share of new connections.
    pub weight: u32,
    /// Where it comes from.
    pub source: Source,
    /// Draining: no new connections; open ones continue.
    pub draining: bool,
    /// Failover tier: 0 serves first (see [`Discovered::tier`]).
    ///
    /// [`Discovered::tier`]: super::Discovered::tier
    pub tier: u16,
}

/// An endpoint's state as /config, the registry's `list` and
/// `l4mesh_endpoints` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Usable as far as health goes.
    Up,
    /// Failed its active checks, or waits for its first one.
    Down,
    /// Ejected by outlier detection for a while.
    Ejected,
    /// Drained by the registry: no new connections.
    Draining,
}

impl EndpointState {
    /// Every state, in label order.
    pub const ALL: [EndpointState; 4] = [
        EndpointState::Up,
        EndpointState::Down,
        EndpointState::Ejected,
        EndpointState::Draining,
    ];

    /// The name used in replies and labels.
    pub fn label(self) -> &'static str {
        match self {
            EndpointState::Up => "up",
            EndpointState::Down => "down",
            EndpointState::Ejected => "ejected",
            EndpointState::Draining => "draining",
        }
    }
}

impl Member {
    /// Its state: draining first (the operator's word), then ejected, then
    /// what the active checks say.
    pub fn state(&self) -> EndpointState {
        let health = &self.endpoint.health;
        if self.draining {
            EndpointState::Draining
        } else if health.is_ejected() {
            EndpointState::Ejected
        } else if health.verdict() != Verdict::Up {
            EndpointState::Down
        } else {
            EndpointState::Up
        }
    }

    /// What makes two members the same for the balancer.
    pub(super) fn identity(&self) -> (SocketAddr, u32, Source, bool, u16) {
        (
            self.endpoint.addr,
            self.weight,
            self.source,
            self.draining,
            self.tier,
        )
    }
}
