//! Load client and report of the chaos suite (`tests/chaos/run.sh`).
//!
//! * `chaos_load run --phase NAME --target ADDR --clients N --seconds S
//!   --out FILE [--modes download,upload,echo] [--size MIN-MAX]
//!   [--rate MIN-MAX] [--slow-seconds S] [--hold-ms MS] [--once]
//!   [--abort-share F] [--stall-ms MS] [--first-byte-ms MS]` runs `N`
//!   concurrent clients
//!   against the proxy at `ADDR` for `S` seconds: each client runs one
//!   transfer after another (just one with `--once`), of a mode drawn from
//!   `--modes` and a size drawn log-uniformly from `--size` (bytes, with
//!   suffixes `K` and `M`). With `--rate`, each transfer is a slow reader
//!   (download), slow writer (upload) or both (echo) at a steady rate drawn
//!   from the range (bytes per second), sized to last between half and all
//!   of `--slow-seconds`. `--hold-ms` makes the server wait before it
//!   answers. With `--abort-share`, that share of the transfers are uploads
//!   that the client resets after 10-90% of their bytes. A transfer is hung
//!   when nothing moves for `--stall-ms`
//!   (`--first-byte-ms` for the connect and the first byte). One JSON
//!   record per transfer is appended to `FILE` (see `chaos_transfer.rs`)
//!   and a one-line summary printed.
//! * `chaos_load report --results FILE --facts FILE --out FILE
//!   [--access-log FILE]... [--server-events FILE] [--samples FILE]` reads
//!   the records, the facts
//!   the script gathered (`key=value` lines) and the proxies' access logs,
//!   prints the report as Markdown, writes it to `--out` and exits 1 when a
//!   target is missed (see `chaos_report.rs`).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/chaos_report.rs"]
mod report;
#[path = "support/chaos_transfer.rs"]
mod transfer;
#[path = "support/chaos_wire.rs"]
mod wire;
use transfer::{Limits, Outcome, Plan, Record};
use wire::{Mode, Request};

/// Errors are plain messages, printed by `main`.
type Result<T> = std::result::Result<T, String>;

/// Puts `what` in front of an error.
fn ctx<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => load(&args[1..]).map(|()| true),
        Some("report") => report::main(&args[1..]),
        _ => {
            Err("usage: chaos_load run ... | chaos_load report ... (see the source's docs)".into())
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos_load: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `run` was asked for.
struct LoadOptions {
    phase: String,
    target: SocketAddr,
    clients: usize,
    seconds: f64,
    out: PathBuf,
    modes: Vec<Mode>,
    size: (u64, u64),
    rate: Option<(u64, u64)>,
    slow_seconds: f64,
    hold_ms: u32,
    once: bool,
    abort_share: f64,
    limits: Limits,
}

fn load(args: &[String]) -> Result<()> {
    let opts = parse_load(args)?;
    let out = OpenOptions::new().create(true).append(true).open(&opts.out);
    let mut out = ctx(out, &format!("open {}", opts.out.display()))?;
    let stop = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let (tx, rx) = mpsc::channel::<Record>();
    let opts = std::sync::Arc::new(opts);
    let mut clients = Vec::new();
    for _ in 0..opts.clients {
        let (tx, opts) = (tx.clone(), opts.clone());
        let client = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                loop {
                    let plan = draw(&opts);
                    let record = transfer::run(&opts.phase, opts.target, &plan, &opts.limits);
                    if tx.send(record).is_err() || opts.once || Instant::now() >= stop {
                        break;
                    }
                }
            });
        clients.push(ctx(client, "spawn a client thread")?);
    }
    drop(tx);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bytes = 0u64;
    for record in rx {
        *counts.entry(record.outcome.name()).or_default() += 1;
        bytes += record.received;
        let line = ctx(serde_json::to_string(&record), "encode a record")?;
        ctx(writeln!(out, "{line}"), "write a record")?;
    }
    for client in clients {
        let _ = client.join();
    }
    let summary: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|o| counts.get(o.name()).map(|n| format!("{}={n}", o.name())))
        .collect();
    println!(
        "phase {}: {} transfers, {:.1} MB checked: {}",
        opts.phase,
        counts.values().sum::<u64>(),
        bytes as f64 / 1e6,
        summary.join(" ")
    );
    Ok(())
}

