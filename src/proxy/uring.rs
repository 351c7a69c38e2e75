//! The io_uring event loop's side of the data path: the worker's ring
//! ([`super::ring`]) reports readiness and runs the ops, its timers are the
//! clock, upstream connects are a `CONNECT` linked to a `LINK_TIMEOUT`, and
//! connections relay with the ring's copy pump (small chunks through
//! provided buffers) and, for bulk, splice(2) on ring-reported readiness.

use super::connect::ConnectError;
use super::io::{EventLoop, Timer};
use super::pump::Pumps;
use super::relay::{Meters, Outcome};
use super::ring::{self, op, timer};
use super::ring_copy;
use super::ring_stream::RingStream;
use crate::config::ForwardMode;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A worker's ring loop as the data path sees it: must be used on the
/// worker's ring loop ([`super::ring::Runtime::block_on`]).
#[derive(Debug)]
pub struct Ring {
    forward: ForwardMode,
    pumps: Pumps,
}

impl Ring {
    /// The loop relaying as `forward` asks, with `pumps` for the readiness
    /// side (splice, and chunks a full provided-buffer ring leaves over).
    pub fn new(forward: ForwardMode, pumps: Pumps) -> Ring {
        Ring { forward, pumps }
    }
}

impl Timer for Ring {
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        timer::sleep_until(deadline)
    }
}

impl EventLoop for Ring {
    type Stream = RingStream;

    /// The socket is made with one system call; `TCP_NODELAY`, the connect
    /// and its timeout are one chain of ring ops (`TCP_NODELAY` is a system
    /// call where the kernel lacks the ring's `SETSOCKOPT`, before 6.7). A timed-out
    /// connect is cancelled by the kernel itself, and dropping the future
    /// cancels it too; the socket closes through the ring either way.
    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<RingStream, ConnectError> {
        let ty = Type::STREAM.nonblocking().cloexec();
        let socket = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP))?;
        let ring_nodelay = ring::current().driver.features.setsockopt;
        if !ring_nodelay {
            socket.set_tcp_nodelay(true)?;
        }
        let stream = RingStream::new(socket.into());
        let started = Instant::now();
        match op::connect(stream.raw(), &SockAddr::from(addr), timeout, ring_nodelay).await {
            Ok(()) => Ok(stream),
            Err(e) => Err(match e.raw_os_error() {
                // Cancelled early: the linked TCP_NODELAY failed, not the
                // endpoint.
                Some(libc::ECANCELED) if started.elapsed() < timeout => {
                    ConnectError::Other(io::Error::other("setting TCP_NODELAY failed"))
                }
                Some(libc::ECANCELED | libc::ETIME) => ConnectError::Timeout(timeout),
                Some(libc::ECONNREFUSED) => ConnectError::Refused,
                _ => ConnectError::Other(e),
            }),
        }
    }

    async fn relay(
        &self,
        client: RingStream,
        upstream: RingStream,
        meters: Meters<'_>,
        idle_timeout: Duration,
        drain: watch::Receiver<bool>,
    ) -> Outcome {
        let (c, u) = (&client, &upstream);
        match self.forward {
            ForwardMode::Splice => {
                self.pumps
                    .relay(self, c, u, meters, idle_timeout, drain)
                    .await
            }
            ForwardMode::Auto | ForwardMode::Copy => {
                let spares = self.pumps.spares();
                ring_copy::relay(self, c, u, spares, meters, idle_timeout, drain).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::io::EventLoop;
    use crate::routing::Counter;
    use std::os::fd::OwnedFd;

    /// Every idle connection's task holds its relay's future: a change that
    /// grows it (a large local kept across an await, a future moved and so
    /// stored twice) grows the memory of every connection. 4,208 bytes
    /// before the two directions were pinned in place and the wrappers
    /// stopped nesting async fns; 1,792 after.
    #[test]
    fn it_should_keep_the_relay_future_under_2_kib() {
        let pumps = Pumps::new(ForwardMode::Auto, 16384, 65536, 10, 1);
        let ring = Ring::new(ForwardMode::Auto, pumps);
        let stream = || {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            RingStream::new(OwnedFd::from(socket))
        };
        let (rx, tx) = (Counter::default(), Counter::default());
        let meters = Meters { rx: &rx, tx: &tx };
        let (_drain_tx, drain) = watch::channel(false);
        let relay = ring.relay(stream(), stream(), meters, Duration::from_secs(1), drain);
        let size = std::mem::size_of_val(&relay);
        // Never polled; its sockets close at once, with no ring here.
        drop(relay);
        assert!(size <= 2048, "the ring relay's future is {size} bytes");
    }
}
