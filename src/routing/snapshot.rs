//! The routing snapshot: listeners → services → endpoints with their
//! balancer, built completely off the hot path and published with one
//! `arc-swap` store. A connection keeps only what it needs of it (its
//! service's settings, its endpoint's counters), so publishing a new one
//! never disturbs it.
//!
//! Endpoint identity is (service, address): building a snapshot from a
//! previous one reuses the same [`Endpoint`] for an unchanged address, so its
//! live state (active connections, health, ejection) carries over.
//!
//! [`Endpoint`]: super::Endpoint

use super::admission::ClientCount;
use super::client_limits::ClientTable;
use super::service::Service;
use super::sni_routes::SniRoutes;
use super::stats::ListenerStats;
use super::{Discovered, Source};
use crate::config::{Config, ListenerConfig, ListenerRoute};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The published routing table, shared by every worker.
pub type Table = Arc<ArcSwap<Snapshot>>;

/// What the builder merges with the config: the endpoints of the run-time
/// sources (registry, etcd, DNS) and the operator's drains.
pub trait Inputs {
    /// `service`'s endpoints from `source` (never [`Source::File`]: the
    /// config holds those).
    fn endpoints(&self, service: &str, source: Source) -> Vec<Discovered>;
    /// Whether the operator drained `addr` of `service`.
    fn is_drained(&self, service: &str, addr: SocketAddr) -> bool;
}

/// No run-time endpoints and no drains: the config alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigOnly;

impl Inputs for ConfigOnly {
    fn endpoints(&self, _service: &str, _source: Source) -> Vec<Discovered> {
        Vec::new()
    }