/// One transfer drawn from the options.
fn draw(opts: &LoadOptions) -> Plan {
    let abort = fastrand::f64() < opts.abort_share;
    let mode = if abort {
        Mode::Upload
    } else {
        opts.modes[fastrand::usize(..opts.modes.len())]
    };
    let (mut read_rate, mut write_rate) = (0, 0);
    let size = match opts.rate {
        None => log_uniform(opts.size),
        Some(range) => {
            let rate = fastrand::u64(range.0..=range.1);
            match mode {
                Mode::Download => read_rate = rate,
                Mode::Upload => write_rate = rate,
                Mode::Echo => (read_rate, write_rate) = (rate, rate),
            }
            let secs = opts.slow_seconds * (0.5 + 0.5 * fastrand::f64());
            (rate as f64 * secs) as u64
        }
    };
    let request = Request {
        mode,
        size,
        seed: fastrand::u64(..),
        hold_ms: opts.hold_ms,
    };
    let abort_after = abort.then(|| (size as f64 * (0.1 + 0.8 * fastrand::f64())) as u64);
    Plan {
        request,
        read_rate,
        write_rate,
        abort_after,
    }
}

fn log_uniform((lo, hi): (u64, u64)) -> u64 {
    let (lo, hi) = ((lo.max(1)) as f64, (hi.max(lo.max(1))) as f64);
    (lo * (hi / lo).powf(fastrand::f64())) as u64
}

fn parse_load(args: &[String]) -> Result<LoadOptions> {
    let mut opts = LoadOptions {
        phase: String::new(),
        target: ctx("127.0.0.1:1".parse(), "default target")?,
        clients: 64,
        seconds: 10.0,
        out: PathBuf::new(),
        modes: vec![Mode::Download, Mode::Upload, Mode::Echo],
        size: (1024, 8 << 20),
        rate: None,
        slow_seconds: 8.0,
        hold_ms: 0,
        once: false,
        abort_share: 0.0,
        limits: Limits {
            stall: Duration::from_secs(7),
            first_byte: Duration::from_secs(7),
        },
    };
    let (mut target, mut out) = (false, false);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--once" {
            opts.once = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let what = format!("{flag} {v}");
        let ms = |v: &str| ctx(v.parse::<u64>(), &what).map(Duration::from_millis);
        match flag.as_str() {
            "--phase" => opts.phase = v.clone(),
            "--target" => (opts.target, target) = (ctx(v.parse(), &what)?, true),
            "--clients" => opts.clients = ctx(v.parse(), &what)?,
            "--seconds" => opts.seconds = ctx(v.parse(), &what)?,
            "--out" => (opts.out, out) = (PathBuf::from(v), true),
            "--modes" => {
                let modes: Option<Vec<Mode>> = v.split(',').map(Mode::parse).collect();
                opts.modes = modes
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| what.clone())?;
            }
            "--size" => opts.size = range(v).ok_or_else(|| what.clone())?,
            "--rate" => opts.rate = Some(range(v).ok_or_else(|| what.clone())?),
            "--slow-seconds" => opts.slow_seconds = ctx(v.parse(), &what)?,
            "--hold-ms" => opts.hold_ms = ctx(v.parse(), &what)?,
            "--abort-share" => opts.abort_share = ctx(v.parse(), &what)?,
            "--stall-ms" => opts.limits.stall = ms(v)?,
            "--first-byte-ms" => opts.limits.first_byte = ms(v)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !target || !out || opts.phase.is_empty() || opts.clients == 0 {
        return Err("run needs --phase, --target, --out and at least one client".into());
    }
    if !(opts.seconds.is_finite() && opts.seconds >= 0.0 && opts.slow_seconds > 0.0) {
        return Err("--seconds and --slow-seconds must be positive".into());
    }
    Ok(opts)
}

/// `MIN-MAX` in bytes, each with an optional `K` or `M` suffix.
fn range(v: &str) -> Option<(u64, u64)> {
    let (lo, hi) = v.split_once('-')?;
    let (lo, hi) = (bytes(lo)?, bytes(hi)?);
    (lo <= hi && hi > 0).then_some((lo, hi))
}

fn bytes(v: &str) -> Option<u64> {
    let (num, unit) = match v.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1024),
        None => v.strip_suffix(['M', 'm']).map_or((v, 1), |n| (n, 1 << 20)),
    };
    num.parse::<u64>().ok()?.checked_mul(unit)
}
