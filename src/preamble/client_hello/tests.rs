//! `parse` end to end: real clients' hellos, splits into segments and
//! records, limits, and what is not TLS.

use super::test_builder::{Builder, records};
use super::*;

/// `openssl s_client -servername api.example.com -alpn h2,http/1.1`
/// (OpenSSL 3.0), captured on a loopback port.
const OPENSSL: &[u8] = include_bytes!("testdata/openssl_sni_alpn.bin");
/// `curl --resolve www.example.com:PORT:127.0.0.1 https://www.example.com:PORT/`
/// (curl 7.88, OpenSSL 3.0), captured the same way.
const CURL: &[u8] = include_bytes!("testdata/curl.bin");

fn hello(sni: &str, alpn: &[&str]) -> Hello {
    Hello {
        server_name: Some(sni.to_string()),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn it_should_read_the_name_and_protocols_of_real_clients() {
    assert_eq!(OPENSSL.len(), 339);
    assert_eq!(
        parse(OPENSSL, DEFAULT_LIMIT),
        Ok(Parse::Complete(hello(
            "api.example.com",
            &["h2", "http/1.1"]
        )))
    );
    assert_eq!(CURL.len(), 517);
    assert_eq!(
        parse(CURL, DEFAULT_LIMIT),
        Ok(Parse::Complete(hello(
            "www.example.com",
            &["h2", "http/1.1"]
        )))
    );
}

#[test]
fn it_should_say_incomplete_for_every_strict_prefix_of_a_hello() {
    // A hello read one byte at a time: each read is a longer prefix.
    for whole in [
        OPENSSL.to_vec(),
        CURL.to_vec(),
        Builder::default()
            .sni("a.io")
            .alpn(&[b"h2"])
            .pad(3000)
            .records(1000),
    ] {
        for n in 0..whole.len() {
            assert_eq!(
                parse(&whole[..n], DEFAULT_LIMIT),
                Ok(Parse::Incomplete),
                "{n}"
            );
        }
        assert!(matches!(
            parse(&whole, DEFAULT_LIMIT),
            Ok(Parse::Complete(_))
        ));
    }
}

#[test]
fn it_should_read_a_real_hello_cut_into_records_of_any_size() {
    let message = &OPENSSL[5..];
    let expected = Ok(Parse::Complete(hello(
        "api.example.com",
        &["h2", "http/1.1"],
    )));
    for size in [1, 2, 3, 4, 5, 7, 100, 333, 334] {
        let wire = records(message, size);
        assert_eq!(parse(&wire, DEFAULT_LIMIT), expected, "{size}");
        assert_eq!(
            parse(&wire[..wire.len() - 1], DEFAULT_LIMIT),
            Ok(Parse::Incomplete)
        );
    }
}

#[test]
fn it_should_ignore_what_follows_the_hello() {
    let mut wire = Builder::default()
        .sni("Big.Example.COM.")
        .alpn(&[b"h2"])
        .pad(9000)
        .records(4096);
    wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        parse(&wire, DEFAULT_LIMIT),
        Ok(Parse::Complete(hello("big.example.com", &["h2"])))
    );
    let mut openssl = OPENSSL.to_vec();
    openssl.extend_from_slice(&[0; 1000]);
    assert_eq!(
        parse(&openssl, DEFAULT_LIMIT),
        parse(OPENSSL, DEFAULT_LIMIT)
    );
}

#[test]
fn it_should_take_a_20_kib_hello_only_under_a_limit_it_fits() {
    let big = Builder::default().sni("pq.example.com").pad(20 * 1024);
    let wire = big.records(16_384);
    assert_eq!(wire.len(), big.message().len() + 10);
    assert_eq!(
        parse(&wire[..9], DEFAULT_LIMIT),
        Err(HelloError::TooLarge {
            needed: wire.len(),
            limit: 16_384
        })
    );
    assert_eq!(
        parse(&wire, 32 * 1024),
        Ok(Parse::Complete(hello("pq.example.com", &[])))
    );
    assert_eq!(
        HelloError::TooLarge {
            needed: 1,
            limit: 0
        }
        .reason(),
        "oversized"
    );
}

#[test]
fn it_should_say_not_tls_from_the_first_byte() {
    assert_eq!(parse(b"G", DEFAULT_LIMIT), Err(HelloError::NotTls));
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n", DEFAULT_LIMIT),
        Err(HelloError::NotTls)
    );
    // An SSLv2-compatible hello: the high bit of a 2-byte length.
    assert_eq!(
        parse(&[0x80, 0x2e, 1], DEFAULT_LIMIT),
        Err(HelloError::NotTls)
    );
    assert_eq!(parse(&[], DEFAULT_LIMIT), Ok(Parse::Incomplete));
    assert_eq!(HelloError::NotTls.reason(), "not_tls");
}

#[test]
fn it_should_give_no_name_to_a_hello_without_sni() {
    let wire = Builder::default().alpn(&[b"h2"]).records(16_384);
    assert_eq!(
        parse(&wire, DEFAULT_LIMIT),
        Ok(Parse::Complete(Hello {
            server_name: None,
            alpn: vec!["h2".to_string()]
        }))
    );
}

#[test]
fn it_should_refuse_a_malformed_hello_that_spans_records() {
    let wire = Builder::default().sni("a b.io").pad(100).records(20);
    let error = parse(&wire, DEFAULT_LIMIT);
    assert_eq!(
        error,
        Err(HelloError::Malformed(
            "server name is not a valid host name"
        ))
    );
    assert_eq!(error.map(|_| ()).unwrap_err().reason(), "malformed");
}
