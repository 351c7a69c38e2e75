//! Connection lifecycle: graceful shutdown and drain, signals, and running
//! out of file descriptors (idle timeout: see truth.rs).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn round_trip(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).unwrap();
    let mut buf = vec![0; text.len()];
    stream.read_exact(&mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn it_should_stop_accepting_but_finish_open_connections_on_stop() {
    let proxy = start_proxy(&config_text(&[(echo_backend(), 1)], ""));
    let addr = proxy.local_addr("web").unwrap();
    let mut open = connect(&proxy);
    assert_eq!(round_trip(&mut open, "before"), "before");
    proxy.stop_handle().stop();
    eventually(Duration::from_secs(10), "new connections refused", || {
        TcpStream::connect(addr).is_err()
    });
    assert_eq!(round_trip(&mut open, "during drain"), "during drain");
    let waiter = std::thread::spawn(move || proxy.wait());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "must wait for the open connection");
    drop(open);
    eventually(Duration::from_secs(10), "proxy stopped", || {
        waiter.is_finished()
    });
}

per_mode! {
    /// What is still open when drain_timeout runs out is cut, and the
    /// client is told so with a reset.
    fn it_should_reset_what_is_left_when_drain_timeout_runs_out(mode) {
    let text = config_text(&[(echo_backend(), 1)], "").replace("\"5s\"", "\"300ms\"");
    let proxy = start_proxy(&with_mode(&text, mode));
    let mut open = connect(&proxy);
    assert_eq!(round_trip(&mut open, "x"), "x");
    let started = Instant::now();
    proxy.stop_handle().stop();
    proxy.wait();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{mode}: {took:?}"
    );
    assert_eq!(read_to_end(&mut open), (Vec::new(), Ended::Reset), "{mode}");
    }
}

