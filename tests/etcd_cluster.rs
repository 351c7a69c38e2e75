//! The etcd source end to end, beyond `etcd.rs` and `etcd_fleet.rs`: the
//! real `l4mesh` binary following a real etcd (Debian's 3.4, started by
//! `common::etcd`, alone or as a three-member cluster, on free loopback
//! ports), endpoints registered by `l4mesh ctl --etcd` or put with
//! `etcdctl`, traffic through the proxy to tagged echo backends: deregister
//! next to a running sidecar, forced compaction, malformed keys in one
//! batch, the death and the freezing of each cluster member, and a restart
//! resumed by revision.
//!
//! "Changes made while l4mesh was away" need an etcd that l4mesh cannot
//! reach but that still takes writes: a three-member cluster where l4mesh
//! knows only member m0. Killing m0 cuts l4mesh off; the other two keep a
//! quorum and take the changes (and a compaction); m0 restarted catches up
//! from the others, and l4mesh with it.

mod common;

use common::etcd::{Cluster, Etcd, etcdctl};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(5);

/// The key of `addr` in service `web`.
fn key(addr: SocketAddr) -> String {
    format!("/l4mesh/services/web/endpoints/{addr}")
}

/// A config for the binary: an admin listener, `[discovery.etcd]` on
/// `urls` (comma-separated), listener `web` in front of service `web`,
/// which follows etcd.
fn binary_config(mode: Mode, urls: &str) -> String {
    let endpoints: Vec<String> = urls.split(',').map(|u| format!("\"{u}\"")).collect();
    with_mode(
        &format!(
            "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [discovery.etcd]\nendpoints = [{}]\ndial_timeout = \"500ms\"\n\
             [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             [services.web]\nconnect_timeout = \"500ms\"\ndiscovery = \"etcd\"\n",
            endpoints.join(", ")
        ),
        mode,
    )
}

/// Tags seen over `n` new connections.
fn tags(addr: SocketAddr, n: usize) -> BTreeSet<u8> {
    (0..n).filter_map(|_| tag_of(addr)).collect()
}

fn set_of(tags: &[u8]) -> BTreeSet<u8> {
    tags.iter().copied().collect()
}

/// A connection through the proxy that reached the backend tagged `tag`.
fn open_to(web: SocketAddr, tag: u8) -> TcpStream {
    (0..100)
        .find_map(|_| {
            let mut s = TcpStream::connect(web).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = [0u8];
            s.read_exact(&mut got).ok()?;
            (got[0] == tag).then_some(s)
        })
        .unwrap_or_else(|| panic!("no connection reached {}", tag as char))
}

/// Sends `len` bytes through `stream` (an echo) and checks the SHA-256 of
/// what comes back.
fn echo_checked(stream: &mut TcpStream, len: usize) {
    use sha2::{Digest, Sha256};
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let sent = Sha256::digest(&data);
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || writer.write_all(&data).unwrap());
    let mut back = vec![0; len];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.read_exact(&mut back).unwrap();
    send.join().unwrap();
    assert_eq!(Sha256::digest(&back), sent, "the echo came back intact");
}

