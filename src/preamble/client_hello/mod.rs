//! The TLS ClientHello, read without terminating TLS: its server name (SNI)
//! and ALPN protocols, for routing.
//!
//! The hello may span several TLS records (post-quantum key shares make
//! hellos of 1.5 to 20 KiB), and each record may arrive split across TCP
//! segments: [`parse`] is called again with more bytes until it is not
//! [`Parse::Incomplete`]. It answers `NotTls` from the first byte, and
//! `TooLarge` as soon as a length says the hello will not fit the limit,
//! without waiting for the bytes. It copies only when the hello really
//! spans records, checks every length against what remains (never indexing
//! past it), and stops at the end of the hello: what follows is the
//! client's and is not looked at.

mod body;
mod reader;

use std::borrow::Cow;

/// What routing needs of a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The first `host_name` of the server_name extension, lower-case,
    /// without a trailing dot.
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
    /// The first byte is not a TLS handshake record's.
    #[error("not TLS")]
    NotTls,
    /// The hello needs more bytes than the limit.
    #[error("a ClientHello of {needed} bytes or more, over the limit of {limit}")]
    TooLarge {
        /// Bytes needed at least.
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

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// The largest plaintext record fragment.
const MAX_FRAGMENT: usize = 1 << 14;

/// Looks at the bytes a client sent first, `buf`, for a whole ClientHello
/// of at most `limit` bytes on the wire (record headers included).
pub fn parse(buf: &[u8], limit: usize) -> Result<Parse, HelloError> {
    let Some(&first) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if first != HANDSHAKE {
        return Err(HelloError::NotTls);
    }
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            check_version(&buf[at.min(buf.len())..])?;
            return Ok(Parse::Incomplete);
        };
        if header[0] != HANDSHAKE {
            return Err(HelloError::Malformed(
                "a record that is not a handshake before the hello ended",
            ));
        }
        check_version(header)?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_FRAGMENT {
            return Err(HelloError::Malformed("a record length of 0 or over 16384"));
        }
        let end = at + 5 + len;
        if end > limit {
            return Err(HelloError::TooLarge { needed: end, limit });
        }
        let fragment = &buf[at + 5..end.min(buf.len())];
        message = if message.is_empty() && end <= buf.len() {
            Cow::Borrowed(fragment)
        } else {
            let mut joined = message.into_owned();
            joined.extend_from_slice(fragment);
            Cow::Owned(joined)
        };
        if let Some(wanted) = message_length(&message, limit)?
            && message.len() >= wanted
        {
            return body::parse(&message[4..wanted]).map(Parse::Complete);
        }
        if end > buf.len() {
            return Ok(Parse::Incomplete);
        }
        at = end;
    }
}

/// A record header's version (as far as `header` goes): major 3, minor 0
/// to 4.
fn check_version(header: &[u8]) -> Result<(), HelloError> {
    if header.get(1).is_some_and(|&major| major != 3)
        || header.get(2).is_some_and(|&minor| minor > 4)
    {
        return Err(HelloError::Malformed("a record version that is not TLS"));
    }
    Ok(())
}

/// The whole handshake message's length, once its 4-byte header is in.
fn message_length(message: &[u8], limit: usize) -> Result<Option<usize>, HelloError> {
    let Some(header) = message.get(..4) else {
        if message.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Err(HelloError::Malformed(
                "the first handshake message is not a ClientHello",
            ));
        }
        return Ok(None);
    };
    if header[0] != CLIENT_HELLO {
        return Err(HelloError::Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    let wanted =
        4 + (usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]));
    // At least one record header carries it: 5 more bytes on the wire.
    if wanted + 5 > limit {
        return Err(HelloError::TooLarge {
            needed: wanted + 5,
            limit,
        });
    }
    Ok(Some(wanted))
}

#[cfg(test)]
mod tests;
