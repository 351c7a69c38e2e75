use super::*;

const OPENSSL: &[u8] = include_bytes!("testdata/openssl_sni_alpn.bin");
const CURL: &[u8] = include_bytes!("testdata/curl.bin");

/// A ClientHello body with these extensions (and a padding extension of
/// `pad` bytes), framed as a handshake message.
fn message(sni: Option<&str>, alpn: &[&str], pad: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        push_ext(&mut ext, 0, &with_len16(&entry));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        push_ext(&mut ext, 16, &with_len16(&list));
    }
    if pad > 0 {
        push_ext(&mut ext, 21, &vec![0; pad]);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&with_len16(&ext));
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

fn with_len16(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn push_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&with_len16(data));
}

/// `message` cut into records of at most `size` bytes.
fn records(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn hello(sni: &str, alpn: &[&str]) -> Hello {
    Hello {
        server_name: Some(sni.to_string()),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn it_should_read_the_name_and_protocols_of_real_clients() {
    assert_eq!(
        parse(OPENSSL, DEFAULT_LIMIT),
        Ok(Parse::Complete(hello(
            "api.example.com",
            &["h2", "http/1.1"]
        )))
    );
    let Ok(Parse::Complete(curl)) = parse(CURL, DEFAULT_LIMIT) else {
        panic!("curl's hello");
    };
    assert_eq!(curl.server_name.as_deref(), Some("www.example.com"));
}

#[test]
fn it_should_say_incomplete_for_every_strict_prefix() {
    for whole in [
        OPENSSL.to_vec(),
        records(&message(Some("a.io"), &["h2"], 3000), 1000),
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
fn it_should_reassemble_a_hello_across_records_and_ignore_what_follows() {
    let msg = message(Some("Big.Example.COM."), &["h2"], 9000);
    let mut wire = records(&msg, 4096);
    wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert_eq!(
        parse(&wire, DEFAULT_LIMIT),
        Ok(Parse::Complete(hello("big.example.com", &["h2"])))
    );
}

#[test]
fn it_should_refuse_a_hello_over_the_limit_as_soon_as_its_length_says_so() {
    let wire = records(&message(Some("pq.example.com"), &[], 20_000), 16_384);
    assert!(matches!(
        parse(&wire[..9], DEFAULT_LIMIT),
        Err(HelloError::TooLarge { limit: 16384, .. })
    ));
    assert_eq!(
        parse(&wire, 32 * 1024),
        Ok(Parse::Complete(hello("pq.example.com", &[])))
    );
}

#[test]
fn it_should_say_not_tls_from_the_first_byte() {
    assert_eq!(parse(b"G", DEFAULT_LIMIT), Err(HelloError::NotTls));
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n", DEFAULT_LIMIT),
        Err(HelloError::NotTls)
    );
    assert_eq!(
        parse(&[0x80, 0x2e, 1], DEFAULT_LIMIT),
        Err(HelloError::NotTls)
    );
    assert_eq!(HelloError::NotTls.reason(), "not_tls");
}

#[test]
fn it_should_give_no_name_to_a_hello_without_sni() {
    let wire = records(&message(None, &[], 0), 16_384);
    assert_eq!(
        parse(&wire, DEFAULT_LIMIT),
        Ok(Parse::Complete(Hello::default()))
    );
}

#[test]
fn it_should_refuse_malformed_records_and_hellos() {
    let good = records(&message(Some("a.io"), &["h2"], 0), 16_384);
    let mut bad_version = good.clone();
    bad_version[1] = 2;
    let mut not_hello = good.clone();
    not_hello[5] = 2;
    let mut alert = good.clone();
    alert.truncate(10);
    let mut two_records = records(&message(Some("a.io"), &[], 100), 20);
    two_records[25] = 21;
    let mut empty_record = good.clone();
    empty_record[3..5].copy_from_slice(&[0, 0]);
    let bad_name = records(&message(Some("a b.io"), &[], 0), 16_384);
    let empty_label = records(&message(Some("a..io"), &[], 0), 16_384);
    let empty_alpn = records(&message(Some("a.io"), &[""], 0), 16_384);
    let mut cases = vec![
        bad_version,
        not_hello,
        two_records,
        empty_record,
        bad_name,
        empty_label,
        empty_alpn,
    ];
    // A hello whose inner lengths disagree with its message length.
    let mut inner = message(Some("a.io"), &[], 0);
    let last = inner.len() - 1;
    inner[last] ^= 0xff;
    inner.push(0);
    inner[3] += 1;
    cases.push(records(&inner, 16_384));
    for case in cases {
        assert!(
            matches!(parse(&case, DEFAULT_LIMIT), Err(HelloError::Malformed(_))),
            "{:?}",
            parse(&case, DEFAULT_LIMIT)
        );
    }
    assert_eq!(parse(&alert, DEFAULT_LIMIT), Ok(Parse::Incomplete));
}

#[test]
fn it_should_refuse_a_repeated_extension() {
    let mut msg = message(Some("a.io"), &[], 0);
    // Append a second, empty, server_name extension and fix the lengths.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    let ext_len_at = 4 + 2 + 32 + 1 + 2 + 2 + 2;
    let ext_len = u16::from_be_bytes([msg[ext_len_at], msg[ext_len_at + 1]]) + 4;
    msg[ext_len_at..ext_len_at + 2].copy_from_slice(&ext_len.to_be_bytes());
    let body_len = (msg.len() - 4) as u32;
    msg[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    assert_eq!(
        parse(&records(&msg, 16_384), DEFAULT_LIMIT),
        Err(HelloError::Malformed("an extension appears twice"))
    );
}
