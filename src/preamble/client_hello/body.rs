//! The ClientHello's body: versions, random, session id, cipher suites and
//! compression methods checked for shape; the server_name and ALPN
//! extensions read.

use super::host_name::host_name;
use super::reader::Reader;
use super::{Hello, HelloError};

const SERVER_NAME: u16 = 0;
const ALPN: u16 = 16;
const HOST_NAME: u8 = 0;

/// Parses the ClientHello body (what follows the 4-byte handshake header).
pub(super) fn parse(body: &[u8]) -> Result<Hello, HelloError> {
    let mut r = Reader::new(body);
    let [major, _] = r.array("a hello too short for its version")?;
    if major != 3 {
        return Err(HelloError::Malformed("a hello version that is not TLS"));
    }
    r.take(32, "a hello too short for its random")?;
    let session = r.vec8("the session id runs past the hello")?;
    if session.len() > 32 {
        return Err(HelloError::Malformed("a session id over 32 bytes"));
    }
    let suites = r.vec16("the cipher suites run past the hello")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "cipher suites of an odd or zero length",
        ));
    }
    if r.vec8("the compression methods run past the hello")?
        .is_empty()
    {
        return Err(HelloError::Malformed("no compression method"));
    }
    let mut hello = Hello::default();
    // Extensions are optional before TLS 1.3; present, they fill the rest.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader::new(r.vec16("the extensions run past the hello")?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    // One bit per extension type: a repeat is malformed (RFC 8446, 4.2),
    // found without allocating however many extensions there are.
    let mut seen = [0u64; 1024];
    while !extensions.is_empty() {
        let kind = extensions.u16("a truncated extension")?;
        let data = extensions.vec16("an extension runs past the extensions")?;
        let (word, bit) = (usize::from(kind / 64), 1u64 << (kind % 64));
        if let Some(w) = seen.get_mut(word) {
            if *w & bit != 0 {
                return Err(HelloError::Malformed("an extension appears twice"));
            }
            *w |= bit;
        }
        match kind {
            SERVER_NAME => hello.server_name = server_name(data)?,
            ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The first host name of a server_name extension, checked and lower-cased
/// (names of other types are skipped).
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut outer = Reader::new(data);
    let mut list = Reader::new(outer.vec16("the server name list runs past its extension")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("an empty server name list"));
    }
    let mut found = None;
    while !list.is_empty() {
        let kind = list.u8("a truncated server name")?;
        let name = list.vec16("a server name runs past its list")?;
        if kind == HOST_NAME && found.is_none() {
            found = Some(host_name(name)?);
        }
    }
    Ok(found)
}

