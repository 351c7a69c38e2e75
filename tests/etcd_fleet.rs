//! The etcd source end to end: the real `l4mesh` binary watching a real
//! etcd, endpoints registered by the real `l4mesh ctl --etcd register`
//! helper, traffic through the proxy to tagged echo backends.

mod common;
mod support_etcd;

use common::*;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support_etcd::{Etcd, Gate, Killed};

fn key(addr: SocketAddr) -> String {
    format!("/l4mesh/services/web/endpoints/{addr}")
}

/// A proxy for service `web` (file endpoint `file`, plus etcd's) watching
/// `etcd_urls`, with a registry socket in `dir`.
fn proxy(mode: Mode, file: SocketAddr, etcd_urls: &[String], dir: &TempDir) -> Binary {
    let urls: Vec<String> = etcd_urls.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "{}[registry]\nsocket = \"{}\"\n\
         [discovery.etcd]\nendpoints = [{}]\ndial_timeout = \"500ms\"\n",
        config_text(&[(file, 1)], "discovery = \"etcd\""),
        dir.join("registry.sock").display(),
        urls.join(", ")
    );
    Binary::start(&with_mode(&text, mode), &[])
}

/// The endpoints `list web` shows from etcd.
fn from_etcd(dir: &TempDir) -> HashSet<SocketAddr> {
    let reply = registry(&dir.join("registry.sock"), "list web");
    assert_eq!(reply["ok"], true, "{reply}");
    reply["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "etcd")
        .map(|e| e["addr"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Tags seen over `n` new connections.
fn tags(addr: SocketAddr, n: usize) -> HashSet<u8> {
    (0..n).filter_map(|_| tag_of(addr)).collect()
}

fn register(etcd: &Etcd, addr: SocketAddr) -> Killed {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .args(["ctl", "--etcd", &etcd.urls().join(",")])
            .args(["register", "web", &addr.to_string(), "--ttl", "2s"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"registered");
    child
}

/// A connection through `web` that reached the backend tagged `tag`.
fn open_to(web: SocketAddr, tag: u8) -> TcpStream {
    for _ in 0..200 {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut t = [0u8];
        s.read_exact(&mut t).unwrap();
        if t[0] == tag {
            return s;
        }
    }
    panic!("no connection reached {}", tag as char);
}

fn still_echoes(s: &mut TcpStream) {
    s.write_all(b"still here").unwrap();
    let mut echoed = [0u8; 10];
    s.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still here");
}

per_mode! {
    /// A registered endpoint serves within 1 s; SIGTERM of its helper takes
    /// it out of new connections at once, SIGKILL when the lease expires;
    /// connections open to either keep echoing.
    fn registered_endpoints_serve_and_leave_while_open_connections_stay(mode) {
        let etcd = Etcd::start();
        let a = tagged_echo_backend(b'A');
        let b = tagged_echo_backend(b'B');
        let c = tagged_echo_backend(b'C');
        let dir = TempDir::new();
        let l4 = proxy(mode, a, &etcd.urls(), &dir);
        let web = l4.addr();
        assert_eq!(tags(web, 6), HashSet::from([b'A']));

        let mut helper_b = register(&etcd, b);
        let start = Instant::now();
        eventually(Duration::from_secs(1), "B serving within 1 s", || tag_of(web) == Some(b'B'));
        eprintln!("registered → first connection to B: {:?}", start.elapsed());
        let mut helper_c = register(&etcd, c);
        eventually(Duration::from_secs(1), "C serving within 1 s", || {
            tags(web, 9).contains(&b'C')
        });
        let mut open_b = open_to(web, b'B');
        let mut open_c = open_to(web, b'C');

        signal_pid(helper_b.id(), "TERM");
        assert!(helper_b.wait().unwrap().success());
        eventually(Duration::from_secs(1), "B gone after SIGTERM", || !from_etcd(&dir).contains(&b));
        assert_eq!(tags(web, 12), HashSet::from([b'A', b'C']));
        still_echoes(&mut open_b);

        helper_c.kill().unwrap();
        let _ = helper_c.wait();
        let killed = Instant::now();
        eventually(Duration::from_secs(5), "C gone at lease expiry", || !from_etcd(&dir).contains(&c));
        eprintln!("C killed → gone: {:?}", killed.elapsed());
        assert_eq!(tags(web, 12), HashSet::from([b'A']));
        still_echoes(&mut open_c);
        still_echoes(&mut open_b);
    }
}

/// etcd killed while connections flow: every connection still succeeds
/// on the last endpoints; after etcd returns, and after a partition during
/// which endpoints changed, the proxy catches up.
#[test]
fn etcd_killed_mid_traffic_keeps_serving_and_catches_up() {
    let mut etcd = Etcd::start();
    let gate = Gate::new(etcd.addr(0));
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let c = tagged_echo_backend(b'C');
    let d = tagged_echo_backend(b'D');
    let mut kv = etcd.kv();
    kv.put(&key(b), "{\"weight\": 1}");
    kv.put(&key(c), "{}");
    let dir = TempDir::new();
    let l4 = proxy(Mode::DEFAULT, a, &[gate.url()], &dir);
    let web = l4.addr();
    eventually(Duration::from_secs(2), "B and C from etcd", || {
        from_etcd(&dir).len() == 2
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tag_of(web) {
                    Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let mut open = open_to(web, b'B');
    etcd.kill(0);
    l4.wait_for_line(Duration::from_secs(5), "unreachable for");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tags(web, 12),
        HashSet::from([b'A', b'B', b'C']),
        "the last endpoints serve"
    );
    etcd.restart(0);
    kv.put(&key(d), "{}");
    eventually(Duration::from_secs(10), "D after etcd's return", || {
        from_etcd(&dir).len() == 3
    });
    l4.wait_for_line(Duration::from_secs(1), "etcd reachable again");

    // A partition during which B leaves: seen once it heals.
    gate.cut();
    std::thread::sleep(Duration::from_millis(300));
    kv.delete(&key(b));
    gate.restore();
    eventually(
        Duration::from_secs(10),
        "B gone after the partition",
        || from_etcd(&dir) == HashSet::from([c, d]),
    );
    assert_eq!(tags(web, 16), HashSet::from([b'A', b'C', b'D']));
    still_echoes(&mut open);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "connections failed while etcd was away"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
}

/// Two proxies on one etcd end with the same endpoint set after a burst
/// of changes.
#[test]
fn two_proxies_watching_one_etcd_converge() {
    let etcd = Etcd::start();
    let a = tagged_echo_backend(b'A');
    let (d1, d2) = (TempDir::new(), TempDir::new());
    let _p1 = proxy(Mode::DEFAULT, a, &etcd.urls(), &d1);
    let _p2 = proxy(Mode::DEFAULT, a, &etcd.urls(), &d2);
    let mut kv = etcd.kv();
    let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], 20000 + i));
    let mut want = HashSet::new();
    for i in 0..40 {
        kv.put(&key(addr(i)), &format!("{{\"weight\": {}}}", 1 + i % 5));
        want.insert(addr(i));
        if i % 3 == 0 {
            kv.delete(&key(addr(i / 2)));
            want.remove(&addr(i / 2));
        }
    }
    eventually(Duration::from_secs(3), "both proxies converged", || {
        from_etcd(&d1) == want && from_etcd(&d2) == want
    });
}
