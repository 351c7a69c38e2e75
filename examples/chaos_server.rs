//! Upstream server of the chaos suite (`tests/chaos/run.sh`).
//!
//! `chaos_server ADDR [--lifetime SECS]` listens on `ADDR` and serves each
//! connection on its own thread, by the request header of
//! `support/chaos_wire.rs`: a download sends `size` bytes of the seed's
//! pattern, an upload reads `size` bytes, checks them against the pattern
//! and replies with the count, the bytes that differed and their SHA-256,
//! and an echo sends back every byte until the client's EOF. A connection
//! that starts with `PING` (a health probe) gets `PONG\n`.
//!
//! How a connection ends tells the truth, so the load client can judge the
//! proxy by what it sees: every socket has a zero linger while it is being
//! served, so if the process dies (SIGKILL) or gives up on an error the
//! kernel resets the connection; only a transfer that finished (the server
//! has read the client's EOF) drops the zero linger and closes with a FIN.
//! A clean EOF that reaches a client early therefore never comes from here.
//!
//! With `--events FILE`, each upload that ended before its size arrived
//! appends a JSON line to `FILE`: its seed (which names the transfer in the
//! load client's records), the bytes that came, and how it ended, `eof`
//! or the error (a reset). A client that aborts with a reset must reach the
//! server as a reset, not as an EOF that reads like a finished upload.
//!
//! With `--lifetime` it exits by itself after `SECS` seconds, a safety net
//! for a script that dies before stopping it.

use socket2::{Domain, SockRef, Socket, Type};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[path = "support/chaos_wire.rs"]
mod wire;
use wire::{Checker, HEADER_LEN, Mode, PING, PONG, Pattern, Request};

const USAGE: &str = "usage: chaos_server ADDR [--events FILE] [--lifetime SECS]";

/// Errors are plain messages, printed by `main`.
type Result<T> = std::result::Result<T, String>;

/// Puts `what` in front of an error.
fn ctx<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Longest a served connection may wait for its peer before it is reset,
/// so that connections the proxy forgot (a blackholed link) end.
const STALL: Duration = Duration::from_secs(60);

/// Bytes per read and write.
const CHUNK: usize = 64 * 1024;

fn main() -> std::process::ExitCode {
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut addr, mut lifetime, mut events) = (None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--lifetime" => {
                let secs = it.next().ok_or(USAGE)?;
                lifetime = Some(ctx(secs.parse::<u64>(), "--lifetime")?);
            }
            "--events" => {
                let path = it.next().ok_or(USAGE)?;
                let file = OpenOptions::new().create(true).append(true).open(path);
                events = Some(ctx(file, &format!("open {path}"))?);
            }
            _ if addr.is_none() => addr = Some(ctx(arg.parse::<SocketAddr>(), "ADDR")?),
            _ => return Err(USAGE.to_string()),
        }
    }
    let addr = addr.ok_or(USAGE)?;
    let events = Arc::new(Mutex::new(events));
    if let Some(secs) = lifetime {
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(secs));
            std::process::exit(0);
        });
    }
    let socket = ctx(
        Socket::new(Domain::for_address(addr), Type::STREAM, None),
        "socket",
    )?;
    ctx(socket.set_reuse_address(true), "SO_REUSEADDR")?;
    ctx(socket.bind(&addr.into()), &format!("bind {addr}"))?;
    ctx(socket.listen(4096), "listen")?;
    let listener: std::net::TcpListener = socket.into();
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let events = events.clone();
                thread::spawn(move || serve(stream, &events));
            }
            // Out of descriptors or threads: let the backlog wait.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    Ok(())
}

/// Serves one connection; on any error the zero linger resets it.
fn serve(mut stream: TcpStream, events: &Events) {
    if SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .is_err()
        || stream.set_nodelay(true).is_err()
        || stream.set_read_timeout(Some(STALL)).is_err()
        || stream.set_write_timeout(Some(STALL)).is_err()
    {
        return;
    }
    let mut header = [0u8; HEADER_LEN];
    if stream.read_exact(&mut header[..PING.len()]).is_err() {
        return;
    }
    if &header[..PING.len()] == PING {
        let _ = stream.write_all(PONG);
        let _ = SockRef::from(&stream).set_linger(None);
        return;
    }
    if stream.read_exact(&mut header[PING.len()..]).is_err() {
        return;
    }
    let Some(request) = Request::decode(&header) else {
        return;
    };
    thread::sleep(Duration::from_millis(request.hold_ms.into()));
    let served = match request.mode {
        Mode::Download => download(&mut stream, &request),
        Mode::Upload => upload(&mut stream, &request, events),
        Mode::Echo => echo(&mut stream),
    };
    // Finished: the client's EOF is read, so close with a FIN.
    if served.is_ok() && read_to_eof(&mut stream).is_ok() {
        let _ = SockRef::from(&stream).set_linger(None);
    }
}

fn download(stream: &mut TcpStream, request: &Request) -> std::io::Result<()> {
    let pattern = Pattern::new(request.seed);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < request.size {
        let n = (request.size - offset).min(CHUNK as u64) as usize;
        pattern.fill(offset, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

fn upload(stream: &mut TcpStream, request: &Request, events: &Events) -> std::io::Result<()> {
    let mut checker = Checker::new(request.seed);
    let mut buf = vec![0u8; CHUNK];
    while checker.offset < request.size {
        let want = (request.size - checker.offset).min(CHUNK as u64) as usize;
        match stream.read(&mut buf[..want]) {
            Ok(0) => {
                // The client's EOF came early: note it, answer with what came.
                early_end(events, request, checker.offset, "eof");
                break;
            }
            Ok(n) => checker.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                early_end(events, request, checker.offset, &e.to_string());
                return Err(e);
            }
        }
    }
    let (received, mismatched) = (checker.offset, checker.mismatched);
    let (sha, _) = checker.finish();
    stream.write_all(&wire::encode_reply(received, mismatched, &sha))
}

/// Where uploads that ended early are noted (`--events`), if anywhere.
type Events = Arc<Mutex<Option<File>>>;

/// Appends one line about an upload that ended after `got` of its bytes.
fn early_end(events: &Events, request: &Request, got: u64, end: &str) {
    let Ok(mut file) = events.lock() else { return };
    if let Some(file) = file.as_mut() {
        let line = serde_json::json!({
            "seed": request.seed, "size": request.size, "got": got, "end": end,
        });
        // One write(2) with O_APPEND, so lines of the servers sharing the
        // file never interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return stream.shutdown(std::net::Shutdown::Write),
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads (and discards) until the client's EOF.
fn read_to_eof(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while stream.read(&mut buf)? > 0 {}
    Ok(())
}
