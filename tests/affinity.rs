//! Worker threads on their CPUs (`runtime.cpu_affinity`), read back from
//! /proc for the running threads.

mod common;

use common::*;
use l4mesh::config::{CpuAffinity, parse_cpu_affinity};

/// The CPUs a thread may run on, from its `/proc/.../status`.
fn allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    match parse_cpu_affinity(list, 1 << 20).unwrap() {
        CpuAffinity::Cpus(cpus) => cpus,
        other => panic!("{other:?}"),
    }
}

/// The CPUs of this process's thread named `name`.
fn cpus_of(name: &str) -> Vec<usize> {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).unwrap().trim() == name {
            return allowed(&std::fs::read_to_string(path.join("status")).unwrap());
        }
    }
    panic!("no thread named {name}");
}

fn process_cpus() -> Vec<usize> {
    allowed(&std::fs::read_to_string("/proc/self/status").unwrap())
}

fn with_affinity(value: &str) -> String {
    config_text(&[(echo_backend(), 1)], "").replacen(
        "[runtime]\n",
        &format!("[runtime]\ncpu_affinity = \"{value}\"\n"),
        1,
    )
}

/// The tests read threads by name, so under `cargo test` (one process for
/// all of them) they run one at a time and each stops its proxy, whose
/// worker threads have ended by the time the next test starts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checks the workers' CPUs and one round trip, then stops the proxy.
fn check(text: &str, expect: impl Fn(&[usize]) -> [Vec<usize>; 2]) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cpus = process_cpus();
    let proxy = start_proxy(text);
    let found = [cpus_of("l4mesh-w0"), cpus_of("l4mesh-w1")];
    let echoed = echoes(&proxy);
    proxy.stop_handle().stop();
    proxy.wait();
    assert_eq!(found, expect(&cpus), "the process may use {cpus:?}");
    assert!(echoed);
}

/// One round trip through the proxy's echo backend.
fn echoes(proxy: &l4mesh::Proxy) -> bool {
    use std::io::{Read, Write};
    let mut client = connect(proxy);
    let mut back = [0; 5];
    client.write_all(b"hello").is_ok() && client.read_exact(&mut back).is_ok() && &back == b"hello"
}

#[test]
fn it_should_pin_each_worker_to_its_own_cpu_by_default_when_there_is_one_per_cpu() {
    // The test configs run two workers: pinned on a machine (or cpuset) of
    // at most two CPUs, left to the scheduler on a bigger one.
    check(&config_text(&[(echo_backend(), 1)], ""), |cpus| {
        if cpus.len() <= 2 {
            [vec![cpus[0]], vec![cpus[1 % cpus.len()]]]
        } else {
            [cpus.to_vec(), cpus.to_vec()]
        }
    });
}

#[test]
fn it_should_leave_workers_to_the_scheduler_when_off() {
    check(&with_affinity("off"), |cpus| [cpus.to_vec(), cpus.to_vec()]);
}

#[test]
fn it_should_pin_workers_to_listed_cpus_in_turn_and_skip_ones_it_may_not_use() {
    // CPU 1023 is listed but (on any machine this runs on) not usable.
    let last = *process_cpus().last().unwrap();
    check(&with_affinity(&format!("{last},1023")), |_| {
        [vec![last], vec![last]]
    });
}
