//! Monitoring over real sockets: /metrics counts exactly the traffic made
//! and passes promtool, /healthz and /config, the access log's outcomes,
//! and the Grafana dashboard's queries.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn config(endpoints: &str, extra: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\nconnect_attempts = 2\nidle_timeout = \"300ms\"\n{endpoints}\n\
         [services.empty]\n[listeners.nothing]\nlisten = \"127.0.0.1:0\"\nservice = \"empty\"\n"
    )
}

#[test]
fn it_should_count_exactly_the_traffic_made_and_pass_promtool() {
    let echo = echo_backend();
    let dead = refusing_address();
    let served = Served::start(&config(
        &format!(
            "balance = \"round_robin\"\nendpoints = [{{ addr = \"{dead}\" }}, {{ addr = \"{echo}\" }}]"
        ),
        "",
    ));
    let admin = served.server.admin_addr().unwrap();
    let web = served.addr("web");
    for i in 0..10 {
        let mut c = TcpStream::connect(web).unwrap();
        c.write_all(&vec![b'x'; 1000 + i]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 1000 + i);
    }
    for _ in 0..3 {
        let mut c = TcpStream::connect(served.addr("nothing")).unwrap();
        let _ = c.read(&mut [0u8; 1]);
    }
    let expected_bytes: f64 = (0..10).map(|i| 1000.0 + i as f64).sum();
    let mut m = HashMap::new();
    eventually(
        Duration::from_secs(5),
        "every connection counted as closed",
        || {
            m = samples(admin);
            m["l4mesh_downstream_connections_active{listener=\"web\"}"] == 0.0
                && m["l4mesh_connection_duration_seconds_count{listener=\"nothing\"}"] == 3.0
        },
    );
    assert_eq!(
        m["l4mesh_downstream_connections_total{listener=\"web\"}"],
        10.0
    );
    assert_eq!(
        m["l4mesh_downstream_bytes_total{listener=\"web\",direction=\"rx\"}"],
        expected_bytes
    );
    assert_eq!(
        m["l4mesh_downstream_bytes_total{listener=\"web\",direction=\"tx\"}"],
        expected_bytes
    );
    let echo_labels = format!("service=\"web\",endpoint=\"{echo}\"");
    let dead_labels = format!("service=\"web\",endpoint=\"{dead}\"");
    assert_eq!(
        m[&format!("l4mesh_upstream_connections_total{{{echo_labels}}}")],
        10.0
    );
    assert_eq!(
        m[&format!("l4mesh_upstream_connections_total{{{dead_labels}}}")],
        0.0
    );
    // Round robin sends every other client to the dead endpoint first.
    assert_eq!(
        m[&format!("l4mesh_upstream_connect_failures_total{{{dead_labels},reason=\"refused\"}}")],
        5.0
    );
    assert_eq!(
        m[&format!("l4mesh_upstream_connect_failures_total{{{dead_labels},reason=\"timeout\"}}")],
        0.0
    );
    assert_eq!(
        m["l4mesh_upstream_connect_duration_seconds_count{service=\"web\"}"],
        10.0
    );
    assert_eq!(
        m["l4mesh_upstream_connect_duration_seconds_bucket{service=\"web\",le=\"+Inf\"}"],
        10.0
    );
    assert_eq!(
        m["l4mesh_connection_duration_seconds_count{listener=\"web\"}"],
        10.0
    );
    assert_eq!(m["l4mesh_no_endpoint_total{service=\"empty\"}"], 3.0);
    assert_eq!(m["l4mesh_config_reloads_total{result=\"success\"}"], 0.0);
    assert!(m["process_resident_memory_bytes"] > 0.0);
    assert!(m["process_open_fds"] > 0.0);

    let (_, body) = get(admin, "GET", "/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed: bash scripts/test.sh installs it");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn it_should_answer_healthz_config_and_unknown_paths() {
    let echo = echo_backend();
    let served = Served::start(&config(&endpoint_list(&[echo]), ""));
    let admin = served.server.admin_addr().unwrap();
    assert_eq!(get(admin, "GET", "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(admin, "GET", "/nope").0, 404);
    assert_eq!(get(admin, "POST", "/metrics").0, 405);

    let (status, body) = get(admin, "GET", "/config");
    assert_eq!(status, 200);
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(table["generation"], 1);
    let web = served.addr("web").to_string();
    assert!(
        table["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["bound"] == web.as_str())
    );

    // /config follows a reload.
    let other = echo_backend();
    served.write(&config(&endpoint_list(&[other]), ""));
    served.wait_for_reloads(1);
    let (_, body) = get(admin, "GET", "/config");
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web_service = table["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web_service["endpoints"][0]["addr"], other.to_string());
    assert_eq!(
        samples(admin)["l4mesh_config_reloads_total{result=\"success\"}"],
        1.0
    );

    // /healthz says 503 while draining.
    let mut open = TcpStream::connect(served.addr("web")).unwrap();
    open.write_all(b"hold").unwrap();
    let mut four = [0u8; 4];
    open.read_exact(&mut four).unwrap();
    served.server.stop_handle().stop();
    assert_eq!(
        get(admin, "GET", "/healthz"),
        (503, "draining\n".to_string())
    );
}

#[test]
fn it_should_log_one_parsable_line_per_connection_with_how_it_ended() {
    let dir = TempDir::new();
    let log_path = dir.join("access.log");
    let echo = echo_backend();
    let closes_first = backend(|mut s| {
        let _ = s.write_all(b"bye");
    });
    let resets = backend(|s| {
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let mut buf = [0u8; 1];
        let _ = (&s).read(&mut buf);
    });
    let dead = refusing_address();
    let extra = format!(
        "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
        log_path.display()
    );
    let text = config(&endpoint_list(&[echo]), &extra)
        + &format!(
            "[listeners.first]\nlisten = \"127.0.0.1:0\"\nservice = \"first\"\n[services.first]\n{}\n\
             [listeners.reset]\nlisten = \"127.0.0.1:0\"\nservice = \"reset\"\n[services.reset]\n{}\n\
             [listeners.dead]\nlisten = \"127.0.0.1:0\"\nservice = \"dead\"\n[services.dead]\n{}\n",
            endpoint_list(&[closes_first]),
            endpoint_list(&[resets]),
            endpoint_list(&[dead])
        );
    let served = Served::start(&text);
    // client_closed: the client shuts down first, the echo follows.
    let mut c = TcpStream::connect(served.addr("web")).unwrap();
    c.write_all(b"hello").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), "hello");
    // upstream_closed
    assert_eq!(
        read_all(&mut TcpStream::connect(served.addr("first")).unwrap()),
        "bye"
    );
    // idle_timeout (300 ms): a cut, so the client sees a reset
    let (got, ended) = read_to_end(&mut TcpStream::connect(served.addr("web")).unwrap());
    assert_eq!((got.len(), ended), (0, Ended::Reset));
    // reset
    let mut r = TcpStream::connect(served.addr("reset")).unwrap();
    r.write_all(b"x").unwrap();
    assert_eq!(read_to_end(&mut r), (Vec::new(), Ended::Reset));
    // connect_failed and no_endpoint
    let _ = TcpStream::connect(served.addr("dead"))
        .unwrap()
        .read(&mut [0u8; 1]);
    let _ = TcpStream::connect(served.addr("nothing"))
        .unwrap()
        .read(&mut [0u8; 1]);
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually(Duration::from_secs(5), "six access-log lines", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines.len() >= 6
    });
    let end_of = |listener: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["listener"] == listener)
            .map(|l| l["end"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(end_of("web"), ["client_closed", "idle_timeout"]);
    assert_eq!(end_of("first"), ["upstream_closed"]);
    assert_eq!(end_of("reset"), ["reset"]);
    assert_eq!(end_of("dead"), ["connect_failed"]);
    assert_eq!(end_of("nothing"), ["no_endpoint"]);
    let first = &lines[0];
    assert_eq!(first["rx_bytes"], 5);
    assert_eq!(first["tx_bytes"], 5);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["endpoint"], echo.to_string());
    let dead_line = lines.iter().find(|l| l["listener"] == "dead").unwrap();
    assert_eq!(dead_line["attempts"], 1);
    assert!(dead_line["endpoint"].is_null());
}

/// What SIGUSR1 does after logrotate moved the file away: the writer opens
/// the path again, so later lines go to a new file and none is lost.
#[test]
fn it_should_reopen_the_access_log_after_it_was_moved_away() {
    let dir = TempDir::new();
    let (log_path, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let extra = format!(
        "[access_log]\npath = \"{}\"\nformat = \"logfmt\"\n",
        log_path.display()
    );
    let served = Served::start(&config(&endpoint_list(&[echo_backend()]), &extra));
    let round_trip = |text: &str| {
        let mut c = TcpStream::connect(served.addr("web")).unwrap();
        c.write_all(text.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c), text);
    };
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    round_trip("one");
    eventually(Duration::from_secs(5), "the first line", || {
        read(&log_path).contains(" rx_bytes=3 ")
    });
    std::fs::rename(&log_path, &rotated).unwrap();
    served.server.access_log().unwrap().reopen();
    eventually(Duration::from_secs(5), "the file opened again", || {
        log_path.exists()
    });
    round_trip("three");
    eventually(
        Duration::from_secs(5),
        "the second line, in the new file",
        || read(&log_path).contains(" rx_bytes=5 "),
    );
    assert_eq!(read(&rotated).lines().count(), 1, "{}", read(&rotated));
    assert_eq!(read(&log_path).lines().count(), 1, "{}", read(&log_path));
}

#[test]
fn it_should_mark_connections_closed_by_a_drain_in_the_access_log() {
    let dir = TempDir::new();
    let log_path = dir.join("access.log");
    let extra = format!(
        "[access_log]\npath = \"{}\"\nformat = \"logfmt\"\n",
        log_path.display()
    );
    let text = config(&endpoint_list(&[echo_backend()]), &extra)
        .replace("workers = 2", "workers = 2\ndrain_timeout = \"200ms\"")
        .replace("idle_timeout = \"300ms\"", "idle_timeout = \"1m\"");
    let served = Served::start(&text);
    let mut held = TcpStream::connect(served.addr("web")).unwrap();
    held.write_all(b"x").unwrap();
    held.read_exact(&mut [0u8; 1]).unwrap();
    let Served {
        server, dir: _keep, ..
    } = served;
    server.stop_handle().stop();
    server.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let line = text.lines().next().unwrap();
    assert!(line.contains(" listener=web "), "{line}");
    assert!(line.ends_with(" end=drained_at_shutdown"), "{line}");
    assert!(line.contains(" rx_bytes=1 tx_bytes=1 "), "{line}");
}

#[test]
fn it_should_only_query_metrics_that_metrics_exports_in_the_grafana_dashboard() {
    let served = Served::start(&config(&endpoint_list(&[echo_backend()]), ""));
    let (_, body) = get(served.server.admin_addr().unwrap(), "GET", "/metrics");
    let exported: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana/l4mesh.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("l4mesh_") || w.starts_with("process_"));
            for name in names {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| exported.contains(base))
                    .unwrap_or(name);
                assert!(
                    exported.contains(&family),
                    "the dashboard queries {name}, which /metrics lacks"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10);
}

/// The descriptors open in process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn it_should_report_true_descriptor_figures_while_out_of_descriptors() {
    const LIMIT: u64 = 64;
    let dir = TempDir::new();
    let socket = dir.join("registry.sock");
    let binary = Binary::start(
        &format!(
            "[runtime]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [registry]\nsocket = \"{}\"\n\
             [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n[services.web]\n",
            socket.display()
        ),
        &["prlimit", &format!("--nofile={LIMIT}:{LIMIT}")],
    );
    let admin = binary.admin_addr(Duration::from_secs(5));
    let pid = binary.child.id();

    // A scrape's connection, accepted while descriptors are to be had; its
    // request is sent once there are none left.
    let before = open_fds(pid);
    let mut scrape = TcpStream::connect(admin).unwrap();
    scrape
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    eventually(Duration::from_secs(5), "the scrape accepted", || {
        open_fds(pid) > before
    });
    scrape.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // Registry clients take every descriptor left (the rest wait in the
    // backlog).
    let hogs: Vec<std::os::unix::net::UnixStream> = (0..LIMIT)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    binary.wait_for_line(
        Duration::from_secs(5),
        "registry: accept failed: Too many open files",
    );
    // No descriptor is left, so none opens or closes until the scrape
    // (inherited descriptors numbered past the limit may add to the count).
    let exhausted = open_fds(pid);
    assert!(exhausted as u64 >= LIMIT, "{exhausted}");

    scrape.write_all(b"Host: test\r\n\r\n").unwrap();
    let mut response = String::new();
    scrape.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let figure = |name: &str| -> f64 {
        response
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{response}"))
            .parse()
            .unwrap()
    };
    assert_eq!(figure("process_max_fds"), LIMIT as f64);
    assert_eq!(figure("process_open_fds"), exhausted as f64);
    assert!(figure("process_resident_memory_bytes") > 0.0);
    assert!(figure("process_cpu_seconds_total") >= 0.0);
    drop(hogs);
}
