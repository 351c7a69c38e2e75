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

/// One round trip through the proxy's echo backend.
fn echoes(proxy: &l4mesh::Proxy) -> bool {
    use std::io::{Read, Write};
    let mut client = connect(proxy);
    let mut back = [0; 5];
    client.write_all(b"hello").is_ok() && client.read_exact(&mut back).is_ok() && &back == b"hello"
}

#[test]
fn it_should_pin_each_worker_to_its_own_cpu_by_default() {
    let cpus = process_cpus();
    let proxy = start_proxy(&config_text(&[(echo_backend(), 1)], ""));
    assert_eq!(cpus_of("l4mesh-w0"), vec![cpus[0]]);
    assert_eq!(cpus_of("l4mesh-w1"), vec![cpus[1 % cpus.len()]]);
    assert!(echoes(&proxy));
}

#[test]
fn it_should_leave_workers_to_the_scheduler_when_off() {
    let cpus = process_cpus();
    let proxy = start_proxy(&with_affinity("off"));
    assert_eq!(cpus_of("l4mesh-w0"), cpus);
    assert_eq!(cpus_of("l4mesh-w1"), cpus);
    assert!(echoes(&proxy));
}

#[test]
fn it_should_pin_workers_to_listed_cpus_in_turn_and_skip_ones_it_may_not_use() {
    let cpus = process_cpus();
    let last = *cpus.last().unwrap();
    // CPU 1023 is listed but (on any machine this runs on) not usable.
    let proxy = start_proxy(&with_affinity(&format!("{last},1023")));
    assert_eq!(cpus_of("l4mesh-w0"), vec![last]);
    assert_eq!(cpus_of("l4mesh-w1"), vec![last]);
    assert!(echoes(&proxy));
}