/// The protocols of an ALPN extension, in the client's order.
fn alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let mut outer = Reader::new(data);
    let mut list = Reader::new(outer.vec16("the ALPN list runs past its extension")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("an empty ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let name = list.vec8("an ALPN protocol runs past its list")?;
        if name.is_empty() {
            return Err(HelloError::Malformed("an empty ALPN protocol"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| HelloError::Malformed("an ALPN protocol that is not UTF-8"))?;
        protocols.push(name.to_string());
    }
    Ok(protocols)
}

#[cfg(test)]
mod tests {
    use super::super::test_builder::{Builder, vec16};
    use super::*;

    fn malformed(builder: Builder, why: &'static str) {
        assert_eq!(
            parse(&builder.body()),
            Err(HelloError::Malformed(why)),
            "{builder:?}"
        );
    }

    #[test]
    fn it_should_read_the_name_and_protocols_in_the_clients_order() {
        let hello = Builder::default()
            .ext(0x0a0a, &[])
            .sni("API.Example.com")
            .alpn(&[b"http/1.1", b"h2"])
            .ext(0xffff, &[1]);
        assert_eq!(
            parse(&hello.body()),
            Ok(Hello {
                server_name: Some("api.example.com".to_string()),
                alpn: vec!["http/1.1".to_string(), "h2".to_string()],
            })
        );
    }

    #[test]
    fn it_should_take_a_hello_without_extensions_as_one_without_a_name() {
        assert_eq!(parse(&Builder::default().body()), Ok(Hello::default()));
        let empty_block = Builder {
            extensions: Some(Vec::new()),
            session_id: Vec::new(),
            ..Builder::default()
        };
        assert_eq!(parse(&empty_block.body()), Ok(Hello::default()));
    }

    #[test]
    fn it_should_check_the_fields_before_the_extensions() {
        let b = Builder::default;
        malformed(
            Builder {
                version: [2, 0],
                ..b()
            },
            "a hello version that is not TLS",
        );
        malformed(
            Builder {
                session_id: vec![0; 33],
                ..b()
            },
            "a session id over 32 bytes",
        );
        malformed(
            Builder {
                suites: vec![0x13, 0x01, 0x13],
                ..b()
            },
            "cipher suites of an odd or zero length",
        );
        malformed(
            Builder {
                suites: Vec::new(),
                ..b()
            },
            "cipher suites of an odd or zero length",
        );
        malformed(
            Builder {
                compression: Vec::new(),
                ..b()
            },
            "no compression method",
        );
        assert_eq!(
            parse(&[3]),
            Err(HelloError::Malformed("a hello too short for its version"))
        );
        assert_eq!(
            parse(&[3, 3, 0]),
            Err(HelloError::Malformed("a hello too short for its random"))
        );
    }

    #[test]
    fn it_should_refuse_lengths_that_disagree() {
        let body = Builder::default().sni("a.io").body();
        // Every strict prefix of a body cuts some length short, but for
        // the one that ends before the extensions.
        let without_extensions = Builder::default().body().len();
        for n in (0..body.len()).filter(|&n| n != without_extensions) {
            assert!(
                matches!(parse(&body[..n]), Err(HelloError::Malformed(_))),
                "{n}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            parse(&longer),
            Err(HelloError::Malformed("bytes after the extensions"))
        );
        let inner = Builder {
            extensions: Some(vec![0, 21, 0, 9, 0]),
            ..Builder::default()
        };
        malformed(inner, "an extension runs past the extensions");
        malformed(
            Builder::default().ext(0, &[0, 4, 0, 0, 1, b'a', 0]),
            "bytes after the server name list",
        );
        malformed(
            Builder::default().ext(0, &[0, 4, 0, 0, 9, b'a']),
            "a server name runs past its list",
        );
        malformed(
            Builder::default().ext(16, &[0, 3, 2, b'h', b'2', 0]),
            "bytes after the ALPN list",
        );
        malformed(
            Builder::default().ext(16, &[0, 3, 3, b'h', b'2']),
            "an ALPN protocol runs past its list",
        );
    }

    #[test]
    fn it_should_refuse_an_extension_that_appears_twice() {
        malformed(
            Builder::default().sni("a.io").pad(1).sni("b.io"),
            "an extension appears twice",
        );
        malformed(
            Builder::default().ext(0xffff, &[]).ext(0xffff, &[]),
            "an extension appears twice",
        );
    }

    #[test]
    fn it_should_take_the_first_host_name_and_skip_other_name_types() {
        let hello = Builder::default().sni_entries(&[
            (7, b"not a host name"),
            (0, b"first.io"),
            (0, b"second.io"),
        ]);
        assert_eq!(
            parse(&hello.body()).map(|h| h.server_name),
            Ok(Some("first.io".to_string()))
        );
        let other_only = Builder::default().sni_entries(&[(7, b"x")]);
        assert_eq!(parse(&other_only.body()), Ok(Hello::default()));
        malformed(
            Builder::default().sni_entries(&[]),
            "an empty server name list",
        );
        malformed(
            Builder::default().sni("a b.io"),
            "server name is not a valid host name",
        );
    }

    #[test]
    fn it_should_check_each_alpn_protocol() {
        let longest = [b'p'; 255];
        assert_eq!(
            parse(&Builder::default().alpn(&[&longest]).body()).map(|h| h.alpn),
            Ok(vec!["p".repeat(255)])
        );
        malformed(Builder::default().alpn(&[]), "an empty ALPN list");
        malformed(
            Builder::default().alpn(&[b"h2", b""]),
            "an empty ALPN protocol",
        );
        malformed(
            Builder::default().alpn(&[b"\xff\xfe"]),
            "an ALPN protocol that is not UTF-8",
        );
        malformed(
            Builder::default().ext(16, &vec16(&[])[..1]),
            "the ALPN list runs past its extension",
        );
    }
}
