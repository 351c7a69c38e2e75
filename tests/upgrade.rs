//! Hitless upgrade over real sockets: `l4mesh upgrade` replaces the running
//! binary while clients open connections at a steady rate and long
//! SHA-256-checked streams run through the old process; no client may be
//! refused, reset or short-changed. Ten upgrades in a row change the
//! number of workers (more and fewer than the old process), the forward
//! mode and the event loop. A new process that fails (a broken config, an
//! address it cannot bind, or gone halfway through the handover) leaves
//! the old one serving. Registered endpoints, their TTLs and drains survive
//! the upgrade, and the admin listener moves to the new process.

mod common;

use common::*;
use l4mesh::upgrade::Takeover;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How each short connection ended, summed over a load thread.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    refused: u64,
    reset: u64,
    /// Connections whose echo came back short or different.
    lost: u64,
    /// The first few failures, for the assertion message.
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.lost += other.lost;
        self.failures.extend(other.failures);
    }

    fn fail(&mut self, what: String) {
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }
}

/// Clients opening short connections to `addr` at `per_second` each
/// thread until stopped: each sends 200 bytes, half-closes and must get
/// the same 200 bytes back, then EOF.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, per_second: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || short_connections(addr, t as u64, per_second, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for thread in self.threads {
            total.add(thread.join().unwrap());
        }
        total
    }
}

fn short_connections(addr: SocketAddr, seed: u64, per_second: u64, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let every = Duration::from_nanos(1_000_000_000 / per_second);
    let mut next = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload: Vec<u8> = (0..200u64).map(|i| (seed * 31 + n * 7 + i) as u8).collect();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tally.refused += 1;
                tally.fail(format!("connection {n}: refused"));
            }
            Err(e) => {
                tally.lost += 1;
                tally.fail(format!("connection {n}: connect: {e}"));
            }
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let sent = stream
                    .write_all(&payload)
                    .and_then(|()| stream.shutdown(Shutdown::Write));
                let mut back = Vec::new();
                let read = stream.read_to_end(&mut back);
                match (sent, read) {
                    (Ok(()), Ok(_)) if back == payload => tally.ok += 1,
                    (Ok(()), Ok(_)) => {
                        tally.lost += 1;
                        tally.fail(format!("connection {n}: {} of 200 bytes back", back.len()));
                    }
                    (Err(e), _) | (_, Err(e))
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                        ) =>
                    {
                        tally.reset += 1;
                        tally.fail(format!("connection {n}: reset: {e}"));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tally.lost += 1;
                        tally.fail(format!("connection {n}: {e}"));
                    }
                }
            }
        }
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
    tally
}

/// A long stream: `len` bytes sent at about `bytes_per_second` and echoed
/// back; Ok once the SHA-256 of what came back matches what was sent.
fn long_stream(
    addr: SocketAddr,
    len: usize,
    bytes_per_second: usize,
) -> JoinHandle<Result<(), String>> {
    thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let chunk = 16 * 1024;
            let every = Duration::from_secs_f64(chunk as f64 / bytes_per_second as f64);
            let mut hash = Sha256::new();
            let started = Instant::now();
            for (i, offset) in (0..len).step_by(chunk).enumerate() {
                let bytes: Vec<u8> = (offset..(offset + chunk).min(len))
                    .map(|b| (b * 13 % 251) as u8)
                    .collect();
                hash.update(&bytes);
                writer
                    .write_all(&bytes)
                    .map_err(|e| format!("write: {e}"))?;
                if let Some(wait) =
                    (started + every * (i as u32 + 1)).checked_duration_since(Instant::now())
                {
                    thread::sleep(wait);
                }
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok::<_, String>(hash.finalize().to_vec())
        });
        let mut hash = Sha256::new();
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n;
                }
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            }
        }
        let sent = sender.join().unwrap()?;
        if got != len || hash.finalize().to_vec() != sent {
            return Err(format!(
                "{got} of {len} bytes came back, or not the same bytes"
            ));
        }
        Ok(())
    })
}

