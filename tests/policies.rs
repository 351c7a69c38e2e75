//! The connection-aware and hashing policies over real loopback sockets:
//! least connections and power of two choices spread long-lived connections
//! (whose counts every worker sees), source hashing keeps each client IP on
//! one endpoint.

mod common;

use common::*;
use l4mesh::Proxy;
use socket2::{Domain, Socket, Type};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An echo backend that counts the connections it has accepted.
fn counting_echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let addr = backend(move |mut stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut reader = stream.try_clone().unwrap();
        let _ = std::io::copy(&mut reader, &mut stream);
    });
    (addr, accepted)
}

/// Opens `count` connections one after the other and round-trips a byte on
/// each, so each is established upstream (and counted as active) before the
/// next is picked; returns them still open.
fn open_long_lived(proxy: &Proxy, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = connect(proxy);
            stream.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"x");
            stream
        })
        .collect()
}

/// Starts three counting echo backends behind `balance`, opens 30
/// long-lived connections and returns how many each backend got.
fn spread_30_connections(balance: &str) -> Vec<usize> {
    let backends: Vec<_> = (0..3).map(|_| counting_echo_backend()).collect();
    let endpoints: Vec<_> = backends.iter().map(|(addr, _)| (*addr, 1)).collect();
    let proxy = start_proxy(&config_text(
        &endpoints,
        &format!("balance = \"{balance}\""),
    ));
    let open = open_long_lived(&proxy, 30);
    let counts: Vec<usize> = backends
        .iter()
        .map(|(_, n)| n.load(Ordering::SeqCst))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 30, "{balance}: {counts:?}");
    drop(open);
    counts
}

#[test]
fn it_should_spread_long_lived_connections_evenly_with_least_conn() {
    let counts = spread_30_connections("least_conn");
    assert!(counts.iter().all(|n| (9..=11).contains(n)), "{counts:?}");
}

#[test]
fn it_should_spread_long_lived_connections_nearly_evenly_with_p2c() {
    // Two choices out of three: the most loaded endpoint only gains when it
    // ties with the other one drawn, so the spread stays within a few.
    let counts = spread_30_connections("p2c");
    assert!(counts.iter().all(|n| (7..=13).contains(n)), "{counts:?}");
}

/// Connects to the proxy from the loopback address `source`.
fn connect_from(proxy: &Proxy, source: Ipv4Addr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket
        .connect(&proxy.local_addr("web").unwrap().into())
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn it_should_keep_each_client_ip_on_one_endpoint_with_source_hash() {
    let endpoints = [
        (named_backend("a"), 1),
        (named_backend("b"), 1),
        (named_backend("c"), 1),
    ];
    let proxy = start_proxy(&config_text(&endpoints, "balance = \"source_hash\""));
    let mut used = BTreeSet::new();
    for last in 2..=20 {
        let source = Ipv4Addr::new(127, 0, 0, last);
        let replies: Vec<String> = (0..5)
            .map(|_| read_all(&mut connect_from(&proxy, source)))
            .collect();
        assert!(
            replies.iter().all(|r| *r == replies[0]),
            "{source}: {replies:?}"
        );
        assert!(
            ["a", "b", "c"].contains(&replies[0].as_str()),
            "{replies:?}"
        );
        used.insert(replies[0].clone());
    }
    assert!(used.len() >= 2, "every client IP went to {used:?}");
}
