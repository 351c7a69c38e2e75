//! Config file reloads over real sockets: open connections are never
//! disturbed, new ones follow each change, bad files never replace a good
//! configuration, and every way a file really changes is noticed.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::thread;
use std::time::Duration;

fn config(endpoints: &str, extra_listeners: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n{extra_listeners}\n\
         [services.web]\n{endpoints}\n"
    )
}

/// Waits until new connections to `addr` reach the backend tagged `tag`.
fn follows(addr: std::net::SocketAddr, tag: u8) {
    eventually(
        Duration::from_secs(5),
        &format!("new connections reach {}", tag as char),
        || tag_of(addr) == Some(tag),
    );
}

#[test]
fn it_should_stream_without_a_lost_byte_across_20_reloads_while_new_connections_follow() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a]), ""));
    let addr = served.addr("web");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let sent = thread::spawn(move || {
        let mut sent = Vec::new();
        let mut counter = 0u32;
        while stop_rx.try_recv().is_err() {
            let chunk: Vec<u8> = (0..4096)
                .map(|i| (counter.wrapping_mul(31) + i) as u8)
                .collect();
            writer.write_all(&chunk).unwrap();
            sent.extend_from_slice(&chunk);
            counter += 1;
            thread::sleep(Duration::from_millis(2));
        }
        writer.shutdown(Shutdown::Write).unwrap();
        sent
    });
    let reader = thread::spawn(move || {
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received
    });
    for round in 0..20 {
        let (endpoint, tag) = if round % 2 == 0 { (b, b'B') } else { (a, b'A') };
        served.write(&config(&endpoint_list(&[endpoint]), ""));
        served.wait_for_reloads(round + 1);
        follows(addr, tag);
    }
    stop_tx.send(()).unwrap();
    let sent = sent.join().unwrap();
    let received = reader.join().unwrap();
    assert_eq!(received[0], b'A', "the stream stayed on its first backend");
    assert_eq!(received.len() - 1, sent.len());
    assert!(received[1..] == sent[..], "bytes lost or reordered");
}

#[test]
fn it_should_reject_broken_files_and_keep_serving_the_previous_configuration() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(&endpoint_list(&[a]), ""));
    let addr = served.addr("web");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap(); // no SO_REUSEPORT: unbindable
    let broken = [
        ("[services.web\n".to_string(), "line 1"),
        ("\n".to_string(), "the file is empty"),
        (
            config("endpoints = [{ addr = \"127.0.0.1:9\", weight = 0 }]", ""),
            "services.web.endpoints[0].weight = 0",
        ),
        (
            config(
                &endpoint_list(&[a]),
                &format!(
                    "[listeners.api]\nlisten = \"{}\"\nservice = \"web\"\n",
                    taken.local_addr().unwrap()
                ),
            ),
            "listeners.api.listen",
        ),
    ];
    for (n, (text, key)) in broken.iter().enumerate() {
        served.write(text);
        served.wait_for_rejections(n as u64 + 1);
        let error = served.server.control().reload().unwrap_err();
        assert!(error.contains("l4mesh.toml"), "{error}");
        assert!(error.contains(key), "{error}");
        assert!(
            error.ends_with("keeping the previous configuration"),
            "{error}"
        );
        assert_eq!(tag_of(addr), Some(b'A'), "the old configuration serves");
        assert!(served.server.local_addr("api").is_none());
    }
    assert_eq!(served.server.reload_stats().successes(), 0);
}

#[test]
fn it_should_notice_an_editor_rename_and_a_configmap_symlink_swap() {
    let (a, b, c) = (
        tagged_echo_backend(b'A'),
        tagged_echo_backend(b'B'),
        tagged_echo_backend(b'C'),
    );
    // Kubernetes mounts a ConfigMap as FILE -> ..data/FILE, ..data -> ..v1,
    // and updates it by pointing ..data at a new directory with a rename.
    let dir = TempDir::new();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(
        dir.join("..v1/l4mesh.toml"),
        config(&endpoint_list(&[a]), ""),
    )
    .unwrap();
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/l4mesh.toml", dir.join("l4mesh.toml")).unwrap();
    let server = l4mesh::Server::start(&dir.join("l4mesh.toml")).unwrap();
    let addr = server.local_addr("web").unwrap();
    assert_eq!(tag_of(addr), Some(b'A'));

    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(
        dir.join("..v2/l4mesh.toml"),
        config(&endpoint_list(&[b]), ""),
    )
    .unwrap();
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    follows(addr, b'B');

    // An editor: write a temp file beside it, rename it over the original.
    let plain = TempDir::new();
    let path = plain.join("l4mesh.toml");
    std::fs::write(&path, config(&endpoint_list(&[a]), "")).unwrap();
    let server2 = l4mesh::Server::start(&path).unwrap();
    let addr2 = server2.local_addr("web").unwrap();
    std::fs::write(
        plain.join(".l4mesh.toml.swp"),
        config(&endpoint_list(&[c]), ""),
    )
    .unwrap();
    std::fs::rename(plain.join(".l4mesh.toml.swp"), &path).unwrap();
    follows(addr2, b'C');
}

