//! One client transfer of the chaos suite, and how it ended.
//!
//! A transfer connects to the proxy, sends a request header
//! (`chaos_wire.rs`) and moves `size` bytes of a seeded pattern: received
//! (download), sent and acknowledged by the server with its count and
//! SHA-256 (upload), or sent and received back (echo). Every byte received
//! is checked against the pattern as it arrives. Reads and writes can be
//! paced (a slow reader or writer on a steady budget of bytes per second).
//!
//! The outcome says what the client could tell:
//! * `intact`: every byte arrived, unchanged, then a clean EOF;
//! * `corrupt`: the transfer ended normally (clean EOF after the whole
//!   size, or the upload's reply) but bytes differed, were missing or extra;
//! * `reset`: an error the client saw (reset, broken pipe): it was told;
//! * `refused`: the proxy refused or never answered the connect;
//! * `short_eof`: a clean EOF before the transfer was complete: the client
//!   was not told it was cut short (the servers never end early cleanly:
//!   see `chaos_server.rs`);
//! * `hung`: nothing moved for longer than the configured timeouts allow;
//! * `aborted`: the client itself reset the connection halfway through an
//!   upload, as planned (the server's events say how that reached it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::wire::{Checker, Mode, Pattern, REPLY_LEN, Request};

/// How a transfer ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Intact,
    Corrupt,
    Reset,
    Refused,
    ShortEof,
    Hung,
    Aborted,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Intact,
        Outcome::Corrupt,
        Outcome::Reset,
        Outcome::Refused,
        Outcome::ShortEof,
        Outcome::Hung,
        Outcome::Aborted,
    ];

    /// The name in records and reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Intact => "intact",
            Outcome::Corrupt => "corrupt",
            Outcome::Reset => "reset",
            Outcome::Refused => "refused",
            Outcome::ShortEof => "short_eof",
            Outcome::Hung => "hung",
            Outcome::Aborted => "aborted",
        }
    }
}

/// What one transfer does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub request: Request,
    /// Bytes per second the client reads at; 0 = as fast as it can.
    pub read_rate: u64,
    /// Bytes per second the client writes at; 0 = as fast as it can.
    pub write_rate: u64,
    /// An upload only: reset the connection after sending this many bytes.
    pub abort_after: Option<u64>,
}

/// How long the client waits before it calls a transfer hung.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time without a byte moving, once the first byte arrived.
    pub stall: Duration,
    /// Longest wait for the connect and the first byte (longer when clients
    /// are expected to wait in the proxy's backlog).
    pub first_byte: Duration,
}

/// One transfer's result, a line of the results file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub phase: String,
    pub mode: String,
    /// The pattern's seed, which also names the transfer at the server.
    pub seed: u64,
    pub size: u64,
    pub read_rate: u64,
    pub write_rate: u64,
    /// The client's address as the proxy sees it (matches the access log).
    pub local: String,
    /// Unix seconds at the connect.
    pub start: f64,
    pub ms: f64,
    pub outcome: Outcome,
    /// Pattern bytes received (download, echo) or acknowledged (upload).
    pub received: u64,
    /// Bytes that differed from the pattern, or arrived beyond the size.
    pub corrupt_bytes: u64,
    /// Bytes of the size that never arrived (a transfer cut short).
    pub lost_bytes: u64,
    /// The error or the reason for the outcome.
    pub detail: String,
}

/// Bytes per read and write at full speed.
const CHUNK: usize = 64 * 1024;

/// Runs one transfer against `target`.
pub fn run(phase: &str, target: SocketAddr, plan: &Plan, limits: &Limits) -> Record {
    let started = Instant::now();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut record = Record {
        phase: phase.to_string(),
        mode: plan.request.mode.name().to_string(),
        seed: plan.request.seed,
        size: plan.request.size,
        read_rate: plan.read_rate,
        write_rate: plan.write_rate,
        local: String::new(),
        start,
        ms: 0.0,
        outcome: Outcome::Intact,
        received: 0,
        corrupt_bytes: 0,
        lost_bytes: 0,
        detail: String::new(),
    };
    match connect(&target, plan.read_rate, limits.first_byte) {
        Err(e) => {
            record.outcome = match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Hung,
                _ => Outcome::Refused,
            };
            record.detail = format!("connect: {e}");
        }
        Ok(stream) => {
            record.local = stream.local_addr().map_or(String::new(), |a| a.to_string());
            let ended = match plan.request.mode {
                Mode::Download => download(&stream, plan, limits),
                Mode::Upload => upload(&stream, plan, limits),
                Mode::Echo => echo(&stream, plan, limits),
            };
            record.outcome = ended.outcome;
            record.received = ended.received;
            record.corrupt_bytes = ended.corrupt;
            record.detail = ended.detail;
            if matches!(
                ended.outcome,
                Outcome::ShortEof | Outcome::Reset | Outcome::Hung
            ) {
                record.lost_bytes = plan.request.size.saturating_sub(ended.received);
            }
        }
    }
    record.ms = started.elapsed().as_secs_f64() * 1e3;
    record
}

