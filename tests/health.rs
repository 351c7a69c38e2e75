//! Health over real sockets: active checks notice a dead endpoint within
//! their thresholds and bring it back, `send`/`expect` probes, endpoints
//! registered at run time wait for their first check, passive outlier
//! ejection and re-admission under `max_ejection_percent`, and panic mode.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a loaded machine may add to a timing bound (thread wake-ups, the
/// test's own polling, other tests): the bounds below check the order of
/// the promise, and events are waited for against [`DEADLINE`].
const SLACK: Duration = Duration::from_millis(1500);

/// How long to wait for something that should happen well within it.
const DEADLINE: Duration = Duration::from_secs(10);

/// `config_text` plus a `[services.web.health]` table.
fn with_health(endpoints: &[(SocketAddr, u32)], service_extra: &str, health: &str) -> String {
    config_text(endpoints, service_extra) + &format!("[services.web.health]\n{health}\n")
}

/// `config_text` plus a `[services.web.outlier]` table.
fn with_outlier(endpoints: &[(SocketAddr, u32)], service_extra: &str, outlier: &str) -> String {
    config_text(endpoints, service_extra) + &format!("[services.web.outlier]\n{outlier}\n")
}

/// Refused connect attempts counted for `addr` of service `web`.
fn refusals(proxy: &l4mesh::Proxy, addr: SocketAddr) -> u64 {
    let snapshot = proxy.table().load();
    let member = snapshot.services["web"].member(addr).unwrap();
    member.endpoint.stats.sum(|s| s.failures[0].get())
}

/// Ejections counted for `addr` of service `web`.
fn ejections(proxy: &l4mesh::Proxy, addr: SocketAddr) -> u64 {
    let snapshot = proxy.table().load();
    let member = snapshot.services["web"].member(addr).unwrap();
    member.endpoint.stats.sum(|s| s.ejections.get())
}

#[test]
fn it_should_stop_using_a_dead_endpoint_within_its_thresholds_and_use_it_again_once_back() {
    let interval = Duration::from_millis(200);
    let mut a = Switchable::tagged(b'A');
    let b = tagged_echo_backend(b'B');
    let text = with_health(
        &[(a.addr, 1), (b, 1)],
        "connect_attempts = 1",
        "interval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2",
    );
    let binary = Binary::start(&text, &[]);
    let web = binary.addr();
    eventually(DEADLINE, "both endpoints serve", || {
        let tags: Vec<u8> = (0..4).filter_map(|_| tag_of(web)).collect();
        tags.contains(&b'A') && tags.contains(&b'B')
    });

    a.stop();
    let stopped = Instant::now();
    // Its port stays taken while it is down, so no other test's listener
    // can appear there.
    assert!(std::net::TcpListener::bind(a.addr).is_err());
    let line = binary.wait_for_line(
        DEADLINE,
        &format!(
            "endpoint {} is down after 2 failed check(s) in a row: connect refused",
            a.addr
        ),
    );
    // Two failed probes, each at most 1.1 intervals apart, plus one interval.
    let took = stopped.elapsed();
    assert!(took < interval * 3 + SLACK, "down after {took:?}");
    assert!(line.contains("WARN"), "{line}");
    // No new connection goes to it, even with connect_attempts = 1.
    for _ in 0..20 {
        assert_eq!(tag_of(web), Some(b'B'));
    }

    a.restart();
    let restarted = Instant::now();
    let line = binary.wait_for_line(
        DEADLINE,
        &format!("endpoint {} is up after 2 passed check(s) in a row", a.addr),
    );
    let took = restarted.elapsed();
    assert!(took < interval * 3 + SLACK, "up after {took:?}");
    assert!(line.contains("INFO"), "{line}");
    eventually(DEADLINE, "A used again", || {
        (0..4).any(|_| tag_of(web) == Some(b'A'))
    });
}

/// A backend that reads one 6-byte command and answers `reply` to `PING\r\n`.
fn pinged(reply: &'static [u8]) -> SocketAddr {
    backend(move |mut s| {
        let mut command = [0u8; 6];
        if s.read_exact(&mut command).is_ok() {
            let answer: &[u8] = if &command == b"PING\r\n" {
                reply
            } else {
                b"-ERR unknown command\r\n"
            };
            let _ = s.write_all(answer);
        }
    })
}

#[test]
fn it_should_mark_down_an_endpoint_whose_reply_does_not_start_with_expect() {
    let good = pinged(b"+PONG\r\n");
    let wrong = pinged(b"-LOADING\r\n");
    let proxy = start_proxy(&with_health(
        &[(good, 1), (wrong, 1)],
        "connect_attempts = 1",
        "interval = \"200ms\"\ntimeout = \"150ms\"\nunhealthy_threshold = 2\n\
         send = \"PING\\r\\n\"\nexpect = \"+PONG\"",
    ));
    eventually(DEADLINE, "the wrong one marked down", || {
        member_state(proxy.table(), "web", wrong) == "down"
    });
    let snapshot = proxy.table().load();
    let failure = snapshot.services["web"]
        .member(wrong)
        .unwrap()
        .endpoint
        .health
        .last_failure()
        .unwrap();
    assert!(
        failure.starts_with("reply did not start with \"+PONG\" (got \"-"),
        "{failure}"
    );
    assert_eq!(member_state(proxy.table(), "web", good), "up");
    for _ in 0..10 {
        let mut client = connect(&proxy);
        client.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_all(&mut client), "+PONG\r\n");
    }
}

