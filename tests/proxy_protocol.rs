//! The PROXY protocol over real sockets, with real peers both ways: HAProxy
//! `send-proxy`/`send-proxy-v2` into an `accept_proxy` listener, a second
//! hop through l4mesh's own `send_proxy`, l4mesh into HAProxy `accept-proxy`
//! and nginx `proxy_protocol`; untrusted senders, missing, slow, malformed
//! and LOCAL headers, and headers split across segments.

mod common;

use common::identity::*;
use common::peers::*;
use common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A server with listener `web` → service `web` (endpoints `endpoints`),
/// `listener` and `service` keys added, an admin listener and a JSON
/// access log.
fn serve(
    mode: Mode,
    log: &AccessLog,
    listener: &str,
    service: &str,
    endpoints: &[SocketAddr],
) -> Served {
    let text = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n{listener}\n\
         [services.web]\n{}\n{service}\n",
        log.table(),
        endpoint_list(endpoints)
    );
    Served::start(&with_mode(&text, mode))
}

const TRUSTED: &str = "accept_proxy = \"any\"\ntrusted_sources = [\"127.0.0.1/32\"]";

fn header_errors(served: &Served, reason: &str) -> f64 {
    by_reason(served, "l4mesh_proxy_header_errors_total", "web", reason)
}

