//! The epoll event loop's side of the data path: tokio's reactor (epoll)
//! reports the sockets' readiness, tokio's timer is the clock, upstream
//! connects run on tokio, and connections relay with the readiness pumps
//! ([`Pumps`]).

use super::connect::ConnectError;
use super::io::{EventLoop, Socket, Timer};
use super::pump::Pumps;
use super::relay::{Meters, Outcome};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

impl Socket for TcpStream {
    async fn ready(&self, interest: Interest) -> io::Result<()> {
        TcpStream::ready(self, interest).await.map(drop)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
}

/// A worker's epoll loop as the data path sees it: must be used on the
/// worker's tokio runtime (current-thread, with its I/O and time drivers).
#[derive(Debug)]
pub struct Epoll {
    pumps: Pumps,
}

impl Epoll {
    /// The loop relaying with `pumps`.
    pub fn new(pumps: Pumps) -> Epoll {
        Epoll { pumps }
    }
}

impl Timer for Epoll {
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(deadline.into())
    }
}

impl EventLoop for Epoll {
    type Stream = TcpStream;

    /// A socket connected on the readiness driver: dropping the future (a
    /// timeout) closes the socket and aborts the handshake at once.
    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_nodelay(true)?;
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Err(_) => Err(ConnectError::Timeout(timeout)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(ConnectError::Refused)
            }
            Ok(result) => Ok(result?),
        }
    }

    async fn relay(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        meters: Meters<'_>,
        idle_timeout: Duration,
        drain: watch::Receiver<bool>,
    ) -> Outcome {
        let (c, u) = (&client, &upstream);
        self.pumps
            .relay(self, c, u, meters, idle_timeout, drain)
            .await
    }
}
