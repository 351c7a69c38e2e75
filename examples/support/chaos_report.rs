//! The chaos suite's report: per-phase outcome counts, the targets, the
//! proxy's descriptors and memory, and, for each transfer that was cut
//! short or hung, what the proxy's access log says about it.
//!
//! Targets (a missed one makes `report` exit 1):
//! * no byte lost or corrupted in a transfer that ended normally, nor in
//!   what arrived before a reset;
//! * no transfer ended with a clean EOF before its end (`short_eof`: the
//!   client was not told);
//! * no transfer hung past the configured timeouts;
//! * no client reset reached the server as a clean EOF (the server's
//!   events, `--server-events`, say how each aborted upload ended there);
//! * in the descriptor-limit phase (fact `fd_phase`), every client served:
//!   none reset or refused;
//! * every phase completed transfers intact (the suite cannot pass idle);
//! * after the run, the proxy's descriptors other than pipes back to the
//!   baseline, pipes within the pool's limit, and RSS within 25% (plus
//!   4 MiB) of the baseline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::transfer::{Outcome, Record};
use crate::{Result, ctx};

/// What `report` was asked for.
#[derive(Default)]
struct ReportOptions {
    results: PathBuf,
    facts: PathBuf,
    out: PathBuf,
    access_logs: Vec<PathBuf>,
    server_events: Option<PathBuf>,
    samples: Option<PathBuf>,
}

/// One access-log line, the fields the report uses.
struct Access {
    start: f64,
    end: String,
    endpoint: String,
    tx_bytes: String,
}

/// Per-phase counts.
#[derive(Default)]
struct Tally {
    by_outcome: BTreeMap<&'static str, u64>,
    corrupt_bytes: u64,
    prefix_corrupt: u64,
    lost_bytes: u64,
    checked: u64,
}

