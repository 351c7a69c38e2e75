//! The PROXY protocol header (HAProxy's proxy-protocol.txt): the v1 text
//! header and the v2 binary one, parsed strictly and encoded.
//!
//! The parser is as strict as HAProxy's: exact single spaces and decimal
//! ports in v1, the 107-byte v1 limit, address blocks of the exact length
//! for their family in v2, TLVs that fit inside the header, and a CRC32C
//! TLV that matches. It fails at the first byte that cannot begin a header
//! (a plain client's `GET /` is refused from its first bytes, not after a
//! timeout), answers `Incomplete` only while more bytes could still make a
//! valid header, and never looks past the header: the length it returns is
//! the header's, and the bytes after it are the client's.

mod v1;
mod v2;

use std::net::SocketAddr;

/// Which header versions a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only the v1 text header.
    V1,
    /// Only the v2 binary header.
    V2,
    /// Either.
    Any,
}

/// A header version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// What the sender says the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The sender's own connection (a health check): keep the peer's
    /// address.
    Local,
    /// A relayed connection.
    Proxy,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Its version.
    pub version: Version,
    /// LOCAL or PROXY (a v1 header is always PROXY).
    pub command: Command,
    /// `(source, destination)` of a PROXY command over TCP or UDP on IPv4
    /// or IPv6, as the header wrote them (an IPv4-mapped IPv6 address stays
    /// IPv6); `None` for LOCAL, v1 `UNKNOWN`, and v2 `UNSPEC` or UNIX.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (its SNI).
    pub authority: Option<String>,
    /// `PP2_TYPE_UNIQUE_ID`: the sender's id of the connection.
    pub unique_id: Option<Vec<u8>>,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A valid header may still follow: read more.
    Incomplete,
    /// A whole header, `len` bytes long.
    Complete {
        /// The header.
        header: Header,
        /// Its length: the client's own bytes start here.
        len: usize,
    },
}

/// Why the bytes are not a header a listener takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first bytes are neither header's signature.
    #[error("not a PROXY protocol header (starts with {0})")]
    NotProxy(String),
    /// A header of a version the listener does not take.
    #[error("a {found} header where only {wanted} is accepted")]
    Version {
        /// The version received.
        found: &'static str,
        /// The version accepted.
        wanted: &'static str,
    },
    /// A v1 header that breaks the format.
    #[error("malformed v1 header: {0}")]
    V1(&'static str),
    /// A v2 header that breaks the format.
    #[error("malformed v2 header: {0}")]
    V2(&'static str),
}

/// The longest header [`parse`] can need: v2's 16 bytes and its largest
/// length field.
pub const MAX_LEN: usize = 16 + u16::MAX as usize;

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Looks at the bytes a client sent first, `buf`, for a header of a version
/// `accept` takes.
pub fn parse(buf: &[u8], accept: Accept) -> Result<Parse, HeaderError> {
    let v1 = b"PROXY ";
    let could_be = |signature: &[u8]| {
        let n = buf.len().min(signature.len());
        buf[..n] == signature[..n]
    };
    if buf.is_empty() {
        return Ok(Parse::Incomplete);
    }
    if could_be(&V2_SIGNATURE) {
        if accept == Accept::V1 {
            return Err(HeaderError::Version {
                found: "v2",
                wanted: "v1",
            });
        }
        return v2::parse(buf);
    }
    if could_be(v1) {
        if accept == Accept::V2 {
            return Err(HeaderError::Version {
                found: "v1",
                wanted: "v2",
            });
        }
        return v1::parse(buf);
    }
    let start: Vec<String> = buf.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Err(HeaderError::NotProxy(start.join(" ")))
}

/// The TLVs a v2 header l4mesh sends may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tlvs<'a> {
    /// `PP2_TYPE_AUTHORITY`: the server name the client asked for.
    pub authority: Option<&'a str>,
    /// `PP2_TYPE_UNIQUE_ID`: the connection's id (at most 128 bytes are
    /// sent).
    pub unique_id: Option<&'a [u8]>,
}

/// Appends a PROXY-command header for a connection from `source` to
/// `destination` to `out`. v1 writes both as IPv6 (IPv4-mapped) when their
/// families differ; v2 adds the TLVs (v1 has none).
pub fn encode(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &Tlvs<'_>,
    out: &mut Vec<u8>,
) {
    match version {
        Version::V1 => v1::encode(source, destination, out),
        Version::V2 => v2::encode(Some((source, destination)), tlvs, out),
    }
}

