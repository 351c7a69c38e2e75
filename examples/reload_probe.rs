//! Measurement tool for the config-reload benchmark (`bench/reload.sh`).
//!
//! Std plus the crate's own dependencies, blocking sockets:
//!
//! * `reload_probe tag ADDR LETTER [--lifetime SECS]` is a tagged backend:
//!   it accepts on `ADDR`, writes the one byte `LETTER` to every connection
//!   and closes it, straight from the accept loop (no thread per connection,
//!   so a probe costs the backend as little as possible).
//! * `reload_probe switch ADDR CONFIG FILE_A FILE_B [--repeats N] [--log LOG]
//!   [--settle-ms MS] [--timeout-ms MS] [--gap-us US]` measures how long a config change
//!   takes to reach new connections. `FILE_A` routes the listener at `ADDR`
//!   to the backend tagged `A`, `FILE_B` to the one tagged `B`. Each switch
//!   puts the other file's content into `CONFIG`, either as an editor does
//!   (`rename`: the content is written to a temp file in the same directory,
//!   the clock starts, the temp file is renamed over `CONFIG`) or in place
//!   (`inplace`: the clock starts, `CONFIG` is opened with truncation,
//!   written and closed), then opens new connections to `ADDR` in a tight
//!   loop (connect, read one byte, close with a reset) until one reads the
//!   new letter. With `--log`, the l4mesh log file is polled in the same
//!   loop for its `configuration reloaded` line, which splits the time into
//!   "until the reload was logged" and "until a connection saw it". Rounds
//!   alternate the order of the two modes, so both modes switch to both
//!   letters. One JSON object per switch is printed on stdout. `--gap-us`
//!   pauses between probes (to see how much the tight loop itself, busy on
//!   a core, slows the reload down).
//! * `reload_probe jitter ADDR --seconds S [--warmup N] [--churn CONFIG
//!   FILE_1 FILE_2 --interval-ms MS [--hup PID]]` does 64-byte ping-pongs (as
//!   `pingpong client`) against the echo server behind `ADDR` for `S`
//!   seconds and prints the round-trip percentiles as JSON (with its own
//!   CPU time in clock ticks, `cpu_ticks`). With `--churn`, a
//!   second thread meanwhile replaces `CONFIG` (temp file + rename) every
//!   `MS` milliseconds, alternating the contents of `FILE_1` and `FILE_2`,
//!   and with `--hup PID` sends `PID` a SIGHUP after each write (so that
//!   every write is reloaded, whatever the file watch's debounce does).
//! * `reload_probe cost FILE_A FILE_B [--runs N]` times, in this process and
//!   without a proxy, what a reload does with a file: the TOML parse alone,
//!   the whole parse and validation (`Config::parse`), a snapshot built from
//!   scratch, a snapshot built from the previous one (what a reload does),
//!   and dropping a config. Medians in ms, as JSON.

use l4mesh::Config;
use l4mesh::config::file::FileConfig;
use l4mesh::routing::{ConfigOnly, Snapshot};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: reload_probe tag ADDR LETTER [--lifetime SECS]\n       \
     reload_probe switch ADDR CONFIG FILE_A FILE_B [--repeats N] [--log LOG] [--settle-ms MS] [--timeout-ms MS] [--gap-us US]\n       \
     reload_probe jitter ADDR --seconds S [--warmup N] [--churn CONFIG FILE_1 FILE_2 --interval-ms MS [--hup PID]]\n       \
     reload_probe cost FILE_A FILE_B [--runs N]";

/// Probes that must all read the new letter after a switch is seen.
const CONFIRM_PROBES: u32 = 20;
/// The log line l4mesh writes for an applied reload.
const RELOADED: &str = "configuration reloaded";
/// The log line l4mesh writes for a rejected reload.
const REJECTED: &str = "reload rejected";

