//! The `l4mesh-health` thread: one small current-thread tokio runtime, off
//! the workers, that runs every active probe and ends ejections when due.
//!
//! It loads the routing table whenever one is published; when the
//! generation changed, it starts a probe task for each endpoint of a
//! service with `[services.NAME.health]` that has none, and stops the tasks
//! of endpoints that left (or whose service's check settings changed, which
//! restarts them). A task probes its endpoint first after a random share of the
//! interval (at once for an endpoint waiting for its first check), then
//! every interval ±10%. Verdict changes are written into the endpoint's
//! [`EndpointHealth`](super::EndpointHealth), which workers read when they
//! pick, and logged: `warn` when an endpoint goes down, `info` when it comes
//! up. Between tables it sleeps until the first ejection is due to end;
//! a new ejection ([`super::EJECTIONS`]) or a new table wakes it sooner. So
//! an idle proxy costs no wake-ups. One thread and async probes: a thousand
//! endpoints probed every second cost a thousand short connects, never a
//! thousand threads, and a silent endpoint holds nothing but its own task
//! until its timeout.

use super::probe::probe;
use super::schedule;
use crate::config::HealthConfig;
use crate::preamble::proxy_header::Version;
use crate::routing::health::threshold::{Tally, Thresholds, Verdict};
use crate::routing::health::{EJECTIONS, monotonic_ms};
use crate::routing::{Endpoint, Snapshot, Table};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle as TaskHandle;
use tokio::time::Instant;

/// The shortest sleep between looks at ejections: how late a re-admission
/// may be at worst.
const TICK: Duration = Duration::from_millis(50);

/// The running health thread.
#[derive(Debug)]
pub struct Checker {
    thread: JoinHandle<()>,
}

impl Checker {
    /// Starts the thread; it runs until `stop` turns true (or either
    /// sender is dropped). `published` carries the generation of each table
    /// published. Fails if the runtime or the thread cannot be created.
    pub fn start(
        table: Table,
        published: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Checker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("l4mesh-health".into())
            .spawn(move || runtime.block_on(supervise(table, published, stop)))?;
        Ok(Checker { thread })
    }

    /// Waits for the thread to stop.
    pub fn wait(self) {
        if self.thread.join().is_err() {
            log::error!("the health thread panicked");
        }
    }
}

/// One endpoint's probe task and what it was started with.
struct Running {
    endpoint: Arc<Endpoint>,
    config: HealthConfig,
    send_proxy: Option<Version>,
    task: TaskHandle<()>,
}

type Key = (String, SocketAddr);

async fn supervise(
    table: Table,
    mut published: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut seen = 0;
    loop {
        // Registered before the table is read, so an ejection made after
        // the read still ends this wait.
        let ejected = EJECTIONS.notified();
        tokio::pin!(ejected);
        ejected.as_mut().enable();
        let snapshot = table.load_full();
        if snapshot.generation != seen {
            seen = snapshot.generation;
            reconcile(&snapshot, &mut running);
        }
        let now_ms = monotonic_ms();
        readmit(&snapshot, now_ms);
        let wait = next_look(&snapshot, now_ms).map(|wait| wait.max(TICK));
        drop(snapshot);
        tokio::select! {
            _ = sleep_for(wait) => {}
            _ = &mut ejected => {}
            changed = published.changed() => {
                if changed.is_err() {
                    break; // The proxy is gone.
                }
            }
            _ = stop.wait_for(|stopping| *stopping) => break,
        }
    }
    for r in running.values() {
        r.task.abort();
    }
}

/// Sleeps for `wait`, or forever when `None`.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// How long until the first current ejection ends (`None`: nothing is
/// ejected, so only a new ejection or table can give the thread work).
fn next_look(snapshot: &Snapshot, now_ms: u64) -> Option<Duration> {
    snapshot
        .services
        .values()
        .flat_map(|service| service.members.iter())
        .filter_map(|m| m.endpoint.health.ejected_for(now_ms))
        .min()
}

/// Starts, keeps or stops probe tasks to match `snapshot`.
fn reconcile(snapshot: &Snapshot, running: &mut HashMap<Key, Running>) {
    let mut wanted: HashSet<Key> = HashSet::new();
    for (name, service) in &snapshot.services {
        for member in &service.members {
            let endpoint = &member.endpoint;
            let Some(config) = &service.health else {
                if endpoint.health.verdict() != Verdict::Up {
                    endpoint.health.set_verdict(Verdict::Up);
                    endpoint.health.set_last_failure(None);
                    log::info!(
                        "health: service {name} endpoint {}: health checks are off; it counts \
                         as up",
                        endpoint.addr
                    );
                }
                continue;
            };
            let key = (name.clone(), endpoint.addr);
            wanted.insert(key.clone());
            if let Some(r) = running.get(&key)
                && Arc::ptr_eq(&r.endpoint, endpoint)
                && r.config == *config
                && r.send_proxy == service.send_proxy
            {
                continue;
            }
            let first = if endpoint.health.verdict() == Verdict::Pending {
                Duration::ZERO
            } else {
                schedule::first_probe(config.interval, fastrand::f64())
            };
            let task = tokio::spawn(probe_loop(
                name.clone(),
                Arc::clone(endpoint),
                (config.clone(), service.send_proxy),
                first,
            ));
            let started = Running {
                endpoint: Arc::clone(endpoint),
                config: config.clone(),
                send_proxy: service.send_proxy,
                task,
            };
            if let Some(old) = running.insert(key, started) {
                old.task.abort();
            }
        }
    }
    running.retain(|key, r| {
        let keep = wanted.contains(key);
        if !keep {
            r.task.abort();
        }
        keep
    });
}

