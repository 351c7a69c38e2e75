//! What the data path needs from a worker's event loop, so that one relay
//! and one session serve on either loop (io_uring or epoll): connected
//! sockets whose readiness the loop reports, a clock to sleep on, and a way
//! to connect upstream and to relay a connection.
//!
//! Each loop implements these once (`runtime/` picks the loop; the session
//! and the relay never name one), and the pumps that move bytes are chosen by type: a
//! readiness pump (splice, or copy through the worker's scratch buffer)
//! works on any [`Socket`]; a pump that needs the ring takes the ring's
//! stream type.

use super::connect::ConnectError;
use super::relay::{Meters, Outcome};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::watch;

/// A connected, non-blocking TCP socket whose readiness its event loop
/// reports.
pub trait Socket: AsFd {
    /// Waits until the socket may be ready for `interest` (readable or
    /// writable). A wake may be spurious: the I/O call then says
    /// `WouldBlock`.
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>>;

    /// Runs `f`, one non-blocking I/O call, if the socket is marked ready
    /// for `interest` (else returns `WouldBlock` without calling it). A
    /// `WouldBlock` from `f` clears the mark, so the next [`Socket::ready`]
    /// waits for the kernel.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

/// The event loop's clock.
pub trait Timer {
    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;

    /// Runs `work` until it completes (`Some`) or `deadline` passes
    /// (`None`, and `work` is dropped).
    fn within<F: Future>(
        &self,
        deadline: Instant,
        work: F,
    ) -> impl Future<Output = Option<F::Output>> {
        async move {
            tokio::select! {
                result = work => Some(result),
                () = self.sleep_until(deadline) => None,
            }
        }
    }
}

/// A worker's event loop as the session sees it.
pub trait EventLoop: Timer {
    /// A connected TCP socket on this loop: an accepted client or an
    /// upstream connection.
    type Stream: Socket;

    /// Connects to `addr` within `timeout`, with `TCP_NODELAY` set.
    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Stream, ConnectError>>;

    /// Forwards `client` ↔ `upstream` until both directions end, the
    /// connection idles for `idle_timeout`, or `drain` turns true; then
    /// closes both.
    fn relay(
        &self,
        client: Self::Stream,
        upstream: Self::Stream,
        meters: Meters<'_>,
        idle_timeout: Duration,
        drain: watch::Receiver<bool>,
    ) -> impl Future<Output = Outcome>;
}
