//! The routing snapshot: listeners → services → endpoints with their
//! balancer, built completely off the hot path and published with one
//! `arc-swap` store. A connection keeps the `Arc` of the snapshot it started
//! with, so publishing a new one never disturbs it.
//!
//! Endpoint identity is (service, address): building a snapshot from a
//! previous one reuses the same [`Endpoint`] for an unchanged address, so its
//! live state (active connections, health, ejection) carries over.

use super::registrations::Registrations;
use crate::balance::{self, Pick, Policy};
use crate::config::{
    Config, EndpointConfig, HealthConfig, ListenerConfig, OutlierConfig, ServiceConfig,
};
use crate::health::{self, Ejection, EndpointHealth, ServiceHealth, Verdict};
use crate::metrics::{EndpointStats, ListenerStats, ServiceStats};
use crate::routing::Source;
use crate::runtime::LogLimit;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Active checks' verdict and outlier ejection.
    pub health: EndpointHealth,
    active: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr, workers: usize, verdict: Verdict) -> Endpoint {
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
    /// Below this percentage of usable endpoints, ignore health.
    pub panic_threshold: u8,
    /// Open connections allowed to each endpoint.
    pub max_connections_per_endpoint: Option<u64>,
    /// Active health checks, if on.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection, if on.
    pub outlier: Option<OutlierConfig>,
    /// The endpoints: the file's in file order, then registered ones.
    pub members: Vec<Member>,
    /// Per-worker counters, kept across rebuilds of the service.
    pub stats: Arc<ServiceStats>,
    /// Ejection guard and log limits, kept across rebuilds of the service.
    pub shared: Arc<ServiceHealth>,
    /// Members that are not draining: the whole for panic and ejection shares.
    eligible: usize,
    /// Member index by address, so that rebuilding a service of n members
    /// from the previous one costs O(n), not O(n²).
    by_addr: HashMap<SocketAddr, usize>,
    policy: Box<dyn Policy>,
    /// The file's settings this was built from, to reuse it when unchanged.
    config: ServiceConfig,
}

/// A member picked for one connect attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Its index in [`Service::members`].
    pub index: usize,
    /// Picked in panic mode: health was ignored.
    pub panic: bool,
}

/// Why one connect failure was not followed by an ejection even though the
/// streak reached `consecutive_failures`, or the ejection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlier {
    /// Ejected now.
    Ejected(Ejection),
    /// Too many of the service's endpoints are ejected already: `ejected`
    /// of `total` at `max_ejection_percent`.
    CannotSpare {
        /// Ejected now.
        ejected: usize,
        /// Members that are not draining.
        total: usize,
    },
}

impl Service {
    /// Picks a member for a connection from `client`, never one for which
    /// `tried(index)` is true, a draining one or a full one
    /// (`max_connections_per_endpoint`). Unless the service is in panic mode
    /// ([`health::panic::engaged`]), never an unhealthy or ejected one
    /// either; in panic mode health is ignored and `Choice::panic` is set.
    /// `retry` marks a failover pick for a client whose last endpoint failed.
    pub fn choose(
        &self,
        client: IpAddr,
        retry: bool,
        tried: &dyn Fn(usize) -> bool,
    ) -> Option<Choice> {
        let full = |i: usize| {
            self.max_connections_per_endpoint
                .is_some_and(|max| self.members[i].endpoint.active() >= max)
        };
        let open = |i: usize| self.members[i].draining || full(i) || tried(i);
        let pick = |retry: bool, skip: &dyn Fn(usize) -> bool| {
            self.policy.pick(&Pick {
                client,
                retry,
                skip,
                active: &|i| self.members[i].endpoint.active(),
            })
        };
        let usual = |i: usize| !open(i) && self.members[i].endpoint.health.is_usable();
        let mut retry = retry;
        if self.panic_threshold == 0 {
            // Panic only when nothing is usable: try the usual pick first,
            // so the common case never counts the members.
            if let Some(index) = pick(retry, &|i| !usual(i)) {
                return Some(Choice {
                    index,
                    panic: false,
                });
            }
            if !health::panic::engaged(self.usable(), self.eligible, 0) {
                return None;
            }
            // The pick above took this client's turn already.
            retry = true;
        } else if !health::panic::engaged(self.usable(), self.eligible, self.panic_threshold) {
            return pick(retry, &|i| !usual(i)).map(|index| Choice {
                index,
                panic: false,
            });
        }
        if let Some(held_back) = self.shared.panic_log.allow() {
            let since = if held_back > 0 {
                format!(" ({held_back} more panic pick(s) since the last line)")
            } else {
                String::new()
            };
            log::warn!(
                "service {}: panic mode: {} of {} endpoint(s) usable (panic_threshold {}%); \
                 balancing over all of them, ignoring health{since}",
                self.name,
                self.usable(),
                self.eligible,
                self.panic_threshold
            );
        }
        pick(retry, &open).map(|index| Choice { index, panic: true })
    }

