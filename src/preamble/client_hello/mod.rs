//! The TLS ClientHello, read without terminating TLS: its server name (SNI)
//! and ALPN protocols, for routing.
//!
//! The proxy reads the client's first bytes into a buffer and calls
//! [`parse`] after each read until it is not [`Parse::Incomplete`]; the
//! bytes themselves go on to the upstream unchanged. The hello may span
//! several TLS records (post-quantum key shares make hellos of 1.5 to
//! 20 KiB), and each record may arrive split across TCP segments.
//!
//! [`parse`] answers `NotTls` from the first byte, and `TooLarge` as soon as
//! the lengths received say the hello will not fit the limit, without
//! waiting for the bytes. It copies only when the hello really spans
//! records, checks every length against what remains (never indexing past
//! it), and stops at the end of the hello: what follows is the client's and
//! is not looked at. Every answer other than `Incomplete` is final: more
//! bytes after it never change it.

mod body;
mod host_name;
mod reader;
mod records;
#[cfg(test)]
mod test_builder;

use records::Framing;

/// What routing needs of a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The first `host_name` of the server_name extension, lower-case. One
    /// trailing dot (`example.com.`, a fully qualified name) is dropped, so
    /// it routes as `example.com`.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The hello is not whole yet: read more.
    Incomplete,
    /// The whole hello.
    Complete(Hello),
}

/// Why the bytes are not a ClientHello l4mesh can route by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record's (a plain-text
    /// protocol, or an SSLv2-compatible hello).
    #[error("not TLS")]
    NotTls,
    /// The hello needs more bytes on the wire than the limit.
    #[error("a ClientHello of at least {needed} bytes, over the limit of {limit}")]
    TooLarge {
        /// Bytes on the wire (record headers included) the hello needs at
        /// least.
        needed: usize,
        /// The limit.
        limit: usize,
    },
    /// A record or hello that breaks the format.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl HelloError {
    /// The reason as the metrics label it: `not_tls`, `oversized`,
    /// `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::TooLarge { .. } => "oversized",
            HelloError::Malformed(_) => "malformed",
        }
    }
}

/// The default limit: 16 KiB.
pub const DEFAULT_LIMIT: usize = 16 * 1024;

/// Looks at the bytes a client sent first, `buf`, for a whole ClientHello
/// of at most `limit` bytes on the wire (record headers included).
pub fn parse(buf: &[u8], limit: usize) -> Result<Parse, HelloError> {
    match records::frame(buf, limit, None)? {
        Framing::Incomplete => Ok(Parse::Incomplete),
        Framing::Contiguous(message) => body::parse(message).map(Parse::Complete),
        Framing::Spanning(len) => {
            // A second walk over the same records, now known to be whole,
            // joins their fragments: only a hello that spans records is
            // copied, and only once it is all in.
            let mut message = Vec::with_capacity(len);
            records::frame(buf, limit, Some(&mut message))?;
            body::parse(&message).map(Parse::Complete)
        }
    }
}

#[cfg(test)]
mod tests;
