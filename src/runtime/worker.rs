//! One worker thread: its own event loop, one accept loop per listener on
//! its own `SO_REUSEPORT` socket, and the connections it accepted, which
//! live and die here.
//!
//! The event loop depends on how bytes move. `forward = "copy"` moves them
//! with io_uring ops, so that worker runs tokio-uring with its own ring.
//! `auto` and `splice` do everything on readiness (accept, connect, splice,
//! the small-chunk copy), so those workers run a plain tokio current-thread
//! runtime: a ring there would do nothing but cost an `io_uring_enter` each
//! time the worker parks (four per `Connection: close` request), and would
//! stop l4mesh from starting where io_uring is refused (Docker's default
//! seccomp profile, say).

use super::accept::accept_loop;
use super::budget::Budget;
use super::listeners::ListenerChange;
use crate::config::ForwardMode;
use crate::metrics::access_log::AccessLog;
use crate::proxy::buffers::BufferPool;
use crate::proxy::session::WorkerState;
use crate::proxy::splice::PipePool;
use crate::routing::Table;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Idle buffers a worker keeps for reuse.
const POOLED_BUFFERS: usize = 256;

/// Everything a worker thread needs, built by the main thread.
#[derive(Debug)]
pub struct WorkerPlan {
    /// The worker's index.
    pub index: usize,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Listener changes, starting with the initial listeners.
    pub changes: UnboundedReceiver<ListenerChange>,
    /// The published routing table.
    pub table: Table,
    /// Bytes per forwarding buffer.
    pub buffer_size: usize,
    /// How long open connections may finish after a stop.
    pub drain_timeout: Duration,
    /// Turns true on graceful shutdown.
    pub stop: watch::Receiver<bool>,
    /// Where access-log records go, if anywhere.
    pub access_log: Option<AccessLog>,
    /// How bytes are moved.
    pub forward: ForwardMode,
    /// Pipes this worker may hold open at once.
    pub max_pipes: usize,
    /// Bytes per splice pipe.
    pub pipe_size: usize,
    /// Clients the whole process may have open at once.
    pub budget: Arc<Budget>,
}

/// Runs the worker until it is stopped and drained. Sends `Ok` on `ready`
/// once its runtime is up, or the error that kept it from starting.
pub fn run(plan: WorkerPlan, ready: Sender<io::Result<()>>) {
    if let Some(cpu) = plan.cpu {
        super::affinity::pin_current_thread(plan.index, cpu);
    }
    let runtime = match Runtime::new(plan.forward) {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    runtime.block_on(serve(plan));
}

/// A worker's event loop (see the module docs for which one and why).
enum Runtime {
    /// tokio-uring, for `forward = "copy"`.
    Uring(tokio_uring::Runtime),
    /// The set its tasks are spawned on (tasks hold `Rc`s, so they stay on
    /// this thread) and a tokio current-thread runtime. Fields drop in
    /// order: tasks still open after the drain go before the runtime they
    /// are registered with, as tokio-uring does it.
    Readiness(tokio::task::LocalSet, tokio::runtime::Runtime),
}

impl Runtime {
    fn new(forward: ForwardMode) -> io::Result<Runtime> {
        if !forward.splices() {
            return new_uring().map(Runtime::Uring).map_err(|e| {
                let why = format!(
                    "cannot set up io_uring, which `forward = \"copy\"` needs: {e} (is io_uring \
                     allowed here? `forward = \"auto\"` and `\"splice\"` do without it)"
                );
                io::Error::new(e.kind(), why)
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Runtime::Readiness(tokio::task::LocalSet::new(), runtime))
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            Runtime::Uring(runtime) => runtime.block_on(future),
            Runtime::Readiness(local, runtime) => local.block_on(runtime, future),
        }
    }
}

/// A tokio-uring runtime whose ring is set up with COOP_TASKRUN (completions
/// are handled when the worker next enters the kernel instead of
/// interrupting it) and SINGLE_ISSUER (only this thread submits): together
/// they cut the proxy's CPU per new connection by about 15% (docs/DESIGN.md).
/// Kernels older than 6.0 lack them, so a plain ring is the fallback.
fn new_uring() -> io::Result<tokio_uring::Runtime> {
    let tuned = tokio_uring::uring_builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .clone();
    tokio_uring::Runtime::new(tokio_uring::builder().uring_builder(&tuned)).or_else(|e| {
        log::debug!("io_uring without COOP_TASKRUN/SINGLE_ISSUER ({e}); using a plain ring");
        tokio_uring::Runtime::new(&tokio_uring::builder())
    })
}

/// A running accept loop: its stop switch and its task.
type AcceptLoop = (watch::Sender<bool>, JoinHandle<()>);

async fn serve(mut plan: WorkerPlan) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let worker = Rc::new(WorkerState::new(
        plan.index,
        plan.table,
        BufferPool::new(plan.buffer_size, POOLED_BUFFERS),
        drain_rx,
        plan.access_log,
        plan.forward.splices().then(|| {
            let small_first = plan.forward == ForwardMode::Auto;
            PipePool::new(plan.pipe_size, POOLED_BUFFERS, plan.max_pipes, small_first)
        }),
    ));
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

/// Waits for open connections to finish, up to `timeout`, then closes the
/// rest.
async fn drain(worker: &WorkerState, timeout: Duration, drain_tx: &watch::Sender<bool>) {
    const POLL: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    if worker.open.get() > 0 {
        log::info!(
            "worker {}: waiting up to {timeout:?} for {} open connection(s)",
            worker.index,
            worker.open.get()
        );
    }
    while worker.open.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    if worker.open.get() == 0 {
        return;
    }
    log::warn!(
        "worker {}: drain_timeout reached; closing {} open connection(s)",
        worker.index,
        worker.open.get()
    );
    let _ = drain_tx.send(true);
    // Closing is immediate; connections still connecting end with the runtime.
    let deadline = Instant::now() + Duration::from_secs(1);
    while worker.open.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
}
