//! The registry socket over a real Unix socket: every verb, every kind of
//! bad input, many clients at once, silent clients, TTLs, the socket's mode,
//! and a second instance on the same path.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn config(endpoints: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\n[registry]\nsocket = \"SOCKET\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n{endpoints}\n[services.api]\n"
    )
}

fn listed(served: &Served) -> Vec<(String, String, String, u64)> {
    let reply = registry(&served.socket(), "list web");
    assert_eq!(reply["ok"], true, "{reply}");
    reply["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["addr"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
                e["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn it_should_register_list_drain_and_deregister_with_traffic_following() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a])));
    let web = served.addr("web");
    let socket = served.socket();

    let reply = registry(&socket, &format!("register web {b} weight=3"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["new"], true);
    assert_eq!(
        listed(&served),
        vec![
            (a.to_string(), "file".into(), "up".into(), 1),
            (b.to_string(), "registry".into(), "up".into(), 3),
        ]
    );
    let tags: Vec<_> = (0..8).filter_map(|_| tag_of(web)).collect();
    assert!(
        tags.contains(&b'B'),
        "traffic reaches the registered endpoint: {tags:?}"
    );

    // Drain the file endpoint: new connections avoid it, an open one goes on.
    let mut open = loop {
        let mut s = std::net::TcpStream::connect(web).unwrap();
        let mut tag = [0u8];
        s.read_exact(&mut tag).unwrap();
        if tag[0] == b'A' {
            break s;
        }
    };
    let reply = registry(&socket, &format!("drain web {a}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["active"], 1);
    assert!((0..10).all(|_| tag_of(web) == Some(b'B')));
    open.write_all(b"x").unwrap();
    let mut echo = [0u8];
    open.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"x");
    assert_eq!(listed(&served)[0].2, "draining");

    // A heartbeat (register again) updates the weight; deregister removes it.
    let reply = registry(&socket, &format!("register web {b} weight=2"));
    assert_eq!(reply["new"], false);
    assert_eq!(listed(&served)[1].3, 2);
    let reply = registry(&socket, &format!("deregister web {b}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(listed(&served).len(), 1);
}

#[test]
fn it_should_answer_bad_requests_with_errors_a_human_can_act_on() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(&endpoint_list(&[a])));
    let socket = served.socket();
    let cases = [
        (
            "register nope 127.0.0.1:9000".to_string(),
            "unknown service `nope`; known services: api, web",
        ),
        (
            "register web nowhere".to_string(),
            "`nowhere` is not an IP:port address",
        ),
        (
            "register web 127.0.0.1:9000 weight=0".to_string(),
            "weight `0` must be",
        ),
        ("jump web".to_string(), "unknown verb `jump`"),
        (
            format!("deregister web {a}"),
            "is declared for service web in",
        ),
        (format!("register web {a}"), "edit the file to change it"),
        (
            "deregister web 127.0.0.1:9000".to_string(),
            "is not registered for service web",
        ),
        (
            "drain web 127.0.0.1:9000".to_string(),
            "is not an endpoint of service web",
        ),
        ("list nope".to_string(), "unknown service `nope`"),
        (
            "register web 0.0.0.0:9000".to_string(),
            "0.0.0.0:9000 cannot be an endpoint: it is the wildcard address",
        ),
        (
            "register web 224.0.0.1:9000".to_string(),
            "cannot be an endpoint: it is a multicast address",
        ),
        // The listener asked for port 0: its bound port is what loops.
        (
            format!("register web {}", served.addr("web")),
            "cannot be an endpoint: it is l4mesh's own listener web",
        ),
    ];
    for (request, expected) in cases {
        let reply = registry(&socket, &request);
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(expected), "{request}: {error}");
    }
    let reply = registry_raw(&socket, b"list \xff\xfe\n");
    assert_eq!(reply["error"], "the request is not UTF-8 text");

    // An over-long line gets a reply, then the connection is closed.
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let long = vec![b'a'; 5000];
    let _ = stream.write_all(&long);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("request longer than 4096 bytes"), "{line}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // And the registry still serves.
    assert_eq!(registry(&socket, "help")["ok"], true);
}

#[test]
fn it_should_reload_on_request_and_keep_registrations_across_reloads() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a])));
    let socket = served.socket();
    assert_eq!(registry(&socket, &format!("register web {b}"))["ok"], true);
    std::fs::write(
        &served.path,
        config(&endpoint_list(&[a])).replace("SOCKET", &socket.display().to_string())
            + "\n# touched\n",
    )
    .unwrap();
    let reply = registry(&socket, "reload");
    assert_eq!(reply["applied"], true, "{reply}");
    assert_eq!(
        listed(&served).len(),
        2,
        "the registration survives the reload"
    );
    std::fs::write(&served.path, "[runtime\n").unwrap();
    let reply = registry(&socket, "reload");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("keeping the previous configuration")
    );
}