/// Probes one endpoint forever (until its task is aborted), each probe
/// opening with a LOCAL PROXY header when the service sends headers.
async fn probe_loop(
    service: String,
    endpoint: Arc<Endpoint>,
    (config, send_proxy): (HealthConfig, Option<Version>),
    first: Duration,
) {
    let thresholds = Thresholds {
        healthy: config.healthy_threshold.get(),
        unhealthy: config.unhealthy_threshold.get(),
    };
    let addr = endpoint.addr;
    let mut tally = Tally::new(endpoint.health.verdict());
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let outcome = probe(addr, &config, send_proxy).await;
        let why = outcome.err().map(|e| e.to_string());
        if let Some(why) = &why {
            log::debug!("health: service {service} endpoint {addr}: check failed: {why}");
        }
        let before = tally.verdict();
        if let Some(verdict) = tally.observe(why.is_none(), thresholds) {
            endpoint.health.set_verdict(verdict);
            log_transition(&service, addr, before, verdict, thresholds, why.as_deref());
        }
        endpoint.health.set_last_failure(why);
        next = started + schedule::next_probe(config.interval, fastrand::f64());
    }
}

fn log_transition(
    service: &str,
    addr: SocketAddr,
    before: Verdict,
    after: Verdict,
    thresholds: Thresholds,
    why: Option<&str>,
) {
    let why = why.unwrap_or("-");
    match (before, after) {
        (Verdict::Pending, Verdict::Down) => log::warn!(
            "health: service {service} endpoint {addr} failed its first check: {why}; it gets no \
             connections until {} check(s) in a row pass",
            thresholds.healthy
        ),
        (_, Verdict::Down) => log::warn!(
            "health: service {service} endpoint {addr} is down after {} failed check(s) in a row: \
             {why}; no new connections go to it",
            thresholds.unhealthy
        ),
        (Verdict::Pending, _) => log::info!(
            "health: service {service} endpoint {addr} passed its first check; it now gets \
             connections"
        ),
        _ => log::info!(
            "health: service {service} endpoint {addr} is up after {} passed check(s) in a row",
            thresholds.healthy
        ),
    }
}

/// Ends the ejections that are due (all of them in a service whose outlier
/// detection was turned off).
fn readmit(snapshot: &Snapshot, now_ms: u64) {
    for (name, service) in &snapshot.services {
        let off = service.outlier.is_none();
        for member in &service.members {
            if member.endpoint.health.readmit(now_ms, off) {
                let why = if off {
                    "outlier detection is off"
                } else {
                    "its ejection is over"
                };
                log::info!(
                    "outlier: service {name} endpoint {} re-admitted: {why}",
                    member.endpoint.addr
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::ConfigOnly;
    use arc_swap::ArcSwap;
    use std::path::Path;

    fn snapshot(outlier: &str, previous: Option<&Snapshot>) -> Snapshot {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n[services.s]\n\
             endpoints = [{{ addr = \"127.0.0.1:9\" }}, {{ addr = \"127.0.0.1:10\" }}]\n{outlier}"
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        Snapshot::build(&config, &ConfigOnly, previous)
    }

    /// A connection keeps the table it started with and may eject through
    /// it after a reload turned outlier detection off: the health thread
    /// must still hear of it and end the ejection (here at once, since the
    /// published table has no outlier detection).
    #[test]
    fn it_should_end_an_ejection_made_through_an_older_table() {
        let old = Arc::new(snapshot(
            "[services.s.outlier]\nbase_ejection = \"30s\"\n",
            None,
        ));
        let table: Table = Arc::new(ArcSwap::new(Arc::clone(&old)));
        let (published, published_rx) = watch::channel(old.generation);
        let (_stop, stop_rx) = watch::channel(false);
        let checker = Checker::start(Arc::clone(&table), published_rx, stop_rx).unwrap();
        let next = snapshot("", Some(&old));
        let generation = next.generation;
        table.store(Arc::new(next));
        published.send_replace(generation);
        std::thread::sleep(Duration::from_millis(100));
        let health = &old.services["s"].members[0].endpoint.health;
        health.eject(
            monotonic_ms(),
            Duration::from_secs(30),
            Duration::from_secs(30),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while health.is_ejected() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!health.is_ejected(), "still ejected 2 s later");
        drop(published);
        checker.wait();
    }
}