    /// Members usable as far as health goes (not draining, checks up, not
    /// ejected).
    pub fn usable(&self) -> usize {
        self.members
            .iter()
            .filter(|m| !m.draining && m.endpoint.health.is_usable())
            .count()
    }

    /// Counts a successful connect to member `index` for outlier detection.
    #[inline]
    pub fn connect_succeeded(&self, index: usize) {
        self.members[index].endpoint.health.connect_succeeded();
    }

    /// Counts a failed connect to member `index` at `now_ms` and ejects it
    /// when its streak reaches `consecutive_failures` and the service can
    /// spare it. `None`: nothing to report (no outlier detection, a short
    /// streak, already ejected, or another worker deciding an ejection right
    /// now, in which case the next failure tries again).
    pub fn connect_failed(&self, index: usize, now_ms: u64) -> Option<Outlier> {
        let outlier = self.outlier.as_ref()?;
        let health = &self.members[index].endpoint.health;
        let streak = health.connect_failed();
        if !health::outlier::reached(streak, outlier.consecutive_failures.get())
            || health.is_ejected()
        {
            return None;
        }
        let _deciding = self.shared.try_eject()?;
        let ejected = self
            .members
            .iter()
            .filter(|m| !m.draining && m.endpoint.health.is_ejected())
            .count();
        if !health::outlier::may_eject(ejected, self.eligible, outlier.max_ejection_percent) {
            return Some(Outlier::CannotSpare {
                ejected,
                total: self.eligible,
            });
        }
        Some(Outlier::Ejected(health.eject(
            now_ms,
            outlier.base_ejection,
            outlier.max_ejection,
        )))
    }

    /// The member at `addr`.
    pub fn member(&self, addr: SocketAddr) -> Option<&Member> {
        self.by_addr.get(&addr).map(|&i| &self.members[i])
    }

    /// Builds the service, or reuses `previous` whole (balancer position
    /// included) when nothing about it changed.
    fn build(
        config: &ServiceConfig,
        registrations: &Registrations,
        previous: Option<&Arc<Service>>,
        workers: usize,
    ) -> Arc<Service> {
        // An endpoint that joins a service already serving waits for its
        // first passed check; a new service's endpoints (at start, or a
        // service a reload adds) start up, or nothing could serve until the
        // first round of probes.
        let verdict = if previous.is_some() && config.health.is_some() {
            Verdict::Pending
        } else {
            Verdict::Up
        };
        let endpoint = |addr: SocketAddr| {
            previous
                .and_then(|p| p.member(addr))
                .map(|m| Arc::clone(&m.endpoint))
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, workers, verdict)))
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
        let in_file: HashSet<SocketAddr> = config.endpoints.iter().map(|e| e.addr).collect();
        let registered: Vec<Member> = registrations
            .of_service(&config.name)
            .filter(|(addr, _)| !in_file.contains(addr))
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
            panic_threshold: config.panic_threshold,
            max_connections_per_endpoint: config.max_connections_per_endpoint,
            health: config.health.clone(),
            outlier: config.outlier.clone(),
            policy: balance::build(config.balance, &endpoints),
            eligible: members.iter().filter(|m| !m.draining).count(),
            by_addr: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.endpoint.addr, i))
                .collect(),
            members,
            stats: previous.map_or_else(
                || Arc::new(ServiceStats::new(workers)),
                |p| Arc::clone(&p.stats),
            ),
            shared: previous.map_or_else(Arc::default, |p| Arc::clone(&p.shared)),
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
    /// Its open clients across every worker, for `max_connections`.
    pub clients: Arc<ClientCount>,
}

/// A listener's open clients across all workers: one process-wide atomic,
/// kept across reloads by listener name. Counted even without a limit, so a
/// limit that a reload adds sees the clients already open.
#[derive(Debug)]
pub struct ClientCount {
    open: AtomicU64,
    /// "At max_connections" lines: one every 10 s.
    pub reject_log: LogLimit,
}

impl Default for ClientCount {
    fn default() -> Self {
        ClientCount {
            open: AtomicU64::new(0),
            reject_log: LogLimit::new(Duration::from_secs(10)),
        }
    }
}

