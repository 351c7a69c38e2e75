//! The epoll event loop: a tokio current-thread runtime (its reactor is
//! epoll) with a `LocalSet`, one per worker thread. Accepting is readiness
//! based ([`super::accept`]); connections connect and relay on the proxy's
//! epoll side ([`Epoll`]); listener changes start and stop accept loops;
//! a stop ends them all and drains.

use super::accept::accept_loop;
use super::listeners::ListenerChange;
use super::worker::{WorkerPlan, drain};
use crate::proxy::epoll::Epoll;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::{JoinHandle, LocalSet};

/// Runs the worker of `plan` on an epoll loop until it is stopped and
/// drained. Sends `Ok` on `ready` once the loop is up, or the error that
/// kept it from starting.
pub fn run(plan: WorkerPlan, ready: Sender<io::Result<()>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Tasks hold `Rc`s, so they stay on this thread. Declared after the
    // runtime, the set drops first: tasks still open after the drain go
    // before the runtime their sockets are registered with.
    let local = LocalSet::new();
    let _ = ready.send(Ok(()));
    local.block_on(&runtime, serve(plan));
}

/// A running accept loop: its stop switch and its task.
type AcceptLoop = (watch::Sender<bool>, JoinHandle<()>);

/// Serves `plan`'s listeners until it is stopped, then drains: accept
/// loops come and go with the listener changes, and every client is served
/// on this thread's `LocalSet`.
async fn serve(mut plan: WorkerPlan) {
    let (worker, drain_tx) = plan.state(Epoll::new(plan.pumps()));
    let mut loops: HashMap<String, AcceptLoop> = HashMap::new();
    let mut stopped: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let change = tokio::select! {
            change = plan.changes.recv() => change,
            _ = plan.stop.wait_for(|stopping| *stopping) => None,
        };
        match change {
            Some(ListenerChange::Add { name, socket }) => {
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = tokio::task::spawn_local(accept_loop(
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
                    stopped.push(tokio::task::spawn_local(async move {
                        // A panicked accept loop has been reported already.
                        let _ = task.await;
                        // The clients it accepted were spawned before this
                        // task woke; one more turn lets each of them look
                        // up its route before `done` says the listener may
                        // leave the table.
                        tokio::task::yield_now().await;
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
        // A panicked accept loop has already been reported by the panic hook.
        let _ = task.await;
    }
    drain(&worker, plan.drain_timeout, &drain_tx).await;
}