/// Writes the report; `Ok(false)` when a target is missed.
pub fn main(args: &[String]) -> Result<bool> {
    let opts = parse(args)?;
    let records = read_records(&opts.results)?;
    let facts = read_facts(&opts.facts)?;
    let mut access: HashMap<String, Vec<Access>> = HashMap::new();
    for path in &opts.access_logs {
        read_access(path, &mut access)?;
    }
    let server_ends = match &opts.server_events {
        Some(path) => read_server_events(path)?,
        None => HashMap::new(),
    };
    // How each aborted upload ended at the server: "eof", an error, or
    // "nothing" (it never saw the upload end early).
    let server_saw = |r: &Record| -> &str {
        match server_ends.get(&r.seed) {
            Some(end) if end == "eof" => "eof",
            Some(_) => "reset",
            None => "nothing",
        }
    };
    let fact = |k: &str| facts.get(k).cloned().unwrap_or_else(|| "?".into());
    let num = |k: &str| facts.get(k).and_then(|v| v.parse::<f64>().ok());

    let mut phases: Vec<String> = Vec::new();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for r in &records {
        if !phases.contains(&r.phase) {
            phases.push(r.phase.clone());
        }
        let t = tallies.entry(r.phase.clone()).or_default();
        *t.by_outcome.entry(r.outcome.name()).or_default() += 1;
        t.checked += r.received;
        match r.outcome {
            Outcome::Intact | Outcome::Corrupt => t.corrupt_bytes += r.corrupt_bytes,
            _ => t.prefix_corrupt += r.corrupt_bytes,
        }
        if r.outcome == Outcome::ShortEof {
            t.lost_bytes += r.lost_bytes;
        }
    }
    let total = |f: &dyn Fn(&Tally) -> u64| tallies.values().map(f).sum::<u64>();
    let count = |o: Outcome| total(&|t| t.by_outcome.get(o.name()).copied().unwrap_or(0));
    let fd_phase = fact("fd_phase");
    let fd_failures = tallies.get(&fd_phase).map_or(0, |t| {
        ["reset", "refused", "short_eof", "hung"]
            .iter()
            .map(|o| t.by_outcome.get(o).copied().unwrap_or(0))
            .sum::<u64>()
    });
    let idle_phases: Vec<&String> = phases
        .iter()
        .filter(|p| {
            tallies
                .get(*p)
                .is_none_or(|t| !t.by_outcome.contains_key("intact"))
        })
        .collect();

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# l4mesh chaos suite: {} run\n", fact("mode"));
    let _ = writeln!(
        w,
        "`{}` at {}, l4mesh {} (`forward = \"{}\"`, {} workers), {} load clients, \
         `idle_timeout` {} ms ({} ms on the slow clients' listener), `connect_timeout` {} ms × {} attempts; a client calls a \
         transfer hung after {} ms without a byte. Took {} s (the release build, {} s, aside).\n",
        fact("command"),
        fact("started"),
        fact("commit"),
        fact("forward"),
        fact("workers"),
        fact("clients"),
        fact("idle_timeout_ms"),
        fact("slow_idle_timeout_ms"),
        fact("connect_timeout_ms"),
        fact("connect_attempts"),
        fact("stall_ms"),
        fact("elapsed_s"),
        fact("build_s"),
    );

    let mut missed = false;
    let mut row = |w: &mut String, what: &str, goal: &str, got: String, ok: bool| {
        missed |= !ok;
        let verdict = if ok { "met" } else { "**MISSED**" };
        let _ = writeln!(w, "| {what} | {goal} | {got} | {verdict} |");
    };
    let _ = writeln!(
        w,
        "## Targets\n\n| target | goal | measured | |\n|---|---|---|---|"
    );
    let corrupt = total(&|t| t.corrupt_bytes);
    row(
        w,
        "bytes lost or corrupted in transfers that completed normally",
        "0",
        format!("{corrupt} (in {} transfers)", count(Outcome::Corrupt)),
        corrupt == 0 && count(Outcome::Corrupt) == 0,
    );
    let prefix = total(&|t| t.prefix_corrupt);
    row(
        w,
        "bytes corrupted before a reset, cut or hang",
        "0",
        prefix.to_string(),
        prefix == 0,
    );
    let short = count(Outcome::ShortEof);
    row(
        w,
        "transfers ended without the client being told (clean EOF before the end)",
        "0",
        format!("{short} ({} bytes never arrived)", total(&|t| t.lost_bytes)),
        short == 0,
    );
    let hung = count(Outcome::Hung);
    row(
        w,
        "clients hung past the configured timeouts",
        "0",
        hung.to_string(),
        hung == 0,
    );
    let aborted: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Aborted)
        .collect();
    let saw = |what: &str| aborted.iter().filter(|r| server_saw(r) == what).count();
    row(
        w,
        "client resets that reached the server as a clean EOF",
        "0",
        format!(
            "{} of {} uploads the client reset ({} reached it as a reset, {} never reached it)",
            saw("eof"),
            aborted.len(),
            saw("reset"),
            saw("nothing")
        ),
        saw("eof") == 0,
    );
    row(
        w,
        &format!("`{fd_phase}` phase: clients not served (reset, refused, cut or hung)"),
        "0",
        fd_failures.to_string(),
        fd_failures == 0 && tallies.contains_key(&fd_phase),
    );
    row(
        w,
        "phases with no intact transfer (the suite must not pass idle)",
        "none",
        if idle_phases.is_empty() {
            "none".into()
        } else {
            format!("{idle_phases:?}")
        },
        idle_phases.is_empty() && !phases.is_empty(),
    );
    let (fds_base, fds_end) = (num("fds_base"), num("fds_end"));
    row(
        w,
        "proxy descriptors after the run, pipes aside",
        &format!("= baseline ({})", fact("fds_base")),
        fact("fds_end"),
        fds_base.is_some() && fds_base == fds_end,
    );
    let pipes_ok = match (num("pipes_end"), num("pipe_limit")) {
        (Some(p), Some(l)) => p <= l,
        _ => false,
    };
    row(
        w,
        "proxy pipe descriptors after the run (pooled)",
        &format!("≤ the pool's limit ({})", fact("pipe_limit")),
        fact("pipes_end"),
        pipes_ok,
    );
    let rss_ok = match (num("rss_kb_base"), num("rss_kb_end")) {
        (Some(b), Some(e)) => e <= b * 1.25 + 4096.0,
        _ => false,
    };
    row(
        w,
        "proxy RSS after the run (KiB)",
        &format!("≤ baseline ({}) × 1.25 + 4 MiB", fact("rss_kb_base")),
        fact("rss_kb_end"),
        rss_ok,
    );
    let active = num("active_end");
    row(
        w,
        "connections open at the proxy after the drain wait",
        "0",
        fact("active_end"),
        active == Some(0.0),
    );

    let _ = writeln!(
        w,
        "\n## By phase\n\n| phase | faults | transfers | intact | corrupt (bytes) | reset (told) \
         | refused | short EOF (bytes lost) | hung | reset by the client | MB checked |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &phases {
        let t = &tallies[p];
        let n = |o: &str| t.by_outcome.get(o).copied().unwrap_or(0);
        let _ = writeln!(
            w,
            "| {p} | {} | {} | {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {:.1} |",
            facts.get(&format!("fault.{p}")).map_or("", String::as_str),
            t.by_outcome.values().sum::<u64>(),
            n("intact"),
            n("corrupt"),
            t.corrupt_bytes,
            n("reset"),
            n("refused"),
            n("short_eof"),
            t.lost_bytes,
            n("hung"),
            n("aborted"),
            t.checked as f64 / 1e6
        );
    }

    let _ = writeln!(
        w,
        "\n## How the failed transfers ended at the proxy\n\nEach transfer that was not \
         intact, matched to the proxy's access-log line by client address and start time: \
         the proxy's `end=` reason.\n\n| phase | client saw | proxy's end | count |\n|---|---|---|---|"
    );
    let mut reasons: BTreeMap<(usize, &str, String), u64> = BTreeMap::new();
    for r in records.iter().filter(|r| r.outcome != Outcome::Intact) {
        let mut end = matching(&access, r).map_or("(no access-log line)".into(), |a| a.end.clone());
        if r.outcome == Outcome::Aborted {
            end = format!("{end}; the server saw {}", server_saw(r));
        }
        let idx = phases.iter().position(|p| *p == r.phase).unwrap_or(0);
        *reasons.entry((idx, r.outcome.name(), end)).or_default() += 1;
    }
    for ((idx, outcome, end), n) in &reasons {
        let _ = writeln!(w, "| {} | {outcome} | {end} | {n} |", phases[*idx]);
    }

    let _ = writeln!(w, "\n## Examples (up to 3 of each failure per phase)\n");
    let mut shown: HashMap<(String, &str), u32> = HashMap::new();
    for r in records.iter().filter(|r| r.outcome != Outcome::Intact) {
        let seen = shown
            .entry((r.phase.clone(), r.outcome.name()))
            .or_default();
        *seen += 1;
        if *seen > 3 {
            continue;
        }
        let proxy = matching(&access, r).map_or("no access-log line".to_string(), |a| {
            format!(
                "proxy: end={} endpoint={} tx_bytes={}",
                a.end, a.endpoint, a.tx_bytes
            )
        });
        let _ = writeln!(
            w,
            "- {} {}: {} {} bytes (read {} B/s, write {} B/s) from {} after {:.0} ms: {}; {}",
            r.phase,
            r.outcome.name(),
            r.mode,
            r.size,
            r.read_rate,
            r.write_rate,
            r.local,
            r.ms,
            r.detail,
            proxy
        );
    }

    let _ = writeln!(
        w,
        "\n## Proxy resources\n\n| when | descriptors (pipes aside) | pipe descriptors | RSS KiB | descriptors by kind |\n|---|---|---|---|---|"
    );
    for (when, key) in [
        ("just started", "start"),
        ("baseline: after the first phase, drained", "base"),
        ("after the run, drained", "end"),
    ] {
        let _ = writeln!(
            w,
            "| {when} | {} | {} | {} | {} |",
            fact(&format!("fds_{key}")),
            fact(&format!("pipes_{key}")),
            fact(&format!("rss_kb_{key}")),
            fact(&format!("fd_kinds_{key}"))
        );
    }
    let _ = writeln!(
        w,
        "\nConfig writes: {} ({} invalid); reloads applied {} and rejected {} (from /metrics); \
         registry requests {} ({} answered not ok).",
        fact("config_writes"),
        fact("config_invalid"),
        fact("reloads_success"),
        fact("reloads_failure"),
        fact("registry_requests"),
        fact("registry_not_ok"),
    );
    if let Some(path) = &opts.samples {
        samples(w, path)?;
    }
    print!("{md}");
    ctx(
        std::fs::write(&opts.out, &md),
        &format!("write {}", opts.out.display()),
    )?;
    Ok(!missed)
}