/// Service `web`'s endpoints in the binary's `/config`: address → weight,
/// etcd's only.
fn etcd_endpoints(admin: SocketAddr) -> BTreeMap<String, u64> {
    let (status, body) = get(admin, "GET", "/config");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = config["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .expect("service web in /config");
    web["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "etcd")
        .map(|e| {
            (
                e["addr"].as_str().unwrap().to_string(),
                e["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `l4mesh ctl --etcd URLS ARGS`, to its end: (exit code, stdout, stderr).
fn ctl(urls: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .args(["ctl", "--etcd", urls])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `l4mesh ctl --etcd URLS register ...` sidecar; killed on drop.
struct Sidecar {
    child: Child,
}

impl Sidecar {
    /// Starts `register web ADDR ARGS... --ttl TTL` and waits for its
    /// "registered" line.
    fn register(urls: &str, addr: SocketAddr, ttl: &str, args: &[&str]) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .args(["ctl", "--etcd", urls, "register", "web", &addr.to_string()])
            .args(args)
            .args(["--ttl", ttl])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("sidecar: {line}");
            }
        });
        // Its one stdout line, within a deadline (a thread reads it, so a
        // sidecar that hangs fails the test instead of blocking it).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end: the sidecar prints more at exit.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(WITHIN)
            .expect("the sidecar's registered line");
        assert!(
            line.starts_with(&format!("registered {} = ", key(addr))),
            "{line:?}"
        );
        Sidecar { child }
    }

    fn signal(&self, name: &str) {
        signal_pid(self.child.id(), name);
    }

    /// SIGTERM; waits for its exit and returns the code.
    fn terminate(self) -> Option<i32> {
        self.stop_with("TERM")
    }

    /// Sends `signal`; waits for its exit and returns the code.
    fn stop_with(mut self, signal: &str) -> Option<i32> {
        self.signal(signal);
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not exit on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

per_mode! {
    fn registered_endpoints_serve_within_a_second_and_each_way_out_ends_only_new_connections(mode) {
        let (a, b, c, d) = (
            tagged_echo_backend(b'A'),
            tagged_echo_backend(b'B'),
            tagged_echo_backend(b'C'),
            tagged_echo_backend(b'D'),
        );
        let etcd = Etcd::start();
        let url = etcd.url();
        etcd.put(&key(d), "");
        let binary = Binary::start(&binary_config(mode, &url), &[]);
        let web = binary.addr();
        eventually(WITHIN, "d (put with etcdctl) serves", || tags(web, 4) == set_of(b"D"));

        // Registered by the sidecar: served within a second of its
        // "registered" line.
        let mut sidecars = Vec::new();
        for (addr, tag, ttl, args) in [
            (a, b'A', "10s", &["weight=2", "zone=z1"][..]),
            (b, b'B', "2s", &[]),
            (c, b'C', "10s", &[]),
        ] {
            sidecars.push(Sidecar::register(&url, addr, ttl, args));
            let registered = Instant::now();
            eventually(Duration::from_secs(1), "served within 1 s", || {
                tags(web, 6).contains(&tag)
            });
            eprintln!("registered to served: {:?}", registered.elapsed());
        }
        assert_eq!(tags(web, 12), set_of(b"ABCD"));
        assert_eq!(etcd.get(&key(a)).as_deref(), Some(r#"{"weight":2,"zone":"z1"}"#));
        let (sidecar_a, mut sidecar_b, sidecar_c) = {
            let mut it = sidecars.into_iter();
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
        };

        let mut open: Vec<TcpStream> = [b'A', b'B', b'C'].iter().map(|t| open_to(web, *t)).collect();
        for stream in &mut open {
            echo_checked(stream, 1 << 16);
        }

        // b's sidecar dies: its key lasts until the lease (2 s) expires.
        let killed = Instant::now();
        sidecar_b.child.kill().unwrap();
        sidecar_b.child.wait().unwrap();
        assert!(tags(web, 12).contains(&b'B'), "b outlives its sidecar");
        assert!(killed.elapsed() < Duration::from_secs(2), "checked within the TTL");
        // a deregistered (its sidecar still keeps the lease), c's sidecar
        // stopped: both leave at once.
        let (code, out, err) = ctl(&url, &["deregister", "web", &a.to_string()]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(sidecar_c.terminate(), Some(0));
        let left = Instant::now();
        eventually(Duration::from_secs(1), "a and c take no new connection", || {
            let seen = tags(web, 10);
            !seen.contains(&b'A') && !seen.contains(&b'C')
        });
        eprintln!("deregistered/SIGTERM to gone: {:?}", left.elapsed());
        eventually(Duration::from_secs(4), "b leaves when its lease expires", || {
            tags(web, 10) == set_of(b"D")
        });
        eprintln!("SIGKILL with ttl 2s to gone: {:?}", killed.elapsed());
        assert!(etcd.keys("/l4mesh/").iter().all(|k| *k == key(d)));

        // The open connections were left alone.
        for stream in &mut open {
            echo_checked(stream, 1 << 20);
        }
        drop(sidecar_a);
    }
}

#[test]
fn etcd_killed_mid_traffic_keeps_the_last_endpoints_then_catches_up_with_changes_made_meanwhile() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let mut cluster = Cluster::start(3);
    cluster.any().put(&key(a), r#"{"weight": 1}"#);
    // l4mesh knows m0 only.
    let binary = Binary::start(
        &binary_config(Mode::DEFAULT, &cluster.members[0].url()),
        &[],
    );
    let (web, admin) = (binary.addr(), binary.admin_addr(WITHIN));
    eventually(WITHIN, "a serves", || tags(web, 4) == set_of(b"A"));
    assert_eq!(discovery_metrics(admin, "etcd").0, 1.0);
    let mut open = open_to(web, b'A');
    let traffic = std::thread::spawn(move || {
        for _ in 0..8 {
            echo_checked(&mut open, 1 << 18);
        }
        open
    });

    cluster.kill(0);
    eventually(WITHIN, "etcd down in /metrics, failures counted", || {
        let (up, errors) = discovery_metrics(admin, "etcd");
        up == 0.0 && errors >= 1.0
    });
    binary.wait_for_line(WITHIN, "serving the last known 1 endpoint(s)");
    // Meanwhile, through the other members: a leaves, b comes.
    let others = format!("{},{}", cluster.members[1].url(), cluster.members[2].url());
    etcdctl(&others, &["del", &key(a)]);
    etcdctl(&others, &["put", &key(b), r#"{"weight": 1}"#]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tags(web, 10),
        set_of(b"A"),
        "the last endpoints keep serving"
    );

    let back = Instant::now();
    cluster.members[0].restart();
    eventually(WITHIN, "the changes made while away are seen", || {
        tags(web, 10) == set_of(b"B")
    });
    eprintln!("m0 healthy again to caught up: {:?}", back.elapsed());
    assert_eq!(discovery_metrics(admin, "etcd").0, 1.0);
    binary.wait_for_line(WITHIN, "etcd reachable again after");
    let mut open = traffic.join().unwrap();
    echo_checked(&mut open, 1 << 20);
}

#[test]
fn a_restarted_etcd_is_followed_again_from_the_revision_where_l4mesh_left_off() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let mut etcd = Etcd::start();
    etcd.put(&key(a), "");
    let binary = Binary::start(&binary_config(Mode::DEFAULT, &etcd.url()), &[]);
    let (web, admin) = (binary.addr(), binary.admin_addr(WITHIN));
    eventually(WITHIN, "a serves", || tags(web, 4) == set_of(b"A"));
    let revision = etcd.revision();

    etcd.stop();
    eventually(WITHIN, "etcd down in /metrics", || {
        let (up, errors) = discovery_metrics(admin, "etcd");
        up == 0.0 && errors >= 1.0
    });
    assert_eq!(
        tags(web, 10),
        set_of(b"A"),
        "the last endpoints keep serving"
    );
    etcd.restart();
    binary.wait_for_line(
        WITHIN,
        &format!("following /l4mesh/ from revision {}", revision + 1),
    );
    assert_eq!(discovery_metrics(admin, "etcd").0, 1.0);
    let changed = Instant::now();
    etcd.put(&key(b), "");
    etcd.delete(&key(a));
    eventually(WITHIN, "changes after the return are seen", || {
        tags(web, 10) == set_of(b"B")
    });
    eprintln!("etcd back: changes seen after {:?}", changed.elapsed());
    // Resumed by revision: the prefix was read in full only at start.
    assert_eq!(binary.count_lines("etcd: read "), 1);
}

#[test]
fn a_compaction_while_the_proxy_is_away_forces_a_full_resync_with_nothing_stale() {
    let (a, b, c) = (
        tagged_echo_backend(b'A'),
        tagged_echo_backend(b'B'),
        tagged_echo_backend(b'C'),
    );
    let mut cluster = Cluster::start(3);
    cluster.any().put(&key(a), "");
    cluster.any().put(&key(b), "");
    let binary = Binary::start(
        &binary_config(Mode::DEFAULT, &cluster.members[0].url()),
        &[],
    );
    let (web, admin) = (binary.addr(), binary.admin_addr(WITHIN));
    eventually(WITHIN, "a and b serve", || tags(web, 6) == set_of(b"AB"));

    cluster.kill(0);
    eventually(WITHIN, "etcd down", || {
        discovery_metrics(admin, "etcd").0 == 0.0
    });
    let others = format!("{},{}", cluster.members[1].url(), cluster.members[2].url());
    // a leaves, c comes and goes, b is reweighted, and the history of all
    // that is compacted away.
    etcdctl(&others, &["del", &key(a)]);
    etcdctl(&others, &["put", &key(c), ""]);
    etcdctl(&others, &["del", &key(c)]);
    etcdctl(&others, &["put", &key(b), r#"{"weight": 3}"#]);
    let revision = cluster.members[1].compact();

    cluster.members[0].restart();
    binary.wait_for_line(WITHIN, "reading /l4mesh/ again in full");
    eventually(WITHIN, "exactly b, reweighted", || {
        etcd_endpoints(admin) == BTreeMap::from([(b.to_string(), 3)])
    });
    assert_eq!(tags(web, 10), set_of(b"B"));
    binary.wait_for_line(WITHIN, &format!("at revision {revision}"));
    assert_eq!(discovery_metrics(admin, "etcd").0, 1.0);
}

#[test]
fn malformed_keys_and_values_are_skipped_with_a_warning_naming_the_key_and_the_rest_applies() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let etcd = Etcd::start();
    etcd.put(&key(a), "");
    let binary = Binary::start(&binary_config(Mode::DEFAULT, &etcd.url()), &[]);
    let (web, admin) = (binary.addr(), binary.admin_addr(WITHIN));
    eventually(WITHIN, "a serves", || tags(web, 4) == set_of(b"A"));
    let bad_json = "/l4mesh/services/web/endpoints/127.0.0.1:1";
    let zero = "/l4mesh/services/web/endpoints/127.0.0.1:2";
    let bad_addr = "/l4mesh/services/web/endpoints/db.internal:5432";
    // One transaction: one revision, one watch response, one batch.
    etcd.ctl_stdin(
        &["txn"],
        &format!(
            "\nput {bad_json} \"{{weight: 2}}\"\nput {zero} {{\"weight\":0}}\n\
             put {bad_addr} \"\"\nput {} {{\"weight\":2}}\n\n\n",
            key(b)
        ),
    );
    eventually(WITHIN, "b joins a, at weight 2, and nothing else", || {
        etcd_endpoints(admin) == BTreeMap::from([(a.to_string(), 1), (b.to_string(), 2)])
    });
    for needle in [
        format!("key {bad_json} skipped: value {{weight: 2}}: the value is not JSON"),
        format!("key {zero} skipped: value {{\\\"weight\\\":0}}: weight 0 is not from 1 to 256"),
        format!("key {bad_addr} skipped: `db.internal:5432` is not an IP:port address"),
    ] {
        binary.wait_for_line(WITHIN, &needle);
    }
    assert_eq!(tags(web, 10), set_of(b"AB"));
    // A known endpoint whose value turns bad keeps what it had; the next
    // good change (c) shows the bad one was read and passed over.
    let c = tagged_echo_backend(b'C');
    etcd.put(&key(b), "{bad");
    etcd.put(&key(c), "");
    eventually(WITHIN, "c joins; b keeps weight 2", || {
        etcd_endpoints(admin)
            == BTreeMap::from([(a.to_string(), 1), (b.to_string(), 2), (c.to_string(), 1)])
    });
    binary.wait_for_line(WITHIN, &format!("key {} skipped: value {{bad", key(b)));
    etcd.put(&key(b), r#"{"weight": 2}"#);
    etcd.delete(&key(c));
    // A restart reads them all again, with the same verdicts.
    drop(binary);
    let binary = Binary::start(&binary_config(Mode::DEFAULT, &etcd.url()), &[]);
    binary.wait_for_line(WITHIN, &format!("key {zero} skipped"));
    let web = binary.addr();
    eventually(WITHIN, "a and b serve", || tags(web, 6) == set_of(b"AB"));
}

#[test]
fn the_proxy_follows_a_three_member_cluster_through_the_death_of_each_member_and_misses_no_change()
{
    let backends: Vec<SocketAddr> = (0..4u8).map(|i| tagged_echo_backend(b'0' + i)).collect();
    let mut cluster = Cluster::start(3);
    cluster.any().put(&key(backends[0]), "");
    let binary = Binary::start(&binary_config(Mode::DEFAULT, &cluster.urls()), &[]);
    let (web, admin) = (binary.addr(), binary.admin_addr(WITHIN));
    eventually(WITHIN, "0 serves", || tags(web, 4) == set_of(b"0"));
    // Whichever member l4mesh is connected to, one of these kills it.
    for i in 0..3 {
        cluster.kill(i);
        // Changed at once, probably before l4mesh has moved: only resuming
        // from the last revision seen brings it.
        let alive: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| cluster.members[j].url())
            .collect();
        etcdctl(&alive.join(","), &["put", &key(backends[i + 1]), ""]);
        let put = Instant::now();
        let expected: BTreeSet<u8> = (0..=i as u8 + 1).map(|t| b'0' + t).collect();
        // A member's death can leave the cluster without a leader for a
        // few seconds, during which l4mesh's attempts fail and its backoff
        // grows: its next one may come up to the 5 s cap (+20% jitter) after
        // the put, then take dial_timeout + 1 s to connect and 1 s to start
        // the watch, 8.5 s in all.
        eventually(
            Duration::from_secs(15),
            &format!("member m{i} killed: the change is seen"),
            || tags(web, 12) == expected,
        );
        eprintln!(
            "m{i} killed: the change put then seen after {:?}",
            put.elapsed()
        );
        cluster.members[i].restart();
    }
    assert_eq!(etcd_endpoints(admin).len(), 4);
    // One of the three was the member l4mesh was following: it moved on.
    assert!(binary.count_lines("etcd reachable again after") >= 1);
}

#[test]
fn a_frozen_member_is_left_within_the_keep_alive_timeout_and_no_change_is_missed() {
    let backends: Vec<SocketAddr> = (0..4u8).map(|i| tagged_echo_backend(b'0' + i)).collect();
    let cluster = Cluster::start(3);
    cluster.any().put(&key(backends[0]), "");
    let binary = Binary::start(&binary_config(Mode::DEFAULT, &cluster.urls()), &[]);
    let web = binary.addr();
    eventually(WITHIN, "0 serves", || tags(web, 4) == set_of(b"0"));
    // A frozen member (SIGSTOP: its sockets stay open, nothing answers,
    // as in a partition) is noticed only by the HTTP/2 pings: 5 s apart,
    // 5 s to answer. Whichever member l4mesh watches through, one of these
    // freezes it.
    for i in 0..3 {
        cluster.members[i].pause();
        let alive: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| cluster.members[j].url())
            .collect();
        etcdctl(&alive.join(","), &["put", &key(backends[i + 1]), ""]);
        let put = Instant::now();
        let expected: BTreeSet<u8> = (0..=i as u8 + 1).map(|t| b'0' + t).collect();
        // About 10 s to notice the freeze, then the reconnect: each try
        // that lands on the frozen member again costs its timeouts and a
        // growing backoff, which a loaded machine (CI) stretched past 20 s.
        eventually(
            Duration::from_secs(35),
            &format!("member m{i} frozen: the change is seen"),
            || tags(web, 12) == expected,
        );
        eprintln!(
            "m{i} frozen: the change put then seen after {:?}",
            put.elapsed()
        );
        cluster.members[i].resume();
        eventually(WITHIN, "the member is healthy again", || {
            cluster.members[i].healthy()
        });
        if binary.count_lines("etcd reachable again after") > 0 {
            // That was the member l4mesh watched through, and it moved on.
            return;
        }
    }
    panic!("no frozen member made l4mesh move");
}

#[test]
fn a_sidecar_whose_stdout_was_closed_after_its_line_still_exits_0_on_sigterm() {
    let etcd = Etcd::start();
    let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .args([
            "ctl",
            "--etcd",
            &etcd.url(),
            "register",
            "web",
            "127.0.0.1:9001",
        ])
        .args(["--ttl", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // As `| head -1` does: one line, then the pipe is closed.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(&format!("registered {}", key(addr))),
        "{line}"
    );
    drop(stdout);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WITHIN;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(0), "no panic writing to the closed stdout");
    assert_eq!(etcd.get(&key(addr)), None, "the lease was revoked");
}
