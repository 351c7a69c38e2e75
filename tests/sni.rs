//! SNI routing over real sockets: real TLS backends (`openssl s_server`
//! with certificates the test makes) behind one l4mesh port, reached by
//! `openssl s_client` and curl end to end; hellos split into 1-byte
//! segments, without SNI, 20 KiB big, slow, and not TLS at all; the rule
//! and failure counts; and a reload that changes the rules under an open
//! connection.

mod common;

use common::identity::*;
use common::peers::*;
use common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `[listeners.tls]` of these tests: api.example.com → `api`,
/// *.example.com → `web`, then `extra` keys; services with one endpoint
/// each (`fallback` too).
fn config(
    mode: Mode,
    extra: &str,
    api: SocketAddr,
    web: SocketAddr,
    fallback: SocketAddr,
) -> String {
    let text = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [listeners.tls]\nlisten = \"127.0.0.1:0\"\n\
         sni = [\n  {{ names = [\"api.example.com\"], service = \"api\" }},\n  \
         {{ names = [\"*.example.com\"], service = \"web\" }},\n]\n{extra}\n\
         [services.api]\n{}\n[services.web]\n{}\n[services.fallback]\n{}\n",
        endpoint_list(&[api]),
        endpoint_list(&[web]),
        endpoint_list(&[fallback])
    );
    with_mode(&text, mode)
}

fn failures(served: &Served, reason: &str) -> f64 {
    by_reason(served, "l4mesh_client_hello_failures_total", "tls", reason)
}

fn routes(served: &Served, rule: &str) -> f64 {
    let admin = served.server.admin_addr().unwrap();
    samples(admin)
        .get(&format!(
            "l4mesh_sni_routes_total{{listener=\"tls\",rule=\"{rule}\"}}"
        ))
        .copied()
        .unwrap_or(-1.0)
}

per_mode! {
    /// Three TLS backends behind one port: each client completes its
    /// handshake with the backend its name routes to and sees that
    /// backend's certificate, verified against the test CA.
    fn it_should_route_real_tls_clients_by_server_name_end_to_end(mode) {
        let certs = Certs::new(&["api.example.com", "www.example.com", "default.example.com"]);
        let api = TlsBackend::start(&certs, "api.example.com");
        let web = TlsBackend::start(&certs, "www.example.com");
        let fallback = TlsBackend::start(&certs, "default.example.com");
        let served = Served::start(&config(
            mode,
            "default_service = \"fallback\"",
            api.addr,
            web.addr,
            fallback.addr,
        ));
        let tls = served.addr("tls");
        for (name, subject) in [
            (Some("api.example.com"), "api.example.com"),
            (Some("www.example.com"), "www.example.com"),
            (Some("a.b.example.com"), "default.example.com"),
            (None, "default.example.com"),
        ] {
            let verify = if name == Some(subject) { name } else { None };
            let out = s_client(tls, name, verify, &certs.ca());
            assert!(out.contains(&format!("CN = {subject}")), "{mode} {name:?}: {out}");
            assert!(out.contains("Verification: OK"), "{mode} {name:?}: {out}");
            assert!(out.contains("HTTP/1.0 200 ok"), "{mode} {name:?}: {out}");
        }
        let port = tls.port();
        let curl = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(certs.ca())
            .arg("--resolve")
            .arg(format!("api.example.com:{port}:127.0.0.1"))
            .arg(format!("https://api.example.com:{port}/"))
            .output()
            .unwrap();
        assert!(curl.status.success(), "{mode}: curl: {}", String::from_utf8_lossy(&curl.stderr));
        assert_eq!(routes(&served, "api.example.com"), 2.0);
        assert_eq!(routes(&served, "*.example.com"), 1.0);
        assert_eq!(routes(&served, "(default)"), 2.0);
        assert_eq!(failures(&served, "no_match"), 1.0);
        assert_eq!(failures(&served, "no_sni"), 1.0);
    }
}

per_mode! {
    /// A hello written a byte at a time, then more bytes: routed by its
    /// name, and the backend gets every byte, hello included, unchanged.
    fn it_should_route_a_hello_split_into_single_bytes_and_forward_it_unchanged(mode) {
        let (api, web, fallback) = (Recorder::start(), Recorder::start(), Recorder::start());
        let served = Served::start(&config(mode, "default_service = \"fallback\"", api.addr, web.addr, fallback.addr));
        let mut sent = client_hello(Some("API.Example.com"), &["h2"], 600);
        let mut client = connect_from("127.0.0.1", served.addr("tls"));
        for byte in &sent {
            client.write_all(&[*byte]).unwrap();
        }
        let rest = payload(300_000);
        client.write_all(&rest).unwrap();
        drop(client);
        sent.extend_from_slice(&rest);
        assert_eq!(sha(&api.next()), sha(&sent), "{mode}");
        assert!(!fallback.got_any(Duration::from_millis(100)));
    }
}

/// A 20 KiB hello goes to the default service under the 16 KiB default
/// limit, every byte intact, and by its name with a 32 KiB limit.
#[test]
fn it_should_send_an_oversized_hello_to_the_default_and_route_it_under_a_higher_limit() {
    let (api, web, fallback) = (Recorder::start(), Recorder::start(), Recorder::start());
    let hello = client_hello(Some("api.example.com"), &[], 20_000);
    assert!(hello.len() > 20_000);
    for (limit, to) in [("", &fallback), ("client_hello_max_size = 32768", &api)] {
        let extra = format!("default_service = \"fallback\"\n{limit}");
        let served = Served::start(&config(
            Mode::DEFAULT,
            &extra,
            api.addr,
            web.addr,
            fallback.addr,
        ));
        let mut client = connect_from("127.0.0.1", served.addr("tls"));
        client.write_all(&hello).unwrap();
        drop(client);
        assert_eq!(sha(&to.next()), sha(&hello), "{limit:?}");
        let oversized = failures(&served, "oversized");
        assert_eq!(oversized, if limit.is_empty() { 1.0 } else { 0.0 });
    }
}

