//! The accept loop of one listener on one worker.
//!
//! A client is accepted only when the process-wide [`Budget`] has room for
//! it: at capacity the loop waits for a connection to close, leaving new
//! clients in the listen backlog, rather than accepting a client it could
//! not open an upstream socket for. So the loop waits for room first, then
//! for the socket to be readable, then takes a slot and accepts
//! (non-blocking): no slot is held while no client is there, so a quiet
//! listener never keeps room from a busy one. Accepting on readiness serves
//! both event loops: a client for the io_uring copy path is accepted the
//! same way and handed over as a blocking socket.
//!
//! Running out of descriptors anyway (EMFILE/ENFILE: the control plane
//! took more than its reserve, say) or out of kernel memory is survivable:
//! the pending connection stays in the backlog, so the loop logs (at most
//! one line a second across the process), sleeps briefly and tries again
//! rather than spinning on an error that cannot clear by itself.

use super::budget::{Budget, Slot};
use crate::log_limit::RESOURCE_ERRORS;
use crate::proxy::epoll::Epoll;
use crate::proxy::listener::readiness;
use crate::proxy::session::{self, WorkerState};
use rustix::net::{SocketFlags, acceptfrom_with};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long to wait after a resource error before accepting again.
const BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `socket` until `stop` turns true, serving each client on this
/// worker while `budget` has room.
pub async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    worker: Rc<WorkerState<Epoll>>,
    budget: Arc<Budget>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match readiness(socket) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!(
                "worker {}: listener {name}: {e}; not accepting",
                worker.index
            );
            return;
        }
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    loop {
        if !budget.has_room() {
            tokio::select! {
                () = budget.wait_for_room() => {}
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        }
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(e) => {
                    handle_error(&e, &name).await;
                    continue;
                }
            },
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        // Another loop may have taken the last slot meanwhile: then the
        // client stays in the backlog and this loop waits for room.
        let Some(slot) = budget.take() else {
            continue;
        };
        match ready
            .try_io(|listener| acceptfrom_with(listener.get_ref(), flags).map_err(io::Error::from))
        {
            Ok(Ok((fd, peer))) => {
                let stream = TcpStream::from(fd);
                let peer = match peer.map(SocketAddr::try_from) {
                    Some(Ok(peer)) => Ok(peer),
                    _ => stream.peer_addr(),
                };
                match peer.and_then(|peer| Ok((tokio::net::TcpStream::from_std(stream)?, peer))) {
                    Ok((client, peer)) => serve(client, peer, &name, &worker, slot),
                    Err(e) => log::debug!("listener {name}: accepted client: {e}"),
                }
            }
            Ok(Err(e)) => {
                drop(slot);
                handle_error(&e, &name).await;
            }
            // Not readable after all (another worker took the client).
            Err(_would_block) => {}
        }
    }
    // The socket closes here: clients are refused from now on.
}

/// Serves `client` on this worker; its slot is freed when it is done.
fn serve(
    client: tokio::net::TcpStream,
    peer: SocketAddr,
    name: &Arc<str>,
    worker: &Rc<WorkerState<Epoll>>,
    slot: Slot,
) {
    let (name, worker) = (Arc::clone(name), Rc::clone(worker));
    tokio::task::spawn_local(session::serve(client, peer, name, worker, slot));
}

async fn handle_error(error: &io::Error, name: &str) {
    if let Some(pause) = backoff(error, name) {
        tokio::time::sleep(pause).await;
    }
}

/// Logs a failed accept (rate-limited) and says how long to pause before
/// accepting again, if at all. Shared by both event loops.
pub(super) fn backoff(error: &io::Error, name: &str) -> Option<Duration> {
    if is_resource_error(error) {
        if let Some(held_back) = RESOURCE_ERRORS.allow() {
            log::warn!(
                "listener {name}: accept failed: {error}; retrying every {}ms, clients wait in \
                 the backlog ({held_back} similar errors since the last report; raise \
                 `ulimit -n` if this persists)",
                BACKOFF.as_millis()
            );
        }
        return Some(BACKOFF);
    }
    match error.raw_os_error() {
        // The client gave up before we accepted it: nothing to do.
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {
            log::debug!("listener {name}: accept: {error}");
            None
        }
        _ => {
            if RESOURCE_ERRORS.allow().is_some() {
                log::warn!("listener {name}: accept failed: {error}; retrying");
            }
            Some(BACKOFF)
        }
    }
}

/// Whether a failed accept failed for want of descriptors or memory.
fn is_resource_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