#[test]
fn it_should_add_remove_and_rebind_listeners() {
    let a = tagged_echo_backend(b'A');
    let served = Served::start(&config(&endpoint_list(&[a]), ""));
    let api = "[listeners.api]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n";
    served.write(&config(&endpoint_list(&[a]), api));
    served.wait_for_reloads(1);
    let api_addr = served.addr("api");
    assert_eq!(tag_of(api_addr), Some(b'A'));

    // Removing it stops new connections; one already open runs on.
    let mut open = TcpStream::connect(api_addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    served.write(&config(&endpoint_list(&[a]), ""));
    served.wait_for_reloads(2);
    eventually(Duration::from_secs(5), "api refused", || {
        TcpStream::connect(api_addr).is_err()
    });
    assert!(served.server.local_addr("api").is_none());
    open.write_all(b"still here").unwrap();
    let mut reply = [0u8; 11];
    open.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"Astill here");

    // Rebinding web to another address moves it. (Another loopback address
    // with port 0, not a port number found free and released: another test
    // could take that port in between.)
    let old = served.addr("web");
    let moved = config(&endpoint_list(&[a]), "").replace("127.0.0.1:0", "127.0.0.3:0");
    served.write(&moved);
    served.wait_for_reloads(3);
    let new = served.addr("web");
    assert_eq!(new.ip().to_string(), "127.0.0.3");
    assert_eq!(tag_of(new), Some(b'A'));
    eventually(Duration::from_secs(5), "old port refused", || {
        TcpStream::connect(old).is_err()
    });
}

#[test]
fn it_should_log_one_error_line_for_a_rejected_reload_from_the_binary() {
    let a = tagged_echo_backend(b'A');
    let good = config(&endpoint_list(&[a]), "");
    let binary = Binary::start(&good, &[]);
    let file = binary
        .wait_for_line(Duration::from_secs(5), "serving ")
        .split("serving ")
        .nth(1)
        .unwrap()
        .split(" with ")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&file, good.replace("{ addr", "{ weight = 0, addr")).unwrap();
    let line = binary.wait_for_line(Duration::from_secs(5), "reload rejected");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&file), "{line}");
    assert!(
        line.contains("services.web.endpoints[0].weight = 0"),
        "{line}"
    );
    assert!(
        line.ends_with("keeping the previous configuration"),
        "{line}"
    );
    assert_eq!(tag_of(binary.addr()), Some(b'A'));
}

#[test]
fn it_should_keep_reloading_a_file_that_is_rewritten_faster_than_the_debounce() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a]), ""));
    // A write every 40 ms for 2 s never leaves the 100 ms of quiet the debounce
    // waits for; the 500 ms cap must still let reloads through meanwhile.
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        // Every write differs (a counter), so every read finds a change.
        let endpoint = if round % 2 == 0 { b } else { a };
        served.write(&format!(
            "{}# write {round}\n",
            config(&endpoint_list(&[endpoint]), "")
        ));
        round += 1;
        thread::sleep(Duration::from_millis(40));
    }
    // A forced read may land between a write's truncate and its data and be
    // rejected (an empty or cut file); it still counts as a reload that the
    // cap let through while the file kept changing.
    let stats = served.server.reload_stats();
    let during = stats.successes() + stats.failures();
    assert!(
        during >= 2,
        "only {during} reloads ({} applied) while the file kept changing",
        stats.successes()
    );
    // Once the writes stop, the last one is applied.
    let last = if (round - 1) % 2 == 0 { b'B' } else { b'A' };
    eventually(Duration::from_secs(5), "the last write applied", || {
        tag_of(served.addr("web")) == Some(last)
    });
}

