//! The io_uring event loop: one ring per worker thread, driven by the
//! proxy's own single-threaded executor ([`crate::proxy::ring`]). Accepts,
//! connects, readiness polls, the copy path's recvs, sends and half-closes,
//! and closes are ring ops (splice(2) and the splice path's half-close are
//! called inline on ring readiness), and the loop's only blocking call is
//! the `io_uring_enter` that submits a turn's ops and waits for completions.
//!
//! Listener changes start and stop accept loops ([`super::ring_accept`]);
//! a stop ends them all and drains ([`super::serve`], as on the epoll loop).

use super::ring_accept::accept_loop;
use super::serve::Spawner;
use super::worker::WorkerPlan;
use crate::config::ForwardMode;
use crate::proxy::ring::{self, Runtime, executor};
use crate::proxy::uring::Ring;
use crossbeam_channel::Sender;
use std::future::Future;
use std::io;
use std::rc::Rc;

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

/// Serves `plan`'s listeners until it is stopped, then drains.
async fn serve(plan: WorkerPlan) {
    let (worker, drain_tx) = plan.state(Ring::new(plan.forward, plan.pumps()));
    super::serve::serve::<_, RingTasks, _, _>(plan, worker, drain_tx, accept_loop).await;
}

/// Tasks on the worker's ring loop.
struct RingTasks;

impl Spawner for RingTasks {
    type Task = executor::JoinHandle<()>;

    fn spawn(future: impl Future<Output = ()> + 'static) -> Self::Task {
        ring::spawn(future)
    }

    fn is_finished(task: &Self::Task) -> bool {
        task.is_finished()
    }

    fn yield_now() -> impl Future<Output = ()> {
        executor::yield_now()
    }
}