#[test]
fn it_should_exit_0_after_draining_on_sigterm() {
    let mut binary = Binary::start(&config_text(&[(echo_backend(), 1)], ""), &[]);
    let mut open = TcpStream::connect(binary.addr()).unwrap();
    assert_eq!(round_trip(&mut open, "hi"), "hi");
    binary.signal("TERM");
    binary.wait_for_line(Duration::from_secs(10), "draining");
    assert_eq!(round_trip(&mut open, "still"), "still");
    drop(open);
    let status = binary.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Sends `signal` to `binary` straight from this process (no `kill`
/// process to spawn, so it lands within a millisecond or two).
fn send(binary: &Binary, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(binary.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn it_should_treat_a_second_signal_within_a_second_as_the_first_delivered_twice() {
    let mut binary = Binary::start_with(&config_text(&[(echo_backend(), 1)], ""), &[], |command| {
        command.env("RUST_LOG", "info,l4mesh=debug");
    });
    let mut open = TcpStream::connect(binary.addr()).unwrap();
    assert_eq!(round_trip(&mut open, "hi"), "hi");
    // `timeout` and shells signal the process and its group: the second
    // copy arrives while the first is being handled, so it is sent once the
    // first was (so the kernel cannot merge the two) and well within the
    // second.
    send(&binary, rustix::process::Signal::TERM);
    binary.wait_for_line(Duration::from_secs(10), "draining open connections");
    let handled = Instant::now();
    send(&binary, rustix::process::Signal::TERM);
    assert!(
        handled.elapsed() < Duration::from_millis(500),
        "the second signal went {:?} after the first was handled",
        handled.elapsed()
    );
    binary.wait_for_line(Duration::from_secs(10), "already draining");
    // Still draining: the open connection is served, and the exit is clean
    // once it leaves.
    assert_eq!(round_trip(&mut open, "still"), "still");
    assert_eq!(binary.count_lines("second signal: exiting"), 0);
    drop(open);
    assert_eq!(binary.child.wait().unwrap().code(), Some(0));
}

#[test]
fn it_should_exit_1_at_once_on_a_second_signal_while_draining() {
    // A drain that would last a minute, held open by one client.
    let text = config_text(&[(echo_backend(), 1)], "").replace("\"5s\"", "\"60s\"");
    let mut binary = Binary::start(&text, &[]);
    let mut open = TcpStream::connect(binary.addr()).unwrap();
    assert_eq!(round_trip(&mut open, "hi"), "hi");
    send(&binary, rustix::process::Signal::INT);
    binary.wait_for_line(Duration::from_secs(10), "draining open connections");
    assert_eq!(round_trip(&mut open, "draining"), "draining");
    // A second signal counts as one only a second or more after the first.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(binary.child.try_wait().unwrap().is_none(), "still draining");
    let sent = Instant::now();
    send(&binary, rustix::process::Signal::INT);
    let line = binary.wait_for_line(Duration::from_secs(10), "second signal: exiting");
    assert!(line.contains("WARN"), "{line}");
    let mut status = None;
    eventually(Duration::from_secs(10), "the process exits", || {
        status = binary.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(1));
    // At once: long before the 60 s drain would have ended.
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "{:?}",
        sent.elapsed()
    );
    // The client still connected is cut, not left hanging.
    let mut rest = Vec::new();
    let ended = open.read_to_end(&mut rest);
    assert!(ended.is_err() || rest.is_empty(), "{ended:?} {rest:?}");
}

#[test]
fn it_should_wait_at_the_descriptor_limit_without_spinning_and_serve_again() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed for this test");
    }
    let binary = Binary::start(
        &config_text(&[(echo_backend(), 1)], ""),
        &["prlimit", "--nofile=48:48"],
    );
    let addr = binary.addr();
    // So low a limit leaves room for one client at a time, and says so.
    binary.wait_for_line(Duration::from_secs(10), "too low for l4mesh's reserve");
    // Each proxied connection costs two descriptors: open far more than fit.
    let clients: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let first = binary.wait_for_line(Duration::from_secs(10), "at capacity: 1 clients open");
    assert!(first.contains("WARN"), "{first}");
    let cpu_before = binary.cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = binary.cpu_seconds() - cpu_before;
    assert!(cpu < 0.5, "spinning: {cpu} CPU seconds in 2 s");
    // One line for the whole episode, and no client accepted only to fail.
    assert_eq!(binary.count_lines("at capacity: "), 1);
    assert_eq!(binary.count_lines("Too many open files"), 0);
    drop(clients);
    // Once the clients leave, new ones are served: after the 39 closed ones
    // still queued are accepted and ended, one at a time (5-10 ms here).
    // It took 5 s to over 40 s while the ring loop's accept armed ahead of
    // a client held the one slot on a socket nobody was queued on (each
    // probe below waits 5 s for its echo); the time is printed.
    let left = std::time::Instant::now();
    eventually(Duration::from_secs(10), "serving again", || {
        let Ok(mut c) = TcpStream::connect(addr) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ok").is_ok() && {
            let mut buf = [0; 2];
            c.read_exact(&mut buf).is_ok() && &buf == b"ok"
        }
    });
    eprintln!("serving again {:?} after the clients left", left.elapsed());
}

/// With no clients, no thread has anything to do, so none wakes up: the
/// health thread used to look at the table every 50 ms and the access-log
/// writer every 200 ms. Outlier detection is on (the health thread sleeps
/// until an ejection needs ending) and so is the access log.
#[test]
fn it_should_not_wake_up_while_idle() {
    let text = config_text(&[(echo_backend(), 1)], "")
        + "[services.web.outlier]\nbase_ejection = \"1s\"\n[access_log]\npath = \"stderr\"\n";
    let quiet = Binary::start(&text, &[]);
    // Let start-up settle.
    std::thread::sleep(Duration::from_millis(300));
    let before = quiet.context_switches();
    std::thread::sleep(Duration::from_secs(3));
    let woken = woken(&before, &quiet.context_switches());
    let total: u64 = woken.iter().map(|(_, n)| n).sum();
    assert!(
        total <= 6,
        "idle threads woke up {total} times in 3 s: {woken:?}"
    );
}

/// Wake-ups per thread between two [`Binary::context_switches`] readings.
fn woken(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    let before: std::collections::HashMap<_, _> = before.iter().cloned().collect();
    after
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                n.saturating_sub(before.get(name).copied().unwrap_or(0)),
            )
        })
        .collect()
}
