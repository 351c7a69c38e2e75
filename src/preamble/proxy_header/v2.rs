//! The v2 binary header: a 12-byte signature, version and command, family
//! and protocol, a length, the address block of the family, then TLVs.

use super::{Command, Header, HeaderError, Parse, Tlvs, V2_SIGNATURE, Version};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const AUTHORITY: u8 = 0x02;
const CRC32C: u8 = 0x03;
const UNIQUE_ID: u8 = 0x05;
/// The longest `PP2_TYPE_UNIQUE_ID` the spec allows.
const MAX_UNIQUE_ID: usize = 128;

/// Parses `buf`, whose first bytes match the signature.
pub(super) fn parse(buf: &[u8]) -> Result<Parse, HeaderError> {
    if let Some(&version_command) = buf.get(12) {
        if version_command >> 4 != 2 {
            return Err(HeaderError::V2("the version is not 2"));
        }
        if version_command & 0x0f > 1 {
            return Err(HeaderError::V2("the command is neither LOCAL nor PROXY"));
        }
    }
    if let Some(&family) = buf.get(13)
        && (family >> 4 > 3 || family & 0x0f > 2)
    {
        return Err(HeaderError::V2("an unknown address family or protocol"));
    }
    if buf.len() < 16 {
        return Ok(Parse::Incomplete);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let need = match buf[13] >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if len - 16 < need {
        return Err(HeaderError::V2(
            "the length is short for the address family's block",
        ));
    }
    if buf.len() < len {
        return Ok(Parse::Incomplete);
    }
    let header = &buf[..len];
    let command = if header[12] & 0x0f == 0 {
        Command::Local
    } else {
        Command::Proxy
    };
    let mut parsed = Header {
        version: Version::V2,
        command,
        addresses: None,
        authority: None,
        unique_id: None,
    };
    // A LOCAL header's contents are to be ignored; so are an UNSPEC one's.
    if command == Command::Local || header[13] == 0 {
        return Ok(Parse::Complete {
            header: parsed,
            len,
        });
    }
    let block = &header[16..16 + need];
    if header[13] & 0x0f == 1 {
        parsed.addresses = addresses(header[13] >> 4, block);
    }
    tlvs(header, 16 + need, &mut parsed)?;
    Ok(Parse::Complete {
        header: parsed,
        len,
    })
}

/// The TCP addresses of an IPv4 or IPv6 block (none for UNIX).
fn addresses(family: u8, block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        1 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        _ => None,
    }
}

/// Reads the TLVs of `header` from `at`, checking that each fits and that a
/// CRC32C matches.
fn tlvs(header: &[u8], mut at: usize, parsed: &mut Header) -> Result<(), HeaderError> {
    while at < header.len() {
        if header.len() - at < 3 {
            return Err(HeaderError::V2("a TLV runs past the header"));
        }
        let kind = header[at];
        let len = usize::from(u16::from_be_bytes([header[at + 1], header[at + 2]]));
        let start = at + 3;
        let Some(value) = header.get(start..start + len) else {
            return Err(HeaderError::V2("a TLV runs past the header"));
        };
        match kind {
            AUTHORITY => {
                let name = std::str::from_utf8(value)
                    .map_err(|_| HeaderError::V2("the AUTHORITY TLV is not UTF-8"))?;
                parsed.authority = Some(name.to_string());
            }
            UNIQUE_ID if len > MAX_UNIQUE_ID => {
                return Err(HeaderError::V2("the UNIQUE_ID TLV is over 128 bytes"));
            }
            UNIQUE_ID => parsed.unique_id = Some(value.to_vec()),
            CRC32C => {
                if len != 4 {
                    return Err(HeaderError::V2("the CRC32C TLV is not 4 bytes"));
                }
                let mut zeroed = header.to_vec();
                zeroed[start..start + 4].fill(0);
                if crc32c(&zeroed).to_be_bytes() != value {
                    return Err(HeaderError::V2("the CRC32C TLV does not match the header"));
                }
            }
            _ => {}
        }
        at = start + len;
    }
    Ok(())
}

