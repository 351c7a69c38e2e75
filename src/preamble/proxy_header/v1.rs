//! The v1 text header: `PROXY TCP4 src dst sport dport\r\n`, `TCP6`, or
//! `UNKNOWN` with anything up to the CRLF, in at most 107 bytes.

use super::{Command, Header, HeaderError, Parse, Version};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, CRLF included.
const MAX: usize = 107;

/// Parses `buf`, which starts like `PROXY `.
pub(super) fn parse(buf: &[u8]) -> Result<Parse, HeaderError> {
    let window = &buf[..buf.len().min(MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= MAX {
            Err(HeaderError::V1("longer than 107 bytes"))
        } else {
            Ok(Parse::Incomplete)
        };
    };
    if window[cr] == b'\n' {
        return Err(HeaderError::V1("a line feed without a carriage return"));
    }
    if cr + 1 >= window.len() {
        return if buf.len() >= MAX {
            Err(HeaderError::V1("longer than 107 bytes"))
        } else {
            Ok(Parse::Incomplete)
        };
    }
    if window[cr + 1] != b'\n' {
        return Err(HeaderError::V1("a carriage return without a line feed"));
    }
    let line = std::str::from_utf8(&buf[..cr]).map_err(|_| HeaderError::V1("not ASCII"))?;
    let header = fields(line)?;
    Ok(Parse::Complete {
        header,
        len: cr + 2,
    })
}

fn fields(line: &str) -> Result<Header, HeaderError> {
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(HeaderError::V1("no `PROXY `"))?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Header {
            version: Version::V1,
            command: Command::Local,
            addresses: None,
            authority: None,
            unique_id: None,
        });
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    let [family, source, destination, sport, dport] = parts[..] else {
        return Err(HeaderError::V1(
            "not `TCP4|TCP6 source destination sport dport` with single spaces",
        ));
    };
    let (source, destination) = match family {
        "TCP4" => (IpAddr::V4(ipv4(source)?), IpAddr::V4(ipv4(destination)?)),
        "TCP6" => (IpAddr::V6(ipv6(source)?), IpAddr::V6(ipv6(destination)?)),
        _ => return Err(HeaderError::V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Header {
        version: Version::V1,
        command: Command::Proxy,
        addresses: Some((
            SocketAddr::new(source, port(sport)?),
            SocketAddr::new(destination, port(dport)?),
        )),
        authority: None,
        unique_id: None,
    })
}

fn ipv4(text: &str) -> Result<Ipv4Addr, HeaderError> {
    text.parse()
        .map_err(|_| HeaderError::V1("an address that is not IPv4 after TCP4"))
}

fn ipv6(text: &str) -> Result<Ipv6Addr, HeaderError> {
    text.parse()
        .map_err(|_| HeaderError::V1("an address that is not IPv6 after TCP6"))
}

/// A port: 1 to 5 decimal digits, no sign, no leading zero (HAProxy
/// refuses them too), 0 to 65535.
fn port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits && !leading_zero => Ok(port),
        _ => Err(HeaderError::V1(
            "a port that is not a decimal from 0 to 65535",
        )),
    }
}

/// Appends the header for `source` → `destination`.
pub(super) fn encode(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    let line = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d}"),
        (s, d) => format!("PROXY TCP6 {} {}", v6(s), v6(d)),
    };
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(format!(" {} {}\r\n", source.port(), destination.port()).as_bytes());
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parse::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn it_should_parse_tcp4_and_tcp6_and_stop_at_the_crlf() {
        let (header, len) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!(len, 45);
        assert_eq!(
            header.addresses,
            Some((
                "192.0.2.1:56324".parse().unwrap(),
                "198.51.100.2:443".parse().unwrap()
            ))
        );
        let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
        assert_eq!(header.addresses.unwrap().1, "[::1]:65535".parse().unwrap());
    }

    #[test]
    fn it_should_take_unknown_with_anything_up_to_the_crlf_as_local() {
        let (header, len) = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nx");
        assert_eq!(
            (header.command, header.addresses, len),
            (Command::Local, None, 35)
        );
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").1, 15);
    }

    #[test]
    fn it_should_hold_the_107_byte_limit() {
        let pad = |n: usize| {
            let mut line = b"PROXY UNKNOWN ".to_vec();
            line.resize(n - 2, b'x');
            line.extend_from_slice(b"\r\n");
            line
        };
        assert_eq!(complete(&pad(107)).1, 107);
        assert_eq!(
            parse(&pad(108)),
            Err(HeaderError::V1("longer than 107 bytes"))
        );
        assert_eq!(
            parse(&pad(108)[..107]),
            Err(HeaderError::V1("longer than 107 bytes"))
        );
        assert_eq!(parse(&pad(108)[..106]), Ok(Parse::Incomplete));
    }

    #[test]
    fn it_should_refuse_every_deviation_from_the_format() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rx",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 0 2\r\n").1, 39);
    }
}
