//! The routing snapshot: listeners → services → endpoints with their
//! balancer, built completely off the hot path and published with one
//! `arc-swap` store. A connection keeps the `Arc` of the snapshot it started
//! with, so publishing a new one never disturbs it.
//!
//! Endpoint identity is (service, address): building a snapshot from a
//! previous one reuses the same [`Endpoint`] for an unchanged address, so its
//! live state (active connections) carries over.

use crate::balance::{self, Pick, Policy};
use crate::config::{Config, ListenerConfig, ServiceConfig};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The published routing table, shared by every worker.
pub type Table = Arc<ArcSwap<Snapshot>>;

/// One upstream address of a service and its live, process-wide state.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    active: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            active: AtomicU64::new(0),
        }
    }

    /// Connections open to this endpoint now, across all workers.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one more open connection until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(self))
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
}

/// A service ready for the hot path: its members and a built balancer.
#[derive(Debug)]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long.
    pub idle_timeout: Duration,
    /// Distinct endpoints tried for one client.
    pub connect_attempts: u32,
    /// The endpoints, in config order.
    pub members: Vec<Member>,
    policy: Box<dyn Policy>,
}

impl Service {
    /// Picks a member for a connection from `client`, never one for which
    /// `skip(index)` is true.
    pub fn pick(&self, client: IpAddr, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.policy.pick(&Pick {
            client,
            skip,
            active: &|i| self.members[i].endpoint.active(),
        })
    }

    fn build(config: &ServiceConfig, previous: Option<&Service>) -> Service {
        let members: Vec<Member> = config
            .endpoints
            .iter()
            .map(|e| {
                let existing = previous.and_then(|p| {
                    p.members
                        .iter()
                        .find(|m| m.endpoint.addr == e.addr)
                        .map(|m| Arc::clone(&m.endpoint))
                });
                Member {
                    endpoint: existing.unwrap_or_else(|| Arc::new(Endpoint::new(e.addr))),
                    weight: e.weight,
                }
            })
            .collect();
        Service {
            name: config.name.clone(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            connect_attempts: config.connect_attempts.get(),
            policy: balance::build(config.balance, &config.endpoints),
            members,
        }
    }
}

/// One immutable routing table.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// The listeners this snapshot serves.
    pub listeners: Vec<ListenerConfig>,
    /// Services by name.
    pub services: BTreeMap<String, Arc<Service>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config, carrying over the live state
    /// of endpoints that `previous` already had.
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Snapshot {
        let services = config
            .services
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| p.services.get(&s.name));
                (
                    s.name.clone(),
                    Arc::new(Service::build(s, old.map(|o| &**o))),
                )
            })
            .collect();
        Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            listeners: config.listeners.clone(),
            services,
        }
    }

    /// The service that connections on listener `name` go to.
    pub fn route(&self, listener: &str) -> Option<&Arc<Service>> {
        let listener = self.listeners.iter().find(|l| l.name == listener)?;
        self.services.get(&listener.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(endpoints: &str) -> Config {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n[services.s]\nendpoints = [{endpoints}]\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn it_should_carry_live_state_over_for_unchanged_endpoints() {
        let first = Snapshot::build(
            &config(r#"{ addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" }"#),
            None,
        );
        let s = first.route("l").unwrap();
        let _guard = s.members[0].endpoint.acquire();
        let second = Snapshot::build(
            &config(r#"{ addr = "127.0.0.1:1", weight = 5 }, { addr = "127.0.0.1:3" }"#),
            Some(&first),
        );
        let s2 = second.route("l").unwrap();
        assert_eq!(second.generation, 2);
        assert!(Arc::ptr_eq(&s.members[0].endpoint, &s2.members[0].endpoint));
        assert_eq!(s2.members[0].endpoint.active(), 1);
        assert_eq!(s2.members[0].weight, 5);
        assert_eq!(s2.members[1].endpoint.active(), 0);
    }
}
