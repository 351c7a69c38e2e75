//! The etcd source: one range read of the prefix, then a watch from the
//! next revision, so that no change falls between the two. Each watch
//! response (with any already queued behind it) becomes one [`Update`] of
//! the services it touched. After a disconnect the watch resumes from the
//! last revision seen; if etcd compacted it away, a full read replaces the
//! source's endpoints in one `Scope::All` update. While etcd is
//! unreachable nothing is sent: the last endpoints keep serving.

mod client;
pub mod ctl;
pub mod register;
pub mod schema;
mod state;

pub use client::connect;

use super::{Feed, Scope, Update};
use crate::config::EtcdConfig;
use crate::metrics::SourceStatus;
use crate::routing::Source;
use client::Backoff;
use etcd_client::{Client, GetOptions, WatchOptions, WatchResponse};
use state::State;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the staleness of an outage is logged.
const STALE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Follows etcd until aborted, sending every change to `feed`.
pub async fn run(config: EtcdConfig, feed: Feed, status: Arc<SourceStatus>) {
    let mut state = State::new(config.prefix.clone());
    let mut backoff = Backoff::new();
    let mut outage: Option<Outage> = None;
    loop {
        let why = follow(
            &config,
            &mut state,
            &feed,
            &status,
            &mut outage,
            &mut backoff,
        )
        .await;
        status.failed();
        let now = Instant::now();
        let outage = outage.get_or_insert(Outage {
            since: now,
            logged: None,
        });
        if outage.logged.is_none_or(|at| now - at >= STALE_LOG_EVERY) {
            outage.logged = Some(now);
            log::warn!(
                "etcd unreachable for {} s ({why}); serving the last known endpoints of {} \
                 service(s) from revision {}; retrying with backoff",
                (now - outage.since).as_secs(),
                state.service_count(),
                state.revision
            );
        } else {
            log::debug!("etcd: {why}");
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// An outage: since when, and when it was last logged.
#[derive(Debug)]
struct Outage {
    since: Instant,
    logged: Option<Instant>,
}

/// Connects, brings `state` up to date and follows the watch until it
/// fails; returns why.
async fn follow(
    config: &EtcdConfig,
    state: &mut State,
    feed: &Feed,
    status: &SourceStatus,
    outage: &mut Option<Outage>,
    backoff: &mut Backoff,
) -> String {
    let mut client = match connect(config).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    loop {
        if state.revision == 0 {
            if let Err(e) = resync(&mut client, state, feed, status, config.dial_timeout).await {
                return e;
            }
        }
        let from = state.revision + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let watching = client.watch(config.prefix.clone(), Some(options));
        let mut stream = match within(config.dial_timeout, watching).await {
            Ok(s) => s,
            Err(e) => return format!("cannot watch {}: {e}", config.prefix),
        };
        status.synced();
        backoff.reset();
        if let Some(o) = outage.take() {
            log::info!(
                "etcd reachable again after {} s; following {} from revision {from}",
                o.since.elapsed().as_secs(),
                config.prefix
            );
        }
        loop {
            let first = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return "etcd closed the watch".to_string(),
                Err(e) => return format!("the watch failed: {e}"),
            };
            let mut batch = vec![first];
            // Whatever is already queued joins this update.
            while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::ZERO, stream.message()).await
            {
                batch.push(r);
            }
            match apply(state, &batch) {
                Applied::Changed(update) => {
                    status.synced();
                    feed.send(update);
                }
                Applied::Nothing => {}
                Applied::Compacted(at) => {
                    log::warn!(
                        "etcd compacted revision {from} away (compacted up to {at}); reading \
                         {} again in full",
                        config.prefix
                    );
                    state.revision = 0;
                    break;
                }
                Applied::Canceled(why) => return format!("etcd canceled the watch: {why}"),
            }
            status.synced();
        }
    }
}

/// Reads the whole prefix and replaces the source's endpoints with it.
async fn resync(
    client: &mut Client,
    state: &mut State,
    feed: &Feed,
    status: &SourceStatus,
    limit: Duration,
) -> Result<(), String> {
    let prefix = state.prefix().to_string();
    let reading = client.get(prefix.clone(), Some(GetOptions::new().with_prefix()));
    let response = within(limit, reading)
        .await
        .map_err(|e| format!("cannot read {prefix}: {e}"))?;
    let revision = response.header().map_or(0, |h| h.revision());
    let pairs = response.kvs().iter().map(|kv| (kv.key(), kv.value()));
    let services = state.replace(pairs, revision);
    log::info!(
        "etcd: read {} endpoint(s) of {} service(s) under {prefix} at revision {revision}",
        state.endpoint_count(),
        state.service_count()
    );
    status.synced();
    feed.send(Update {
        source: Source::Etcd,
        scope: Scope::All,
        services,
    });
    Ok(())
}

/// Runs an etcd call that may wait forever for a member when none is up.
pub(crate) async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// What a batch of watch responses did.
enum Applied {
    /// These services changed.
    Changed(Update),
    /// Nothing that matters (created, progress, or no net change).
    Nothing,
    /// The start revision was compacted away (up to this one).
    Compacted(i64),
    /// etcd canceled the watch for this reason.
    Canceled(String),
}

fn apply(state: &mut State, batch: &[WatchResponse]) -> Applied {
    let mut touched = std::collections::BTreeSet::new();
    for response in batch {
        if response.compact_revision() > 0 {
            return Applied::Compacted(response.compact_revision());
        }
        if response.canceled() {
            return Applied::Canceled(response.cancel_reason().to_string());
        }
        for event in response.events() {
            if let Some(service) = state.event(event) {
                touched.insert(service);
            }
        }
    }
    if touched.is_empty() {
        return Applied::Nothing;
    }
    Applied::Changed(Update {
        source: Source::Etcd,
        scope: Scope::Services,
        services: touched
            .into_iter()
            .map(|s| {
                let list = state.endpoints(&s);
                (s, list)
            })
            .collect(),
    })
}
