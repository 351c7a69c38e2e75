//! The accept loop of one listener on a ring worker: an `ACCEPT` op that
//! returns the client's socket and address at once (no system call of
//! ours), armed again as soon as it completes. (A multishot accept would
//! save re-arming but returns no address: the `getpeername` it needs costs
//! a system call per client and fails on a client that reset before it was
//! looked at, which would drop the bytes that client did send.)
//!
//! The process-wide [`Budget`] is honoured as on the epoll loop: a slot is
//! taken before the accept is armed, so no client is accepted that could
//! not be served; at capacity the loop waits for room and clients stay in
//! the listen backlog. A listener's armed accept holds one slot per
//! worker while it waits. Near capacity ([`Budget::is_tight`]) that slot
//! could be the last one, held by a socket with nobody queued while
//! another socket's clients wait for it (they did, up to 40 s at a
//! one-client budget): there the loop first waits until a client is
//! queued (a ring `POLL_ADD`), as the epoll loop always does.
//!
//! A stop cancels the accept; a client the kernel accepted before the
//! cancel took effect is still served.

use super::accept::backoff;
use super::budget::{Budget, Slot};
use crate::proxy::ring::{self, op, timer};
use crate::proxy::ring_stream::RingStream;
use crate::proxy::session::{self, WorkerState};
use crate::proxy::uring::Ring;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Accepts on `socket` until `stop` turns true, serving each client on this
/// worker while `budget` has room.
pub async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    worker: Rc<WorkerState<Ring>>,
    budget: Arc<Budget>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if budget.is_tight() {
            let queued = tokio::select! {
                queued = op::poll(socket.as_raw_fd(), libc::POLLIN as u32) => queued,
                _ = stop.wait_for(|stopping| *stopping) => break,
            };
            if let Err(e) = queued {
                if let Some(pause) = backoff(&e, &name) {
                    timer::sleep_until(Instant::now() + pause).await;
                }
                continue;
            }
        }
        let Some(slot) = budget.take() else {
            tokio::select! {
                () = budget.wait_for_room() => continue,
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        };
        let mut accept = op::accept(socket.as_raw_fd());
        let accepted = tokio::select! {
            accepted = &mut accept => accepted,
            _ = stop.wait_for(|stopping| *stopping) => {
                accept.cancel();
                if let Ok((fd, peer)) = accept.await {
                    serve(fd, peer, &name, &worker, slot);
                }
                break;
            }
        };
        match accepted {
            Ok((fd, peer)) => serve(fd, peer, &name, &worker, slot),
            Err(e) => {
                drop(slot);
                if let Some(pause) = backoff(&e, &name) {
                    timer::sleep_until(Instant::now() + pause).await;
                }
            }
        }
    }
    // The socket closes here: clients are refused from now on.
}

/// Serves the accepted socket `fd` from `peer` on this worker; its slot is
/// freed when it is done.
fn serve(
    fd: OwnedFd,
    peer: SocketAddr,
    name: &Arc<str>,
    worker: &Rc<WorkerState<Ring>>,
    slot: Slot,
) {
    let client = RingStream::new(fd);
    let (name, worker) = (Arc::clone(name), Rc::clone(worker));
    drop(ring::spawn(session::serve(
        client, peer, name, worker, slot,
    )));
}
