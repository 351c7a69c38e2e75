//! Failover past refused and silent endpoints, never the same one twice.

mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn it_should_fail_over_past_a_refused_endpoint() {
    let dead = refusing_address();
    // Its port stays taken, so no other test's listener can appear there.
    assert!(std::net::TcpListener::bind(dead).is_err());
    let live = named_backend("live");
    let proxy = start_proxy(&config_text(
        &[(dead, 1), (live, 1)],
        "connect_attempts = 2",
    ));
    // Round robin starts at the dead one every other time; all must get through.
    for _ in 0..10 {
        assert_eq!(read_all(&mut connect(&proxy)), "live");
    }
}

/// A listener whose accept queue is full and never drained: the kernel drops
/// further SYNs, so connects to it hang until they time out.
fn silent_endpoint() -> (SocketAddr, Vec<impl Sized>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(socket)];
    for _ in 0..3 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            keep.push(Box::new(s));
        }
    }
    (addr, keep)
}

#[test]
fn it_should_fail_over_past_an_endpoint_that_does_not_answer() {
    let (silent, _keep) = silent_endpoint();
    let live = named_backend("live");
    let proxy = start_proxy(&config_text(
        &[(silent, 1), (live, 1)],
        "connect_timeout = \"300ms\"\nconnect_attempts = 2",
    ));
    // The first connection goes to the silent endpoint first (round robin).
    let started = Instant::now();
    assert_eq!(read_all(&mut connect(&proxy)), "live");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn it_should_close_the_client_and_log_every_attempt_when_all_fail() {
    let (a, b, c) = (refusing_address(), refusing_address(), refusing_address());
    let binary = Binary::start(
        &config_text(&[(a, 1), (b, 1), (c, 1)], "connect_attempts = 2"),
        &[],
    );
    let mut client = TcpStream::connect(binary.addr()).unwrap();
    assert_eq!(read_all(&mut client), "");
    let line = binary.wait_for_line(Duration::from_secs(10), "answered after");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("2 attempt(s)"), "{line}");
    let all = [a, b, c];
    let tried: Vec<_> = all
        .iter()
        .filter(|addr| line.contains(&format!("{addr} refused")))
        .collect();
    assert_eq!(tried.len(), 2, "two distinct endpoints: {line}");
    assert_eq!(binary.count_lines("answered after"), 1);
}
