//! The accept loop of one listener on one worker.
//!
//! Running out of file descriptors (EMFILE/ENFILE) or kernel memory is
//! survivable: the pending connection stays in the backlog, so the loop logs
//! (at most one line a second across the process), sleeps briefly and tries
//! again rather than spinning on an error that cannot clear by itself.

use super::log_limit::RESOURCE_ERRORS;
use crate::proxy::session::{self, Client, WorkerState};
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_uring::net::TcpListener;

/// How long to wait after a resource error before accepting again.
const BACKOFF: Duration = Duration::from_millis(100);

/// A listening socket on whichever driver serves it.
enum Acceptor {
    /// Accepts through io_uring: clients are forwarded by copying.
    Uring(TcpListener),
    /// Accepts on readiness: clients stay on the readiness driver, ready to
    /// be spliced without moving their socket between drivers.
    Ready(tokio::net::TcpListener),
}

impl Acceptor {
    async fn accept(&self) -> io::Result<(Client, SocketAddr)> {
        match self {
            Acceptor::Uring(l) => l.accept().await.map(|(c, p)| (Client::Uring(c), p)),
            Acceptor::Ready(l) => l.accept().await.map(|(c, p)| (Client::Ready(c), p)),
        }
    }
}

/// Accepts on `socket` until `stop` turns true, serving each client on this
/// worker.
pub async fn accept_loop(
    socket: StdListener,
    name: Arc<str>,
    worker: Rc<WorkerState>,
    mut stop: watch::Receiver<bool>,
) {
    // A second handle on the same socket, to shut it down: a dropped io_uring
    // accept stays in the kernel, and shutting the socket down is what ends it
    // and stops the kernel queueing clients here.
    let control = match socket.try_clone() {
        Ok(control) => control,
        Err(e) => {
            log::error!(
                "worker {}: listener {name}: {e}; not accepting",
                worker.index
            );
            return;
        }
    };
    let acceptor = if worker.pipes.is_some() {
        match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(socket))
        {
            Ok(listener) => Acceptor::Ready(listener),
            Err(e) => {
                log::error!(
                    "worker {}: listener {name}: {e}; not accepting",
                    worker.index
                );
                return;
            }
        }
    } else {
        Acceptor::Uring(TcpListener::from_std(socket))
    };
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        match accepted {
            Ok((client, peer)) => {
                let (name, worker) = (Arc::clone(&name), Rc::clone(&worker));
                tokio::task::spawn_local(session::serve(client, peer, name, worker));
            }
            Err(e) => handle_error(&e, &name).await,
        }
    }
    let _ = SockRef::from(&control).shutdown(Shutdown::Read);
}

async fn handle_error(error: &io::Error, name: &str) {
    match error.raw_os_error() {
        // The client gave up before we accepted it: nothing to do.
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {
            log::debug!("listener {name}: accept: {error}");
        }
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            if let Some(held_back) = RESOURCE_ERRORS.allow() {
                log::warn!(
                    "listener {name}: accept failed: {error}; retrying every {}ms, clients wait in \
                     the backlog ({held_back} similar errors since the last report; raise \
                     `ulimit -n` if this persists)",
                    BACKOFF.as_millis()
                );
            }
            tokio::time::sleep(BACKOFF).await;
        }
        _ => {
            if RESOURCE_ERRORS.allow().is_some() {
                log::warn!("listener {name}: accept failed: {error}; retrying");
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }
}