per_mode! {
    /// HAProxy sends each version; the client's own address (127.0.0.2)
    /// reaches the access log, HAProxy's moves to `peer`, and 1 MiB echoes
    /// intact.
    fn it_should_take_the_client_address_from_haproxy_send_proxy_v1_and_v2(mode) {
        let dir = TempDir::new();
        let log = AccessLog(dir.join("access.log"));
        let served = serve(mode, &log, TRUSTED, "", &[echo_backend()]);
        let web = served.addr("web");
        let (v1, v2) = (free_addr(), free_addr());
        let _haproxy = Haproxy::start(
            &format!(
                "listen v1\n  bind {v1}\n  server l4 {web} send-proxy\n\
                 listen v2\n  bind {v2}\n  server l4 {web} send-proxy-v2\n"
            ),
            v2,
        );
        for front in [v1, v2] {
            let mut client = connect_from("127.0.0.2", front);
            let port = client.local_addr().unwrap().port();
            echo_exactly(&mut client, &payload(1 << 20));
            drop(client);
            let record = log.of_client("web", &format!("127.0.0.2:{port}"));
            assert!(record["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{record}");
            assert_eq!(record["rx_bytes"], 1 << 20);
            assert_eq!(record["tx_bytes"], 1 << 20);
        }
        assert_eq!(header_errors(&served, "malformed"), 0.0);
    }
}

/// HAProxy → l4mesh A (`accept_proxy`, `send_proxy = "v2"`) → l4mesh B
/// (`accept_proxy`): B logs the client HAProxy saw.
#[test]
fn it_should_carry_the_client_address_through_a_second_hop() {
    let dir = TempDir::new();
    let (log_a, log_b) = (AccessLog(dir.join("a.log")), AccessLog(dir.join("b.log")));
    let b = serve(Mode::DEFAULT, &log_b, TRUSTED, "", &[echo_backend()]);
    let a = serve(
        Mode::DEFAULT,
        &log_a,
        TRUSTED,
        "send_proxy = \"v2\"",
        &[b.addr("web")],
    );
    let front = free_addr();
    let _haproxy = Haproxy::start(
        &format!(
            "listen f\n  bind {front}\n  server l4 {} send-proxy\n",
            a.addr("web")
        ),
        front,
    );
    let mut client = connect_from("127.0.0.2", front);
    let port = client.local_addr().unwrap().port();
    echo_exactly(&mut client, &payload(100_000));
    let expected = format!("127.0.0.2:{port}");
    log_a.of_client("web", &expected);
    let at_b = log_b.of_client("web", &expected);
    assert!(at_b["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(at_b["rx_bytes"], 100_000);
}

/// l4mesh `send_proxy` v1 and v2 into HAProxy `accept-proxy` and nginx
/// `proxy_protocol`: their logs show the client's address.
#[test]
fn it_should_send_the_client_address_to_haproxy_and_nginx() {
    let echo = echo_backend();
    let (haproxy_port, nginx_port) = (free_addr(), free_addr());
    let haproxy = Haproxy::start(
        &format!("listen pp\n  bind {haproxy_port} accept-proxy\n  server e {echo}\n"),
        haproxy_port,
    );
    let nginx = Nginx::start(
        &format!(
            "log_format pp '$proxy_protocol_addr:$proxy_protocol_port via $remote_addr';\n\
             server {{ listen {nginx_port} proxy_protocol; proxy_pass {echo}; \
             proxy_half_close on; access_log DIR/access.log pp; }}"
        ),
        "",
        nginx_port,
    );
    for version in ["v1", "v2"] {
        for (peer, target) in [("haproxy", haproxy_port), ("nginx", nginx_port)] {
            let dir = TempDir::new();
            let log = AccessLog(dir.join("access.log"));
            let served = serve(
                Mode::DEFAULT,
                &log,
                "",
                &format!("send_proxy = \"{version}\""),
                &[target],
            );
            let mut client = connect_from("127.0.0.3", served.addr("web"));
            let port = client.local_addr().unwrap().port();
            echo_exactly(&mut client, &payload(4096));
            let expected = format!("127.0.0.3:{port}");
            match peer {
                "haproxy" => {
                    haproxy.0.wait_for_line(&expected);
                }
                _ => eventually(
                    Duration::from_secs(10),
                    &format!("nginx logs {expected}"),
                    || {
                        nginx
                            .read("access.log")
                            .contains(&format!("{expected} via 127.0.0.1"))
                    },
                ),
            }
        }
    }
}

/// A client outside `trusted_sources` is reset and counted by default, and
/// served under its own address with `untrusted_sources = "plain"`.
#[test]
fn it_should_reset_untrusted_senders_or_serve_them_plain_as_asked() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let only = "accept_proxy = \"v2\"\ntrusted_sources = [\"127.0.0.9/32\"]";
    let served = serve(Mode::DEFAULT, &log, only, "", &[echo_backend()]);
    let mut client = connect_from("127.0.0.2", served.addr("web"));
    assert!(reset_after_sending(&mut client, b"hello"));
    assert_eq!(log.wait("web", 1)[0]["end"], "untrusted_source");
    assert_eq!(header_errors(&served, "untrusted"), 1.0);

    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let plain = format!("{only}\nuntrusted_sources = \"plain\"");
    let served = serve(Mode::DEFAULT, &log, &plain, "", &[echo_backend()]);
    let mut client = connect_from("127.0.0.2", served.addr("web"));
    let port = client.local_addr().unwrap().port();
    echo_exactly(&mut client, b"a plain client");
    let record = &log.wait("web", 1)[0];
    assert_eq!(record["client"], format!("127.0.0.2:{port}"));
    assert_eq!(record["peer"], serde_json::Value::Null);
}

/// A trusted sender without a valid header is reset, the backend never
/// sees it, and the reason is counted: a plain client at once, a malformed
/// header at once, a slow one at `proxy_header_timeout`.
#[test]
fn it_should_reset_missing_malformed_and_slow_headers() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let recorder = Recorder::start();
    let keys = format!("{TRUSTED}\nproxy_header_timeout = \"300ms\"");
    let served = serve(Mode::DEFAULT, &log, &keys, "", &[recorder.addr]);
    let web = served.addr("web");
    let mut bad_v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bad_v2.extend_from_slice(&[0x31, 0x11, 0, 12]);
    for attempt in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        &bad_v2,
    ] {
        let mut client = connect_from("127.0.0.1", web);
        let started = Instant::now();
        assert!(reset_after_sending(&mut client, attempt), "{attempt:?}");
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "refused at once"
        );
    }
    let mut slow = connect_from("127.0.0.1", web);
    slow.write_all(b"PROXY TCP4 ").unwrap();
    let started = Instant::now();
    assert_eq!(read_to_end(&mut slow).1, Ended::Reset);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(header_errors(&served, "malformed"), 3.0);
    assert_eq!(header_errors(&served, "timeout"), 1.0);
    let records = log.wait("web", 4);
    assert!(
        records.iter().all(|r| r["end"] == "proxy_header_error"),
        "{records:?}"
    );
    assert!(
        !recorder.got_any(Duration::from_millis(200)),
        "the backend saw nothing"
    );
}

