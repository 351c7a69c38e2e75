//! The accept loop of one listener on one worker.
//!
//! Running out of file descriptors (EMFILE/ENFILE) or kernel memory is
//! survivable: the pending connection stays in the backlog, so the loop logs
//! (at most one line a second across the process), sleeps briefly and tries
//! again rather than spinning on an error that cannot clear by itself.

use super::log_limit::RESOURCE_ERRORS;
use crate::proxy::session::{self, WorkerState};
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, TcpListener as StdListener};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_uring::net::TcpListener;

/// How long to wait after a resource error before accepting again.
const BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `socket` until `stop` turns true, serving each client on this
/// worker.
pub async fn accept_loop(
    socket: StdListener,
    name: Rc<str>,
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
    let listener = TcpListener::from_std(socket);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        match accepted {
            Ok((client, peer)) => {
                tokio_uring::spawn(session::serve(
                    client,
                    peer,
                    Rc::clone(&name),
                    Rc::clone(&worker),
                ));
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
