//! Reads what a client sends before its own bytes, within a deadline: the
//! PROXY protocol header of a trusted sender, and the TLS ClientHello an SNI
//! listener routes by.
//!
//! Bytes are read, not peeked: a peek returns the same bytes again while
//! the socket stays readable, so waiting for more would spin. Everything
//! read past the header is the client's own and is kept in `pending`, to be
//! written to the upstream first; the ClientHello is never consumed by the
//! parser, only looked at, so the TLS session passes through unchanged.
//! Only listeners configured for a header or SNI read here; a plain
//! listener allocates nothing.

use super::io::{Socket, Timer};
use super::pump::when_ready;
use crate::config::{ProxyAccept, SniRouting};
use crate::preamble::client_hello::{self, Hello, HelloError};
use crate::preamble::proxy_header::{self, Header};
use crate::routing::{HeaderFailure, HelloFailure};
use rustix::net::{RecvFlags, SendFlags, recv, send};
use std::io;
use std::time::Instant;
use tokio::io::Interest;

/// Bytes asked of the kernel per read: a v1 header, or most v2 headers and
/// small hellos, in one call.
const READ_CHUNK: usize = 2048;

/// Reads the client's PROXY protocol header. On success the header's bytes
/// are gone from `pending` and what follows them is the client's.
pub async fn proxy_header<S: Socket, T: Timer>(
    client: &S,
    timer: &T,
    accept: &ProxyAccept,
    pending: &mut Vec<u8>,
) -> Result<Header, HeaderFailure> {
    let deadline = Instant::now() + accept.timeout;
    let read = async {
        loop {
            match proxy_header::parse(pending, accept.versions) {
                Ok(proxy_header::Parse::Complete { header, len }) => {
                    pending.drain(..len);
                    return Ok(header);
                }
                Ok(proxy_header::Parse::Incomplete) => {}
                Err(e) => {
                    log::debug!("PROXY protocol header refused: {e}");
                    return Err(HeaderFailure::Malformed);
                }
            }
            match read_more(client, pending, proxy_header::MAX_LEN).await {
                Ok(0) | Err(_) => return Err(HeaderFailure::Closed),
                Ok(_) => {}
            }
        }
    };
    timer
        .within(deadline, read)
        .await
        .unwrap_or(Err(HeaderFailure::Timeout))
}

/// Reads until `pending` holds the client's whole ClientHello (left in
/// `pending`, to be forwarded) or it is clear none will come.
pub async fn client_hello<S: Socket, T: Timer>(
    client: &S,
    timer: &T,
    sni: &SniRouting,
    pending: &mut Vec<u8>,
) -> Result<Hello, HelloFailure> {
    let deadline = Instant::now() + sni.timeout;
    let read = async {
        loop {
            match client_hello::parse(pending, sni.max_size) {
                Ok(client_hello::Parse::Complete(hello)) => return Ok(hello),
                Ok(client_hello::Parse::Incomplete) => {}
                Err(e) => return Err(hello_failure(&e)),
            }
            if pending.len() >= sni.max_size {
                return Err(HelloFailure::Oversized);
            }
            match read_more(client, pending, sni.max_size).await {
                Ok(0) | Err(_) => return Err(HelloFailure::Truncated),
                Ok(_) => {}
            }
        }
    };
    timer
        .within(deadline, read)
        .await
        .unwrap_or(Err(HelloFailure::Timeout))
}

fn hello_failure(error: &HelloError) -> HelloFailure {
    match error {
        HelloError::NotTls => HelloFailure::NotTls,
        HelloError::TooLarge { .. } => HelloFailure::Oversized,
        HelloError::Malformed(_) => HelloFailure::Malformed,
    }
}

/// Reads what the client has sent, once it has sent something, into
/// `pending`, never letting it grow past `limit`. Returns the bytes read, 0
/// at EOF. Nothing is added to `pending` unless the read returned: the
/// future may be dropped at a deadline while it waits.
///
/// The read's buffer is on the stack of the call that reads, not in the
/// future: a buffer kept across the wait would be part of every
/// connection's task.
async fn read_more<S: Socket>(
    client: &S,
    pending: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let room = READ_CHUNK.min(limit.saturating_sub(pending.len())).max(1);
    when_ready(client, Interest::READABLE, || {
        let mut chunk = [0u8; READ_CHUNK];
        let n = recv(client, &mut chunk[..room], RecvFlags::empty())?.0;
        pending.extend_from_slice(&chunk[..n]);
        Ok(n)
    })
    .await
}

/// Writes `bytes` (a PROXY header l4mesh sends, and the client bytes read
/// before routing) to a freshly connected upstream, before the relay
/// starts.
pub async fn send_first<S: Socket>(upstream: &S, bytes: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        sent += when_ready(upstream, Interest::WRITABLE, || {
            Ok(send(upstream, rest, SendFlags::NOSIGNAL)?)
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_streams::connected_pair;

    /// A read's buffer is not part of the future that waits for bytes (it
    /// once was, 2 KiB of every connection's task).
    #[test]
    fn it_should_keep_no_read_buffer_in_the_waiting_future() {
        let (runtime, client, _accepted) = connected_pair();
        runtime.block_on(async {
            let mut pending = Vec::new();
            let read = read_more(&client, &mut pending, READ_CHUNK);
            let size = std::mem::size_of_val(&read);
            assert!(size < READ_CHUNK / 4, "read_more's future is {size} bytes");
        });
    }
}
