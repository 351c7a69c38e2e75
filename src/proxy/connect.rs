//! Connecting upstream: one attempt with a timeout, and failover across
//! distinct endpoints of a service up to `connect_attempts`.
//!
//! The connect itself runs on the runtime's readiness driver (tokio's
//! `TcpSocket`) rather than as an io_uring op: dropping a timed-out io_uring
//! connect would leave the kernel op and its socket alive until the SYN
//! retries give up (minutes), while dropping this future closes the socket and
//! aborts the handshake at once. The connected socket is then handed to
//! tokio-uring for the data path.

use crate::control::{ActiveGuard, Service};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_uring::net::TcpStream;

/// Why one connect attempt failed. Every kind lets failover try another
/// endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint answered with a reset: nothing listens there.
    #[error("refused")]
    Refused,
    /// No answer within `connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Any other error, such as an unreachable network or no free fd.
    #[error("{0}")]
    Other(#[from] io::Error),
}

impl ConnectError {
    /// Whether it failed for want of descriptors or kernel memory, which
    /// says nothing about the endpoint.
    pub fn is_resource_exhaustion(&self) -> bool {
        match self {
            ConnectError::Other(e) => matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ),
            _ => false,
        }
    }
}

/// One failed attempt, for the log line that gives them all.
#[derive(Debug)]
pub struct Attempt {
    /// The endpoint tried.
    pub addr: SocketAddr,
    /// Why it failed.
    pub error: ConnectError,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.addr, self.error)
    }
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused);
        }
        Ok(result) => result?,
    };
    let stream = stream.into_std()?;
    // io_uring returns EAGAIN instead of waiting on an O_NONBLOCK socket.
    stream.set_nonblocking(false)?;
    Ok(TcpStream::from_std(stream))
}

/// Connects `client` to an endpoint of `service`, trying distinct endpoints
/// until one answers or `connect_attempts` have failed. Returns the stream,
/// the member index and the guard that counts the connection as active on
/// that endpoint, or every failed attempt. The count starts at the pick, so
/// load-aware policies see connections that are still connecting.
pub async fn establish(
    service: &Service,
    client: SocketAddr,
) -> Result<(TcpStream, usize, ActiveGuard), Vec<Attempt>> {
    let mut tried: Vec<usize> = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..service.connect_attempts {
        let Some(index) = service.pick(client.ip(), &|i| tried.contains(&i)) else {
            break;
        };
        tried.push(index);
        let endpoint = &service.members[index].endpoint;
        let active = endpoint.acquire();
        let addr = endpoint.addr;
        match connect(addr, service.connect_timeout).await {
            Ok(stream) => return Ok((stream, index, active)),
            Err(error) => {
                log::debug!("connect to {addr} failed: {error}; trying another endpoint");
                failed.push(Attempt { addr, error });
            }
        }
    }
    Err(failed)
}
