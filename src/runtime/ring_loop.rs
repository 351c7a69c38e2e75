//! The io_uring event loop: one ring per worker thread, driven by the
//! proxy's own single-threaded executor ([`crate::proxy::ring`]). Accepts,
//! connects, readiness polls, the copy path's recvs, sends and half-closes,
//! and closes are ring ops (splice(2) and the splice path's half-close are
//! called inline on ring readiness), and the loop's only blocking call is
//! the `io_uring_enter` that submits a turn's ops and waits for completions.
//!
//! Listener changes start and stop accept loops ([`super::ring_accept`]);
//! a stop ends them all and drains, as on the epoll loop.

use super::listeners::ListenerChange;
use super::ring_accept::accept_loop;
use super::worker::{WorkerPlan, drain};
use crate::config::ForwardMode;
use crate::proxy::ring::{self, Runtime, executor};
use crate::proxy::uring::Ring;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::watch;

/// Provided buffers per worker ring: with `forward = "copy"` each is
/// `buffer_size` bytes, with `"auto"` the scratch size.
const RING_BUFFERS: u16 = 256;

/// Sets up the worker's ring: `Err` where io_uring is refused or lacks an
/// op the loop needs (the error names it).
pub fn setup(plan: &WorkerPlan) -> io::Result<Rc<Runtime>> {
    let size = match plan.forward {
        ForwardMode::Copy => plan.buffer_size,
        ForwardMode::Auto | ForwardMode::Splice => crate::config::SCRATCH_BYTES,
    };
    Runtime::new(RING_BUFFERS, size)
}

/// Runs the worker of `plan` on `runtime` until it is stopped and drained.
/// Sends `Ok` on `ready` first.
pub fn run(runtime: &Rc<Runtime>, plan: WorkerPlan, ready: Sender<io::Result<()>>) {
    let _ = ready.send(Ok(()));
    runtime.block_on(serve(plan));
}

/// A running accept loop: its stop switch and its task.
type AcceptLoop = (watch::Sender<bool>, executor::JoinHandle<()>);

/// Serves `plan`'s listeners until it is stopped, then drains: accept
/// loops come and go with the listener changes.
async fn serve(mut plan: WorkerPlan) {
    let (worker, drain_tx) = plan.state(Ring::new(plan.forward, plan.pumps()));
    let mut loops: HashMap<String, AcceptLoop> = HashMap::new();
    let mut stopped: Vec<executor::JoinHandle<()>> = Vec::new();
    loop {
        let change = tokio::select! {
            change = plan.changes.recv() => change,
            _ = plan.stop.wait_for(|stopping| *stopping) => None,
        };
        match change {
            Some(ListenerChange::Add { name, socket }) => {
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = ring::spawn(accept_loop(
                    socket,
                    Arc::from(name.as_str()),
                    Rc::clone(&worker),
                    Arc::clone(&plan.budget),
                    stop_rx,
                ));
                if let Some((old_stop, old_task)) = loops.insert(name, (stop_tx, task)) {
                    old_stop.send_replace(true);
                    stopped.push(old_task);
                }
            }
            Some(ListenerChange::Remove { name, done }) => {
                if let Some((stop, task)) = loops.remove(&name) {
                    stop.send_replace(true);
                    stopped.push(ring::spawn(async move {
                        task.await;
                        // The clients it accepted were spawned before this
                        // task woke; one more turn lets each of them look
                        // up its route before `done` says the listener may
                        // leave the table.
                        executor::yield_now().await;
                        drop(done);
                    }));
                }
            }
            None => break,
        }
        stopped.retain(|task| !task.is_finished());
    }
    for (stop, task) in loops.into_values() {
        stop.send_replace(true);
        stopped.push(task);
    }
    for task in stopped {
        task.await;
    }
    drain(&worker, plan.drain_timeout, &drain_tx).await;
}
