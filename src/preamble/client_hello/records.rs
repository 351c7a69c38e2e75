//! The TLS record layer under the ClientHello: record headers checked, the
//! handshake message's header read (even when it is split across records),
//! and its body located, in one record or across several.

use super::HelloError;

/// Content type of a handshake record.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest plaintext record fragment (RFC 8446, 5.1).
const MAX_FRAGMENT: usize = 1 << 14;
/// A record header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;
/// A handshake header: type, length (3).
const MESSAGE_HEADER: usize = 4;

/// Where the ClientHello's body lies in the bytes received.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing<'a> {
    /// The hello is not all in yet.
    Incomplete,
    /// The body is all in the first record: here it is, not copied.
    Contiguous(&'a [u8]),
    /// The body spans records: this many bytes in all.
    Spanning(usize),
}

/// Walks the records of `buf` up to the end of the ClientHello, which may
/// need at most `limit` bytes on the wire. With a `sink`, appends the
/// body's bytes to it (for a hello that spans records).
pub(super) fn frame<'a>(
    buf: &'a [u8],
    limit: usize,
    mut sink: Option<&mut Vec<u8>>,
) -> Result<Framing<'a>, HelloError> {
    if buf.first().is_some_and(|&b| b != HANDSHAKE) {
        return Err(HelloError::NotTls);
    }
    let mut at = 0;
    // Bytes of the handshake message (header included) in earlier records.
    let mut got = 0;
    let mut header = [0u8; MESSAGE_HEADER];
    // The whole message's length, header included, once its header is in.
    let mut wanted: Option<usize> = None;
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        check_record_header(rest)?;
        let Some(&[_, _, _, hi, lo]) = rest.get(..RECORD_HEADER) else {
            return Ok(Framing::Incomplete);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_FRAGMENT {
            return Err(HelloError::Malformed("a record length of 0 or over 16384"));
        }
        let start = at + RECORD_HEADER;
        let end = start + len;
        let fragment = buf.get(start..end.min(buf.len())).unwrap_or_default();
        for (slot, &b) in header.iter_mut().skip(got).zip(fragment) {
            *slot = b;
        }
        let now = got + fragment.len();
        if now >= 1 && header[0] != CLIENT_HELLO {
            return Err(HelloError::Malformed(
                "the first handshake message is not a ClientHello",
            ));
        }
        if wanted.is_none() && now >= MESSAGE_HEADER {
            let [_, a, b, c] = header;
            wanted = Some(
                MESSAGE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)),
            );
        }
        let Some(wanted) = wanted else {
            if end > buf.len() {
                return Ok(Framing::Incomplete);
            }
            got = now;
            at = end;
            continue;
        };
        // The hello did not end in an earlier record, so `got < wanted`.
        let remaining = wanted.saturating_sub(got);
        let needed = wire_needed(start, len, remaining);
        if needed > limit {
            return Err(HelloError::TooLarge { needed, limit });
        }
        if let Some(sink) = sink.as_deref_mut() {
            // This record's share of the body: message offsets
            // [got, got + fragment.len()) within [MESSAGE_HEADER, wanted).
            let from = MESSAGE_HEADER.saturating_sub(got).min(fragment.len());
            let to = remaining.min(fragment.len());
            sink.extend_from_slice(fragment.get(from..to).unwrap_or_default());
        }
        if now >= wanted {
            let body_len = wanted - MESSAGE_HEADER;
            return Ok(match fragment.get(MESSAGE_HEADER..wanted) {
                Some(body) if at == 0 => Framing::Contiguous(body),
                _ => Framing::Spanning(body_len),
            });
        }
        if end > buf.len() {
            return Ok(Framing::Incomplete);
        }
        got = now;
        at = end;
    }
}

/// Checks what has arrived of a record header (`rest` may be shorter):
/// a handshake record, of version 3.0 to 3.4.
fn check_record_header(rest: &[u8]) -> Result<(), HelloError> {
    if rest.first().is_some_and(|&t| t != HANDSHAKE) {
        return Err(HelloError::Malformed(
            "a record that is not a handshake before the hello ended",
        ));
    }
    if rest.get(1).is_some_and(|&major| major != 3) || rest.get(2).is_some_and(|&minor| minor > 4) {
        return Err(HelloError::Malformed("a record version that is not TLS"));
    }
    Ok(())
}

/// The fewest bytes on the wire that end the hello: up to `start` (where
/// the current record's fragment starts, `len` bytes long), plus the
/// `remaining` bytes of the message, plus a header for each further record
/// they need (each carrying at most 16 KiB).
fn wire_needed(start: usize, len: usize, remaining: usize) -> usize {
    if remaining <= len {
        return start + remaining;
    }
    let after = remaining - len;
    start + len + after + RECORD_HEADER * after.div_ceil(MAX_FRAGMENT)
}

#[cfg(test)]
mod tests {
    use super::super::test_builder::{Builder, records};
    use super::*;