#[test]
fn it_should_give_an_endpoint_registered_at_run_time_no_traffic_until_its_first_check_passes() {
    let a = tagged_echo_backend(b'A');
    let text = format!(
        "[runtime]\nworkers = 2\n[registry]\nsocket = \"SOCKET\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\nconnect_attempts = 1\n{}\n\
         [services.web.health]\ninterval = \"3s\"\ntimeout = \"200ms\"\nhealthy_threshold = 5\n",
        endpoint_list(&[a])
    );
    let served = Served::start(&text);
    let (web, socket) = (served.addr("web"), served.socket());
    let state = |addr: SocketAddr| {
        let reply = registry(&socket, "list web");
        reply["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["addr"] == addr.to_string())
            .map(|e| e["state"].as_str().unwrap().to_string())
            .unwrap()
    };

    // Registered while nothing listens: it never takes a client.
    let dead = refusing_address();
    assert_eq!(
        registry(&socket, &format!("register web {dead}"))["ok"],
        true
    );
    for _ in 0..20 {
        assert_eq!(tag_of(web), Some(b'A'));
    }
    eventually(DEADLINE, "its first check failed", || state(dead) == "down");

    // A live one is used after one passed check, which runs as soon as it
    // is registered; healthy_threshold (5) of them would take at least
    // 4 × 2.7 s.
    let b = tagged_echo_backend(b'B');
    assert_eq!(registry(&socket, &format!("register web {b}"))["ok"], true);
    eventually(Duration::from_secs(6), "B takes clients", || {
        (0..4).any(|_| tag_of(web) == Some(b'B'))
    });
    assert_eq!(state(b), "up");
    assert_eq!(state(dead), "down");
}

#[test]
fn it_should_eject_a_refusing_endpoint_and_readmit_it_when_the_ejection_ends() {
    let mut a = Switchable::tagged(b'A');
    let b = tagged_echo_backend(b'B');
    let proxy = start_proxy(&with_outlier(
        &[(a.addr, 1), (b, 1)],
        "connect_attempts = 2",
        "consecutive_failures = 3\nbase_ejection = \"600ms\"\nmax_ejection_percent = 50",
    ));
    let web = proxy.local_addr("web").unwrap();
    a.stop();
    // Every client still gets through by failover; three refusals in a row
    // eject A. The ejection began after the last look that found A in.
    let mut not_yet_ejected = Instant::now();
    eventually(DEADLINE, "A ejected", || {
        assert_eq!(tag_of(web), Some(b'B'));
        let looked = Instant::now();
        let ejected = member_state(proxy.table(), "web", a.addr) == "ejected";
        if !ejected {
            not_yet_ejected = looked;
        }
        ejected
    });
    assert_eq!(refusals(&proxy, a.addr), 3);
    assert_eq!(ejections(&proxy, a.addr), 1);
    // While it is out, nobody tries it.
    for _ in 0..10 {
        assert_eq!(tag_of(web), Some(b'B'));
    }
    assert_eq!(refusals(&proxy, a.addr), 3);

    a.restart();
    eventually(DEADLINE, "A re-admitted", || {
        member_state(proxy.table(), "web", a.addr) == "up"
    });
    // Out for its whole base_ejection (600 ms) at least.
    let out = not_yet_ejected.elapsed();
    assert!(out >= Duration::from_millis(600), "{out:?}");
    eventually(DEADLINE, "A serves again", || {
        (0..4).any(|_| tag_of(web) == Some(b'A'))
    });
    assert_eq!(ejections(&proxy, a.addr), 1);
}

#[test]
fn it_should_never_eject_more_than_max_ejection_percent_of_a_service() {
    let (d1, d2) = (refusing_address(), refusing_address());
    let b = tagged_echo_backend(b'B');
    let proxy = start_proxy(&with_outlier(
        &[(d1, 1), (d2, 1), (b, 1)],
        "connect_attempts = 3",
        "consecutive_failures = 2\nbase_ejection = \"1m\"\nmax_ejection_percent = 34",
    ));
    let web = proxy.local_addr("web").unwrap();
    let ejected = || {
        [d1, d2]
            .iter()
            .filter(|a| member_state(proxy.table(), "web", **a) == "ejected")
            .count()
    };
    for _ in 0..30 {
        assert_eq!(tag_of(web), Some(b'B'));
        assert!(ejected() <= 1, "34% of 3 endpoints is one");
    }
    assert_eq!(ejected(), 1);
    // The other one kept failing and stayed in.
    let (out, kept) = if member_state(proxy.table(), "web", d1) == "ejected" {
        (d1, d2)
    } else {
        (d2, d1)
    };
    assert_eq!(ejections(&proxy, out), 1);
    assert_eq!(ejections(&proxy, kept), 0);
    assert!(refusals(&proxy, kept) > 2, "{}", refusals(&proxy, kept));
}

/// Config with the admin listener and two tagged endpoints whose checks
/// always fail (their tag is not `+OK`).
fn all_down_config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\nconnect_attempts = 1\n{}\n\
         [services.web.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nunhealthy_threshold = 1\n\
         expect = \"+OK\"\n",
        endpoint_list(&[a, b])
    )
}

