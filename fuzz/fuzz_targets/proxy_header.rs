//! Fuzz target `proxy_header`: arbitrary bytes through the PROXY protocol
//! header parser with each accepted version, plus an encode→parse round
//! trip of headers built from the bytes.
//!
//! Defends against: a panic or an out-of-bounds read on any bytes a trusted
//! sender (or an attacker who is one) can send; a length past the bytes
//! given (which would hand part of the header to the backend, or swallow
//! client bytes); a verdict that changes when the same header arrives in
//! more bytes; and a header l4mesh writes that it (or HAProxy, which follows
//! the same spec) would read back as another.
#![no_main]

use l4mesh::preamble::proxy_header::{Accept, Parse, Tlvs, Version, encode, encode_local, parse};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        if let Ok(Parse::Complete { header, len }) = parse(data, accept) {
            assert!(len <= data.len());
            assert_eq!(
                parse(&data[..len], accept),
                Ok(Parse::Complete {
                    header: header.clone(),
                    len
                })
            );
        }
    }
    round_trip(data);
});

/// Builds a header from the bytes, writes it, and reads it back.
fn round_trip(data: &[u8]) {
    if data.len() < 40 {
        return;
    }
    let v4 = data[0] & 1 == 0;
    let ip = |at: usize| -> IpAddr {
        if v4 {
            IpAddr::from([data[at], data[at + 1], data[at + 2], data[at + 3]])
        } else {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&data[at..at + 16]);
            IpAddr::from(octets)
        }
    };
    let port = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
    let (source, destination) = (
        SocketAddr::new(ip(2), port(34)),
        SocketAddr::new(ip(18), port(36)),
    );
    let rest = &data[38..];
    let authority = std::str::from_utf8(rest).ok();
    let tlvs = Tlvs {
        authority,
        unique_id: Some(&rest[..rest.len().min(128)]),
    };
    for version in [Version::V1, Version::V2] {
        let mut out = Vec::new();
        encode(version, source, destination, &tlvs, &mut out);
        let Ok(Parse::Complete { header, len }) = parse(&out, Accept::Any) else {
            panic!("{version:?}: cannot read back {out:?}");
        };
        assert_eq!(len, out.len());
        let (s, d) = header.addresses.expect("addresses");
        assert_eq!((s.port(), d.port()), (source.port(), destination.port()));
        assert_eq!(
            (s.ip().to_canonical(), d.ip().to_canonical()),
            (source.ip().to_canonical(), destination.ip().to_canonical())
        );
        if version == Version::V2 {
            assert_eq!(header.authority.as_deref(), authority);
        }
        let mut local = Vec::new();
        encode_local(version, &mut local);
        assert!(matches!(
            parse(&local, Accept::Any),
            Ok(Parse::Complete { .. })
        ));
    }
}