    fn frame_all(buf: &[u8], limit: usize) -> Result<Framing<'_>, HelloError> {
        frame(buf, limit, None)
    }

    #[test]
    fn it_should_lend_the_body_of_a_hello_in_one_record_without_copying() {
        let hello = Builder::default().sni("a.io");
        let wire = hello.records(16_384);
        assert_eq!(
            frame_all(&wire, 16_384),
            Ok(Framing::Contiguous(&hello.body()[..]))
        );
    }

    #[test]
    fn it_should_join_the_body_of_a_hello_that_spans_records() {
        let hello = Builder::default().sni("a.io").pad(3000);
        let body = hello.body();
        for size in [1, 2, 3, 4, 5, 1000] {
            let wire = hello.records(size);
            assert_eq!(
                frame_all(&wire, 65_536),
                Ok(Framing::Spanning(body.len())),
                "{size}"
            );
            let mut joined = Vec::new();
            frame(&wire, 65_536, Some(&mut joined)).unwrap();
            assert_eq!(joined, body, "{size}");
        }
    }

    #[test]
    fn it_should_say_incomplete_until_the_last_byte_of_the_hello() {
        // 1-byte records split even the handshake header across records.
        for wire in [
            Builder::default().sni("a.io").records(1),
            Builder::default().sni("a.io").pad(3000).records(1000),
        ] {
            for n in 0..wire.len() {
                assert_eq!(
                    frame_all(&wire[..n], 16_384),
                    Ok(Framing::Incomplete),
                    "{n}"
                );
            }
            assert_ne!(frame_all(&wire, 16_384), Ok(Framing::Incomplete));
        }
    }

    #[test]
    fn it_should_stop_at_the_end_of_the_hello_even_inside_a_record() {
        let hello = Builder::default().sni("a.io");
        let mut message = hello.message();
        // Whatever follows in the record (or after it) is not looked at.
        message.extend_from_slice(&[0xff; 100]);
        let mut wire = records(&message, 16_384);
        wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let end = 5 + hello.message().len();
        assert_eq!(
            frame_all(&wire[..end], end),
            Ok(Framing::Contiguous(&hello.body()[..]))
        );
        assert_eq!(
            frame_all(&wire, end),
            Ok(Framing::Contiguous(&hello.body()[..]))
        );
    }

    #[test]
    fn it_should_refuse_a_hello_over_the_limit_as_soon_as_its_length_says_so() {
        let hello = Builder::default().sni("pq.example.com").pad(20_000);
        let len = hello.message().len();
        let wire = hello.records(16_384);
        assert_eq!(wire.len(), len + 10);
        // 9 bytes: a record header and the handshake header.
        assert_eq!(
            frame_all(&wire[..9], 16_384),
            Err(HelloError::TooLarge {
                needed: len + 10,
                limit: 16_384
            })
        );
        assert_eq!(
            frame_all(&wire, wire.len() - 1),
            Err(HelloError::TooLarge {
                needed: wire.len(),
                limit: wire.len() - 1
            })
        );
        assert_eq!(frame_all(&wire, wire.len()), Ok(Framing::Spanning(len - 4)));
    }

    #[test]
    fn it_should_count_a_header_for_every_record_a_small_record_forces() {
        // The client's records of 100 bytes: after the first one the
        // fewest bytes left are the message's rest in records of 16 KiB.
        let hello = Builder::default().pad(200);
        let len = hello.message().len();
        let wire = hello.records(100);
        let after_first = 5 + 100 + (len - 100) + 5;
        assert_eq!(frame_all(&wire[..9], 16_384), Ok(Framing::Incomplete));
        assert_eq!(
            frame_all(&wire[..9], after_first - 1),
            Err(HelloError::TooLarge {
                needed: after_first,
                limit: after_first - 1
            })
        );
        // Once the second record's header says 100, a third one is needed.
        assert_eq!(
            frame_all(&wire[..110], after_first),
            Err(HelloError::TooLarge {
                needed: after_first + 5,
                limit: after_first
            })
        );
    }

    #[test]
    fn it_should_say_not_tls_from_the_first_byte() {
        assert_eq!(frame_all(b"G", 16_384), Err(HelloError::NotTls));
        assert_eq!(frame_all(&[0x80, 0x2e, 1], 16_384), Err(HelloError::NotTls));
        assert_eq!(frame_all(&[], 16_384), Ok(Framing::Incomplete));
    }

    #[test]
    fn it_should_refuse_bad_records_from_the_first_byte_that_shows_it() {
        let bad = |bytes: &[u8], why: &'static str| {
            assert_eq!(
                frame_all(bytes, 16_384),
                Err(HelloError::Malformed(why)),
                "{bytes:?}"
            );
        };
        bad(&[22, 2], "a record version that is not TLS");
        bad(&[22, 3, 5], "a record version that is not TLS");
        bad(&[22, 3, 1, 0, 0], "a record length of 0 or over 16384");
        bad(&[22, 3, 1, 0x40, 1], "a record length of 0 or over 16384");
        bad(
            &[22, 3, 1, 0, 1, 2],
            "the first handshake message is not a ClientHello",
        );
        bad(
            &[22, 3, 1, 0, 1, 1, 21],
            "a record that is not a handshake before the hello ended",
        );
        bad(
            &[22, 3, 1, 0, 1, 1, 22, 3, 9],
            "a record version that is not TLS",
        );
        assert_eq!(
            frame_all(&[22, 3, 4, 0x40, 0], 16_384),
            Ok(Framing::Incomplete)
        );
        assert_eq!(
            frame_all(&[22, 3, 0, 0, 1, 1], 16_384),
            Ok(Framing::Incomplete)
        );
    }
}
