//! Connection limits over real sockets: a listener's `max_connections`
//! (process-wide across workers; clients over it are closed at once, counted
//! and logged, and accepting goes on) and `max_connections_per_endpoint` (a
//! full endpoint is skipped by the balancer), on both forwarding paths.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Connects to `addr` from `n` threads at once; each sends one byte and
/// reads the first byte back. Returns the streams that got one (still open)
/// with that byte, and how many were closed instead.
fn rush(addr: SocketAddr, n: usize) -> (Vec<(TcpStream, u8)>, usize) {
    let start = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let _ = stream.write_all(b"x");
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Ok(1) => Some((stream, byte[0])),
                    _ => None,
                }
            })
        })
        .collect();
    let results: Vec<Option<(TcpStream, u8)>> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let closed = results.iter().filter(|r| r.is_none()).count();
    (results.into_iter().flatten().collect(), closed)
}

#[test]
fn it_should_close_clients_over_max_connections_at_once_count_them_and_keep_accepting() {
    // Whatever moves the bytes, a client over the limit is closed the same
    // way.
    for mode in FORWARD_MODES {
        closes_clients_over_max_connections(mode);
    }
}

fn closes_clients_over_max_connections(mode: &str) {
    let dir = TempDir::new();
    let log = dir.join("access.log");
    let text = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [access_log]\npath = \"{}\"\nformat = \"json\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\nmax_connections = 3\n\
         [services.web]\n{}\n",
        log.display(),
        endpoint_list(&[echo_backend()])
    );
    let served = Served::start(&with_forward(&text, mode));
    let (web, admin) = (served.addr("web"), served.server.admin_addr().unwrap());

    // Ten clients at once, spread over both workers: three get through.
    let (mut held, closed) = rush(web, 10);
    assert_eq!((held.len(), closed), (3, 7));
    // One more is accepted and closed at once, not left waiting.
    let mut extra = TcpStream::connect(web).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    // Closed (EOF or reset), not left waiting until the read times out.
    match extra.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("not closed at once: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = samples(admin);
    assert_eq!(
        m["l4mesh_connections_rejected_total{listener=\"web\",reason=\"max_connections\"}"],
        8.0
    );

    // Accepting goes on: when a client leaves, a new one is served.
    drop(held.pop());
    eventually(Duration::from_secs(10), "a new client served", || {
        rush(web, 1).0.len() == 1
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually(Duration::from_secs(10), "eight rejected lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l["end"] == "rejected")
            .collect();
        lines.len() >= 8
    });
    assert!(
        lines
            .iter()
            .all(|l| l["attempts"] == 0 && l["endpoint"].is_null())
    );
}

#[test]
fn it_should_keep_the_listener_count_across_a_reload_that_adds_the_limit() {
    let echo = echo_backend();
    let text = |limit: &str| {
        format!(
            "[runtime]\nworkers = 2\n[listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             {limit}\n[services.web]\n{}\n",
            endpoint_list(&[echo])
        )
    };
    let served = Served::start(&text(""));
    let web = served.addr("web");
    let (held, _) = rush(web, 2);
    assert_eq!(held.len(), 2);
    served.write(&text("max_connections = 2"));
    served.wait_for_reloads(1);
    // Same socket (a limit is no reason to rebind), and the two open
    // clients count.
    assert_eq!(served.addr("web"), web);
    let (none, closed) = rush(web, 3);
    assert_eq!((none.len(), closed), (0, 3));
    drop(held);
    eventually(Duration::from_secs(10), "room again", || {
        rush(web, 1).0.len() == 1
    });
}

#[test]
fn it_should_skip_an_endpoint_at_max_connections_per_endpoint() {
    for mode in FORWARD_MODES {
        skips_full_endpoints(mode);
    }
}

fn skips_full_endpoints(mode: &str) {
    // A has ten times B's weight: without the limit nearly every client
    // would go there.
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let text = config_text(&[(a, 10), (b, 1)], "max_connections_per_endpoint = 2");
    let proxy = start_proxy(&with_forward(&text, mode));
    let web = proxy.local_addr("web").unwrap();
    // Twelve clients at once over both workers: two per endpoint.
    let (held, closed) = rush(web, 12);
    assert_eq!((held.len(), closed), (4, 8));
    let mut tags: Vec<u8> = held.iter().map(|(_, tag)| *tag).collect();
    tags.sort();
    assert_eq!(tags, b"AABB");
    let snapshot = proxy.table().load();
    let active: Vec<u64> = snapshot.services["web"]
        .members
        .iter()
        .map(|m| m.endpoint.active())
        .collect();
    assert_eq!(active, [2, 2]);
    let no_endpoint = snapshot.services["web"].stats.sum(|s| s.no_endpoint.get());
    assert_eq!(no_endpoint, 8);

    // A slot frees on A: the next client goes there, B being full.
    let mut held = held;
    let on_a = held.iter().position(|(_, tag)| *tag == b'A').unwrap();
    drop(held.remove(on_a));
    eventually(Duration::from_secs(10), "room on A", || {
        tag_of(web) == Some(b'A')
    });
}

/// Clients sent at once to a proxy limited to 128 descriptors.
const CROWD: usize = 200;

/// Under a descriptor limit far below what the clients need, l4mesh stops
/// accepting when the next client could not be served, leaving the rest in
/// the backlog, and takes them as connections close: every one is served
/// with its exact bytes, none is reset.
fn serves_a_crowd_under_a_low_descriptor_limit(mode: &str) {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed for this test");
    }
    let text = config_text(&[(echo_backend(), 1)], "").replacen(
        "[runtime]\n",
        "[runtime]\nbacklog = 1024\n",
        1,
    ) + "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let binary = Binary::start(&with_forward(&text, mode), &["prlimit", "--nofile=128:128"]);
    let addr = binary.addr();
    let start = Arc::new(Barrier::new(CROWD));
    let clients: Vec<_> = (0..CROWD)
        .map(|i| {
            let start = Arc::clone(&start);
            thread::spawn(move || -> Result<(), String> {
                let sent = format!("client {i:03} ").repeat(300).into_bytes();
                start.wait();
                let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                // Held open a moment before talking, as a real client would.
                thread::sleep(Duration::from_millis(50));
                stream.write_all(&sent).map_err(|e| format!("write: {e}"))?;
                stream
                    .shutdown(std::net::Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let mut back = Vec::new();
                stream
                    .read_to_end(&mut back)
                    .map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
                if back == sent {
                    Ok(())
                } else {
                    Err(format!("{} bytes back of {}", back.len(), sent.len()))
                }
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{mode}: {} of {CROWD} clients not served: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // It said so once, and counted the time.
    let line = binary.wait_for_line(Duration::from_secs(10), "at capacity: ");
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(binary.count_lines("at capacity: "), 1);
    assert_eq!(binary.count_lines("Too many open files"), 0);
    let admin = binary.admin_addr(Duration::from_secs(10));
    let paused = samples(admin)["l4mesh_accept_paused_seconds_total"];
    assert!(paused > 0.0, "{paused}");
}

#[test]
fn it_should_serve_every_client_past_the_descriptor_limit_when_forwarding_auto() {
    serves_a_crowd_under_a_low_descriptor_limit("auto");
}

#[test]
fn it_should_serve_every_client_past_the_descriptor_limit_when_splicing() {
    serves_a_crowd_under_a_low_descriptor_limit("splice");
}

#[test]
fn it_should_serve_every_client_past_the_descriptor_limit_when_copying() {
    serves_a_crowd_under_a_low_descriptor_limit("copy");
}
