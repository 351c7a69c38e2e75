//! One downstream connection, from accept to close: route it, connect
//! upstream with failover, forward, and log the result.

use super::connect::{self, Attempt, Failed};
use super::io::EventLoop;
use super::relay::{End, Meters, Side};
use crate::config::ServiceDiscovery;
use crate::log_limit::RESOURCE_ERRORS;
use crate::metrics::access_log::{AccessLog, Ending, Record};
use crate::routing::{DURATION_BUCKETS, ListenerSlot, ResetCause};
use crate::routing::{EndpointState, Service, Table};
use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What every connection of one worker shares, on the worker's event loop
/// `L`. Owned by that worker's thread.
#[derive(Debug)]
pub struct WorkerState<L> {
    /// The worker's index, for connection ids and logs.
    pub index: usize,
    /// The published routing table.
    pub table: Table,
    /// Turns true when a graceful shutdown runs out of time.
    pub drain: watch::Receiver<bool>,
    /// Connections open on this worker now.
    pub open: Cell<usize>,
    /// Where access-log records go, if anywhere.
    pub access_log: Option<AccessLog>,
    /// The worker's event loop: it connects and relays.
    pub io: L,
    next_id: Cell<u64>,
}

impl<L> WorkerState<L> {
    /// The state of worker `index`, serving on `io`.
    pub fn new(
        index: usize,
        table: Table,
        drain: watch::Receiver<bool>,
        access_log: Option<AccessLog>,
        io: L,
    ) -> WorkerState<L> {
        WorkerState {
            index,
            table,
            drain,
            open: Cell::new(0),
            access_log,
            io,
            next_id: Cell::new(0),
        }
    }

    fn next_id(&self) -> ConnId {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        ConnId {
            worker: self.index,
            n,
        }
    }
}

/// A connection's id in logs, `w<worker>-<n>`: built without allocating and
/// formatted only when a line is actually logged.
#[derive(Debug, Clone, Copy)]
struct ConnId {
    worker: usize,
    n: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}-{}", self.worker, self.n)
    }
}

/// Counts a connection as open on its worker while alive.
struct OpenGuard<L>(Rc<WorkerState<L>>);

impl<L> OpenGuard<L> {
    fn new(worker: &Rc<WorkerState<L>>) -> OpenGuard<L> {
        worker.open.set(worker.open.get() + 1);
        OpenGuard(Rc::clone(worker))
    }
}

