//! Per-client limits over real sockets, clients coming from several
//! loopback addresses: `max_connections_per_client`,
//! `connection_rate_per_client`, `client_prefix_v4`, and limits keyed by
//! the PROXY protocol header's source behind a real HAProxy.

mod common;

use common::identity::*;
use common::peers::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn serve(mode: Mode, log: &AccessLog, keys: &str) -> Served {
    let text = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n{keys}\n\
         [services.web]\n{}\n",
        log.table(),
        endpoint_list(&[echo_backend()])
    );
    Served::start(&with_mode(&text, mode))
}

/// Connects from `source` and round-trips a byte: the open stream, or
/// `None` if the connection was reset instead.
fn open_from(source: &str, addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(source, addr);
    stream.write_all(b"x").ok()?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(stream),
        _ => None,
    }
}

fn rejected(served: &Served, reason: &str) -> f64 {
    by_reason(served, "l4mesh_connections_rejected_total", "web", reason)
}

per_mode! {
    /// Two connections per client address: the third from one address is
    /// reset at once, counted and logged, while two other addresses each
    /// get their two.
    fn it_should_reset_a_client_over_its_connection_limit_and_no_other(mode) {
        let dir = TempDir::new();
        let log = AccessLog(dir.join("access.log"));
        let served = serve(mode, &log, "max_connections_per_client = 2");
        let web = served.addr("web");
        let mut held = Vec::new();
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            for _ in 0..2 {
                held.push(open_from(source, web).unwrap_or_else(|| panic!("{mode}: {source} refused")));
            }
        }
        let mut third = connect_from("127.0.0.2", web);
        assert!(reset_after_sending(&mut third, b"x"), "{mode}");
        assert_eq!(rejected(&served, "max_connections_per_client"), 1.0);
        assert_eq!(rejected(&served, "connection_rate_per_client"), 0.0);
        let refused: Vec<_> = log
            .wait("web", 1)
            .into_iter()
            .filter(|r| r["end"] == "client_limit")
            .collect();
        assert_eq!(refused.len(), 1);
        assert!(refused[0]["client"].as_str().unwrap().starts_with("127.0.0.2:"));
        // One closes: its client may open another.
        drop(held.remove(0));
        eventually(Duration::from_secs(5), "room for 127.0.0.2 again", || {
            open_from("127.0.0.2", web).map(|s| held.push(s)).is_some()
        });
    }
}

/// Five connections a minute: a burst of ten gets exactly five through
/// and another address is untouched; at five a second, one more gets
/// through within the second.
#[test]
fn it_should_hold_a_client_to_its_connection_rate() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let served = serve(Mode::DEFAULT, &log, "connection_rate_per_client = \"5/m\"");
    let web = served.addr("web");
    let through = (0..10)
        .filter(|_| open_from("127.0.0.2", web).is_some())
        .count();
    assert_eq!(through, 5);
    assert_eq!(rejected(&served, "connection_rate_per_client"), 5.0);
    assert!(open_from("127.0.0.3", web).is_some());

    let served = serve(Mode::DEFAULT, &log, "connection_rate_per_client = \"5/s\"");
    let web = served.addr("web");
    let spent = (0..20)
        .take_while(|_| open_from("127.0.0.2", web).is_some())
        .count();
    assert!(spent < 20, "the rate never held");
    let refill = Instant::now();
    eventually(Duration::from_secs(3), "a token back", || {
        open_from("127.0.0.2", web).is_some()
    });
    assert!(
        refill.elapsed() < Duration::from_secs(1),
        "{:?}",
        refill.elapsed()
    );
}

/// `client_prefix_v4 = 24`: 127.0.0.2 and 127.0.0.3 are one client;
/// 127.0.1.2 is another.
#[test]
fn it_should_count_a_whole_prefix_as_one_client() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let served = serve(
        Mode::DEFAULT,
        &log,
        "max_connections_per_client = 1\nclient_prefix_v4 = 24",
    );
    let web = served.addr("web");
    let _first = open_from("127.0.0.2", web).unwrap();
    assert!(open_from("127.0.0.3", web).is_none());
    let _other = open_from("127.0.1.2", web).unwrap();
}

/// Behind HAProxy every client arrives from HAProxy's one address; the
/// limits count the PROXY header's source, so each client has its own.
#[test]
fn it_should_limit_each_client_behind_a_proxy_by_its_header_address() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let served = serve(
        Mode::DEFAULT,
        &log,
        "max_connections_per_client = 1\naccept_proxy = \"v2\"\n\
         trusted_sources = [\"127.0.0.1/32\"]",
    );
    let front = free_addr();
    // `retries 0`: HAProxy takes a reset right after its connect for a
    // failed connect and would try again a second later, counting twice.
    let _haproxy = Haproxy::start(
        &format!(
            "listen f\n  bind {front}\n  retries 0\n  server l4 {} send-proxy-v2\n",
            served.addr("web")
        ),
        front,
    );
    let _two = open_from("127.0.0.2", front).unwrap();
    let _three = open_from("127.0.0.3", front).unwrap();
    assert!(open_from("127.0.0.2", front).is_none());
    assert_eq!(rejected(&served, "max_connections_per_client"), 1.0);
    // Nothing tries it again behind the test's back.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(rejected(&served, "max_connections_per_client"), 1.0);
}
