//! One downstream connection, from accept to close: admit and route it
//! ([`super::admit`]), connect upstream with failover, send what the
//! upstream gets first (a PROXY header, the bytes read while routing),
//! forward, and log the result.

use super::admit::{Admitted, Refusal, admit};
use super::connect::{self, Attempt, Failed};
use super::io::EventLoop;
use super::preamble::send_first;
use super::relay::{End, Meters, Side};
use super::tcp_state;
use crate::config::ServiceDiscovery;
use crate::log_limit::RESOURCE_ERRORS;
use crate::metrics::access_log::{AccessLog, ConnId, Ending, Record};
use crate::preamble::proxy_header::{self, Tlvs, Version};
use crate::routing::{DURATION_BUCKETS, ListenerSlot, ResetCause};
use crate::routing::{EndpointState, Service, Table};
use socket2::SockRef;
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsFd;
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

    pub(super) fn next_id(&self) -> ConnId {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        ConnId {
            worker: self.index,
            n,
        }
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
/// counts it and writes its access-log record; `held` (the runtime's slot
/// for the connection) is dropped at the very end.
///
/// The routing table is held only while the connection is admitted, routed
/// and connected (a PROXY header or a ClientHello is read within its
/// timeout meanwhile); a forwarding connection keeps just what it needs
/// (its listener's counters and client counts, its endpoint's counters), so
/// old tables are freed at once however long connections last.
///
/// The future is the connection's whole task, held while it is open, so it
/// is kept small: a plain function returning an `async move` block stores
/// each argument once (an `async fn` stores them again as its locals, and a
/// spawned block around it a third time).
pub fn serve<L: EventLoop, H>(
    client: L::Stream,
    peer: SocketAddr,
    listener: Arc<str>,
    worker: Rc<WorkerState<L>>,
    held: H,
) -> impl Future<Output = ()> {
    // Its duration counts from the accept, not from the task's first poll.
    let started = Instant::now();
    async move {
        let _held = held;
        let _open = OpenGuard::new(&worker);
        let mut record = Record {
            id: worker.next_id(),
            start: SystemTime::now(),
            duration: Duration::ZERO,
            listener: Arc::clone(&listener),
            client: peer,
            peer: None,
            server_name: None,
            endpoint: None,
            rx: 0,
            tx: 0,
            attempts: 0,
            end: Ending::NoEndpoint,
        };
        let id = record.id;
        let snapshot = worker.table.load_full();
        let Some(route) = snapshot.listener(&listener) else {
            log::warn!(
                "conn {id} from {peer}: listener {listener} has no route; closing the client"
            );
            return;
        };
        let stats = Arc::clone(&route.stats);
        let counts = stats.slot(worker.index);
        counts.accepted.add(1);
        let admitted = admit(&client, route, &snapshot, &worker, counts, &mut record).await;
        drop(snapshot);
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                if refusal == Refusal::Reset {
                    tcp_state::reset(client.as_fd());
                }
                finish(record, started, counts, &worker);
                return;
            }
        };
        let Admitted {
            service,
            destination,
            authority,
            pending,
            _open: _admitted,
            _permit,
        } = admitted;
        let client_addr = record.client;
        // Bound in a `let` of its own, so the result is not kept (as a
        // match's scrutinee would be) across the relay.
        let connected =
            match connect::establish(&worker.io, &service, client_addr, worker.index).await {
                Ok(connected) => connected,
                Err(failed) => {
                    connect_failed(failed, &service, worker.index, &mut record);
                    finish(record, started, counts, &worker);
                    return;
                }
            };
        if connected.panic {
            service.stats.slot(worker.index).panic.add(1);
        }
        let endpoint = service.members[connected.index].endpoint.addr;
        let idle_timeout = service.idle_timeout;
        let send_proxy = service.send_proxy;
        drop(service);
        log::debug!("conn {id} from {client_addr} on {listener}: connected to {endpoint}");
        let meters = Meters {
            rx: &counts.rx_bytes,
            tx: &counts.tx_bytes,
        };
        record.endpoint = Some(endpoint);
        record.attempts = connected.attempts;
        let (upstream, _active) = connected.into_parts();
        let about = Passed {
            destination,
            authority: record.server_name.as_deref().or(authority.as_deref()),
        };
        let first = first_bytes(send_proxy, &client, &about, &record, &pending);
        if !first.is_empty() {
            let deadline = Instant::now() + idle_timeout;
            let sent = worker
                .io
                .within(deadline, send_first(&upstream, &first))
                .await;
            if !matches!(sent, Some(Ok(()))) {
                log::debug!(
                    "conn {id} from {client_addr} to {endpoint}: the upstream took not the \
                     first {} bytes; reset both",
                    first.len()
                );
                tcp_state::reset(upstream.as_fd());
                tcp_state::reset(client.as_fd());
                record.end = Ending::Reset;
                counts.resets[ResetCause::Upstream as usize].add(1);
                finish(record, started, counts, &worker);
                return;
            }
            counts.rx_bytes.add(pending.len() as u64);
        }
        drop(first);
        let drain = worker.drain.clone();
        let outcome = worker
            .io
            .relay(client, upstream, meters, idle_timeout, drain)
            .await;
        (record.rx, record.tx) = (outcome.rx + pending.len() as u64, outcome.tx);
        let (ending, reset) = ending(&outcome.end);
        record.end = ending;
        if let Some(cause) = reset {
            counts.resets[cause as usize].add(1);
        }
        if let End::Reset { side, error } = &outcome.end {
            log::debug!(
                "conn {id} from {client_addr} to {endpoint}: {} side failed ({error}); reset \
                 the other",
                side.label()
            );
        }
        log::debug!(
            "conn {id} from {client_addr} to {endpoint}: {}; {} bytes in, {} bytes out",
            record.end.label(),
            record.rx,
            record.tx
        );
        finish(record, started, counts, &worker);
    }
}

