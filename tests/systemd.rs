//! systemd integration without systemd: a fake `NOTIFY_SOCKET` (a datagram
//! socket the test reads) sees READY, RELOADING (with MONOTONIC_USEC) then
//! READY around a reload, STOPPING at drain, and WATCHDOG pings when
//! `WATCHDOG_USEC` is set; and the shipped unit file passes
//! `systemd-analyze verify` where systemd is installed.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// The notify messages received within `within`, until `until` matches one.
fn messages_until(socket: &UnixDatagram, within: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else { break };
        let message = String::from_utf8_lossy(&buf[..n]).to_string();
        let done = message.starts_with(until);
        got.push(message);
        if done {
            return got;
        }
    }
    panic!("no {until:?} within {within:?}; got {got:?}");
}

#[test]
fn it_should_tell_systemd_ready_reloading_stopping_and_ping_its_watchdog() {
    let dir = TempDir::new();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let text = config_text(&[(echo_backend(), 1)], "");
    let mut binary = Binary::start_with(&text, &[], |c| {
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    });
    let wait = Duration::from_secs(10);
    let first: Vec<String> = messages_until(&socket, wait, "READY=1")
        .into_iter()
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert_eq!(first, ["READY=1"], "READY comes first, once");
    let pings = messages_until(&socket, wait, "WATCHDOG=1").len()
        + messages_until(&socket, wait, "WATCHDOG=1").len();
    assert!(pings >= 2);

    binary.signal("HUP");
    let reload: Vec<String> = messages_until(&socket, wait, "READY=1")
        .into_iter()
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert_eq!(reload.len(), 2, "{reload:?}");
    let (state, usec) = reload[0].split_once('\n').unwrap();
    assert_eq!(state, "RELOADING=1");
    let usec: u64 = usec
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(reload[1], "READY=1");

    binary.signal("TERM");
    messages_until(&socket, wait, "STOPPING=1");
    assert!(binary.child.wait().unwrap().success());
}

#[test]
fn it_should_ship_a_unit_file_that_systemd_analyze_accepts() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/systemd/l4mesh.service");
    let text = std::fs::read_to_string(unit).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "RuntimeDirectory=l4mesh",
        "LimitNOFILE=",
        "WatchdogSec=",
        "NotifyAccess=all",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
    {
        Ok(out) => {
            let errors = String::from_utf8_lossy(&out.stderr);
            // verify also checks that ExecStart's binary exists, which it
            // does only once the package is installed.
            let real: Vec<&str> = errors
                .lines()
                .filter(|l| !l.contains("/usr/bin/l4mesh") && !l.trim().is_empty())
                .collect();
            assert!(real.is_empty(), "systemd-analyze verify: {errors}");
        }
        Err(_) => eprintln!(
            "systemd-analyze is not installed here; the unit was checked by its keys only"
        ),
    }
}

#[test]
fn it_should_tell_systemd_the_new_main_pid_when_an_upgrade_hands_over() {
    let dir = TempDir::new();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // A fixed port: the new process takes the socket over by its address.
    let text = config_text(&[(echo_backend(), 1)], "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "drain_timeout = \"5s\"\n",
            &format!(
                "drain_timeout = \"5s\"\nupgrade_socket = \"{}\"\n",
                dir.join("upgrade.sock").display()
            ),
        );
    let old = Binary::start_with(&text, &[], |c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    let wait = Duration::from_secs(10);
    assert_eq!(messages_until(&socket, wait, "READY=1"), ["READY=1"]);
    let upgraded = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .arg("upgrade")
        .arg("-c")
        .arg(&old.config)
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&upgraded.stdout).to_string();
    assert!(upgraded.status.success(), "{output}");
    let new: u32 = output
        .split(" as pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let handover = messages_until(&socket, wait, "READY=1");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(new.to_string())
        .status();
    assert_eq!(handover, [format!("MAINPID={new}"), "READY=1".to_string()]);
}
