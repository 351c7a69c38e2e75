//! The accept loop of one listener on a ring worker: one multishot
//! `ACCEPT` hands over every client the kernel accepts, with no system
//! call of ours, until it ends (an error, a cancel) and is armed again.
//!
//! The process-wide [`Budget`] is honoured as on the epoll loop: no client
//! is accepted that could not be served. A multishot accept may take every
//! client the kernel has completed at once, so it is armed only while the
//! budget has room for all of them (`accept_burst`: every worker's full
//! backlog); when it has not, the loop accepts one client at a time as the
//! epoll loop does: it waits for room, for the listener to be readable
//! (a ring poll), takes a slot, then accepts. Clients beyond the budget
//! stay in the listen backlog.
//!
//! A stop cancels the accept and serves every client the kernel accepted
//! before the cancel took effect: none is dropped.

use super::accept::backoff;
use super::budget::{Budget, Slot};
use crate::proxy::ring::{self, op, timer};
use crate::proxy::ring_stream::RingStream;
use crate::proxy::session::{self, WorkerState};
use crate::proxy::uring::Ring;
use rustix::net::{SocketFlags, acceptfrom_with};
use socket2::SockRef;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Accepts on `socket` until `stop` turns true, serving each client on this
/// worker while `budget` has room; multishot while it has room for
/// `burst` more.
pub async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    worker: Rc<WorkerState<Ring>>,
    budget: Arc<Budget>,
    burst: usize,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = socket.set_nonblocking(true) {
        log::error!(
            "worker {}: listener {name}: {e}; not accepting",
            worker.index
        );
        return;
    }
    'arm: loop {
        if !budget.has_room_for(burst) {
            let accepted = tokio::select! {
                accepted = accept_one(&socket, &budget) => accepted,
                _ = stop.wait_for(|stopping| *stopping) => break 'arm,
            };
            match accepted {
                Ok(Some((fd, slot))) => serve(fd, &name, &worker, Some(slot)),
                // Not there after all (another worker took it).
                Ok(None) => {}
                Err(e) => pause(&e, &name).await,
            }
            continue;
        }
        let mut accepts = op::accept_multi(socket.as_raw_fd());
        loop {
            let next = tokio::select! {
                next = accepts.next() => next,
                _ = stop.wait_for(|stopping| *stopping) => {
                    accepts.cancel();
                    while let Some(accepted) = accepts.next().await {
                        if let Ok(fd) = accepted {
                            serve(fd, &name, &worker, budget.take());
                        }
                    }
                    break 'arm;
                }
            };
            match next {
                // Ended by the kernel or by a cancel: arm it again.
                None => continue 'arm,
                Some(Ok(fd)) => {
                    let slot = match budget.take() {
                        Some(slot) => slot,
                        // Room for the burst was there when armed; another
                        // worker's clients took it since.
                        None => wait_for_slot(&budget).await,
                    };
                    serve(fd, &name, &worker, Some(slot));
                    if !budget.has_room_for(burst) {
                        // Near capacity: one client at a time from here on.
                        accepts.cancel();
                    }
                }
                Some(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                Some(Err(e)) => {
                    accepts.cancel();
                    pause(&e, &name).await;
                }
            }
        }
    }
    // The socket closes here: clients are refused from now on.
}

/// One client, accepted the way the epoll loop does it: waits for room,
/// then for a client (a ring poll on the listener), takes a slot and
/// accepts (non-blocking). `Ok(None)`: the client was gone (another worker
/// took it, or the slot went first).
async fn accept_one(
    socket: &TcpListener,
    budget: &Arc<Budget>,
) -> io::Result<Option<(OwnedFd, Slot)>> {
    if !budget.has_room() {
        budget.wait_for_room().await;
    }
    op::poll(socket.as_raw_fd(), libc::POLLIN as u32).await?;
    let Some(slot) = budget.take() else {
        return Ok(None);
    };
    match acceptfrom_with(socket, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
        Ok((fd, _)) => Ok(Some((fd, slot))),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// After a failed accept: logs it (rate-limited) and pauses if it calls
/// for a pause.
async fn pause(error: &io::Error, name: &str) {
    if let Some(pause) = backoff(error, name) {
        timer::sleep_until(Instant::now() + pause).await;
    }
}

/// Waits until the budget has room and takes a slot.
async fn wait_for_slot(budget: &Arc<Budget>) -> Slot {
    loop {
        if let Some(slot) = budget.take() {
            return slot;
        }
        budget.wait_for_room().await;
    }
}

/// Serves the accepted socket `fd` on this worker; its slot (if it got
/// one: at a stop it may not) is freed when it is done.
fn serve(fd: OwnedFd, name: &Arc<str>, worker: &Rc<WorkerState<Ring>>, slot: Option<Slot>) {
    let peer = match SockRef::from(&fd).peer_addr().map(|a| a.as_socket()) {
        Ok(Some(peer)) => peer,
        Ok(None) => {
            log::debug!("listener {name}: accepted a client with no IP address; closing it");
            return;
        }
        Err(e) => {
            log::debug!("listener {name}: accepted client: {e}");
            return;
        }
    };
    let client = RingStream::new(fd);
    let (name, worker) = (Arc::clone(name), Rc::clone(worker));
    drop(ring::spawn(async move {
        session::serve(client, peer, name, worker).await;
        drop(slot);
    }));
}
