//! The epoll event loop: a tokio current-thread runtime (its reactor is
//! epoll) with a `LocalSet`, one per worker thread. Accepting is readiness
//! based ([`super::accept`]); connections connect and relay on the proxy's
//! epoll side ([`Epoll`]); listener changes start and stop accept loops;
//! a stop ends them all and drains.

use super::accept::accept_loop;
use super::serve::Spawner;
use super::worker::WorkerPlan;
use crate::proxy::epoll::Epoll;
use crossbeam_channel::Sender;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
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

/// Serves `plan`'s listeners until it is stopped, then drains; every
/// client is served on this thread's `LocalSet`.
async fn serve(plan: WorkerPlan) {
    let (worker, drain_tx) = plan.state(Epoll::new(plan.pumps()));
    super::serve::serve::<_, Tokio, _, _>(plan, worker, drain_tx, accept_loop).await;
}

/// Tasks on the thread's `LocalSet`.
struct Tokio;

/// A task on the `LocalSet`, awaited for its end only.
struct LocalTask(JoinHandle<()>);

impl Future for LocalTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A panicked task has been reported by the panic hook already.
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

impl Spawner for Tokio {
    type Task = LocalTask;

    fn spawn(future: impl Future<Output = ()> + 'static) -> LocalTask {
        LocalTask(tokio::task::spawn_local(future))
    }

    fn is_finished(task: &LocalTask) -> bool {
        task.0.is_finished()
    }

    fn yield_now() -> impl Future<Output = ()> {
        tokio::task::yield_now()
    }
}