#[test]
fn it_should_balance_over_every_endpoint_in_panic_mode_when_all_are_down_and_count_it() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&all_down_config(a, b));
    let admin = served.server.admin_addr().unwrap();
    let healthy = |m: &std::collections::HashMap<String, f64>, addr: SocketAddr| {
        m[&format!("l4mesh_endpoint_healthy{{service=\"web\",endpoint=\"{addr}\"}}")]
    };
    eventually(DEADLINE, "both endpoints down", || {
        let m = samples(admin);
        healthy(&m, a) == 0.0 && healthy(&m, b) == 0.0
    });
    // Traffic is still attempted, over both.
    let tags: Vec<Option<u8>> = (0..20).map(|_| tag_of(served.addr("web"))).collect();
    assert!(
        tags.contains(&Some(b'A')) && tags.contains(&Some(b'B')),
        "{tags:?}"
    );
    assert!(tags.iter().all(Option::is_some), "{tags:?}");
    let m = samples(admin);
    assert_eq!(m["l4mesh_panic_total{service=\"web\"}"], 20.0);
    assert_eq!(m["l4mesh_endpoints{service=\"web\",state=\"down\"}"], 2.0);
    assert_eq!(m["l4mesh_endpoints{service=\"web\",state=\"up\"}"], 0.0);
    let (_, body) = get(admin, "GET", "/config");
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    let endpoint = &table["services"][0]["endpoints"][0];
    assert_eq!(endpoint["state"], "down");
    assert_eq!(endpoint["health"]["checks"], "down");
    let failure = endpoint["health"]["last_failure"].as_str().unwrap();
    assert!(
        failure.starts_with("reply did not start with \"+OK\""),
        "{failure}"
    );
}

#[test]
fn it_should_ignore_health_below_panic_threshold_but_not_at_threshold_zero() {
    // Checks expect "A": A passes, B fails; one of two usable is 50%.
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let service = |name: &str, extra: &str| {
        format!(
            "[listeners.{name}]\nlisten = \"127.0.0.1:0\"\nservice = \"{name}\"\n\
             [services.{name}]\nconnect_attempts = 1\n{extra}\n{}\n\
             [services.{name}.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\n\
             unhealthy_threshold = 1\nexpect = \"A\"\n",
            endpoint_list(&[a, b])
        )
    };
    let text = format!(
        "[runtime]\nworkers = 2\n{}{}",
        service("strict", ""),
        service("web", "panic_threshold = 60")
    );
    let proxy = start_proxy(&text);
    eventually(DEADLINE, "B down for both services", || {
        member_state(proxy.table(), "strict", b) == "down"
            && member_state(proxy.table(), "web", b) == "down"
    });
    let strict = proxy.local_addr("strict").unwrap();
    for _ in 0..20 {
        assert_eq!(tag_of(strict), Some(b'A'));
    }
    let web = proxy.local_addr("web").unwrap();
    let tags: Vec<Option<u8>> = (0..20).map(|_| tag_of(web)).collect();
    assert!(tags.contains(&Some(b'B')), "{tags:?}");
    let snapshot = proxy.table().load();
    let panics = |s: &str| snapshot.services[s].stats.sum(|slot| slot.panic.get());
    assert_eq!((panics("strict"), panics("web")), (0, 20));
}

#[test]
fn it_should_keep_health_state_across_a_reload_of_an_unchanged_endpoint() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let health = "[services.web.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\n\
                  unhealthy_threshold = 1\nhealthy_threshold = 1\nexpect = \"A\"\n";
    let text = |idle: &str| {
        format!(
            "[runtime]\nworkers = 2\n[listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             [services.web]\nconnect_attempts = 1\nidle_timeout = \"{idle}\"\n{}\n{health}",
            endpoint_list(&[a, b])
        )
    };
    let served = Served::start(&text("1h"));
    let table = served.server.table().clone();
    eventually(DEADLINE, "B down", || {
        member_state(&table, "web", b) == "down"
    });
    served.write(&text("2h"));
    served.wait_for_reloads(1);
    // B carried over down: no client reaches it right after the reload.
    assert_eq!(member_state(&table, "web", b), "down");
    let web = served.addr("web");
    for _ in 0..10 {
        assert_eq!(tag_of(web), Some(b'A'));
    }
}