impl<L> Drop for OpenGuard<L> {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Serves one accepted client on listener `listener` until it closes, then
/// counts it and writes its access-log record.
///
/// The routing table is held only while the connection is routed and
/// connected; a forwarding connection keeps just what it needs (its
/// listener's counters and client count, its endpoint's counters), so old
/// tables are freed at once however long connections last.
pub async fn serve<L: EventLoop>(
    client: L::Stream,
    peer: SocketAddr,
    listener: Arc<str>,
    worker: Rc<WorkerState<L>>,
) {
    let _open = OpenGuard::new(&worker);
    let id = worker.next_id();
    let started = Instant::now();
    let start = SystemTime::now();
    let snapshot = worker.table.load_full();
    let (Some(route), Some(service)) = (snapshot.listener(&listener), snapshot.route(&listener))
    else {
        log::warn!("conn {id} from {peer}: listener {listener} has no route; closing the client");
        return;
    };
    let (stats, clients) = (Arc::clone(&route.stats), Arc::clone(&route.clients));
    let max_connections = route.config.max_connections;
    let service = Arc::clone(service);
    drop(snapshot);
    let counts = stats.slot(worker.index);
    counts.accepted.add(1);
    let mut record = Record {
        start,
        duration: Duration::ZERO,
        listener: Arc::clone(&listener),
        client: peer,
        endpoint: None,
        rx: 0,
        tx: 0,
        attempts: 0,
        end: Ending::NoEndpoint,
    };
    let Some(_admitted) = clients.try_admit(max_connections) else {
        counts.rejected.add(1);
        record.end = Ending::Rejected;
        log::debug!("conn {id} from {peer} on {listener}: at max_connections; closing the client");
        if let Some(held_back) = clients.reject_log.allow() {
            log::warn!(
                "listener {listener}: {} client(s) open, its max_connections; closing new clients \
                 at once ({held_back} more since the last line)",
                clients.open()
            );
        }
        finish(record, started, counts, &worker);
        return;
    };
    match connect::establish(&worker.io, &service, peer, worker.index).await {
        Ok(connected) => {
            if connected.panic {
                service.stats.slot(worker.index).panic.add(1);
            }
            let endpoint = service.members[connected.index].endpoint.addr;
            let idle_timeout = service.idle_timeout;
            drop(service);
            log::debug!("conn {id} from {peer} on {listener}: connected to {endpoint}");
            let meters = Meters {
                rx: &counts.rx_bytes,
                tx: &counts.tx_bytes,
            };
            record.endpoint = Some(endpoint);
            record.attempts = connected.attempts;
            let (upstream, _active) = connected.into_parts();
            let drain = worker.drain.clone();
            let outcome = worker
                .io
                .relay(client, upstream, meters, idle_timeout, drain)
                .await;
            (record.rx, record.tx) = (outcome.rx, outcome.tx);
            let (ending, reset) = ending(&outcome.end);
            record.end = ending;
            if let Some(cause) = reset {
                counts.resets[cause as usize].add(1);
            }
            if let End::Reset { side, error } = &outcome.end {
                log::debug!(
                    "conn {id} from {peer} to {endpoint}: {} side failed ({error}); reset the other",
                    side.label()
                );
            }
            log::debug!(
                "conn {id} from {peer} to {endpoint}: {}; {} bytes in, {} bytes out",
                record.end.label(),
                outcome.rx,
                outcome.tx
            );
        }
        Err(failed) if failed.attempts.is_empty() => {
            service.stats.slot(worker.index).no_endpoint.add(1);
            log::warn!(
                "conn {id} from {peer} on {listener}: service {} has no usable endpoint ({}); \
                 closing the client",
                service.name,
                unusable(&service)
            );
        }
        Err(Failed { attempts, panic }) => {
            if panic {
                service.stats.slot(worker.index).panic.add(1);
            }
            record.attempts = attempts.len() as u32;
            record.end = Ending::ConnectFailed;
            // Out of descriptors, every client fails the same way: one line a
            // second says so instead of one per client.
            let exhausted = attempts.iter().any(|a| a.error.is_resource_exhaustion());
            if !exhausted || RESOURCE_ERRORS.allow().is_some() {
                log::warn!(
                    "conn {id} from {peer} on {listener}: no endpoint of service {} answered{} \
                     after {} attempt(s): {}; closing the client",
                    service.name,
                    if panic { " in panic mode" } else { "" },
                    attempts.len(),
                    attempt_list(&attempts)
                );
            }
        }
    }
    finish(record, started, counts, &worker);
}

/// The access log's ending for `end`, and the reset cause to count when
/// l4mesh reset the connection.
fn ending(end: &End) -> (Ending, Option<ResetCause>) {
    match end {
        End::Closed { client_first: true } => (Ending::ClientClosed, None),
        End::Closed {
            client_first: false,
        } => (Ending::UpstreamClosed, None),
        End::Idle => (Ending::IdleTimeout, Some(ResetCause::IdleTimeout)),
        End::Drained => (Ending::DrainedAtShutdown, Some(ResetCause::Drained)),
        End::Reset {
            side: Side::Client, ..
        } => (Ending::Reset, Some(ResetCause::Client)),
        End::Reset {
            side: Side::Upstream,
            ..
        } => (Ending::Reset, Some(ResetCause::Upstream)),
    }
}

fn attempt_list(attempts: &[Attempt]) -> String {
    let list: Vec<String> = attempts.iter().map(Attempt::to_string).collect();
    list.join("; ")
}

/// Why nothing of `service` could be picked, for the warn line: each
/// unusable state and how many members are in it.
fn unusable(service: &Service) -> String {
    if service.members.is_empty() {
        return match service.discovery() {
            Some(ServiceDiscovery::Etcd) => "it has no endpoints: none in the config file, the \
                registry or etcd (yet); put some under the etcd prefix"
                .to_string(),
            Some(ServiceDiscovery::Srv { name, .. }) => format!(
                "it has no endpoints: none in the config file or the registry, and no answer \
                 for SRV {name} (yet)"
            ),
            None => "it has no endpoints: add some to the config file or register them".into(),
        };
    }
    let mut counts: Vec<(usize, &str)> = EndpointState::ALL
        .iter()
        .filter(|s| **s != EndpointState::Up)
        .map(|s| {
            let n = service.members.iter().filter(|m| m.state() == *s).count();
            (n, s.label())
        })
        .collect();
    let full = service.members.iter().filter(|m| {
        m.state() == EndpointState::Up
            && service
                .max_connections_per_endpoint
                .is_some_and(|max| m.endpoint.active() >= max)
    });
    counts.push((full.count(), "at max_connections_per_endpoint"));
    let parts: Vec<String> = counts
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    format!(
        "{} endpoint(s): {}",
        service.members.len(),
        parts.join(", ")
    )
}

/// Counts a closed connection and hands its record to the access log.
fn finish<L>(mut record: Record, started: Instant, counts: &ListenerSlot, worker: &WorkerState<L>) {
    record.duration = started.elapsed();
    counts
        .duration
        .observe(&DURATION_BUCKETS, record.duration.as_secs_f64());
    counts.closed.add(1);
    if let Some(log) = &worker.access_log {
        log.record(record);
    }
}
