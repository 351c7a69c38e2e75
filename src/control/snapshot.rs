//! The routing snapshot: listeners → services → endpoints with their
//! balancer, built completely off the hot path and published with one
//! `arc-swap` store. A connection keeps the `Arc` of the snapshot it started
//! with, so publishing a new one never disturbs it.
//!
//! Endpoint identity is (service, address): building a snapshot from a
//! previous one reuses the same [`Endpoint`] for an unchanged address, so its
//! live state (active connections) carries over.

use super::registrations::Registrations;
use crate::balance::{self, Pick, Policy};
use crate::config::{Config, EndpointConfig, ListenerConfig, ServiceConfig};
use crate::metrics::{EndpointStats, ListenerStats, ServiceStats};
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
    /// Per-worker counters.
    pub stats: EndpointStats,
    active: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr, workers: usize) -> Endpoint {
        Endpoint {
            addr,
            stats: EndpointStats::new(workers),
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

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Declared in the config file.
    File,
    /// Registered through the registry socket.
    Registry,
}

impl Source {
    /// The name used in replies and listings.
    pub fn name(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Registry => "registry",
        }
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
}

impl Member {
    /// What makes two members the same for the balancer.
    fn identity(&self) -> (SocketAddr, u32, Source, bool) {
        (self.endpoint.addr, self.weight, self.source, self.draining)
    }
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
    /// The endpoints: the file's in file order, then registered ones.
    pub members: Vec<Member>,
    /// Per-worker counters, kept across rebuilds of the service.
    pub stats: Arc<ServiceStats>,
    policy: Box<dyn Policy>,
    /// The file's settings this was built from, to reuse it when unchanged.
    config: ServiceConfig,
}

impl Service {
    /// Picks a member for a connection from `client`, never a draining one
    /// nor one for which `skip(index)` is true.
    /// `retry` marks a failover pick for a client whose last endpoint failed.
    pub fn pick(&self, client: IpAddr, retry: bool, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.policy.pick(&Pick {
            client,
            retry,
            skip: &|i| self.members[i].draining || skip(i),
            active: &|i| self.members[i].endpoint.active(),
        })
    }

    /// The member at `addr`.
    pub fn member(&self, addr: SocketAddr) -> Option<&Member> {
        self.members.iter().find(|m| m.endpoint.addr == addr)
    }

    /// Builds the service, or reuses `previous` whole (balancer position
    /// included) when nothing about it changed.
    fn build(
        config: &ServiceConfig,
        registrations: &Registrations,
        previous: Option<&Arc<Service>>,
        workers: usize,
    ) -> Arc<Service> {
        let endpoint = |addr: SocketAddr| {
            previous
                .and_then(|p| p.member(addr))
                .map(|m| Arc::clone(&m.endpoint))
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, workers)))
        };
        let draining = |addr| registrations.is_drained(&(config.name.clone(), addr));
        let mut members: Vec<Member> = config
            .endpoints
            .iter()
            .map(|e| Member {
                endpoint: endpoint(e.addr),
                weight: e.weight,
                source: Source::File,
                draining: draining(e.addr),
            })
            .collect();
        // A registered address the file also declares is the file's.
        let registered: Vec<Member> = registrations
            .of_service(&config.name)
            .filter(|(addr, _)| !config.endpoints.iter().any(|e| e.addr == *addr))
            .map(|(addr, r)| Member {
                endpoint: endpoint(addr),
                weight: r.weight,
                source: Source::Registry,
                draining: draining(addr),
            })
            .collect();
        members.extend(registered);
        if let Some(previous) = previous {
            let same = previous.config == *config
                && previous.members.len() == members.len()
                && previous
                    .members
                    .iter()
                    .zip(&members)
                    .all(|(a, b)| a.identity() == b.identity());
            if same {
                return Arc::clone(previous);
            }
        }
        let endpoints: Vec<EndpointConfig> = members
            .iter()
            .map(|m| EndpointConfig {
                addr: m.endpoint.addr,
                weight: m.weight,
            })
            .collect();
        Arc::new(Service {
            name: config.name.clone(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            connect_attempts: config.connect_attempts.get(),
            policy: balance::build(config.balance, &endpoints),
            members,
            stats: previous.map_or_else(
                || Arc::new(ServiceStats::new(workers)),
                |p| Arc::clone(&p.stats),
            ),
            config: config.clone(),
        })
    }
}

