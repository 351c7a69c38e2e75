//! The chaos suite's wire format, shared by `chaos_server` and `chaos_load`
//! (`tests/chaos/run.sh`): a 32-byte request header, the 48-byte reply to an
//! upload, and the deterministic byte pattern every transfer carries, so that
//! both ends can check every byte they receive against what was sent.
//!
//! Each example uses its own half of the format (the server decodes what
//! the client encodes), hence the `allow`.
#![allow(dead_code)]

use sha2::{Digest, Sha256};

/// First bytes of every request header.
pub const MAGIC: &[u8; 4] = b"L4C1";
/// Bytes in a request header.
pub const HEADER_LEN: usize = 32;
/// Bytes in the server's reply to an upload: bytes received (u64), bytes
/// that differed from the pattern (u64), SHA-256 of what was received.
pub const REPLY_LEN: usize = 48;
/// What a health probe sends, and the server's answer.
pub const PING: &[u8; 4] = b"PING";
/// The server's answer to [`PING`].
pub const PONG: &[u8] = b"PONG\n";

/// What a transfer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The server sends `size` bytes of the pattern.
    Download,
    /// The client sends `size` bytes; the server checks them and replies.
    Upload,
    /// The client sends `size` bytes; the server echoes them back.
    Echo,
}

impl Mode {
    /// The name used on the command line and in result records.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Download => "download",
            Mode::Upload => "upload",
            Mode::Echo => "echo",
        }
    }

    /// The mode called `name`, if any.
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::Download, Mode::Upload, Mode::Echo]
            .into_iter()
            .find(|m| m.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            Mode::Download => 1,
            Mode::Upload => 2,
            Mode::Echo => 3,
        }
    }
}

/// One transfer's request, sent by the client as the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What the transfer does.
    pub mode: Mode,
    /// Bytes of pattern in the transfer (each way for an echo).
    pub size: u64,
    /// Seed of the pattern.
    pub seed: u64,
    /// How long the server waits before it answers (milliseconds).
    pub hold_ms: u32,
}

impl Request {
    /// The header bytes: magic, mode, 3 spare bytes, size, seed, hold, 4
    /// spare bytes (integers little-endian).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = self.mode.code();
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.seed.to_le_bytes());
        b[24..28].copy_from_slice(&self.hold_ms.to_le_bytes());
        b
    }

    /// The request in `b`, or `None` when it is not one.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Request> {
        if &b[..4] != MAGIC {
            return None;
        }
        let mode = [Mode::Download, Mode::Upload, Mode::Echo]
            .into_iter()
            .find(|m| m.code() == b[4])?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let hold_ms = u32::from_le_bytes(b[24..28].try_into().unwrap_or([0; 4]));
        Some(Request {
            mode,
            size: u64_at(8),
            seed: u64_at(16),
            hold_ms,
        })
    }
}

/// The deterministic byte stream of one seed: byte `i` is byte `i % 8` of a
/// SplitMix64 hash of `(seed, i / 8)`, so any slice can be made, or checked,
/// from its offset alone.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    /// Fills `buf` with the stream's bytes from `offset` on.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let pos = offset + i as u64;
            let word = splitmix(self.seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let word = word.to_le_bytes();
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
        }
    }
}

/// Checks a received stream against the pattern as it arrives: counts the
/// bytes that differ and hashes both what arrived and what was expected.
pub struct Checker {
    pattern: Pattern,
    /// Bytes checked so far (the offset of the next byte).
    pub offset: u64,
    /// Bytes that differed from the pattern.
    pub mismatched: u64,
    expected: Vec<u8>,
    got_hash: Sha256,
    want_hash: Sha256,
}

impl Checker {
    /// A checker of the stream of `seed`, from offset 0.
    pub fn new(seed: u64) -> Checker {
        Checker {
            pattern: Pattern::new(seed),
            offset: 0,
            mismatched: 0,
            expected: Vec::new(),
            got_hash: Sha256::new(),
            want_hash: Sha256::new(),
        }
    }

    /// Checks the next `data` of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.expected.resize(data.len(), 0);
        self.pattern.fill(self.offset, &mut self.expected);
        let differ = data.iter().zip(&self.expected).filter(|(a, b)| a != b);
        self.mismatched += differ.count() as u64;
        self.got_hash.update(data);
        self.want_hash.update(&self.expected);
        self.offset += data.len() as u64;
    }

    /// SHA-256 of what arrived, and whether it equals the pattern's.
    pub fn finish(self) -> ([u8; 32], bool) {
        let got: [u8; 32] = self.got_hash.finalize().into();
        let want: [u8; 32] = self.want_hash.finalize().into();
        (got, got == want)
    }
}

/// The upload reply: bytes received, bytes that differed, SHA-256 of them.
pub fn encode_reply(received: u64, mismatched: u64, sha: &[u8; 32]) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[..8].copy_from_slice(&received.to_le_bytes());
    b[8..16].copy_from_slice(&mismatched.to_le_bytes());
    b[16..].copy_from_slice(sha);
    b
}

/// The fields of an upload reply.
pub fn decode_reply(b: &[u8; REPLY_LEN]) -> (u64, u64, [u8; 32]) {
    let received = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
    let mismatched = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    let sha = b[16..].try_into().unwrap_or([0; 32]);
    (received, mismatched, sha)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
