//! The control plane's accept loop, shared by the admin listener and the
//! registry socket: up to `clients` connections are served at once, up to
//! `overflow` more are admitted only to be told the server is busy, and past
//! both accepting waits, so further clients stay in the listen backlog
//! instead of holding descriptors. A failed accept (out of descriptors,
//! typically) is retried every 100 ms and logged once per streak.
//!
//! A leaf module: `metrics` and `control` both use it, and it uses neither.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The place an accepted client was given; dropping it frees the place.
#[derive(Debug)]
pub struct Seat {
    busy: bool,
    _place: OwnedSemaphorePermit,
}

impl Seat {
    /// One of the `overflow`, to be told the server is busy (else one of
    /// the `clients`, served normally).
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

/// Accepts with `accept` until the task is dropped (or never returns) and
/// hands each client and its [`Seat`] to `serve`, which must not block (it
/// spawns a task). `what` names the server in the log.
pub async fn accept_gated<S, F, Fut>(
    what: &str,
    clients: usize,
    overflow: usize,
    mut accept: F,
    mut serve: impl FnMut(S, Seat),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let serving = Arc::new(Semaphore::new(clients));
    let overflow = Arc::new(Semaphore::new(overflow));
    let mut failing = false;
    loop {
        // Past both limits, wait here: clients stay in the backlog.
        let Ok(spare) = Arc::clone(&overflow).acquire_owned().await else {
            return;
        };
        let client = match accept().await {
            Ok(client) => client,
            Err(e) => {
                // Out of descriptors, typically: the client waits in the
                // backlog until one is free. Logged once per streak.
                if !failing {
                    log::warn!("{what}: accept failed: {e}; retrying every 100ms");
                }
                failing = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        failing = false;
        match Arc::clone(&serving).try_acquire_owned() {
            Ok(slot) => {
                drop(spare);
                serve(
                    client,
                    Seat {
                        busy: false,
                        _place: slot,
                    },
                );
            }
            Err(_) => serve(
                client,
                Seat {
                    busy: true,
                    _place: spare,
                },
            ),
        }
    }
}

/// Runs the accept loop `run` makes while `paused` is false: when it turns
/// true the loop is dropped (clients already accepted go on, new ones wait
/// in the backlog) and made anew once it turns false again. Returns when
/// `run`'s loop does; once the pause switch is gone, its last position
/// holds for good.
pub async fn unless_paused<Fut: Future<Output = ()>>(
    mut paused: tokio::sync::watch::Receiver<bool>,
    mut run: impl FnMut() -> Fut,
) {
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        tokio::select! {
            () = run() => return,
            changed = paused.wait_for(|p| *p) => if changed.is_err() {
                return run().await;
            },
        }
    }
}