#[path = "support/cli.rs"]
mod cli;
use cli::{IO_TIMEOUT, MSG_LEN, Result, ctx, fail, ping_message, ping_stream};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("tag") => tag(rest),
        Some("switch") => switch(rest),
        Some("jitter") => jitter(rest),
        Some("cost") => cost(rest),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(fail(USAGE)),
    }
}

/// Positional arguments plus `--flag VALUE...` groups.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Vec<String>)>,
}

impl Args {
    /// Parses `args`; `allowed` lists each flag with how many values it takes.
    fn parse(args: &[String], positional: usize, allowed: &[(&str, usize)]) -> Result<Args> {
        let mut out = Args {
            positional: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg.starts_with("--") {
                let Some(&(_, n)) = allowed.iter().find(|(f, _)| f == arg) else {
                    return Err(fail(format!("unknown argument {arg:?}\n{USAGE}")));
                };
                let values: Vec<String> = it.by_ref().take(n).cloned().collect();
                if values.len() != n {
                    return Err(fail(format!("{arg} needs {n} value(s)")));
                }
                out.flags.push((arg.clone(), values));
            } else {
                out.positional.push(arg.clone());
            }
        }
        if out.positional.len() != positional {
            return Err(fail(format!(
                "expected {positional} positional argument(s), got {}\n{USAGE}",
                out.positional.len()
            )));
        }
        Ok(out)
    }

    /// The values of `--flag`, if given (the last one wins).
    fn values(&self, flag: &str) -> Option<&[String]> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_slice())
    }

    /// The number after `--flag`, or `default`.
    fn number(&self, flag: &str, default: u64) -> Result<u64> {
        match self.values(flag).and_then(|v| v.first()) {
            Some(text) => ctx(text.parse::<u64>(), &format!("bad value for {flag}")),
            None => Ok(default),
        }
    }

    /// Positional argument `i` (checked present by `parse`).
    fn at(&self, i: usize) -> &str {
        self.positional.get(i).map_or("", String::as_str)
    }

    /// Positional argument `i` as a socket address.
    fn addr(&self, i: usize) -> Result<SocketAddr> {
        ctx(self.at(i).parse::<SocketAddr>(), "bad ADDR")
    }
}

/// Exits the process after `secs` seconds, if given (a safety net for
/// scripts that may die before stopping their servers).
fn exit_after(secs: Option<u64>) {
    if let Some(secs) = secs {
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(secs));
            eprintln!("reload_probe: lifetime of {secs}s over, exiting");
            std::process::exit(0);
        });
    }
}

// ------------------------------------------------------------------ tag

