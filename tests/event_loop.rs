//! `runtime.event_loop` chooses the loop every worker runs, and the log
//! says which: one line per worker at start, `worker N: event loop epoll`
//! or `worker N: event loop io_uring`. A value that is not a loop fails
//! `--check` and names the key.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Workers every test here starts (`config_text` asks for two).
const WORKERS: usize = 2;

/// The running binary on `event_loop`, serving an echo backend.
fn binary_on(event_loop: &'static str) -> Binary {
    let mode = Mode::new("auto", event_loop);
    Binary::start(
        &with_mode(&config_text(&[(echo_backend(), 1)], ""), mode),
        &[],
    )
}

/// Asserts that each worker logged exactly once that it runs `expected`,
/// and that none logged another loop.
fn assert_every_worker_runs(binary: &Binary, expected: &str) {
    for worker in 0..WORKERS {
        let line = format!("worker {worker}: event loop {expected}");
        binary.wait_for_line(Duration::from_secs(10), &line);
        assert_eq!(binary.count_lines(&line), 1, "{line}");
    }
    let other = if expected == "epoll" {
        "io_uring"
    } else {
        "epoll"
    };
    assert_eq!(
        binary.count_lines(&format!(": event loop {other}")),
        0,
        "a worker runs {other}, not {expected}"
    );
}

/// Whether this kernel lets this process set up an io_uring (it may not:
/// `kernel.io_uring_disabled`, or a seccomp profile).
fn io_uring_allowed() -> bool {
    // struct io_uring_params is 120 bytes; all zero asks for the defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(1, params) writes only into `params`; the
    // descriptor it may return is closed at once.
    unsafe {
        let fd = libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr());
        if fd < 0 {
            return false;
        }
        libc::close(fd as i32);
    }
    true
}

#[test]
fn it_should_run_the_epoll_loop_on_every_worker_when_asked() {
    assert_every_worker_runs(&binary_on("epoll"), "epoll");
}

#[test]
fn it_should_run_the_io_uring_loop_on_every_worker_when_asked() {
    assert_every_worker_runs(&binary_on("io_uring"), "io_uring");
}

#[test]
fn it_should_run_the_io_uring_loop_by_default_where_the_kernel_allows_it() {
    let expected = if io_uring_allowed() {
        "io_uring"
    } else {
        "epoll"
    };
    assert_every_worker_runs(&binary_on("auto"), expected);
}

#[test]
fn it_should_fail_check_naming_runtime_event_loop_for_an_unknown_loop() {
    let dir = TempDir::new();
    let file = dir.join("l4mesh.toml");
    let text = config_text(&[(echo_backend(), 1)], "").replacen(
        "[runtime]\n",
        "[runtime]\nevent_loop = \"kqueue\"\n",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .arg("-c")
        .arg(&file)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: runtime.event_loop = \"kqueue\": not an event loop; fix: use \"auto\" (the \
             default: io_uring where the kernel allows it, epoll where it does not), \
             \"io_uring\" or \"epoll\"",
            file.display()
        )),
        "{stderr}"
    );
}
