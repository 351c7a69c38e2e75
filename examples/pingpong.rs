//! Ping-pong latency tool used by the benchmark (`bench/run.sh`).
//!
//! Std only, blocking sockets with `TCP_NODELAY`:
//!
//! * `pingpong server ADDR [--lifetime SECS]` listens on `ADDR` and echoes
//!   every byte it receives back to the sender, one thread per connection.
//!   With `--lifetime` it exits by itself after `SECS` seconds (a safety net
//!   for scripts that may die before stopping it).
//! * `pingpong client ADDR [--count N] [--warmup W]` opens one connection and
//!   does `W` warm-up round trips, then `N` timed sequential round trips of a
//!   64-byte message (write it, read the 64-byte echo back), and prints the
//!   round-trip percentiles as `p50_us=.. p99_us=..` on stdout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Default number of timed round trips.
const DEFAULT_COUNT: u64 = 10_000;
/// Default number of untimed warm-up round trips (capped at `count`).
const DEFAULT_WARMUP: u64 = 1_000;

const USAGE: &str = "usage: pingpong server ADDR [--lifetime SECS]\n       \
                     pingpong client ADDR [--count N] [--warmup W]";

#[path = "support/cli.rs"]
mod cli;
use cli::{MSG_LEN, Result, ctx, fail, ping_message, ping_stream};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(fail(USAGE)),
    }
}

/// Command-line options shared by both modes: the address plus `--flag N` pairs.
struct Opts {
    addr: String,
    flags: Vec<(String, u64)>,
}

impl Opts {
    /// Parses `ADDR [--flag N]...`, accepting only the flags in `allowed`.
    fn parse(args: &[String], allowed: &[&str]) -> Result<Opts> {
        let addr = args
            .first()
            .ok_or_else(|| fail(format!("missing ADDR\n{USAGE}")))?
            .clone();
        let mut flags = Vec::new();
        let mut rest = args[1..].iter();
        while let Some(flag) = rest.next() {
            if !allowed.contains(&flag.as_str()) {
                return Err(fail(format!("unknown argument {flag:?}\n{USAGE}")));
            }
            let value = rest
                .next()
                .ok_or_else(|| fail(format!("{flag} needs a value")))?;
            let n = ctx(value.parse::<u64>(), &format!("bad value for {flag}"))?;
            flags.push((flag.clone(), n));
        }
        Ok(Opts { addr, flags })
    }

    /// The value of `--flag`, if given (the last one wins).
    fn get(&self, flag: &str) -> Option<u64> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| *v)
    }
}

/// Runs the echo server until killed (or until `--lifetime` expires).
fn server(args: &[String]) -> Result<()> {
    let opts = Opts::parse(args, &["--lifetime"])?;
    let listener = ctx(
        TcpListener::bind(&opts.addr),
        &format!("bind {}", opts.addr),
    )?;
    eprintln!("pingpong: echo server listening on {}", opts.addr);
    if let Some(secs) = opts.get("--lifetime") {
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(secs));
            eprintln!("pingpong: lifetime of {secs}s over, exiting");
            std::process::exit(0);
        });
    }
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = echo(stream) {
                        eprintln!("pingpong: connection error: {e}");
                    }
                });
            }
            Err(e) => eprintln!("pingpong: accept failed: {e}"),
        }
    }
    Ok(())
}

/// Echoes everything read from `stream` back to it until the peer closes.
fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Runs the timed round trips and prints the p50 and p99 in microseconds.
fn client(args: &[String]) -> Result<()> {
    let opts = Opts::parse(args, &["--count", "--warmup"])?;
    let count = opts.get("--count").unwrap_or(DEFAULT_COUNT);
    if count == 0 {
        return Err(fail("--count must be at least 1"));
    }
    let warmup = opts.get("--warmup").unwrap_or(DEFAULT_WARMUP.min(count));

    let mut stream = ping_stream(&opts.addr)?;
    let msg = ping_message();
    let mut reply = [0u8; MSG_LEN];
    let mut samples_us = Vec::with_capacity(usize::try_from(count).unwrap_or(0));

    for i in 0..warmup + count {
        let start = Instant::now();
        ctx(stream.write_all(&msg), &format!("send ping #{i}"))?;
        ctx(stream.read_exact(&mut reply), &format!("read echo #{i}"))?;
        let rtt = start.elapsed();
        if reply != msg {
            return Err(fail(format!("echo #{i} differs from the ping")));
        }
        if i >= warmup {
            samples_us.push(rtt.as_secs_f64() * 1e6);
        }
    }

    samples_us.sort_by(f64::total_cmp);
    println!(
        "p50_us={:.1} p99_us={:.1}",
        percentile(&samples_us, 0.50),
        percentile(&samples_us, 0.99)
    );
    Ok(())
}

/// Nearest-rank percentile `p` (0..=1) of an ascending, non-empty slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