/// The tagged backend: one byte, then close, for every connection.
fn tag(args: &[String]) -> Result<()> {
    let a = Args::parse(args, 2, &[("--lifetime", 1)])?;
    let addr = a.addr(0)?;
    let letter = match a.at(1).as_bytes() {
        [b] if b.is_ascii_alphanumeric() => *b,
        _ => return Err(fail("LETTER must be one ASCII letter or digit")),
    };
    let listener = ctx(TcpListener::bind(addr), &format!("bind {addr}"))?;
    let lifetime = a.values("--lifetime").map(|_| a.number("--lifetime", 0));
    exit_after(lifetime.transpose()?);
    eprintln!(
        "reload_probe: backend {} listening on {addr}",
        letter as char
    );
    for conn in listener.incoming() {
        match conn {
            // A client that already left is not our problem.
            Ok(mut stream) => drop(stream.write_all(&[letter])),
            Err(e) => {
                eprintln!("reload_probe: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

// --------------------------------------------------------------- switch

/// One connection through the proxy: the letter of the backend it reached.
fn probe(addr: SocketAddr) -> Result<u8> {
    let mut stream = TcpStream::connect(addr)?;
    // Close with a reset, so that thousands of probes leave no TIME_WAIT
    // sockets on the client side.
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte)? {
        1 => Ok(byte[0]),
        _ => Err(fail("closed without a byte")),
    }
}

/// New lines of the l4mesh log since the last look.
struct LogTail {
    file: File,
    pending: String,
}

impl LogTail {
    /// Follows `path` from its current end.
    fn open(path: &Path) -> Result<LogTail> {
        let mut file = ctx(File::open(path), &format!("open {}", path.display()))?;
        ctx(file.seek(SeekFrom::End(0)), "seek the log")?;
        Ok(LogTail {
            file,
            pending: String::new(),
        })
    }

    /// Skips whatever was written so far.
    fn skip(&mut self) -> Result<()> {
        ctx(self.file.seek(SeekFrom::End(0)), "seek the log")?;
        self.pending.clear();
        Ok(())
    }

    /// Reads what was appended; returns the complete new lines that contain
    /// `RELOADED` or `REJECTED` (none if nothing new).
    fn poll(&mut self) -> Result<Vec<String>> {
        let mut chunk = String::new();
        ctx(self.file.read_to_string(&mut chunk), "read the log")?;
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        self.pending.push_str(&chunk);
        let Some(end) = self.pending.rfind('\n') else {
            return Ok(Vec::new());
        };
        let complete: String = self.pending.drain(..=end).collect();
        Ok(complete
            .lines()
            .filter(|l| l.contains(RELOADED) || l.contains(REJECTED))
            .map(str::to_string)
            .collect())
    }
}

/// How a switch writes the config file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rename,
    InPlace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Rename => "rename",
            Mode::InPlace => "inplace",
        }
    }
}

/// The temp file an editor-like write goes through: `.NAME.tmp` next to `config`.
fn temp_path(config: &Path) -> PathBuf {
    let name = config
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    config.with_file_name(format!(".{name}.tmp"))
}

/// Puts `text` into `config`; returns when the clock started (just before
/// the rename, or just before the truncating open).
fn write_config(config: &Path, text: &str, mode: Mode) -> Result<Instant> {
    match mode {
        Mode::Rename => {
            let temp = temp_path(config);
            ctx(
                std::fs::write(&temp, text),
                &format!("write {}", temp.display()),
            )?;
            let start = Instant::now();
            ctx(
                std::fs::rename(&temp, config),
                &format!("rename {} over {}", temp.display(), config.display()),
            )?;
            Ok(start)
        }
        Mode::InPlace => {
            let start = Instant::now();
            let mut file = ctx(
                OpenOptions::new().write(true).truncate(true).open(config),
                &format!("open {}", config.display()),
            )?;
            ctx(file.write_all(text.as_bytes()), "write the config")?;
            drop(file);
            Ok(start)
        }
    }
}

/// What one switch measured.
struct Switch {
    mode: Mode,
    target: u8,
    write_ms: f64,
    /// From the start of the write to the first connection on the new backend.
    switch_ms: Option<f64>,
    /// From the start of the write to the log line being seen.
    logged_ms: Option<f64>,
    probes: u64,
    errors: u64,
    /// Connections that reached the old backend after one reached the new.
    flaps: u32,
    rejected: bool,
}

impl Switch {
    fn json(&self, round: u64) -> String {
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            "{{\"round\": {round}, \"mode\": \"{}\", \"target\": \"{}\", \"write_ms\": {:.3}, \
             \"switch_ms\": {}, \"logged_ms\": {}, \"probes\": {}, \"errors\": {}, \
             \"flaps\": {}, \"rejected\": {}}}",
            self.mode.name(),
            self.target as char,
            self.write_ms,
            num(self.switch_ms),
            num(self.logged_ms),
            self.probes,
            self.errors,
            self.flaps,
            self.rejected
        )
    }
}

