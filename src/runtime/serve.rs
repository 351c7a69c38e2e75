//! What every worker loop does with its plan, whichever executor runs it:
//! start an accept loop for each listener change that adds one, stop the
//! loop of each listener removed (telling the control side once the
//! clients it accepted have looked up their route), and on a stop end them
//! all and drain the open connections.

use super::budget::Budget;
use super::listeners::ListenerChange;
use super::worker::{WorkerPlan, drain};
use crate::proxy::io::Timer;
use crate::proxy::session::WorkerState;
use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::{watch, watch::Sender};

/// Tasks on the worker's own thread, as its executor spawns them.
pub trait Spawner {
    /// A spawned task: completes once the task has ended (a panic in it
    /// has been reported by the panic hook already).
    type Task: Future<Output = ()> + 'static;

    /// Runs `future` as a task on this thread.
    fn spawn(future: impl Future<Output = ()> + 'static) -> Self::Task;

    /// Whether `task` has ended.
    fn is_finished(task: &Self::Task) -> bool;

    /// Lets every other task that is ready run once.
    fn yield_now() -> impl Future<Output = ()>;
}

/// A listener's running accept loops (one per socket): their stop switch
/// and their tasks.
type AcceptLoops<T> = (Sender<bool>, Vec<T>);

/// Serves `plan`'s listeners on `worker` until it is stopped, then drains
/// (see the module docs); `accept` is the loop's accept loop for one
/// listener socket.
pub async fn serve<L, S, A, F>(
    mut plan: WorkerPlan,
    worker: Rc<WorkerState<L>>,
    drain_tx: Sender<bool>,
    accept: A,
) where
    L: Timer,
    S: Spawner,
    A: Fn(TcpListener, Arc<str>, Rc<WorkerState<L>>, Arc<Budget>, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + 'static,
{
    let mut loops: HashMap<String, AcceptLoops<S::Task>> = HashMap::new();
    let mut stopped: Vec<S::Task> = Vec::new();
    loop {
        let change = tokio::select! {
            change = plan.changes.recv() => change,
            _ = plan.stop.wait_for(|stopping| *stopping) => None,
        };
        match change {
            Some(ListenerChange::Add { name, sockets }) => {
                let (stop_tx, stop_rx) = watch::channel(false);
                let shared: Arc<str> = Arc::from(name.as_str());
                let tasks = sockets
                    .into_iter()
                    .map(|socket| {
                        S::spawn(accept(
                            socket,
                            Arc::clone(&shared),
                            Rc::clone(&worker),
                            Arc::clone(&plan.budget),
                            stop_rx.clone(),
                        ))
                    })
                    .collect();
                if let Some((old_stop, old_tasks)) = loops.insert(name, (stop_tx, tasks)) {
                    old_stop.send_replace(true);
                    stopped.extend(old_tasks);
                }
            }
            Some(ListenerChange::Remove { name, done }) => {
                if let Some((stop, tasks)) = loops.remove(&name) {
                    stop.send_replace(true);
                    stopped.push(S::spawn(async move {
                        for task in tasks {
                            task.await;
                        }
                        // The clients it accepted were spawned before this
                        // task woke; one more turn lets each of them look
                        // up its route before `done` says the listener may
                        // leave the table.
                        S::yield_now().await;
                        drop(done);
                    }));
                }
            }
            None => break,
        }
        stopped.retain(|task| !S::is_finished(task));
    }
    for (stop, tasks) in loops.into_values() {
        stop.send_replace(true);
        stopped.extend(tasks);
    }
    for task in stopped {
        task.await;
    }
    drain(&worker, plan.drain_timeout, &drain_tx).await;
}