/// A plain HTTP client, and a client that stalls mid-hello: to the
/// default service with their bytes, or reset without one.
#[test]
fn it_should_send_what_is_not_tls_or_too_slow_to_the_default_or_reset_it() {
    let (api, web, fallback) = (Recorder::start(), Recorder::start(), Recorder::start());
    let extra = "default_service = \"fallback\"\nclient_hello_timeout = \"300ms\"";
    let served = Served::start(&config(
        Mode::DEFAULT,
        extra,
        api.addr,
        web.addr,
        fallback.addr,
    ));
    let mut plain = connect_from("127.0.0.1", served.addr("tls"));
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    drop(plain);
    assert_eq!(fallback.next(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut slow = connect_from("127.0.0.1", served.addr("tls"));
    slow.write_all(&[22, 3, 1]).unwrap();
    let started = Instant::now();
    // Routed to the default at the timeout, then the rest follows it there.
    eventually(Duration::from_secs(3), "the hello timed out", || {
        failures(&served, "timeout") == 1.0
    });
    assert!(started.elapsed() >= Duration::from_millis(250));
    slow.write_all(b"rest").unwrap();
    drop(slow);
    assert_eq!(fallback.next(), [22, 3, 1, b'r', b'e', b's', b't']);
    assert_eq!(failures(&served, "not_tls"), 1.0);

    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let strict = format!("client_hello_timeout = \"300ms\"\n{}", log.table());
    let served = Served::start(&config(
        Mode::DEFAULT,
        &strict,
        api.addr,
        web.addr,
        fallback.addr,
    ));
    let mut plain = connect_from("127.0.0.1", served.addr("tls"));
    assert!(reset_after_sending(&mut plain, b"GET / HTTP/1.1\r\n\r\n"));
    let mut slow = connect_from("127.0.0.1", served.addr("tls"));
    let started = Instant::now();
    assert!(reset_after_sending(&mut slow, &[22, 3, 1]));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let records = log.wait("tls", 2);
    assert!(
        records.iter().all(|r| r["end"] == "no_route"),
        "{records:?}"
    );
    assert!(!fallback.got_any(Duration::from_millis(100)));
}

/// A reload that moves api.example.com to another service: the next
/// client goes there, the open one finishes where it started.
#[test]
fn it_should_route_by_reloaded_rules_while_an_open_connection_keeps_going() {
    let (api, web, fallback) = (Recorder::start(), Recorder::start(), Recorder::start());
    let before = config(
        Mode::DEFAULT,
        "default_service = \"fallback\"",
        api.addr,
        web.addr,
        fallback.addr,
    );
    let served = Served::start(&before);
    let hello = client_hello(Some("api.example.com"), &[], 0);
    let mut open = connect_from("127.0.0.1", served.addr("tls"));
    open.write_all(&hello).unwrap();
    let after = before.replace("service = \"api\" }", "service = \"web\" }");
    served.write(&after);
    served.wait_for_reloads(1);
    let mut next = connect_from("127.0.0.1", served.addr("tls"));
    next.write_all(&hello).unwrap();
    drop(next);
    assert_eq!(sha(&web.next()), sha(&hello));
    let more = payload(50_000);
    open.write_all(&more).unwrap();
    drop(open);
    let mut whole = hello.clone();
    whole.extend_from_slice(&more);
    assert_eq!(sha(&api.next()), sha(&whole));
}

/// A v2 header l4mesh sends from an SNI listener carries the server name
/// as AUTHORITY and the access log's connection id as UNIQUE_ID, then the
/// hello, unchanged.
#[test]
fn it_should_pass_the_server_name_and_connection_id_on_in_a_v2_header() {
    use l4mesh::preamble::proxy_header::{Accept, Parse, parse};
    let (api, web, fallback) = (Recorder::start(), Recorder::start(), Recorder::start());
    let dir = TempDir::new();
    let log = AccessLog(dir.join("access.log"));
    let text = config(
        Mode::DEFAULT,
        &log.table(),
        api.addr,
        web.addr,
        fallback.addr,
    )
    .replace("[services.api]\n", "[services.api]\nsend_proxy = \"v2\"\n");
    let served = Served::start(&text);
    let hello = client_hello(Some("api.example.com"), &["h2"], 0);
    let mut client = connect_from("127.0.0.2", served.addr("tls"));
    let source = client.local_addr().unwrap();
    client.write_all(&hello).unwrap();
    drop(client);
    let got = api.next();
    let Ok(Parse::Complete { header, len }) = parse(&got, Accept::V2) else {
        panic!("no v2 header first: {:?}", &got[..got.len().min(32)]);
    };
    assert_eq!(&got[len..], &hello[..]);
    let (from, to) = header.addresses.unwrap();
    assert_eq!(from, source);
    assert_eq!(to, served.addr("tls"));
    assert_eq!(header.authority.as_deref(), Some("api.example.com"));
    let record = log.wait("tls", 1).remove(0);
    assert_eq!(record["server_name"], "api.example.com");
    let id = record["id"].as_str().unwrap();
    assert_eq!(header.unique_id.as_deref(), Some(id.as_bytes()));
}