/// The access-log line of the transfer `r`: same client address, nearest
/// start time (within 5 s).
fn matching<'a>(access: &'a HashMap<String, Vec<Access>>, r: &Record) -> Option<&'a Access> {
    access
        .get(&r.local)?
        .iter()
        .filter(|a| (a.start - r.start).abs() < 5.0)
        .min_by(|a, b| {
            (a.start - r.start)
                .abs()
                .total_cmp(&(b.start - r.start).abs())
        })
}

/// The soak's samples (`t_s fds pipes rss_kb active` lines) as a table.
fn samples(w: &mut String, path: &PathBuf) -> Result<()> {
    let text = ctx(
        std::fs::read_to_string(path),
        &format!("read {}", path.display()),
    )?;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 5)
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let rss: Vec<f64> = rows.iter().filter_map(|r| r[3].parse().ok()).collect();
    let fds: Vec<f64> = rows.iter().filter_map(|r| r[1].parse().ok()).collect();
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let (rss_lo, rss_hi) = span(&rss);
    let (fd_lo, fd_hi) = span(&fds);
    let _ = writeln!(
        w,
        "\n## Over time (sampled every 10 s)\n\n{} samples: RSS {rss_lo:.0}–{rss_hi:.0} KiB, \
         descriptors (pipes aside) {fd_lo:.0}–{fd_hi:.0}.\n\n| t (s) | descriptors (pipes aside) \
         | pipes | RSS KiB | open connections |\n|---|---|---|---|---|",
        rows.len()
    );
    // At most about 40 rows: every n-th sample, and always the last.
    let step = rows.len().div_ceil(40).max(1);
    for (i, r) in rows.iter().enumerate() {
        if i % step == 0 || i + 1 == rows.len() {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
    }
    Ok(())
}

