//! The etcd source: one range read of the prefix, then a watch from that
//! revision + 1, so that no change between the two is missed.
//!
//! - Every watch response (with any already queued behind it) becomes one
//!   [`Update`] holding the complete endpoint lists of the services it
//!   changed; the controller publishes one snapshot for it.
//! - After a disconnect the watch resumes from the last revision seen. If
//!   etcd compacted that revision away, a full range read replaces the whole
//!   source in one update (`Scope::All`), so nothing stale stays.
//! - While etcd cannot be reached nothing is sent: the last endpoints keep
//!   serving. Each failed attempt counts in `l4mesh_discovery_errors_total`,
//!   a `warn` line says how stale the view is at most once a minute, and
//!   attempts repeat with capped exponential backoff and jitter.
//! - A key or value that does not parse is skipped with a `warn` naming the
//!   key, the value and why; the rest of the batch applies.
//!
//! HTTP/2 keep-alive pings find a member that stopped answering (a
//! partition, a frozen process), and `require_leader` ends a watch on a
//! member that lost its quorum; either way the client moves to another
//! member of `endpoints`.
//!
//! [`ctl`] and [`register`] are the other side: `l4mesh ctl --etcd`, which
//! registers endpoints under leases, deregisters and lists them.

pub mod ctl;
pub mod register;
pub mod schema;

use super::{Feed, Scope, Update};
use crate::config::EtcdConfig;
use crate::metrics::SourceStatus;
use crate::routing::{Discovered, Source};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, WatchOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the staleness line repeats while etcd is unreachable.
const STALE_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a range read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the source knows: every endpoint by service, and the revision it is
/// current to.
#[derive(Debug, Default)]
struct View {
    services: BTreeMap<String, BTreeMap<SocketAddr, Discovered>>,
    /// The etcd revision the view reflects (0: never read).
    revision: i64,
}

impl View {
    fn endpoints(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    /// The complete list of `service` as an update carries it.
    fn list(&self, service: &str) -> Vec<Discovered> {
        self.services
            .get(service)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// When the source last had a current view, for the staleness line.
struct Outage {
    since: Instant,
    logged: Option<Instant>,
    failures: u64,
}

/// Follows etcd until aborted, sending every change to `feed`.
pub async fn run(config: EtcdConfig, feed: Feed, status: Arc<SourceStatus>) {
    let mut view = View::default();
    let mut outage: Option<Outage> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let error = follow(
            &config,
            &feed,
            &status,
            &mut view,
            &mut outage,
            &mut backoff,
        )
        .await;
        status.failed();
        let out = outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            logged: None,
            failures: 0,
        });
        out.failures += 1;
        if out.logged.is_none_or(|at| at.elapsed() >= STALE_LOG_EVERY) {
            out.logged = Some(Instant::now());
            let served = if view.revision == 0 {
                "no endpoints from etcd yet".to_string()
            } else {
                format!(
                    "serving the last known {} endpoint(s) of {} service(s) from revision {}",
                    view.endpoints(),
                    view.services.len(),
                    view.revision
                )
            };
            log::warn!(
                "etcd ({}) unreachable for {} s ({} failed attempt(s)): {error}; {served}; \
                 retrying",
                config.endpoints.join(", "),
                out.since.elapsed().as_secs(),
                out.failures
            );
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// ±20% of `d`, so that many proxies do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Connects, brings `view` up to date and follows the watch until
/// something fails; returns why.
async fn follow(
    config: &EtcdConfig,
    feed: &Feed,
    status: &SourceStatus,
    view: &mut View,
    outage: &mut Option<Outage>,
    backoff: &mut Duration,
) -> String {
    let mut client = match connect(config).await {
        Ok(client) => client,
        Err(e) => return e,
    };
    loop {
        if view.revision == 0 {
            if let Err(e) = resync(&mut client, config, feed, view).await {
                return e;
            }
            // The whole prefix was read: current, before the watch starts.
            status.synced();
        }
        let from = view.revision + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        // Bounded: a frozen member (a partition) accepts the connection in
        // its kernel but never answers, and the client may pick it again.
        let watching = client.watch(config.prefix.as_str(), Some(options));
        let mut stream =
            match tokio::time::timeout(READ_TIMEOUT.min(config.dial_timeout * 2), watching).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return format!("cannot watch {}: {e}", config.prefix),
                Err(_) => {
                    return format!(
                        "starting the watch of {} took over {} ms",
                        config.prefix,
                        (READ_TIMEOUT.min(config.dial_timeout * 2)).as_millis()
                    );
                }
            };
        // Current again: up in /metrics before the log says so, then say it
        // once, and start the backoff afresh.
        status.synced();
        if let Some(out) = outage.take() {
            log::info!(
                "etcd reachable again after {} s; following {} from revision {}",
                out.since.elapsed().as_secs(),
                config.prefix,
                from
            );
        }
        *backoff = MIN_BACKOFF;
        loop {
            let first = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "the watch stream ended".into(),
                Err(e) => return format!("the watch failed: {e}"),
            };
            // Everything already queued behind it joins the batch.
            let mut batch = vec![first];
            while let Ok(Ok(Some(more))) =
                tokio::time::timeout(Duration::ZERO, stream.message()).await
            {
                batch.push(more);
            }
            let mut changed = BTreeSet::new();
            let mut compacted = None;
            for response in &batch {
                if response.canceled() {
                    if response.compact_revision() > 0 {
                        compacted = Some(response.compact_revision());
                        break;
                    }
                    return format!("etcd cancelled the watch: {}", response.cancel_reason());
                }
                for event in response.events() {
                    if let Some(kv) = event.kv() {
                        apply(config, view, kv, &mut changed);
                    }
                }
                if let Some(header) = response.header() {
                    view.revision = view.revision.max(header.revision());
                }
            }
            send(feed, view, Scope::Services, changed);
            status.synced();
            if let Some(compacted) = compacted {
                log::warn!(
                    "etcd compacted its history up to revision {compacted}, past revision \
                     {from} that l4mesh was to watch from; reading {} again in full",
                    config.prefix
                );
                view.revision = 0;
                break;
            }
        }
    }
}

/// Reads the whole prefix and replaces the source's endpoints with it.
async fn resync(
    client: &mut Client,
    config: &EtcdConfig,
    feed: &Feed,
    view: &mut View,
) -> Result<(), String> {
    let read = client.get(
        config.prefix.as_str(),
        Some(GetOptions::new().with_prefix()),
    );
    let response = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("cannot read {}: {e}", config.prefix)),
        Err(_) => {
            return Err(format!(
                "reading {} took more than {} s",
                config.prefix,
                READ_TIMEOUT.as_secs()
            ));
        }
    };
    let mut next = View::default();
    let mut ignored = BTreeSet::new();
    for kv in response.kvs() {
        apply(config, &mut next, kv, &mut ignored);
    }
    next.revision = response.header().map_or(1, |h| h.revision().max(1));
    log::info!(
        "etcd: read {} endpoint(s) of {} service(s) under {} at revision {}",
        next.endpoints(),
        next.services.len(),
        config.prefix,
        next.revision
    );
    *view = next;
    let all = view.services.keys().cloned().collect();
    send(feed, view, Scope::All, all);
    Ok(())
}