/// A listener in the table, with its counters (kept across reloads by name).
#[derive(Debug)]
pub struct Listener {
    /// Its config.
    pub config: ListenerConfig,
    /// Per-worker counters.
    pub stats: Arc<ListenerStats>,
}

/// One immutable routing table.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// The listeners this snapshot serves.
    pub listeners: Vec<Listener>,
    /// Services by name.
    pub services: BTreeMap<String, Arc<Service>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config merged with run-time
    /// registrations, carrying over the live state of endpoints (and whole
    /// services) that `previous` already had.
    pub fn build(
        config: &Config,
        registrations: &Registrations,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let services = config
            .services
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| p.services.get(&s.name));
                let service = Service::build(s, registrations, old, config.runtime.workers);
                (s.name.clone(), service)
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| Listener {
                config: l.clone(),
                stats: previous.and_then(|p| p.listener(&l.name)).map_or_else(
                    || Arc::new(ListenerStats::new(config.runtime.workers)),
                    |old| Arc::clone(&old.stats),
                ),
            })
            .collect();
        Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            listeners,
            services,
        }
    }

    /// Listener `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    /// The service that connections on listener `name` go to.
    pub fn route(&self, listener: &str) -> Option<&Arc<Service>> {
        self.services.get(&self.listener(listener)?.config.service)
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
        let regs = Registrations::default();
        let first = Snapshot::build(
            &config(r#"{ addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" }"#),
            &regs,
            None,
        );
        let s = first.route("l").unwrap();
        let _guard = s.members[0].endpoint.acquire();
        let second = Snapshot::build(
            &config(r#"{ addr = "127.0.0.1:1", weight = 5 }, { addr = "127.0.0.1:3" }"#),
            &regs,
            Some(&first),
        );
        let s2 = second.route("l").unwrap();
        assert_eq!(second.generation, 2);
        assert!(Arc::ptr_eq(&s.members[0].endpoint, &s2.members[0].endpoint));
        assert_eq!(s2.members[0].endpoint.active(), 1);
        assert_eq!(s2.members[0].weight, 5);
        assert_eq!(s2.members[1].endpoint.active(), 0);
    }

    #[test]
    fn it_should_reuse_an_unchanged_service_whole_and_merge_registrations() {
        let text = r#"{ addr = "127.0.0.1:1" }"#;
        let mut regs = Registrations::default();
        let first = Snapshot::build(&config(text), &regs, None);
        let second = Snapshot::build(&config(text), &regs, Some(&first));
        assert!(Arc::ptr_eq(
            first.route("l").unwrap(),
            second.route("l").unwrap()
        ));
        let now = std::time::Instant::now();
        regs.register(("s".into(), "127.0.0.1:7".parse().unwrap()), 2, None, now);
        regs.register(("s".into(), "127.0.0.1:1".parse().unwrap()), 9, None, now);
        regs.drain(("s".into(), "127.0.0.1:1".parse().unwrap()));
        let third = Snapshot::build(&config(text), &regs, Some(&second));
        let s = third.route("l").unwrap();
        assert!(!Arc::ptr_eq(second.route("l").unwrap(), s));
        let listed: Vec<_> = s.members.iter().map(|m| m.identity()).collect();
        assert_eq!(
            listed,
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1, Source::File, true),
                ("127.0.0.1:7".parse().unwrap(), 2, Source::Registry, false),
            ]
        );
        // The draining file endpoint is never picked.
        for _ in 0..10 {
            assert_eq!(
                s.pick("127.0.0.1".parse().unwrap(), false, &|_| false),
                Some(1)
            );
        }
    }
}