    fn is_drained(&self, _service: &str, _addr: SocketAddr) -> bool {
        false
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
    /// Its SNI rules and their counts, when it routes by SNI.
    pub sni: Option<SniRoutes>,
    /// Its per-client state, when it has per-client limits (kept across
    /// reloads while it has them, so a reload resets no client's count).
    pub client_table: Option<Arc<ClientTable>>,
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
    /// Builds a snapshot from a validated config merged with the run-time
    /// sources' endpoints, carrying over the live state of endpoints (and whole
    /// services) that `previous` already had.
    pub fn build(config: &Config, inputs: &dyn Inputs, previous: Option<&Snapshot>) -> Snapshot {
        let services = config
            .services
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| p.services.get(&s.name));
                let service = Service::build(s, inputs, old, config.runtime.workers);
                (s.name.clone(), service)
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let old = previous.and_then(|p| p.listener(&l.name));
                let sni = match &l.route {
                    ListenerRoute::Sni(sni) => Some(SniRoutes::build(
                        sni,
                        old.and_then(|o| o.sni.as_ref()),
                        config.runtime.workers,
                    )),
                    ListenerRoute::Service(_) => None,
                };
                let client_table = l.per_client.as_ref().map(|_| {
                    old.and_then(|o| o.client_table.clone()).unwrap_or_else(|| {
                        Arc::new(ClientTable::new(ClientTable::DEFAULT_CAPACITY))
                    })
                });
                Listener {
                    config: l.clone(),
                    stats: old.map_or_else(
                        || Arc::new(ListenerStats::new(config.runtime.workers)),
                        |old| Arc::clone(&old.stats),
                    ),
                    clients: old.map_or_else(Arc::default, |old| Arc::clone(&old.clients)),
                    sni,
                    client_table,
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

    /// The service that connections on listener `name` go to, when it
    /// routes to one fixed service (not by SNI).
    pub fn route(&self, listener: &str) -> Option<&Arc<Service>> {
        match &self.listener(listener)?.config.route {
            ListenerRoute::Service(name) => self.services.get(name),
            ListenerRoute::Sni(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::health;
    use crate::routing::health::Verdict;
    use crate::routing::{Choice, ClientGuard, EndpointState, Outlier};
    use std::collections::HashSet;
    use std::path::Path;
    use std::time::Duration;

    /// Registered endpoints and drains of service `s`, as a test gives them.
    #[derive(Default)]
    struct Given {
        registered: Vec<Discovered>,
        drained: HashSet<SocketAddr>,
    }

    impl Given {
        fn register(&mut self, addr: &str, weight: u32, tier: u16) {
            let addr = addr.parse().unwrap();
            self.registered.push(Discovered { addr, weight, tier });
        }

        fn drain(&mut self, addr: &str) {
            self.drained.insert(addr.parse().unwrap());
        }
    }

    impl Inputs for Given {
        fn endpoints(&self, service: &str, source: Source) -> Vec<Discovered> {
            match (service, source) {
                ("s", Source::Registry) => self.registered.clone(),
                _ => Vec::new(),
            }
        }

        fn is_drained(&self, service: &str, addr: SocketAddr) -> bool {
            service == "s" && self.drained.contains(&addr)
        }
    }

    fn config(endpoints: &str) -> Config {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n[services.s]\nendpoints = [{endpoints}]\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn it_should_carry_live_state_over_for_unchanged_endpoints() {
        let regs = Given::default();
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
        let mut regs = Given::default();
        let first = Snapshot::build(&config(text), &regs, None);
        let second = Snapshot::build(&config(text), &regs, Some(&first));
        assert!(Arc::ptr_eq(
            first.route("l").unwrap(),
            second.route("l").unwrap()
        ));
        regs.register("127.0.0.1:7", 2, 0);
        regs.register("127.0.0.1:1", 9, 0);
        regs.drain("127.0.0.1:1");
        let third = Snapshot::build(&config(text), &regs, Some(&second));
        let s = third.route("l").unwrap();
        assert!(!Arc::ptr_eq(second.route("l").unwrap(), s));
        let listed: Vec<_> = s.members.iter().map(|m| m.identity()).collect();
        assert_eq!(
            listed,
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1, Source::File, true, 0),
                (
                    "127.0.0.1:7".parse().unwrap(),
                    2,
                    Source::Registry,
                    false,
                    0
                ),
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
        let regs = Given::default();
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
        let regs = Given::default();
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
        let snapshot = Snapshot::build(&service_config(outlier, 4), &ConfigOnly, None);
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
        let plain = Snapshot::build(&service_config("", 1), &ConfigOnly, None);
        let p = plain.route("l").unwrap();
        assert!((0..10).all(|_| p.connect_failed(0, 0).is_none()));
    }

    #[test]
    fn it_should_pick_a_higher_tier_only_while_no_lower_tier_is_usable() {
        let mut given = Given::default();
        given.register("127.0.0.1:20", 1, 1);
        given.register("127.0.0.1:21", 1, 1);
        given.register("127.0.0.1:10", 1, 0);
        given.register("127.0.0.1:30", 1, 2);
        let snapshot = Snapshot::build(&config(""), &given, None);
        let s = snapshot.route("l").unwrap();
        let client = "127.0.0.1".parse().unwrap();
        let picks = |n: usize| -> HashSet<u16> {
            (0..n)
                .filter_map(|_| s.choose(client, false, &|_| false))
                .map(|c| {
                    assert!(!c.panic);
                    s.members[c.index].endpoint.addr.port()
                })
                .collect()
        };
        assert_eq!(picks(20), HashSet::from([10]));
        let member = |port: u16| s.member(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        member(10).endpoint.health.set_verdict(Verdict::Down);
        assert_eq!(picks(20), HashSet::from([20, 21]));
        member(20).endpoint.health.set_verdict(Verdict::Down);
        member(21).endpoint.health.set_verdict(Verdict::Down);
        assert_eq!(picks(20), HashSet::from([30]));
        // A member a client already tried passes the turn to the next tier.
        member(10).endpoint.health.set_verdict(Verdict::Up);
        let i = s.members.iter().position(|m| m.tier == 0).unwrap();
        let retry = s.choose(client, true, &|t| t == i).unwrap();
        assert_eq!(s.members[retry.index].tier, 2);
        assert_eq!(picks(20), HashSet::from([10]));
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
                let mut regs = Given::default();
                for p in 1..=n {
                    if rng.u8(..5) == 0 {
                        regs.drain(&format!("127.0.0.1:{p}"));
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
