//! One endpoint as a discovery source reports it.

use std::net::SocketAddr;

/// An endpoint of a service, as a source (etcd, DNS SRV, the registry)
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its relative share of new connections, 1 to `config::MAX_WEIGHT`.
    pub weight: u32,
    /// Failover tier: 0 serves first; tier n only when no endpoint of a
    /// lower tier is usable (DNS SRV priorities, ranked: the lowest priority
    /// value present is tier 0).
    pub tier: u16,
}