/// How the transfer ended: outcome, pattern bytes received, bad bytes.
struct Ended {
    outcome: Outcome,
    received: u64,
    corrupt: u64,
    detail: String,
}

impl Ended {
    fn error(e: &std::io::Error, what: &str, received: u64, corrupt: u64) -> Ended {
        let outcome = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Hung,
            _ => Outcome::Reset,
        };
        Ended {
            outcome,
            received,
            corrupt,
            detail: format!("{what}: {e}"),
        }
    }
}

/// The client's side of a download: the header, then the pattern.
fn download(stream: &TcpStream, plan: &Plan, limits: &Limits) -> Ended {
    if let Err(e) = start(stream, plan, limits) {
        return Ended::error(&e, "send header", 0, 0);
    }
    // All bytes in: half-close, so the server sees the end and closes.
    let done = |s: &TcpStream| {
        let _ = s.shutdown(Shutdown::Write);
    };
    receive(stream, plan, limits, done)
}

/// The client's side of an echo: a writer thread sends the pattern while
/// this thread reads it back.
fn echo(stream: &TcpStream, plan: &Plan, limits: &Limits) -> Ended {
    if let Err(e) = start(stream, plan, limits) {
        return Ended::error(&e, "send header", 0, 0);
    }
    let writer = match stream.try_clone() {
        Ok(mut w) => {
            let plan = *plan;
            thread::spawn(move || {
                // The reader's stall limit judges progress; a writer held
                // back by its own slow reader is not stalled.
                let _ = w.set_write_timeout(None);
                let sent = send_pattern(&mut w, &plan, &mut Sha256::new());
                sent.and_then(|_| w.shutdown(Shutdown::Write))
            })
        }
        Err(e) => return Ended::error(&e, "clone socket", 0, 0),
    };
    let mut ended = receive(stream, plan, limits, |_| {});
    if ended.outcome != Outcome::Intact && ended.outcome != Outcome::Corrupt {
        // Unblock a writer stuck on a connection that is over.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(ErrorKind::Other.into()));
    if let (Err(e), Outcome::ShortEof) = (&written, ended.outcome) {
        // The write side was told (a reset or broken pipe): not silent.
        ended.outcome = Outcome::Reset;
        ended.detail = format!("{}; write: {e}", ended.detail);
    }
    ended
}

/// The client's side of an upload: the pattern, a half-close, the reply.
fn upload(stream: &TcpStream, plan: &Plan, limits: &Limits) -> Ended {
    if let Err(e) = start(stream, plan, limits) {
        return Ended::error(&e, "send header", 0, 0);
    }
    let mut hash = Sha256::new();
    let mut w = stream;
    if let Err(e) = send_pattern(&mut w, plan, &mut hash) {
        return Ended::error(&e, "send", 0, 0);
    }
    if let Some(sent) = plan.abort_after {
        // Closing with a zero linger resets the connection.
        let reset = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        let detail = match reset {
            Ok(()) => format!("reset by the client after {sent} bytes"),
            Err(e) => format!("zero linger: {e}"),
        };
        return Ended {
            outcome: Outcome::Aborted,
            received: 0,
            corrupt: 0,
            detail,
        };
    }
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return Ended::error(&e, "half-close", 0, 0);
    }
    let mut reply = Vec::new();
    let mut r = stream;
    let mut buf = [0u8; 256];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Ended::error(&e, "read reply", 0, 0),
        }
    }
    let Some(head) = reply
        .get(..REPLY_LEN)
        .and_then(|h| <&[u8; REPLY_LEN]>::try_from(h).ok())
    else {
        return Ended {
            outcome: Outcome::ShortEof,
            received: 0,
            corrupt: 0,
            detail: format!("EOF after {} of the {REPLY_LEN}-byte reply", reply.len()),
        };
    };
    let (received, mismatched, sha) = crate::wire::decode_reply(head);
    let mine: [u8; 32] = hash.finalize().into();
    let size = plan.request.size;
    let mut corrupt = mismatched + size.abs_diff(received) + (reply.len() - REPLY_LEN) as u64;
    if sha != mine && corrupt == 0 {
        corrupt = 1;
    }
    let outcome = if corrupt == 0 {
        Outcome::Intact
    } else {
        Outcome::Corrupt
    };
    let detail = if corrupt == 0 {
        String::new()
    } else {
        format!(
            "server got {received} of {size} bytes, {mismatched} differed, sha equal: {}",
            sha == mine
        )
    };
    Ended {
        outcome,
        received: received.min(size),
        corrupt,
        detail,
    }
}