/// A deploy that replaces the whole config directory (`rm -rf conf && cp -r
/// new conf`) ends the inotify watch with the directory; the file is then
/// polled, so edits are still seen, the first one right away.
#[test]
fn it_should_keep_following_the_file_after_its_directory_is_replaced() {
    let (a, b, c) = (
        tagged_echo_backend(b'A'),
        tagged_echo_backend(b'B'),
        tagged_echo_backend(b'C'),
    );
    let dir = TempDir::new();
    let path = dir.join("l4mesh.toml");
    std::fs::write(&path, config(&endpoint_list(&[a]), "")).unwrap();
    let server = l4mesh::Server::start(&path).unwrap();
    let addr = server.local_addr("web").unwrap();
    assert_eq!(tag_of(addr), Some(b'A'));

    std::fs::remove_dir_all(&dir.0).unwrap();
    std::fs::create_dir(&dir.0).unwrap();
    std::fs::write(&path, config(&endpoint_list(&[b]), "")).unwrap();
    follows(addr, b'B');
    // Later edits too, through the polling.
    std::fs::write(&path, config(&endpoint_list(&[c]), "")).unwrap();
    follows(addr, b'C');
}

/// A reload that changes `runtime.workers` keeps the running count: an
/// endpoint the same reload adds gets one counter slot per running worker
/// (with the file's 1, both workers would share one slot and lose counts).
#[test]
fn it_should_keep_one_counter_slot_per_running_worker_when_a_reload_changes_workers() {
    let (a, b) = (tagged_echo_backend(b'A'), tagged_echo_backend(b'B'));
    let served = Served::start(&config(&endpoint_list(&[a]), ""));
    let addr = served.addr("web");
    served.write(&config(&endpoint_list(&[b]), "").replace("workers = 2", "workers = 1"));
    served.wait_for_reloads(1);
    follows(addr, b'B');
    let table = served.server.table().load_full();
    let service = table.route("web").unwrap();
    let endpoint = &service.member(b).unwrap().endpoint;
    assert_eq!(served.server.workers(), 2);
    assert_eq!(
        endpoint.stats.slots().count(),
        2,
        "one counter slot per running worker, not per the file's runtime.workers"
    );
    assert_eq!(service.stats.slots().count(), 2);
}

/// Listener `extra` is added and removed 40 times while clients hammer it
/// and `web`: every client of `web` is served, and a client of `extra` is
/// served, refused or reset (its listener went away), but never accepted
/// and then closed without a byte for want of a route.
#[test]
fn it_should_never_close_a_client_for_want_of_a_route_during_listener_churn() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let a = tagged_echo_backend(b'A');
    let extra = "[listeners.extra]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n";
    let served = Served::start(&config(&endpoint_list(&[a]), extra));
    let web = served.addr("web");
    let extra_addr = Arc::new(Mutex::new(served.addr("extra")));
    let stop = Arc::new(AtomicBool::new(false));
    let (served_extra, no_route) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Clients paced (1 ms apart) and bounded in time, so that TIME_WAIT
    // never runs the machine out of ephemeral ports.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let web_client = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                assert_eq!(tag_of(web), Some(b'A'), "client {n} of web not served");
                n += 1;
                thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let extra_clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr) = (Arc::clone(&stop), Arc::clone(&extra_addr));
            let (ok, bad) = (Arc::clone(&served_extra), Arc::clone(&no_route));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                    let target = *addr.lock().unwrap();
                    let Ok(mut s) = TcpStream::connect(target) else {
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut tag = [0u8; 1];
                    match s.read(&mut tag) {
                        Ok(1) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => bad.fetch_add(1, Ordering::Relaxed),
                        Err(_) => 0, // reset: its listener closed
                    };
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let with_extra = round % 2 == 1;
        served.write(&config(
            &endpoint_list(&[a]),
            if with_extra { extra } else { "" },
        ));
        let started = std::time::Instant::now();
        let outcome = served.server.control().reload();
        assert!(outcome.is_ok(), "{outcome:?}");
        slowest = slowest.max(started.elapsed());
        if with_extra {
            *extra_addr.lock().unwrap() = served.addr("extra");
            // Let its clients find it before it goes again.
            let seen = served_extra.load(Ordering::Relaxed);
            eventually(Duration::from_secs(10), "extra serves", || {
                served_extra.load(Ordering::Relaxed) > seen
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    let web_served = web_client.join().unwrap();
    for t in extra_clients {
        t.join().unwrap();
    }
    println!(
        "web served {web_served}; extra served {}, closed for want of a route {}; \
         slowest reload {slowest:?}",
        served_extra.load(Ordering::Relaxed),
        no_route.load(Ordering::Relaxed)
    );
    assert!(web_served > 0);
    assert!(
        slowest < Duration::from_secs(4),
        "a reload waited {slowest:?} for the workers to stop a listener"
    );
    assert_eq!(
        no_route.load(Ordering::Relaxed),
        0,
        "clients were accepted and closed without a route"
    );
}