/// Appends a LOCAL header (the sender's own connection, such as a health
/// check) to `out`: v1 `PROXY UNKNOWN\r\n`, v2 LOCAL with no address.
pub fn encode_local(version: Version, out: &mut Vec<u8>) {
    match version {
        Version::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        Version::V2 => v2::encode(None, &Tlvs::default(), out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_refuse_a_plain_client_from_its_first_byte() {
        assert!(matches!(
            parse(b"G", Accept::Any),
            Err(HeaderError::NotProxy(_))
        ));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", Accept::Any)
                .unwrap_err()
                .to_string(),
            "not a PROXY protocol header (starts with 47 45 54 20)"
        );
        assert_eq!(parse(b"", Accept::Any), Ok(Parse::Incomplete));
        assert_eq!(parse(b"PRO", Accept::Any), Ok(Parse::Incomplete));
        assert_eq!(parse(b"\r\n\r\n", Accept::Any), Ok(Parse::Incomplete));
    }

    #[test]
    fn it_should_refuse_the_version_the_listener_does_not_take() {
        let mut v2 = Vec::new();
        encode_local(Version::V2, &mut v2);
        assert!(matches!(
            parse(&v2, Accept::V1),
            Err(HeaderError::Version { found: "v2", .. })
        ));
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n", Accept::V2),
            Err(HeaderError::Version { found: "v1", .. })
        ));
    }

    #[test]
    fn it_should_read_back_what_it_writes_in_both_versions_and_families() {
        let pairs: [(&str, &str); 3] = [
            ("192.0.2.1:5000", "198.51.100.2:443"),
            ("[2001:db8::1]:5000", "[2001:db8::2]:443"),
            ("[::ffff:10.0.0.1]:1", "[::1]:65535"),
        ];
        for (source, destination) in pairs {
            let (s, d): (SocketAddr, SocketAddr) =
                (source.parse().unwrap(), destination.parse().unwrap());
            for version in [Version::V1, Version::V2] {
                let mut out = Vec::new();
                let tlvs = Tlvs {
                    authority: Some("api.example.com"),
                    unique_id: Some(b"w0-1"),
                };
                encode(version, s, d, &tlvs, &mut out);
                let len = out.len();
                out.extend_from_slice(b"client bytes");
                let Ok(Parse::Complete {
                    header,
                    len: parsed,
                }) = parse(&out, Accept::Any)
                else {
                    panic!("{version:?} {source}: {:?}", parse(&out, Accept::Any));
                };
                assert_eq!(parsed, len);
                assert_eq!(header.addresses, Some((s, d)));
                assert_eq!(header.command, Command::Proxy);
                if version == Version::V2 {
                    assert_eq!(header.authority.as_deref(), Some("api.example.com"));
                    assert_eq!(header.unique_id.as_deref(), Some(&b"w0-1"[..]));
                }
            }
        }
    }

    #[test]
    fn it_should_write_v1_as_ipv6_when_the_families_differ() {
        let mut out = Vec::new();
        let (s, d) = ("10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        encode(Version::V1, s, d, &Tlvs::default(), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n");
    }

    #[test]
    fn it_should_keep_no_address_for_local_headers() {
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            encode_local(version, &mut out);
            let Ok(Parse::Complete { header, len }) = parse(&out, Accept::Any) else {
                panic!("{version:?}");
            };
            assert_eq!(len, out.len());
            assert_eq!(header.addresses, None);
        }
    }

    #[test]
    fn it_should_say_incomplete_for_every_strict_prefix_of_a_header() {
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            let s = "[2001:db8::1]:5000".parse().unwrap();
            let d = "[2001:db8::2]:443".parse().unwrap();
            let tlvs = Tlvs {
                authority: Some("a.example"),
                unique_id: None,
            };
            encode(version, s, d, &tlvs, &mut out);
            for n in 0..out.len() {
                assert_eq!(
                    parse(&out[..n], Accept::Any),
                    Ok(Parse::Incomplete),
                    "{version:?} {n}"
                );
            }
        }
    }
}