/// Counts and logs a client (the one `record` is of) that no endpoint of
/// `service` took, and notes it in `record`.
fn connect_failed(failed: Failed, service: &Service, worker: usize, record: &mut Record) {
    let (id, client, listener) = (record.id, record.client, Arc::clone(&record.listener));
    let Failed { attempts, panic } = failed;
    if attempts.is_empty() {
        service.stats.slot(worker).no_endpoint.add(1);
        log::warn!(
            "conn {id} from {client} on {listener}: service {} has no usable endpoint ({}); \
             closing the client",
            service.name,
            unusable(service)
        );
        return;
    }
    if panic {
        service.stats.slot(worker).panic.add(1);
    }
    record.attempts = attempts.len() as u32;
    record.end = Ending::ConnectFailed;
    // Out of descriptors, every client fails the same way: one line a second
    // says so instead of one per client.
    let exhausted = attempts.iter().any(|a| a.error.is_resource_exhaustion());
    if !exhausted || RESOURCE_ERRORS.allow().is_some() {
        log::warn!(
            "conn {id} from {client} on {listener}: no endpoint of service {} answered{} after \
             {} attempt(s): {}; closing the client",
            service.name,
            if panic { " in panic mode" } else { "" },
            attempts.len(),
            attempt_list(&attempts)
        );
    }
}

/// What a PROXY header l4mesh sends passes on besides the client.
struct Passed<'a> {
    /// What the client connected to, as its own PROXY header said.
    destination: Option<SocketAddr>,
    /// The server name: the ClientHello's, or the incoming header's.
    authority: Option<&'a str>,
}

/// What the upstream gets before the relay: the PROXY header of a
/// `send_proxy` service (source: the client; destination: what the client
/// connected to, as its own PROXY header said or as the socket says), then
/// the client's bytes read while routing.
fn first_bytes<S: AsFd>(
    send_proxy: Option<Version>,
    client: &S,
    passed: &Passed<'_>,
    record: &Record,
    pending: &[u8],
) -> Vec<u8> {
    let mut first = Vec::new();
    if let Some(version) = send_proxy {
        let destination = passed.destination.or_else(|| local_address(client));
        match destination {
            Some(destination) => {
                let id = record.id.to_string();
                let tlvs = Tlvs {
                    authority: passed.authority,
                    unique_id: Some(id.as_bytes()),
                };
                proxy_header::encode(version, record.client, destination, &tlvs, &mut first);
            }
            None => proxy_header::encode_local(version, &mut first),
        }
    }
    first.extend_from_slice(pending);
    first
}

/// The address the client connected to (the listener's, with the IP the
/// kernel chose for a wildcard listener).
fn local_address<S: AsFd>(client: &S) -> Option<SocketAddr> {
    SockRef::from(client).local_addr().ok()?.as_socket()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ForwardMode};
    use crate::proxy::epoll::Epoll;
    use crate::proxy::pump::Pumps;
    use crate::proxy::ring_stream::RingStream;
    use crate::proxy::test_streams::connected_pair;
    use crate::proxy::uring::Ring;
    use crate::routing::{ConfigOnly, Snapshot};
    use arc_swap::ArcSwap;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    /// The state of worker 0 on `io`, with a one-listener table.
    fn worker<L>(io: L) -> Rc<WorkerState<L>> {
        let text = "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n\
                    [services.s]\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let table = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            &config,
            &ConfigOnly,
            None,
        )));
        let (_drain_tx, drain) = watch::channel(false);
        Rc::new(WorkerState::new(0, table, drain, None, io))
    }

    fn pumps() -> Pumps {
        Pumps::new(ForwardMode::Auto, 16384, 65536, 10, 1)
    }

    /// Each open connection's task is this future: as an `async fn` inside
    /// a spawned block it was 2,984 bytes on epoll (a 3,200-byte tokio task
    /// cell) and 2,696 on the ring; 2,784 and 2,560 since.
    #[test]
    fn it_should_keep_each_connections_task_small_on_either_loop() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (runtime, client, _accepted) = connected_pair();
        let epoll = runtime.block_on(async {
            let task = serve(client, peer, "l".into(), worker(Epoll::new(pumps())), ());
            std::mem::size_of_val(&task)
        });
        assert!(epoll <= 2816, "an epoll connection's task is {epoll} bytes");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        let client = RingStream::new(OwnedFd::from(socket.unwrap()));
        let ring = Ring::new(ForwardMode::Auto, pumps());
        let task = serve(client, peer, "l".into(), worker(ring), ());
        let size = std::mem::size_of_val(&task);
        // Never polled; its socket closes at once, with no ring here.
        drop(task);
        assert!(size <= 2688, "a ring connection's task is {size} bytes");
    }
}