/// Appends a v2 header: PROXY over TCP for `addresses` (IPv4 when both are,
/// else IPv6 with IPv4-mapped addresses), or LOCAL when `None`.
pub(super) fn encode(
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &Tlvs<'_>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&V2_SIGNATURE);
    let Some((source, destination)) = addresses else {
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return;
    };
    out.extend_from_slice(&[0x21, 0, 0, 0]);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[start + 13] = 0x11;
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out[start + 13] = 0x21;
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    let mut tlv = |kind: u8, value: &[u8]| {
        out.push(kind);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    };
    if let Some(name) = tlvs.authority {
        tlv(
            AUTHORITY,
            &name.as_bytes()[..name.len().min(u16::MAX as usize / 2)],
        );
    }
    if let Some(id) = tlvs.unique_id {
        tlv(UNIQUE_ID, &id[..id.len().min(MAX_UNIQUE_ID)]);
    }
    let len = (out.len() - start - 16) as u16;
    out[start + 14..start + 16].copy_from_slice(&len.to_be_bytes());
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// CRC-32C (Castagnoli), as the CRC32C TLV carries it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[0x21, 0x11]);
        out.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
        out.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2, 0x1f, 0x90, 0x01, 0xbb]);
        out.extend_from_slice(tlvs);
        out
    }

    #[test]
    fn it_should_compute_the_standard_crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn it_should_parse_tcp_over_ipv4_and_skip_unknown_tlvs() {
        let header = v4_header(&[0x04, 0, 2, 0, 0]);
        let Ok(Parse::Complete {
            header: parsed,
            len,
        }) = parse(&header)
        else {
            panic!();
        };
        assert_eq!(len, 33);
        assert_eq!(
            parsed.addresses,
            Some((
                "192.0.2.1:8080".parse().unwrap(),
                "198.51.100.2:443".parse().unwrap()
            ))
        );
    }

    #[test]
    fn it_should_check_a_crc32c_tlv() {
        let mut header = v4_header(&[CRC32C, 0, 4, 0, 0, 0, 0]);
        let crc = crc32c(&header);
        let at = header.len() - 4;
        header[at..].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(parse(&header), Ok(Parse::Complete { .. })));
        header[at] ^= 1;
        assert_eq!(
            parse(&header),
            Err(HeaderError::V2("the CRC32C TLV does not match the header"))
        );
    }

    #[test]
    fn it_should_refuse_tlvs_that_overrun_and_bad_fields() {
        assert_eq!(
            parse(&v4_header(&[AUTHORITY, 0, 9, b'a'])),
            Err(HeaderError::V2("a TLV runs past the header"))
        );
        assert_eq!(
            parse(&v4_header(&[AUTHORITY, 0])),
            Err(HeaderError::V2("a TLV runs past the header"))
        );
        assert_eq!(
            parse(&v4_header(&[AUTHORITY, 0, 1, 0xff])),
            Err(HeaderError::V2("the AUTHORITY TLV is not UTF-8"))
        );
        let mut long_id = vec![UNIQUE_ID, 0, 129];
        long_id.resize(3 + 129, b'x');
        assert!(parse(&v4_header(&long_id)).is_err());
        let mut bad = v4_header(&[]);
        bad[12] = 0x31;
        assert_eq!(
            parse(&bad[..13]),
            Err(HeaderError::V2("the version is not 2"))
        );
        bad[12] = 0x22;
        assert!(parse(&bad).is_err());
        bad[12] = 0x21;
        bad[13] = 0x41;
        assert!(parse(&bad[..14]).is_err());
    }

    #[test]
    fn it_should_refuse_a_length_short_for_the_family() {
        let mut header = v4_header(&[]);
        header[15] = 8;
        assert_eq!(
            parse(&header),
            Err(HeaderError::V2(
                "the length is short for the address family's block"
            ))
        );
    }

    #[test]
    fn it_should_keep_no_address_for_unspec_udp_and_unix() {
        for family in [0x00, 0x12, 0x31] {
            let mut header = V2_SIGNATURE.to_vec();
            let block = if family == 0x31 {
                216
            } else if family == 0x12 {
                12
            } else {
                0
            };
            header.extend_from_slice(&[0x21, family]);
            header.extend_from_slice(&(block as u16).to_be_bytes());
            header.resize(16 + block, 0);
            let Ok(Parse::Complete {
                header: parsed,
                len,
            }) = parse(&header)
            else {
                panic!("{family:x}");
            };
            assert_eq!((parsed.addresses, len), (None, 16 + block));
        }
    }
}
