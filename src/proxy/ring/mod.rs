//! The io_uring event loop of one worker, on the `io-uring` crate: the
//! ring ([`driver`]), ops as futures ([`op`]), a single-threaded executor
//! ([`executor`]), timers ([`timer`]) and the provided-buffer ring
//! ([`buffers`]).
//!
//! One loop turn: poll the tasks that are ready, fire the timers that are
//! due, then one `io_uring_enter` that submits every entry queued during
//! the turn and waits for a completion (up to the next timer's deadline),
//! and route the completions to their ops. That enter is the worker's only
//! blocking call: accepts, connects, polls, recvs, sends, shutdowns and
//! closes of many connections share it.

pub mod buffers;
pub mod driver;
pub mod executor;
pub mod op;
mod slab;
pub mod timer;

use driver::Driver;
use executor::{Executor, JoinHandle};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};
use timer::Timers;

/// Tasks polled per turn before the ring is looked at again, so that a
/// busy task set cannot keep completions waiting.
const TASKS_PER_TURN: usize = 512;

/// How long a stopping loop waits for the kernel to finish its orphaned
/// ops before closing the ring anyway.
const SETTLE: Duration = Duration::from_secs(1);

/// One worker's ring loop.
pub struct Runtime {
    /// The ring.
    pub driver: Driver,
    executor: Executor,
    timers: RefCell<Timers>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
}

/// The loop running on this thread.
///
/// # Panics
/// Outside [`Runtime::block_on`]: ring ops exist only on a ring loop.
pub fn current() -> Rc<Runtime> {
    CURRENT
        .with(|current| current.borrow().clone())
        .expect("a ring op used outside the worker's ring loop")
}

/// Runs `f` with the loop running on this thread, if any.
pub(crate) fn try_current(f: impl FnOnce(&Runtime)) {
    // During thread teardown the slot may be gone: then so is the loop.
    let runtime = CURRENT
        .try_with(|current| current.try_borrow().ok().and_then(|c| c.clone()))
        .ok()
        .flatten();
    if let Some(runtime) = runtime {
        f(&runtime);
    }
}

/// Spawns `future` on this thread's loop.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let (task, handle) = executor::joined(future);
    current().executor.spawn(task);
    handle
}