#[test]
fn it_should_serve_many_clients_at_once_even_with_a_silent_one_connected() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(&endpoint_list(&[a])));
    let socket = served.socket();
    let _silent = UnixStream::connect(&socket).unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                registry(&socket, &format!("register api 127.0.0.1:{}", 20000 + i))
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap()["ok"], true);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a silent client blocked the others"
    );
    let reply = registry(&socket, "list api");
    assert_eq!(reply["endpoints"].as_array().unwrap().len(), 16);
}

#[test]
fn it_should_drop_a_registration_whose_ttl_lapses_unless_it_heartbeats() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(""));
    let socket = served.socket();
    let web = served.addr("web");
    assert_eq!(
        registry(&socket, &format!("register web {a} ttl=600ms"))["ok"],
        true
    );
    // Heartbeats every 200 ms keep it for well past its ttl: each one is
    // not new, and moves the expiry back to 600 ms away.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(200));
        let before = ttl_remaining_ms(&served, a);
        let beat = registry(&socket, &format!("register web {a} ttl=600ms"));
        assert_eq!(beat["ok"], true, "{beat}");
        assert_eq!(beat["new"], false, "{beat}");
        let after = ttl_remaining_ms(&served, a);
        assert!(
            after > before && after <= 600,
            "the heartbeat extended the ttl: {before} -> {after} ms"
        );
    }
    assert_eq!(tag_of(web), Some(b'A'));
    eventually(Duration::from_secs(3), "the registration lapses", || {
        listed(&served).is_empty()
    });
    assert_eq!(
        tag_of(web),
        None,
        "a service with no endpoints closes the client"
    );
}

/// The TTL left on `addr`'s registration in service web, per `list`.
fn ttl_remaining_ms(served: &Served, addr: std::net::SocketAddr) -> u64 {
    let reply = registry(&served.socket(), "list web");
    let endpoints = reply["endpoints"].as_array().unwrap();
    let entry = endpoints
        .iter()
        .find(|e| e["addr"] == addr.to_string().as_str())
        .unwrap_or_else(|| panic!("{addr} is not listed: {reply}"));
    entry["ttl_remaining_ms"].as_u64().unwrap()
}

#[test]
fn it_should_extend_a_ttl_on_heartbeat_without_publishing_a_new_table() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(""));
    let socket = served.socket();
    let first = registry(&socket, &format!("register web {a} ttl=60s"));
    assert_eq!(first["new"], true, "{first}");
    let table = served.server.table().load_full();
    eventually(Duration::from_secs(5), "the ttl to run down", || {
        ttl_remaining_ms(&served, a) <= 59_900
    });
    let before = ttl_remaining_ms(&served, a);
    let beat = registry(&socket, &format!("register web {a} ttl=60s"));
    assert_eq!(beat["ok"], true, "{beat}");
    assert_eq!(beat["new"], false, "{beat}");
    assert_eq!(beat["generation"], first["generation"], "{beat}");
    let after = ttl_remaining_ms(&served, a);
    assert!(
        after > before,
        "the heartbeat extended the ttl: {before} -> {after}"
    );
    assert!(
        std::sync::Arc::ptr_eq(&table, &served.server.table().load_full()),
        "a heartbeat that changes nothing published a new table"
    );
    // A heartbeat that changes the weight does publish.
    let changed = registry(&socket, &format!("register web {a} weight=2 ttl=60s"));
    assert_eq!(changed["new"], false, "{changed}");
    assert_eq!(
        changed["generation"].as_u64(),
        first["generation"].as_u64().map(|g| g + 1),
        "{changed}"
    );
    assert_eq!(listed(&served)[0].3, 2);
}

