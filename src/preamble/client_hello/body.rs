//! The ClientHello's body: versions, random, session id, cipher suites and
//! compression methods checked for shape; the server_name and ALPN
//! extensions read.

use super::reader::Reader;
use super::{Hello, HelloError};

const SERVER_NAME: u16 = 0;
const ALPN: u16 = 16;
const HOST_NAME: u8 = 0;

/// Parses the ClientHello body (after the 4-byte handshake header).
pub(super) fn parse(body: &[u8]) -> Result<Hello, HelloError> {
    let mut r = Reader::new(body);
    r.take(2 + 32, "short before the session id")?;
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
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader::new(r.vec16("the extensions run past the hello")?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !extensions.is_empty() {
        let kind = extensions.u16("a truncated extension")?;
        let data = extensions.vec16("an extension runs past the extensions")?;
        if seen.contains(&kind) {
            return Err(HelloError::Malformed("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            SERVER_NAME => hello.server_name = server_name(data)?,
            ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The first host name of a server_name extension, checked and lower-cased.
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut outer = Reader::new(data);
    let mut list = Reader::new(outer.vec16("the server name list runs past its extension")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
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

/// A host name: ASCII labels of `[A-Za-z0-9_-]`, 1 to 63 bytes each, 253 in
/// all; one trailing dot is dropped.
fn host_name(raw: &[u8]) -> Result<String, HelloError> {
    let bad = HelloError::Malformed("the server name is not a valid host name");
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return Err(bad);
    }
    for label in raw.split(|&b| b == b'.') {
        let fine = !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fine {
            return Err(bad);
        }
    }
    Ok(raw
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// The protocols of an ALPN extension, in order.
fn alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let mut outer = Reader::new(data);
    let mut list = Reader::new(outer.vec16("the ALPN list runs past its extension")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after the ALPN list"));
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