fn read_records(path: &PathBuf) -> Result<Vec<Record>> {
    let text = ctx(
        std::fs::read_to_string(path),
        &format!("read {}", path.display()),
    )?;
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let what = format!("{}:{}", path.display(), i + 1);
        records.push(ctx(serde_json::from_str(line), &what)?);
    }
    Ok(records)
}

/// The server's events: seed → how the upload ended early.
fn read_server_events(path: &PathBuf) -> Result<HashMap<u64, String>> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        read => ctx(read, &format!("read {}", path.display()))?,
    };
    let mut ends = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let what = format!("{}:{}", path.display(), i + 1);
        let event: serde_json::Value = ctx(serde_json::from_str(line), &what)?;
        if let (Some(seed), Some(end)) = (event["seed"].as_u64(), event["end"].as_str()) {
            ends.insert(seed, end.to_string());
        }
    }
    Ok(ends)
}

fn read_facts(path: &PathBuf) -> Result<HashMap<String, String>> {
    let text = ctx(
        std::fs::read_to_string(path),
        &format!("read {}", path.display()),
    )?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// Reads an access log into `into`; a log that does not exist (its proxy
/// never ran) adds nothing.
fn read_access(path: &PathBuf, into: &mut HashMap<String, Vec<Access>>) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        read => ctx(read, &format!("read {}", path.display()))?,
    };
    for line in text.lines() {
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let (Some(client), Some(start)) = (fields.get("client"), fields.get("start")) else {
            continue;
        };
        let get = |k: &str| fields.get(k).copied().unwrap_or("-").to_string();
        into.entry(client.to_string()).or_default().push(Access {
            start: start.parse().unwrap_or(0.0),
            end: get("end"),
            endpoint: get("endpoint"),
            tx_bytes: get("tx_bytes"),
        });
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<ReportOptions> {
    let mut opts = ReportOptions::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = PathBuf::from(it.next().ok_or_else(|| format!("{flag} needs a value"))?);
        match flag.as_str() {
            "--results" => opts.results = v,
            "--facts" => opts.facts = v,
            "--out" => opts.out = v,
            "--access-log" => opts.access_logs.push(v),
            "--samples" => opts.samples = Some(v),
            "--server-events" => opts.server_events = Some(v),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if opts.results.as_os_str().is_empty()
        || opts.facts.as_os_str().is_empty()
        || opts.out.as_os_str().is_empty()
    {
        return Err("report needs --results, --facts and --out".into());
    }
    Ok(opts)
}