/// The l4mesh processes a test started through upgrades (not its own
/// children): killed when the test ends, whatever happened.
#[derive(Default)]
struct Generations(Mutex<Vec<u32>>);

impl Generations {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Generations {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Whether process `pid` is alive (a zombie is not).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// What `l4mesh upgrade -c config` printed, whether it succeeded, and how
/// long it took.
struct Upgraded {
    ok: bool,
    output: String,
    took: Duration,
}

impl Upgraded {
    /// The new process's pid, from the "started ... as pid N" line.
    fn new_pid(&self) -> u32 {
        let line = self
            .output
            .lines()
            .find(|l| l.contains(" as pid "))
            .unwrap_or_else(|| panic!("no new pid in {}", self.output));
        line.split(" as pid ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Seconds into the upgrade at which the line containing `needle` was
    /// printed.
    fn at(&self, needle: &str) -> f64 {
        let line = self
            .output
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {}", self.output));
        line.trim_start_matches('[')
            .split('s')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn upgrade(config: &Path) -> Upgraded {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .arg("upgrade")
        .arg("-c")
        .arg(config)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("l4mesh upgrade -c {}:\n{text}", config.display());
    Upgraded {
        ok: output.status.success(),
        output: text,
        took: started.elapsed(),
    }
}

/// A config for the test's listener and paths, with these runtime settings.
fn config(dir: &TempDir, port: u16, admin: u16, backend: SocketAddr, runtime: &str) -> String {
    format!(
        r#"
[runtime]
drain_timeout = "30s"
upgrade_socket = "{upgrade}"
{runtime}

[registry]
socket = "{registry}"

[admin]
listen = "127.0.0.1:{admin}"

[access_log]
path = "{access}"

[listeners.web]
listen = "127.0.0.1:{port}"
service = "echo"

[services.echo]
endpoints = [{{ addr = "{backend}" }}]
"#,
        upgrade = dir.join("upgrade.sock").display(),
        registry = dir.join("registry.sock").display(),
        access = dir.join("access.log").display(),
    )
}

/// Writes `text` to `dir/name` and returns its path.
fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_clean(tally: &Tally) {
    assert_eq!(
        (tally.refused, tally.reset, tally.lost),
        (0, 0, 0),
        "{} clients served; failures: {:?}",
        tally.ok,
        tally.failures
    );
}

#[test]
fn it_should_upgrade_ten_times_under_load_without_refusing_resetting_or_losing_a_client() {
    let dir = TempDir::new();
    let backend = echo_backend();
    let (port, admin) = (free_port(), free_port());
    let first = config(&dir, port, admin, backend, "workers = 2");
    let old = Binary::start(&first, &[]);
    let addr = old.addr();
    let generations = Generations::default();
    // Worker counts above and below the one before, every forward mode and
    // both event loops.
    let next = [
        "workers = 1\nforward = \"splice\"",
        "workers = 3\nforward = \"copy\"",
        "workers = 2\nevent_loop = \"epoll\"",
        "workers = 1\nevent_loop = \"epoll\"\nforward = \"copy\"",
        "workers = 3\nevent_loop = \"epoll\"\nforward = \"splice\"",
        "workers = 2",
        "workers = 3\nforward = \"splice\"",
        "workers = 1\nevent_loop = \"epoll\"",
        "workers = 2\nforward = \"copy\"",
        "workers = 2",
    ];
    // scripts/upgrade-soak.sh sets more upgrades and a higher rate.
    let knob = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (upgrades, rate) = (
        knob("L4MESH_UPGRADES", 10),
        knob("L4MESH_UPGRADE_RATE", 2000),
    );
    let load = Load::start(addr, 4, (rate / 4) as u64);
    let mut streams = 0;
    let mut timings = Vec::new();
    let mut previous = old.child.id();
    for (i, runtime) in next.iter().cycle().take(upgrades).enumerate() {
        let file = write(
            &dir,
            &format!("gen{i}.toml"),
            &config(&dir, port, admin, backend, runtime),
        );
        // Long streams through the old process, still running when it
        // hands over: it must drain them whole.
        let long: Vec<_> = (0..3)
            .map(|_| long_stream(addr, 3 << 20, 6 << 20))
            .collect();
        streams += long.len();
        thread::sleep(Duration::from_millis(100));
        let upgraded = upgrade(&file);
        assert!(upgraded.ok, "upgrade {i} failed:\n{}", upgraded.output);
        let pid = upgraded.new_pid();
        generations.add(pid);
        assert!(
            !is_running(previous),
            "pid {previous} still runs after the upgrade"
        );
        for (s, stream) in long.into_iter().enumerate() {
            stream
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("upgrade {i}, stream {s}: {e}"));
        }
        timings.push((upgraded.at(" serves now"), upgraded.took));
        previous = pid;
    }
    let tally = load.finish();
    for (i, (handover, exit)) in timings.iter().enumerate() {
        eprintln!(
            "upgrade {i}: new process serving after {handover:.3} s, old process gone after \
             {:.3} s",
            exit.as_secs_f64()
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "{upgrades} upgrades: {} clients served, {} refused, {} reset, {} lost; {streams} \
         streams intact; median {:.3} s to the new process serving, {:.3} s to the old one's exit",
        tally.ok,
        tally.refused,
        tally.reset,
        tally.lost,
        median(timings.iter().map(|t| t.0).collect()),
        median(timings.iter().map(|t| t.1.as_secs_f64()).collect()),
    );
    assert_clean(&tally);
    assert!(
        tally.ok as usize > upgrades * rate / 5,
        "only {} clients in the run",
        tally.ok
    );
    // Every connection, in whichever process, is in the shared access log.
    signal_pid(previous, "TERM");
    eventually(Duration::from_secs(20), "the last process exits", || {
        !is_running(previous)
    });
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    assert_eq!(log.lines().count() as u64, tally.ok + streams as u64);
    // The last process removes the socket files it took over; none before did.
    for socket in ["registry.sock", "upgrade.sock"] {
        assert!(!dir.join(socket).exists(), "{socket} left behind");
    }
}

#[test]
fn it_should_keep_the_old_process_serving_when_the_new_one_fails() {
    let dir = TempDir::new();
    let backend = echo_backend();
    let (port, admin) = (free_port(), free_port());
    let text = config(&dir, port, admin, backend, "workers = 2");
    let old = Binary::start(&text, &[]);
    let addr = old.addr();
    let socket = dir.join("upgrade.sock");
    let load = Load::start(addr, 2, 300);
    let healthy = |what: &str| {
        let (status, _) = get(SocketAddr::from(([127, 0, 0, 1], admin)), "GET", "/healthz");
        assert_eq!(status, 200, "{what}: /healthz");
        let reply = registry(&dir.join("registry.sock"), "list");
        assert_eq!(reply["ok"], true, "{what}: the registry answers: {reply}");
        assert!(is_running(old.child.id()), "{what}: the old process runs");
    };

    // A broken config: the new process stops before asking for anything.
    let broken = write(
        &dir,
        "broken.toml",
        &text.replace("drain_timeout = \"30s\"", "drain_timeout = \"soon\""),
    );
    let run = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .arg("-c")
        .arg(&broken)
        .arg("--takeover")
        .arg(&socket)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(error.contains("runtime.drain_timeout"), "{error}");
    healthy("after a broken config");

    // An address it cannot bind: held by another socket of this test.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let unbindable =
        format!("{text}\n[listeners.extra]\nlisten = \"{taken}\"\nservice = \"echo\"\n");
    let upgraded = upgrade(&write(&dir, "unbindable.toml", &unbindable));
    assert!(!upgraded.ok);
    assert!(
        upgraded
            .output
            .contains(&format!("already listens on {taken}")),
        "{}",
        upgraded.output
    );
    assert!(upgraded.output.contains("serves on"), "{}", upgraded.output);
    healthy("after an unbindable address");

    // Gone halfway: a takeover that ends (as a crash closes its socket)
    // after receiving the sockets, and after the old process released the
    // registry socket and the admin listener.
    let (takeover, received) = Takeover::begin(&socket).unwrap();
    assert_eq!(received.listeners.values().map(Vec::len).sum::<usize>(), 2);
    drop((takeover, received));
    old.wait_for_line(Duration::from_secs(5), "went away before saying `ready`");
    healthy("after a new process went away before it was ready");
    let (takeover, received) = Takeover::begin(&socket).unwrap();
    takeover.ready().unwrap();
    drop((takeover, received));
    old.wait_for_line(Duration::from_secs(5), "went away before saying `serving`");
    eventually(Duration::from_secs(5), "the registry answers again", || {
        registry(&dir.join("registry.sock"), "list")["ok"] == true
    });
    healthy("after a new process went away before serving");

    // And a real upgrade still works afterwards.
    let upgraded = upgrade(&write(&dir, "good.toml", &text));
    assert!(upgraded.ok, "{}", upgraded.output);
    let generations = Generations::default();
    generations.add(upgraded.new_pid());
    let tally = load.finish();
    eprintln!("{} clients served through the failed upgrades", tally.ok);
    assert_clean(&tally);
}

#[test]
fn it_should_carry_registered_endpoints_ttls_and_drains_and_move_the_admin_listener() {
    let dir = TempDir::new();
    let (file_backend, registered, permanent) = (echo_backend(), echo_backend(), echo_backend());
    let (port, admin) = (free_port(), free_port());
    let text = config(&dir, port, admin, file_backend, "workers = 1");
    let old = Binary::start(&text, &[]);
    let socket = dir.join("registry.sock");
    assert_eq!(
        std::fs::metadata(dir.join("upgrade.sock"))
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            })
            .unwrap(),
        0o600
    );
    for request in [
        format!("register echo {registered} weight=3 ttl=60s"),
        format!("register echo {permanent}"),
        format!("drain echo {file_backend}"),
    ] {
        assert_eq!(registry(&socket, &request)["ok"], true, "{request}");
    }
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let mut client = TcpStream::connect(old.addr()).unwrap();
    client.write_all(b"x").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    let accepted = |admin| -> f64 {
        samples(admin)
            .iter()
            .filter(|(k, _)| k.starts_with("l4mesh_downstream_connections_total"))
            .map(|(_, v)| v)
            .sum()
    };
    eventually(
        Duration::from_secs(5),
        "the old process counts its client",
        || accepted(admin_addr) == 1.0,
    );
    let upgraded = upgrade(&write(&dir, "next.toml", &text));
    assert!(upgraded.ok, "{}", upgraded.output);
    let generations = Generations::default();
    generations.add(upgraded.new_pid());
    assert!(!is_running(old.child.id()));
    // The admin listener answers from the new process, whose counters
    // start again.
    let (status, _) = get(admin_addr, "GET", "/healthz");
    assert_eq!(status, 200);
    assert_eq!(accepted(admin_addr), 0.0);
    let list = registry(&socket, "list");
    let endpoints = list["endpoints"].as_array().unwrap();
    let find = |addr: SocketAddr| {
        endpoints
            .iter()
            .find(|e| e["addr"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {list}"))
    };
    let ttl = find(registered)["ttl_remaining_ms"].as_u64().unwrap();
    assert!((50_000..=60_000).contains(&ttl), "ttl left {ttl} ms");
    assert_eq!(find(registered)["weight"], 3);
    assert_eq!(find(permanent)["ttl_remaining_ms"], serde_json::Value::Null);
    assert_eq!(find(file_backend)["state"], "draining");
}