/// A service of 20,000 weighted round-robin endpoints: 48 clients register
/// at once, each a rebuild of that service, and a `list` comes in behind
/// them. Registrations queued behind a build are applied together and
/// published once, so everyone is answered within seconds, not after 48
/// builds one after another.
#[test]
fn it_should_answer_a_burst_of_registrations_on_a_big_table_within_seconds() {
    let endpoints: Vec<String> = (0..20_000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x7f01_0000 + i / 1000);
            format!(
                "{{ addr = \"{ip}:{}\", weight = {} }}",
                10_000 + i % 1000,
                1 + i % 256
            )
        })
        .collect();
    let served = Served::start(&config(&format!("endpoints = [{}]", endpoints.join(", "))));
    let socket = served.socket();
    let generation = registry(&socket, "list api")["generation"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..48)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let reply = registry(&socket, &format!("register web 127.0.0.2:{}", 20000 + i));
                (reply, started.elapsed())
            })
        })
        .collect();
    let listed = registry(&socket, "list api");
    assert_eq!(listed["ok"], true, "{listed}");
    let mut slowest = Duration::ZERO;
    let mut generations = std::collections::BTreeSet::new();
    for client in clients {
        let (reply, took) = client.join().unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        generations.insert(reply["generation"].as_u64().unwrap());
        slowest = slowest.max(took);
    }
    println!("48 registrations: slowest answer {slowest:?}, generations {generations:?}");
    assert!(
        slowest < Duration::from_secs(8),
        "the last registration waited {slowest:?}"
    );
    let last = registry(&socket, "list web");
    assert_eq!(last["endpoints"].as_array().unwrap().len(), 20_048);
    assert!(
        last["generation"].as_u64().unwrap() - generation < 48,
        "48 registrations were published one by one: {generations:?}"
    );
}

#[test]
fn it_should_create_the_socket_owner_only_and_refuse_a_second_instance() {
    let served = Served::start(&config(""));
    let socket = served.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    match l4mesh::Server::start(&served.path) {
        Err(l4mesh::ServerError::Registry(e)) => {
            assert!(
                e.to_string()
                    .contains("another l4mesh already answers there"),
                "{e}"
            );
        }
        other => panic!("a second instance must be refused: {other:?}"),
    }
    assert_eq!(
        registry(&socket, "help")["ok"],
        true,
        "the first one still serves"
    );
}

#[test]
fn it_should_replace_a_stale_socket_file_and_remove_it_at_exit() {
    let dir = TempDir::new();
    let socket = dir.join("registry.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // leaves the file
    let path = dir.join("l4mesh.toml");
    std::fs::write(
        &path,
        config("").replace("SOCKET", &socket.display().to_string()),
    )
    .unwrap();
    let server = l4mesh::Server::start(&path).unwrap();
    assert_eq!(registry(&socket, "help")["ok"], true);
    server.stop_handle().stop();
    server.wait();
    assert!(!socket.exists());
}

#[test]
fn it_should_undrain_a_drained_file_endpoint_at_run_time_through_l4mesh_ctl() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a, b])));
    let web = served.addr("web");
    let socket = served.socket();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .arg("ctl")
            .arg("-s")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let reply = registry(&socket, &format!("drain web {a}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert!((0..8).all(|_| tag_of(web) == Some(b'B')), "a is drained");
    // A file endpoint cannot be registered again to end its drain...
    let reply = registry(&socket, &format!("register web {a}"));
    assert_eq!(reply["ok"], false, "{reply}");
    // ...but undrain ends it.
    let (code, out) = ctl(&["undrain", "web", &a.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        listed(&served)[0],
        (a.to_string(), "file".into(), "up".into(), 1)
    );
    let tags: Vec<_> = (0..8).filter_map(|_| tag_of(web)).collect();
    assert!(
        tags.contains(&b'A'),
        "new connections reach a again: {tags:?}"
    );
    // Undraining what is not draining, or is no endpoint, is an error.
    let (code, out) = ctl(&["undrain", "web", &a.to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not draining"), "{out}");
    let reply = registry(&socket, "undrain web 127.0.0.1:9");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("is not an endpoint of service web"),
        "{reply}"
    );
}

#[test]
fn it_should_print_tables_and_exit_codes_from_l4mesh_ctl() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(&endpoint_list(&[a])));
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .arg("ctl")
            .arg("-s")
            .arg(served.socket())
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = ctl(&["list", "web"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("SERVICE  ADDR"), "{out}");
    assert!(out.contains(&format!("web      {a}")), "{out}");
    let (code, out) = ctl(&["register", "nope", "127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert!(out.starts_with("error: unknown service"), "{out}");
    let (code, out) = ctl(&["--json", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
}
