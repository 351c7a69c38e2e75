//! One downstream connection, from accept to close: route it, connect
//! upstream with failover, forward, and log the result.

use super::buffers::BufferPool;
use super::connect::{self, Attempt};
use super::forward::{self, End};
use crate::control::Table;
use crate::runtime::RESOURCE_ERRORS;
use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::sync::watch;
use tokio_uring::net::TcpStream;

/// What every connection of one worker shares. Owned by that worker's thread.
#[derive(Debug)]
pub struct WorkerState {
    /// The worker's index, for connection ids and logs.
    pub index: usize,
    /// The published routing table.
    pub table: Table,
    /// Forwarding buffers.
    pub buffers: BufferPool,
    /// Turns true when a graceful shutdown runs out of time.
    pub drain: watch::Receiver<bool>,
    /// Connections open on this worker now.
    pub open: Cell<usize>,
    next_id: Cell<u64>,
}

impl WorkerState {
    /// The state of worker `index`.
    pub fn new(
        index: usize,
        table: Table,
        buffers: BufferPool,
        drain: watch::Receiver<bool>,
    ) -> WorkerState {
        WorkerState {
            index,
            table,
            buffers,
            drain,
            open: Cell::new(0),
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
struct OpenGuard(Rc<WorkerState>);

impl OpenGuard {
    fn new(worker: &Rc<WorkerState>) -> OpenGuard {
        worker.open.set(worker.open.get() + 1);
        OpenGuard(Rc::clone(worker))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Serves one accepted client on listener `listener` until it closes.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: Rc<str>,
    worker: Rc<WorkerState>,
) {
    let _open = OpenGuard::new(&worker);
    let id = worker.next_id();
    let snapshot = worker.table.load_full();
    let Some(service) = snapshot.route(&listener) else {
        log::warn!("conn {id} from {peer}: listener {listener} has no route; closing the client");
        return;
    };
    if service.members.is_empty() {
        log::warn!(
            "conn {id} from {peer} on {listener}: service {} has no endpoints; closing the client \
             (add endpoints to the config file or register them)",
            service.name
        );
        return;
    }
    let (upstream, index, _active) = match connect::establish(service, peer).await {
        Ok(connected) => connected,
        Err(attempts) => {
            // Out of descriptors, every client fails the same way: one line a
            // second says so instead of one per client.
            let exhausted = attempts.iter().any(|a| a.error.is_resource_exhaustion());
            if exhausted && RESOURCE_ERRORS.allow().is_none() {
                return;
            }
            let list: Vec<String> = attempts.iter().map(Attempt::to_string).collect();
            log::warn!(
                "conn {id} from {peer} on {listener}: no endpoint of service {} answered after {} \
                 attempt(s): {}; closing the client",
                service.name,
                attempts.len(),
                list.join("; ")
            );
            return;
        }
    };
    let endpoint = &service.members[index].endpoint;
    log::debug!(
        "conn {id} from {peer} on {listener}: connected to {}",
        endpoint.addr
    );
    let outcome = forward::forward(
        &client,
        &upstream,
        &worker.buffers,
        service.idle_timeout,
        worker.drain.clone(),
    )
    .await;
    let how = match &outcome.end {
        End::Closed => "closed by both sides".to_string(),
        End::Idle => format!("idle for {:?}", service.idle_timeout),
        End::Drained => "closed by shutdown after drain_timeout".to_string(),
        End::Error(e) => format!("error: {e}"),
    };
    log::debug!(
        "conn {id} from {peer} to {}: {how}; {} bytes in, {} bytes out",
        endpoint.addr,
        outcome.rx,
        outcome.tx
    );
}