/// A header sent a byte at a time, then the payload; a header and the
/// payload in one write; a LOCAL header: the backend gets exactly the
/// payload, never a header byte.
#[test]
fn it_should_forward_exactly_the_bytes_after_the_header_however_they_arrive() {
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let recorder = Recorder::start();
    let served = serve(Mode::DEFAULT, &log, TRUSTED, "", &[recorder.addr]);
    let web = served.addr("web");
    let data = payload(200_000);

    let mut split = connect_from("127.0.0.1", web);
    for byte in b"PROXY TCP4 203.0.113.7 127.0.0.1 4444 80\r\n" {
        split.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    split.write_all(&data).unwrap();
    drop(split);
    assert_eq!(sha(&recorder.next()), sha(&data));

    let mut one = b"PROXY TCP6 2001:db8::7 ::1 5555 80\r\n".to_vec();
    one.extend_from_slice(&data);
    let mut whole = connect_from("127.0.0.1", web);
    whole.write_all(&one).unwrap();
    drop(whole);
    assert_eq!(sha(&recorder.next()), sha(&data));

    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.extend_from_slice(&data);
    let mut health = connect_from("127.0.0.1", web);
    let port = health.local_addr().unwrap().port();
    health.write_all(&local).unwrap();
    drop(health);
    assert_eq!(sha(&recorder.next()), sha(&data));

    let records = log.wait("web", 3);
    let clients: Vec<&str> = records
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert!(clients.contains(&"203.0.113.7:4444"), "{clients:?}");
    assert!(clients.contains(&"[2001:db8::7]:5555"), "{clients:?}");
    assert!(
        clients.contains(&format!("127.0.0.1:{port}").as_str()),
        "{clients:?}"
    );
}

/// Health probes of a `send_proxy` service open with a LOCAL header, so an
/// endpoint that requires headers (here another l4mesh) passes them.
#[test]
fn it_should_send_a_local_header_first_on_health_probes() {
    let dir = TempDir::new();
    let (log_a, log_b) = (AccessLog(dir.join("a.log")), AccessLog(dir.join("b.log")));
    let b = serve(Mode::DEFAULT, &log_b, TRUSTED, "", &[echo_backend()]);
    let health = "send_proxy = \"v2\"\n[services.web.health]\ninterval = \"200ms\"\n\
                  timeout = \"150ms\"\nhealthy_threshold = 1\nsend = \"PING\"\nexpect = \"PING\"";
    let a = serve(Mode::DEFAULT, &log_a, "", health, &[b.addr("web")]);
    let admin = a.server.admin_addr().unwrap();
    let healthy = format!(
        "l4mesh_endpoint_healthy{{service=\"web\",endpoint=\"{}\"}}",
        b.addr("web")
    );
    eventually(
        Duration::from_secs(5),
        "the endpoint passes its probe",
        || samples(admin).get(&healthy) == Some(&1.0),
    );
    let probe = log_b.wait("web", 1).remove(0);
    assert!(
        probe["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{probe}"
    );
    assert_eq!(
        probe["peer"],
        serde_json::Value::Null,
        "a LOCAL header keeps the peer"
    );
    assert_eq!(header_errors(&b, "malformed"), 0.0);
}