/// Applies one key's current state (a put, or a delete when its version is
/// 0) to `view`, noting the service it changed.
fn apply(
    config: &EtcdConfig,
    view: &mut View,
    kv: &etcd_client::KeyValue,
    changed: &mut BTreeSet<String>,
) {
    let key = match schema::parse_key(&config.prefix, kv.key()) {
        Ok(Some(key)) => key,
        Ok(None) => return,
        Err(why) => {
            if kv.version() != 0 {
                log::warn!(
                    "etcd: key {} skipped: {why}",
                    String::from_utf8_lossy(kv.key()).escape_debug()
                );
            }
            return;
        }
    };
    if kv.version() == 0 {
        // Deleted (or its lease expired).
        if let Some(endpoints) = view.services.get_mut(&key.service)
            && endpoints.remove(&key.addr).is_some()
        {
            if endpoints.is_empty() {
                view.services.remove(&key.service);
            }
            changed.insert(key.service);
        }
        return;
    }
    match schema::parse_value(key.addr, kv.value()) {
        Ok((endpoint, _zone)) => {
            view.services
                .entry(key.service.clone())
                .or_default()
                .insert(key.addr, endpoint);
            changed.insert(key.service);
        }
        Err(why) => log::warn!(
            "etcd: key {} skipped: value {}: {why}; fix: put {{\"weight\": N}} with N from 1 \
             to 256 (the endpoint keeps what it had, if anything)",
            String::from_utf8_lossy(kv.key()).escape_debug(),
            String::from_utf8_lossy(kv.value()).escape_debug()
        ),
    }
}

/// Sends the complete lists of the `services` named.
fn send(feed: &Feed, view: &View, scope: Scope, services: BTreeSet<String>) {
    if services.is_empty() && scope == Scope::Services {
        return;
    }
    feed.send(Update {
        source: Source::Etcd,
        scope,
        services: services
            .into_iter()
            .map(|s| {
                let list = view.list(&s);
                (s, list)
            })
            .collect(),
    });
}

/// A client for the configured members.
pub(crate) async fn connect(config: &EtcdConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some((user, password)) = &config.auth {
        options = options.with_user(user, password);
    }
    if let Some(tls) = &config.tls {
        let mut settings = TlsOptions::new().with_native_roots();
        if let Some(ca) = &tls.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                format!("discovery.etcd.ca = {}: cannot read it: {e}", ca.display())
            })?;
            settings = settings.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &tls.identity {
            let read = |path: &std::path::Path, what: &str| {
                std::fs::read(path).map_err(|e| {
                    format!(
                        "discovery.etcd.{what} = {}: cannot read it: {e}",
                        path.display()
                    )
                })
            };
            settings =
                settings.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
        }
        options = options.with_tls(settings);
    }
    let connecting = Client::connect(&config.endpoints, Some(options));
    // The client connects lazily to some members; bound the whole attempt.
    match tokio::time::timeout(config.dial_timeout + Duration::from_secs(1), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!(
            "no member answered within dial_timeout ({} ms)",
            config.dial_timeout.as_millis()
        )),
    }
}