/// Notes in `s` a reload line that appeared in `log` since the last look.
fn watch_log(log: &mut Option<LogTail>, s: &mut Switch, start: Instant) -> Result<()> {
    let Some(log) = log.as_mut() else {
        return Ok(());
    };
    if s.logged_ms.is_some() {
        return Ok(());
    }
    for line in log.poll()? {
        if line.contains(REJECTED) {
            s.rejected = true;
            eprintln!("reload_probe: {line}");
        } else if s.logged_ms.is_none() {
            s.logged_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}

/// What the switches share: where to probe, the file, the log, the limits.
struct Prober {
    addr: SocketAddr,
    config: PathBuf,
    log: Option<LogTail>,
    /// Give up on a switch after this long.
    timeout: Duration,
    /// Pause between two probes (zero: a tight loop).
    gap: Duration,
}

/// Writes `text` with `mode` and probes until connections reach `target`.
fn one_switch(p: &mut Prober, text: &str, target: u8, mode: Mode) -> Result<Switch> {
    let (addr, config, log, timeout, gap) = (p.addr, &p.config, &mut p.log, p.timeout, p.gap);
    if let Some(log) = log.as_mut() {
        log.skip()?;
    }
    let start = write_config(config, text, mode)?;
    let mut s = Switch {
        mode,
        target,
        write_ms: start.elapsed().as_secs_f64() * 1e3,
        switch_ms: None,
        logged_ms: None,
        probes: 0,
        errors: 0,
        flaps: 0,
        rejected: false,
    };
    let deadline = start + timeout;
    while s.switch_ms.is_none() && Instant::now() < deadline && !s.rejected {
        let reached = probe(addr);
        let now = start.elapsed();
        s.probes += 1;
        match reached {
            Ok(letter) if letter == target => s.switch_ms = Some(now.as_secs_f64() * 1e3),
            Ok(_) => {}
            Err(_) => s.errors += 1,
        }
        watch_log(log, &mut s, start)?;
        if !gap.is_zero() && s.switch_ms.is_none() {
            thread::sleep(gap);
        }
    }
    // The log line may come after the first connection saw the change: it
    // is written after the snapshot is published.
    while s.switch_ms.is_some() && s.logged_ms.is_none() && log.is_some() {
        if Instant::now() >= deadline || s.rejected {
            break;
        }
        thread::sleep(Duration::from_micros(200));
        watch_log(log, &mut s, start)?;
    }
    if s.switch_ms.is_some() {
        for _ in 0..CONFIRM_PROBES {
            match probe(addr) {
                Ok(letter) if letter != target => s.flaps += 1,
                Ok(_) => {}
                Err(_) => s.errors += 1,
            }
        }
    }
    Ok(s)
}

/// The `switch` subcommand.
fn switch(args: &[String]) -> Result<()> {
    let a = Args::parse(
        args,
        4,
        &[
            ("--repeats", 1),
            ("--log", 1),
            ("--settle-ms", 1),
            ("--timeout-ms", 1),
            ("--gap-us", 1),
        ],
    )?;
    let addr = a.addr(0)?;
    let config = PathBuf::from(a.at(1));
    let gap = Duration::from_micros(a.number("--gap-us", 0)?);
    let read = |p: &str| ctx(std::fs::read_to_string(p), &format!("read {p}"));
    let texts = [(b'A', read(a.at(2))?), (b'B', read(a.at(3))?)];
    let repeats = a.number("--repeats", 10)?;
    let settle = Duration::from_millis(a.number("--settle-ms", 300)?);
    let timeout = Duration::from_millis(a.number("--timeout-ms", 10_000)?);
    let log = match a.values("--log").and_then(|v| v.first()) {
        Some(path) => Some(LogTail::open(Path::new(path))?),
        None => None,
    };
    let mut prober = Prober {
        addr,
        config,
        log,
        timeout,
        gap,
    };

    let mut current = ctx(probe(addr), "first probe through the proxy")?;
    if current != b'A' && current != b'B' {
        return Err(fail(format!(
            "the proxy reaches backend {current:?}, not A or B"
        )));
    }
    let mut failures = 0;
    for round in 0..repeats {
        let modes = if round % 2 == 0 {
            [Mode::Rename, Mode::InPlace]
        } else {
            [Mode::InPlace, Mode::Rename]
        };
        for mode in modes {
            let (target, text) = texts
                .iter()
                .find(|(t, _)| *t != current)
                .ok_or_else(|| fail("no other backend"))?;
            let s = one_switch(&mut prober, text, *target, mode)?;
            println!("{}", s.json(round));
            if s.switch_ms.is_some() {
                current = *target;
            } else {
                failures += 1;
                eprintln!(
                    "reload_probe: round {round} {}: no connection reached {} within {timeout:?}",
                    mode.name(),
                    *target as char
                );
                // Find out where connections go now before the next switch.
                current = probe(addr).unwrap_or(current);
            }
            // Let the watcher's debounce and the controller go idle.
            thread::sleep(settle);
        }
    }
    if failures > 0 {
        return Err(fail(format!(
            "{failures} switch(es) never reached the new backend"
        )));
    }
    Ok(())
}

// --------------------------------------------------------------- jitter

/// Nearest-rank percentile `p` (0..=1) of an ascending, non-empty slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Sends SIGHUP to `pid`.
fn hangup(pid: i32) -> Result<()> {
    // SAFETY: kill(2) takes no pointers; a bad PID is an error return.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc == 0 {
        Ok(())
    } else {
        Err(fail(format!(
            "SIGHUP to {pid}: {}",
            std::io::Error::last_os_error()
        )))
    }
}

/// Rewrites `config` every `interval` until `stop`, alternating `texts`;
/// with `hup`, sends SIGHUP to that PID after each write.
fn churn(
    config: &Path,
    texts: &[String; 2],
    interval: Duration,
    hup: Option<i32>,
    stop: &AtomicBool,
    writes: &AtomicU64,
) -> Result<()> {
    let begin = Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let next = begin + interval * n;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = &texts[((n - 1) % 2) as usize];
        write_config(config, text, Mode::Rename)?;
        if let Some(pid) = hup {
            hangup(pid)?;
        }
        writes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The `jitter` subcommand.
fn jitter(args: &[String]) -> Result<()> {
    let a = Args::parse(
        args,
        1,
        &[
            ("--seconds", 1),
            ("--warmup", 1),
            ("--churn", 3),
            ("--interval-ms", 1),
            ("--hup", 1),
        ],
    )?;
    let addr = a.addr(0)?;
    let seconds = a.number("--seconds", 5)?;
    if seconds == 0 {
        return Err(fail("--seconds must be at least 1"));
    }
    let warmup = a.number("--warmup", 1000)?;
    let interval = Duration::from_millis(a.number("--interval-ms", 100)?.max(1));
    let hup = match a.values("--hup") {
        Some(_) => Some(ctx(
            i32::try_from(a.number("--hup", 0)?),
            "bad value for --hup",
        )?),
        None => None,
    };

    let mut stream = ping_stream(addr)?;
    let msg = ping_message();
    let mut reply = [0u8; MSG_LEN];
    let mut round_trip = |i: u64| -> Result<f64> {
        let start = Instant::now();
        ctx(stream.write_all(&msg), &format!("send ping #{i}"))?;
        ctx(stream.read_exact(&mut reply), &format!("read echo #{i}"))?;
        let rtt = start.elapsed();
        if reply != msg {
            return Err(fail(format!("echo #{i} differs from the ping")));
        }
        Ok(rtt.as_secs_f64() * 1e6)
    };
    for i in 0..warmup {
        round_trip(i)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let churner = match a.values("--churn") {
        Some([config, f1, f2]) => {
            let read = |p: &str| ctx(std::fs::read_to_string(p), &format!("read {p}"));
            let texts = [read(f1)?, read(f2)?];
            let config = PathBuf::from(config);
            let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
            Some(ctx(
                thread::Builder::new().name("churn".into()).spawn(move || {
                    churn(&config, &texts, interval, hup, &stop, &writes).map_err(|e| e.to_string())
                }),
                "start the churn thread",
            )?)
        }
        _ => None,
    };

    let run = Duration::from_secs(seconds);
    let begin = Instant::now();
    let mut samples: Vec<f64> = Vec::with_capacity(200_000);
    let mut outcome = Ok(());
    let mut i = warmup;
    while begin.elapsed() < run {
        match round_trip(i) {
            Ok(us) => samples.push(us),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        i += 1;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(churner) = churner {
        match churner.join() {
            Ok(r) => r.map_err(fail)?,
            Err(_) => return Err(fail("the churn thread panicked")),
        }
    }
    outcome?;
    if samples.is_empty() {
        return Err(fail("no round trip completed"));
    }
    samples.sort_by(f64::total_cmp);
    let over_1ms = samples.iter().filter(|&&us| us > 1000.0).count();
    println!(
        "{{\"count\": {}, \"seconds\": {elapsed:.3}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \
         \"p999_us\": {:.1}, \"max_us\": {:.1}, \"over_1ms\": {over_1ms}, \"writes\": {}, \
         \"cpu_ticks\": {}}}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples.last().copied().unwrap_or(f64::NAN),
        writes.load(Ordering::Relaxed),
        own_cpu_ticks().map_or("null".to_string(), |t| t.to_string())
    );
    Ok(())
}

/// CPU time (user + system, all threads) of this process so far, in clock
/// ticks, from `/proc/self/stat`; so the caller can tell its own CPU from
/// other load on the machine.
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

// ----------------------------------------------------------------- cost

/// Milliseconds `f` takes, and its result.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed().as_secs_f64() * 1e3, out)
}

/// The `cost` subcommand.
fn cost(args: &[String]) -> Result<()> {
    let a = Args::parse(args, 2, &[("--runs", 1)])?;
    let runs = a.number("--runs", 10)?.max(1);
    let (path_a, path_b) = (Path::new(a.at(0)), Path::new(a.at(1)));
    let names = [
        "read_ms",
        "toml_ms",
        "parse_validate_ms",
        "build_fresh_ms",
        "build_from_previous_ms",
        "drop_config_ms",
        "drop_snapshot_ms",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let registrations = ConfigOnly;
    let mut endpoints = 0;
    let mut bytes = 0;
    for _ in 0..runs {
        let (read_ms, text_a) = timed(|| std::fs::read_to_string(path_a));
        let text_a = ctx(text_a, &format!("read {}", path_a.display()))?;
        let text_b = ctx(
            std::fs::read_to_string(path_b),
            &format!("read {}", path_b.display()),
        )?;
        bytes = text_a.len();
        let (toml_ms, file) = timed(|| toml::from_str::<FileConfig>(&text_a));
        let file = ctx(file, "TOML")?;
        endpoints = file.services.values().map(|s| s.endpoints.len()).sum();
        drop(file);
        let (parse_ms, config_a) = timed(|| Config::parse(&text_a, path_a));
        let config_a = ctx(config_a, "config A")?;
        let config_b = ctx(Config::parse(&text_b, path_b), "config B")?;
        let (fresh_ms, snap_a) = timed(|| Snapshot::build(&config_a, &registrations, None));
        let (next_ms, snap_b) = timed(|| Snapshot::build(&config_b, &registrations, Some(&snap_a)));
        let (drop_config_ms, ()) = timed(|| drop(config_a));
        let (drop_snapshot_ms, ()) = timed(|| drop(snap_a));
        drop(snap_b);
        let run = [
            read_ms,
            toml_ms,
            parse_ms,
            fresh_ms,
            next_ms,
            drop_config_ms,
            drop_snapshot_ms,
        ];
        for (list, t) in times.iter_mut().zip(run) {
            list.push(t);
        }
    }
    let mut fields = vec![
        format!("\"runs\": {runs}"),
        format!("\"bytes\": {bytes}"),
        format!("\"endpoints\": {endpoints}"),
    ];
    for (name, mut list) in names.iter().zip(times) {
        list.sort_by(f64::total_cmp);
        fields.push(format!("\"{name}\": {:.3}", percentile(&list, 0.5)));
    }
    println!("{{{}}}", fields.join(", "));
    Ok(())
}