/// Sets the timeouts for the wait for the first byte and sends the header.
fn start(stream: &TcpStream, plan: &Plan, limits: &Limits) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(limits.first_byte))?;
    stream.set_write_timeout(Some(limits.first_byte))?;
    let mut w = stream;
    w.write_all(&plan.request.encode())
}

/// Reads the pattern until EOF at the plan's read rate, checking each byte;
/// `done` runs once the whole size has arrived.
fn receive(stream: &TcpStream, plan: &Plan, limits: &Limits, done: impl Fn(&TcpStream)) -> Ended {
    let size = plan.request.size;
    let mut checker = Checker::new(plan.request.seed);
    let mut extra = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let chunk = match plan.read_rate {
        0 => CHUNK,
        rate => (rate / 50).clamp(512, CHUNK as u64) as usize,
    };
    let paced = Instant::now();
    let mut first = true;
    let mut r = stream;
    loop {
        if plan.read_rate > 0 {
            let total = checker.offset + extra;
            pace(paced, total, plan.read_rate);
        }
        match r.read(&mut buf[..chunk]) {
            Ok(0) => break,
            Ok(n) => {
                if first {
                    first = false;
                    let _ = stream.set_read_timeout(Some(limits.stall));
                    let _ = stream.set_write_timeout(Some(limits.stall));
                }
                let fits = (size - checker.offset).min(n as u64) as usize;
                checker.update(&buf[..fits]);
                extra += (n - fits) as u64;
                if fits > 0 && checker.offset == size {
                    done(stream);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let (received, corrupt) = (checker.offset, checker.mismatched + extra);
                return Ended::error(&e, "read", received, corrupt);
            }
        }
    }
    let (received, mismatched) = (checker.offset, checker.mismatched);
    let corrupt = mismatched + extra;
    if received < size {
        let detail = format!("clean EOF after {received} of {size} bytes");
        return Ended {
            outcome: Outcome::ShortEof,
            received,
            corrupt,
            detail,
        };
    }
    let (_, sha_equal) = checker.finish();
    let corrupt = if !sha_equal && corrupt == 0 {
        1
    } else {
        corrupt
    };
    if corrupt == 0 {
        Ended {
            outcome: Outcome::Intact,
            received,
            corrupt,
            detail: String::new(),
        }
    } else {
        let detail = format!("{mismatched} bytes differed, {extra} extra, sha equal: {sha_equal}");
        Ended {
            outcome: Outcome::Corrupt,
            received,
            corrupt,
            detail,
        }
    }
}

/// Writes `size` bytes of the pattern (or `abort_after`) at the plan's
/// write rate into `hash`.
fn send_pattern(w: &mut impl Write, plan: &Plan, hash: &mut Sha256) -> std::io::Result<()> {
    let pattern = Pattern::new(plan.request.seed);
    let size = plan.abort_after.unwrap_or(plan.request.size);
    let chunk = match plan.write_rate {
        0 => CHUNK,
        rate => (rate / 50).clamp(512, CHUNK as u64) as usize,
    };
    let mut buf = vec![0u8; chunk];
    let paced = Instant::now();
    let mut offset = 0;
    while offset < size {
        if plan.write_rate > 0 {
            pace(paced, offset, plan.write_rate);
        }
        let n = (size - offset).min(chunk as u64) as usize;
        pattern.fill(offset, &mut buf[..n]);
        w.write_all(&buf[..n])?;
        hash.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(())
}

/// Sleeps until `done` bytes are due at `rate` bytes per second since `since`.
fn pace(since: Instant, done: u64, rate: u64) {
    let due = since + Duration::from_secs_f64(done as f64 / rate as f64);
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

/// Connects to `target` within `timeout`. A slow reader (`read_rate` > 0)
/// gets a receive buffer of about a tenth of a second at its rate, as a
/// slow link has: the rest of its bytes wait upstream of it, on the wire
/// and in the proxy, rather than all arriving at once in a big local
/// buffer that it then drains while the connection carries nothing.
fn connect(target: &SocketAddr, read_rate: u64, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*target),
        socket2::Type::STREAM,
        None,
    )?;
    if read_rate > 0 {
        socket.set_recv_buffer_size((read_rate / 10).max(4096) as usize)?;
    }
    socket.connect_timeout(&(*target).into(), timeout)?;
    Ok(socket.into())
}
