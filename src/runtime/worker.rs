//! One worker thread: its plan (built by the main thread), the event loop
//! that runs it, and what every loop does with it: the state its
//! connections share, and the drain at the end.
//!
//! A worker's listeners, the clients it accepted and their upstream
//! connections live and die on its thread, on its loop.

use super::budget::Budget;
use super::listeners::ListenerChange;
use super::{epoll_loop, ring_loop};
use crate::config::{EventLoop, ForwardMode};
use crate::metrics::access_log::AccessLog;
use crate::proxy::io::Timer;
use crate::proxy::pump::Pumps;
use crate::proxy::ring::driver::Features;
use crate::proxy::session::WorkerState;
use crate::routing::Table;
use crossbeam_channel::Sender;
use std::io;
use std::rc::Rc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// Idle buffers (and idle pipes) a worker keeps for reuse.
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
    /// The event loop asked for.
    pub event_loop: EventLoop,
    /// Pipes this worker may hold open at once.
    pub max_pipes: usize,
    /// Bytes per splice pipe.
    pub pipe_size: usize,
    /// Clients the whole process may have open at once.
    pub budget: Arc<Budget>,
}

impl WorkerPlan {
    /// The pumps (scratch buffer, buffers, pipes) its connections relay
    /// with, as `forward` asks.
    pub(super) fn pumps(&self) -> Pumps {
        Pumps::new(
            self.forward,
            self.buffer_size,
            self.pipe_size,
            self.max_pipes,
            POOLED_BUFFERS,
        )
    }

    /// The state every connection of this worker shares, on event loop
    /// `io`, and the switch that cuts them when a drain runs out of time
    /// (see [`drain`]).
    pub(super) fn state<L>(&self, io: L) -> (Rc<WorkerState<L>>, watch::Sender<bool>) {
        let (drain_tx, drain_rx) = watch::channel(false);
        let state = WorkerState::new(
            self.index,
            Arc::clone(&self.table),
            drain_rx,
            self.access_log.clone(),
            io,
        );
        (Rc::new(state), drain_tx)
    }
}

/// Runs the worker until it is stopped and drained. Sends `Ok` on `ready`
/// once its event loop is up, or the error that kept it from starting.
pub fn run(plan: WorkerPlan, ready: Sender<io::Result<()>>) {
    if let Some(cpu) = plan.cpu {
        super::affinity::pin_current_thread(plan.index, cpu);
    }
    let ring = match plan.event_loop {
        EventLoop::Epoll => None,
        EventLoop::IoUring => match ring_loop::setup(&plan) {
            Ok(ring) => Some(ring),
            Err(e) => {
                let why = format!(
                    "cannot set up io_uring, which `event_loop = \"io_uring\"` needs: {e}; fix: \
                     event_loop = \"auto\" (io_uring where the kernel allows it, epoll where it \
                     does not: Docker's and containerd's default seccomp profiles refuse io_uring) \
                     or \"epoll\""
                );
                let _ = ready.send(Err(io::Error::new(e.kind(), why)));
                return;
            }
        },
        EventLoop::Auto => match ring_loop::setup(&plan) {
            Ok(ring) => Some(ring),
            Err(e) => {
                FALLBACK.call_once(|| {
                    log::warn!(
                        "io_uring is not available here ({e}); the workers run the epoll loop \
                         (event_loop = \"auto\"; set event_loop = \"epoll\" to say so and \
                         silence this line)"
                    );
                });
                None
            }
        },
    };
    match ring {
        Some(ring) => {
            FEATURES.call_once(|| log_features(ring.driver.features));
            log::info!("worker {}: event loop io_uring", plan.index);
            ring_loop::run(&ring, plan, ready);
        }
        None => {
            log::info!("worker {}: event loop epoll", plan.index);
            epoll_loop::run(plan, ready);
        }
    }
}

/// Logs the fallback from io_uring to epoll once for all workers.
static FALLBACK: Once = Once::new();

/// Logs what the kernel's io_uring offers once for all workers.
static FEATURES: Once = Once::new();

/// Says which optional io_uring features the ring loop found, and what it
/// does without the missing ones.
fn log_features(features: Features) {
    let defer = if features.defer_taskrun {
        "SINGLE_ISSUER|DEFER_TASKRUN"
    } else {
        "no DEFER_TASKRUN (kernel < 6.1: completions may interrupt the workers)"
    };
    let setsockopt = if features.setsockopt {
        "ring SETSOCKOPT"
    } else {
        "no ring SETSOCKOPT (kernel < 6.7: TCP_NODELAY is a system call per upstream connection)"
    };
    log::info!("io_uring: {defer}; {setsockopt}");
}

/// Waits for `worker`'s open connections to finish, up to `timeout`, then
/// closes the rest through `drain_tx` (the switch of [`WorkerPlan::state`]).
/// Sleeps on the worker's own loop, so it runs on any loop.
pub(super) async fn drain<L: Timer>(
    worker: &WorkerState<L>,
    timeout: Duration,
    drain_tx: &watch::Sender<bool>,
) {
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
        worker.io.sleep_until(Instant::now() + POLL).await;
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
    // Closing is immediate; connections still connecting end with the loop.
    let deadline = Instant::now() + Duration::from_secs(1);
    while worker.open.get() > 0 && Instant::now() < deadline {
        worker.io.sleep_until(Instant::now() + POLL).await;
    }
}