impl Runtime {
    /// A loop with a new ring and a provided-buffer ring of `buffers` ×
    /// `buffer_size` bytes; fails where io_uring is refused or lacking.
    pub fn new(buffers: u16, buffer_size: usize) -> io::Result<Rc<Runtime>> {
        let driver = Driver::new(buffers, buffer_size)?;
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Rc::new(Runtime {
            driver,
            executor: Executor::new(eventfd),
            timers: RefCell::new(Timers::default()),
        }))
    }

    /// Runs `future` to completion on this thread, with every task it
    /// spawns; then drops the tasks still running and lets the kernel
    /// finish their ops (for up to a second).
    pub fn block_on<T: 'static>(self: &Rc<Self>, future: impl Future<Output = T> + 'static) -> T {
        CURRENT.with(|current| *current.borrow_mut() = Some(Rc::clone(self)));
        self.executor.enter();
        let _leave = Leave(self);
        let (task, mut main) = executor::joined(future);
        self.executor.spawn(task);
        let (wakeups, _) = executor::joined(remote_wakeups(self.executor.eventfd()));
        self.executor.spawn(wakeups);
        self.run(&mut main)
    }

    fn run<T>(&self, main: &mut JoinHandle<T>) -> T {
        let noop = std::task::Context::from_waker(std::task::Waker::noop());
        let mut cx = noop;
        loop {
            self.executor.run(TASKS_PER_TURN);
            if main.is_finished()
                && let std::task::Poll::Ready(value) = std::pin::Pin::new(&mut *main).poll(&mut cx)
            {
                return value;
            }
            let now = Instant::now();
            let mut timers = self.timers.borrow_mut();
            timers.fire(now);
            let wait = if self.executor.has_ready() {
                Some(Duration::ZERO)
            } else {
                timers.until_next(now)
            };
            drop(timers);
            if let Err(e) = self.driver.turn(wait) {
                // An enter that fails for good would fail every turn: say
                // so once a second rather than spin on it.
                if crate::log_limit::RESOURCE_ERRORS.allow().is_some() {
                    log::error!("io_uring_enter failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Ends a `block_on`, also when a task panics: drops the tasks left, lets
/// the kernel finish their ops (up to [`SETTLE`]), and leaves the thread.
struct Leave<'a>(&'a Runtime);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let runtime = self.0;
        runtime.executor.clear();
        let deadline = Instant::now() + SETTLE;
        while runtime.driver.in_flight() > 0 && Instant::now() < deadline {
            if runtime
                .driver
                .turn(Some(Duration::from_millis(10)))
                .is_err()
            {
                break;
            }
        }
        runtime.executor.leave();
        let _ = CURRENT.try_with(|current| current.borrow_mut().take());
    }
}

/// Moves wakes queued by other threads to the ready queue whenever they
/// write the loop's eventfd.
async fn remote_wakeups(eventfd: i32) {
    loop {
        if let Err(e) = op::read_eventfd(eventfd).await {
            log::error!(
                "ring loop: reading its wake-up eventfd failed: {e}; cross-thread wakes stop"
            );
            return;
        }
        let runtime = current();
        for task in runtime.executor.remote.take() {
            runtime.executor.schedule(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// Accept, recv into a provided buffer, send it back, half-close, all
    /// through the ring; a timer and a wake from another thread on the way.
    #[test]
    #[allow(unsafe_code)]
    fn it_should_accept_echo_and_half_close_through_the_ring() {
        let runtime = Runtime::new(8, 4096).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(b"hello ring").unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).unwrap();
            back
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let got = runtime.block_on(async move {
            let started = Instant::now();
            timer::sleep_until(started + Duration::from_millis(30)).await;
            assert!(started.elapsed() >= Duration::from_millis(30));
            std::thread::spawn(move || tx.send(7).unwrap());
            assert_eq!(rx.await.unwrap(), 7);
            let (stream, peer) = op::accept(listener.as_raw_fd()).await.unwrap();
            assert_eq!(peer.ip(), addr.ip());
            let mut echoed = 0;
            loop {
                let done = op::recv_provided(stream.as_raw_fd(), 4096).await;
                let n = done.into_result().unwrap() as usize;
                if n == 0 {
                    break;
                }
                let id = done.buffer().unwrap();
                let bytes = current().driver.buffers.get(id, n).to_vec();
                current().driver.buffers.give_back(id);
                // SAFETY: `bytes` owns the memory and the op keeps it.
                let (sent, _) =
                    unsafe { op::send(stream.as_raw_fd(), bytes.as_ptr(), n, bytes) }.await;
                assert_eq!(sent.unwrap() as usize, n);
                echoed += n;
            }
            op::shutdown(stream.as_raw_fd(), libc::SHUT_WR)
                .await
                .unwrap();
            // A cancelled accept with no client completes with ECANCELED.
            let idle = op::accept(listener.as_raw_fd());
            idle.cancel();
            let error = idle.await.unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ECANCELED));
            op::close(stream);
            echoed
        });
        assert_eq!(got, 10);
        assert_eq!(client.join().unwrap(), b"hello ring");
        assert_eq!(runtime.driver.in_flight(), 0);
    }

    /// A recv dropped after its bytes came but before it was polled (or in
    /// flight, as an orphan) took a provided buffer that nobody reads: the
    /// buffer goes back to the ring, so a ring of two buffers serves five
    /// such recvs and then a real one, and no op is left in flight.
    #[test]
    fn it_should_give_back_the_buffer_of_a_recv_dropped_in_flight() {
        let runtime = Runtime::new(2, 64).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        runtime.block_on(async move {
            let fd = server.as_raw_fd();
            // The loop's own read of its wake-up eventfd is always in
            // flight, once its task has run.
            executor::yield_now().await;
            let baseline = current().driver.in_flight();
            for _ in 0..5 {
                let recv = op::recv_provided(fd, 64);
                client.write_all(b"x").unwrap();
                // A few turns for the completion to come in (if it has not,
                // the drop below makes the recv an orphan instead).
                timer::sleep_until(Instant::now() + Duration::from_millis(20)).await;
                drop(recv);
                let deadline = Instant::now() + Duration::from_secs(5);
                while current().driver.in_flight() > baseline {
                    assert!(
                        Instant::now() < deadline,
                        "the orphaned recv never completed"
                    );
                    executor::yield_now().await;
                }
            }
            client.write_all(b"last").unwrap();
            let done = op::recv_provided(fd, 64).await;
            let n = done.into_result().unwrap() as usize;
            let id = done.buffer().unwrap();
            assert!(current().driver.buffers.get(id, n).ends_with(b"last"));
            current().driver.buffers.give_back(id);
        });
        assert_eq!(runtime.driver.in_flight(), 0);
    }

    /// More ops in one turn than the submission queue holds (1024): the
    /// queue is handed to the kernel when full and every op still runs;
    /// dropping them all (more cancels than the queue holds) leaves none
    /// in flight.
    #[test]
    fn it_should_take_more_ops_in_one_turn_than_the_queue_holds() {
        let runtime = Runtime::new(8, 64).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        runtime.block_on(async move {
            executor::yield_now().await;
            let baseline = current().driver.in_flight();
            let recvs: Vec<_> = (0..3000)
                .map(|_| op::recv_provided(server.as_raw_fd(), 64))
                .collect();
            assert_eq!(current().driver.in_flight(), baseline + 3000);
            timer::sleep_until(Instant::now() + Duration::from_millis(20)).await;
            drop(recvs);
            let deadline = Instant::now() + Duration::from_secs(5);
            while current().driver.in_flight() > baseline {
                assert!(Instant::now() < deadline, "cancelled recvs never completed");
                executor::yield_now().await;
            }
        });
        assert_eq!(runtime.driver.in_flight(), 0);
    }

    /// A connect to an address that never answers ends at its linked
    /// timeout; one that is refused says so.
    #[test]
    fn it_should_time_out_a_connect_and_report_a_refusal() {
        let runtime = Runtime::new(8, 4096).unwrap();
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        runtime.block_on(async move {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_nonblocking(true).unwrap();
            let error = op::connect(
                socket.as_raw_fd(),
                &refused.into(),
                Duration::from_secs(5),
                true,
            )
            .await
            .unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ECONNREFUSED));
            // A listener whose accept queue is full drops further SYNs.
            let full =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            full.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .unwrap();
            full.listen(0).unwrap();
            let blackhole = full.local_addr().unwrap().as_socket().unwrap();
            let _queued: Vec<_> = (0..3)
                .filter_map(|_| {
                    TcpStream::connect_timeout(&blackhole, Duration::from_millis(200)).ok()
                })
                .collect();
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_nonblocking(true).unwrap();
            let started = Instant::now();
            let error = op::connect(
                socket.as_raw_fd(),
                &blackhole.into(),
                Duration::from_millis(100),
                false,
            )
            .await
            .unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ECANCELED), "{error}");
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(100) && took < Duration::from_secs(2),
                "{took:?}"
            );
        });
    }
}
