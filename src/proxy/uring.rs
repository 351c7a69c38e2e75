//! The io_uring event loop's side of the data path: the worker's ring
//! ([`super::ring`]) reports readiness and runs the ops, its timers are the
//! clock, upstream connects are a `CONNECT` linked to a `LINK_TIMEOUT`, and
//! connections relay with the ring's copy pump (small chunks through
//! provided buffers) and, for bulk, splice(2) on ring-reported readiness.

use super::connect::ConnectError;
use super::io::{EventLoop, Timer};
use super::pump::Pumps;
use super::relay::{Meters, Outcome};
use super::ring::{op, timer};
use super::ring_copy;
use super::ring_stream::RingStream;
use crate::config::ForwardMode;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::future::Future;
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

    /// The socket is made with one system call and `TCP_NODELAY` set with
    /// another; the connect and its timeout are ring ops. A timed-out
    /// connect is cancelled by the kernel itself, and dropping the future
    /// cancels it too; the socket closes through the ring either way.
    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<RingStream, ConnectError> {
        let ty = Type::STREAM.nonblocking().cloexec();
        let socket = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        let stream = RingStream::new(socket.into());
        match op::connect(stream.raw(), &SockAddr::from(addr), timeout).await {
            Ok(()) => Ok(stream),
            Err(e) => Err(match e.raw_os_error() {
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
