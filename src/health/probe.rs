//! One active health probe: connect, send a LOCAL PROXY protocol header if
//! the service sends headers (as HAProxy's `check-send-proxy` does: the
//! endpoint then expects one first), optionally send `send`, optionally
//! read until the reply is known to start with `expect` (or not), all
//! within `timeout`. The socket is closed with a reset (zero linger), as
//! HAProxy's checks are, so frequent probes leave no TIME_WAIT behind.

use crate::config::HealthConfig;
use crate::preamble::proxy_header::{self, Version};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe failed; the text is what the logs and /config say.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens there.
    #[error("connect refused")]
    Refused,
    /// The connect, the send or the reply took longer than `timeout`.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// The connect failed otherwise (unreachable, reset, no descriptors).
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// Sending `send` failed.
    #[error("send failed: {0}")]
    Send(io::Error),
    /// Reading the reply failed.
    #[error("reading the reply failed: {0}")]
    Read(io::Error),
    /// The reply does not start with `expect`.
    #[error("reply did not start with \"{expected}\" (got \"{got}\")")]
    Mismatch {
        /// `expect`, escaped.
        expected: String,
        /// What came back (as much as `expect` is long), escaped.
        got: String,
    },
}

/// Probes `addr` as `config` says, opening with a LOCAL header of version
/// `send_proxy` if given.
pub async fn probe(
    addr: SocketAddr,
    config: &HealthConfig,
    send_proxy: Option<Version>,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(config.timeout, exchange(addr, config, send_proxy)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProbeError::Timeout(config.timeout)),
    }
}

async fn exchange(
    addr: SocketAddr,
    config: &HealthConfig,
    send_proxy: Option<Version>,
) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ProbeError::Refused
        } else {
            ProbeError::Connect(e)
        }
    })?;
    // A reset on close, not a FIN: no TIME_WAIT per probe. Best effort.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    if let Some(version) = send_proxy {
        let mut header = Vec::new();
        proxy_header::encode_local(version, &mut header);
        stream.write_all(&header).await.map_err(ProbeError::Send)?;
    }
    if let Some(send) = &config.send {
        stream.write_all(send).await.map_err(ProbeError::Send)?;
    }
    let Some(expect) = &config.expect else {
        return Ok(());
    };
    let mut got = Vec::with_capacity(expect.len());
    let mut buffer = [0u8; 512];
    while got.len() < expect.len() {
        let want = (expect.len() - got.len()).min(buffer.len());
        let n = stream
            .read(&mut buffer[..want])
            .await
            .map_err(ProbeError::Read)?;
        got.extend_from_slice(&buffer[..n]);
        // Wrong already, or closed early: no need to wait for the rest.
        if n == 0 || !expect.starts_with(&got) {
            return Err(ProbeError::Mismatch {
                expected: escape(expect),
                got: escape(&got),
            });
        }
    }
    Ok(())
}

/// Bytes as readable text: printable ASCII as is, the rest escaped.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_escape_replies_for_the_log() {
        assert_eq!(escape(b"+PONG\r\n"), "+PONG\\r\\n");
        assert_eq!(escape(b"a\"b\x00"), "a\\\"b\\x00");
    }
}
