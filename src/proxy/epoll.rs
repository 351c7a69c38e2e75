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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwardMode;
    use crate::proxy::test_streams::connected_pair;
    use crate::routing::Counter;

    /// As the ring's (see `uring.rs`): every idle connection's task holds
    /// its relay's future (2,816 bytes before, 2,000 after).
    #[test]
    fn it_should_keep_the_relay_future_under_2_kib() {
        let (runtime, client, upstream) = connected_pair();
        runtime.block_on(async {
            let pumps = Pumps::new(ForwardMode::Auto, 16384, 65536, 10, 1);
            let epoll = Epoll::new(pumps);
            let (rx, tx) = (Counter::default(), Counter::default());
            let meters = Meters { rx: &rx, tx: &tx };
            let (_drain_tx, drain) = watch::channel(false);
            let idle = Duration::from_secs(1);
            let relay = epoll.relay(client, upstream, meters, idle, drain);
            let size = std::mem::size_of_val(&relay);
            assert!(size <= 2048, "the epoll relay's future is {size} bytes");
        });
    }
}