impl ClientCount {
    /// Clients open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts one more client until the guard is dropped, unless `limit`
    /// are open already (then `None`): one atomic step, so workers racing
    /// for the last slot never overshoot.
    pub fn try_admit(self: &Arc<Self>, limit: Option<u64>) -> Option<ClientGuard> {
        count_under(&self.open, limit).then(|| ClientGuard(Arc::clone(self)))
    }
}

/// Adds one to `count` unless that would take it past `limit`; returns
/// whether it did. Without a limit it is one atomic add; with one, a
/// compare-and-swap loop, so racing workers never overshoot.
fn count_under(count: &AtomicU64, limit: Option<u64>) -> bool {
    match limit {
        None => {
            count.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(max) => count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok(),
    }
}

/// Holds one client's place in a [`ClientCount`].
#[derive(Debug)]
pub struct ClientGuard(Arc<ClientCount>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
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
            .map(|l| {
                let old = previous.and_then(|p| p.listener(&l.name));
                Listener {
                    config: l.clone(),
                    stats: old.map_or_else(
                        || Arc::new(ListenerStats::new(config.runtime.workers)),
                        |old| Arc::clone(&old.stats),
                    ),
                    clients: old.map_or_else(Arc::default, |old| Arc::clone(&old.clients)),
                }
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
    use crate::health::Verdict;
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
        let _guard = s.members[0].endpoint.try_acquire(None).unwrap();
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
                s.choose("127.0.0.1".parse().unwrap(), false, &|_| false),
                Some(Choice {
                    index: 1,
                    panic: false
                })
            );
        }
    }

    fn service_config(extra: &str, endpoints: usize) -> Config {
        let list: Vec<String> = (1..=endpoints)
            .map(|p| format!("{{ addr = \"127.0.0.1:{p}\" }}"))
            .collect();
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n[services.s]\n\
             endpoints = [{}]\n{extra}\n",
            list.join(", ")
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn it_should_start_endpoints_that_join_a_serving_service_pending_and_a_new_service_up() {
        let health = "[services.s.health]\ninterval = \"1s\"\ntimeout = \"500ms\"";
        let regs = Registrations::default();
        let first = Snapshot::build(&service_config(health, 1), &regs, None);
        let s = first.route("l").unwrap();
        assert_eq!(s.members[0].endpoint.health.verdict(), Verdict::Up);
        let second = Snapshot::build(&service_config(health, 2), &regs, Some(&first));
        let s = second.route("l").unwrap();
        assert_eq!(s.members[0].endpoint.health.verdict(), Verdict::Up);
        assert_eq!(s.members[1].endpoint.health.verdict(), Verdict::Pending);
        assert_eq!(s.members[1].state(), EndpointState::Down);
        // Without checks, a joining endpoint is up at once.
        let third = Snapshot::build(&service_config("", 3), &regs, Some(&second));
        let s = third.route("l").unwrap();
        assert_eq!(s.members[2].endpoint.health.verdict(), Verdict::Up);
        // The pending one carried over as it was (the health thread clears it).
        assert_eq!(s.members[1].endpoint.health.verdict(), Verdict::Pending);
    }

    #[test]
    fn it_should_carry_health_and_ejections_over_reloads() {
        let regs = Registrations::default();
        let first = Snapshot::build(&service_config("", 2), &regs, None);
        let s = first.route("l").unwrap();
        s.members[0].endpoint.health.set_verdict(Verdict::Down);
        s.members[1]
            .endpoint
            .health
            .eject(0, Duration::from_secs(1), Duration::from_secs(1));
        let second = Snapshot::build(
            &service_config("panic_threshold = 10", 2),
            &regs,
            Some(&first),
        );
        let s2 = second.route("l").unwrap();
        assert!(!Arc::ptr_eq(s, s2), "the service changed");
        assert!(Arc::ptr_eq(&s.shared, &s2.shared));
        assert_eq!(s2.members[0].state(), EndpointState::Down);
        assert_eq!(s2.members[1].state(), EndpointState::Ejected);
    }

    #[test]
    fn it_should_eject_after_consecutive_failures_but_never_past_max_ejection_percent() {
        let outlier = "[services.s.outlier]\nconsecutive_failures = 2\nbase_ejection = \"1s\"\n\
                       max_ejection_percent = 50";
        let snapshot =
            Snapshot::build(&service_config(outlier, 4), &Registrations::default(), None);
        let s = snapshot.route("l").unwrap();
        assert_eq!(s.connect_failed(0, 0), None);
        s.connect_succeeded(0);
        assert_eq!(s.connect_failed(0, 0), None, "the success ended the streak");
        let Some(Outlier::Ejected(e)) = s.connect_failed(0, 0) else {
            panic!("not ejected")
        };
        assert_eq!(e.duration, Duration::from_secs(1));
        assert_eq!(s.connect_failed(0, 0), None, "already ejected");
        s.connect_failed(1, 0);
        assert!(matches!(s.connect_failed(1, 0), Some(Outlier::Ejected(_))));
        // Two of four are out: 50%.
        s.connect_failed(2, 0);
        assert_eq!(
            s.connect_failed(2, 0),
            Some(Outlier::CannotSpare {
                ejected: 2,
                total: 4
            })
        );
        assert_eq!(s.members[2].state(), EndpointState::Up);
        // Without outlier detection nothing is ever ejected.
        let plain = Snapshot::build(&service_config("", 1), &Registrations::default(), None);
        let p = plain.route("l").unwrap();
        assert!((0..10).all(|_| p.connect_failed(0, 0).is_none()));
    }

    /// Random services (every policy, 1 to 8 endpoints, random panic
    /// thresholds and per-endpoint limits), random health, ejections,
    /// drains, full endpoints and tried sets: a choice is never tried,
    /// draining or full; outside panic mode it is never unhealthy or
    /// ejected, and it exists whenever a usable endpoint does; panic mode is
    /// exactly what `panic::engaged` says.
    #[test]
    fn it_should_never_choose_an_unusable_endpoint_while_a_usable_one_exists() {
        let mut rng = fastrand::Rng::with_seed(21);
        fastrand::seed(21);
        for (policy, _) in crate::config::BalancePolicy::ALL {
            for _ in 0..40 {
                let n = rng.usize(1..=8);
                let threshold = [0u8, 0, 30, 50, 100][rng.usize(..5)];
                let limit = rng.bool().then_some(2u64);
                let mut extra = format!("balance = \"{policy}\"\npanic_threshold = {threshold}\n");
                if let Some(limit) = limit {
                    extra.push_str(&format!("max_connections_per_endpoint = {limit}\n"));
                }
                let mut regs = Registrations::default();
                for p in 1..=n {
                    if rng.u8(..5) == 0 {
                        regs.drain(("s".into(), format!("127.0.0.1:{p}").parse().unwrap()));
                    }
                }
                let snapshot = Snapshot::build(&service_config(&extra, n), &regs, None);
                let s = snapshot.route("l").unwrap();
                let mut guards = Vec::new();
                for m in &s.members {
                    let health = &m.endpoint.health;
                    match rng.u8(..5) {
                        0 => health.set_verdict(Verdict::Down),
                        1 => health.set_verdict(Verdict::Pending),
                        2 => {
                            health.eject(0, Duration::from_secs(1), Duration::from_secs(1));
                        }
                        _ => {}
                    }
                    if limit.is_some() && rng.u8(..3) == 0 {
                        guards.push(m.endpoint.try_acquire(limit).unwrap());
                        guards.push(m.endpoint.try_acquire(limit).unwrap());
                        assert!(m.endpoint.try_acquire(limit).is_none());
                    }
                }
                let full = |i: usize| limit.is_some_and(|l| s.members[i].endpoint.active() >= l);
                let eligible = s.members.iter().filter(|m| !m.draining).count();
                let panic = health::panic::engaged(s.usable(), eligible, threshold);
                for _ in 0..20 {
                    let tried_set = rng.u16(..);
                    let tried = |i: usize| tried_set & (1 << i) != 0;
                    let open = |i: usize| !tried(i) && !s.members[i].draining && !full(i);
                    let usable = |i: usize| open(i) && s.members[i].endpoint.health.is_usable();
                    let client = crate::balance::tests::random_client(&mut rng);
                    let choice = s.choose(client, rng.bool(), &tried);
                    let what = format!("{policy} n={n} threshold={threshold}: {choice:?}");
                    match choice {
                        Some(c) => {
                            assert!(open(c.index), "{what}");
                            assert_eq!(c.panic, panic, "{what}");
                            assert!(c.panic || usable(c.index), "{what}");
                        }
                        None if panic => assert!(!(0..n).any(open), "{what}"),
                        None => assert!(!(0..n).any(usable), "{what}"),
                    }
                }
            }
        }
    }

    #[test]
    fn it_should_admit_exactly_the_limit_when_threads_race_for_it() {
        let count = Arc::new(ClientCount::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    (0..200)
                        .filter_map(|_| count.try_admit(Some(10)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let held: Vec<ClientGuard> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!((held.len(), count.open()), (10, 10));
        drop(held);
        assert_eq!(count.open(), 0);
        let _unlimited: Vec<_> = (0..50).map(|_| count.try_admit(None).unwrap()).collect();
        assert_eq!(count.open(), 50);
    }
}
