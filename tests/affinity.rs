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

/// `text` with `runtime.workers` set to `workers`.
fn with_workers(text: &str, workers: usize) -> String {
    text.replacen("workers = 2\n", &format!("workers = {workers}\n"), 1)
}

/// Checks the CPUs of the first `workers` workers and one round trip, then
/// stops the proxy.
fn check_workers(text: &str, workers: usize, expect: impl Fn(&[usize]) -> Vec<Vec<usize>>) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cpus = process_cpus();
    let proxy = start_proxy(text);
    let found: Vec<Vec<usize>> = (0..workers)
        .map(|i| cpus_of(&format!("l4mesh-w{i}")))
        .collect();
    let echoed = echoes(&proxy);
    proxy.stop_handle().stop();
    proxy.wait();
    assert_eq!(found, expect(&cpus), "the process may use {cpus:?}");
    assert!(echoed);
}

/// [`check_workers`] for the two workers of the test configs.
fn check(text: &str, expect: impl Fn(&[usize]) -> [Vec<usize>; 2]) {
    check_workers(text, 2, |cpus| expect(cpus).to_vec());
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
    // As many workers as CPUs this process may use, whatever the machine.
    let cpus = process_cpus();
    let text = with_workers(&config_text(&[(echo_backend(), 1)], ""), cpus.len());
    check_workers(&text, cpus.len(), |cpus| {
        cpus.iter().map(|&cpu| vec![cpu]).collect()
    });
}

#[test]
fn it_should_leave_workers_to_the_scheduler_by_default_with_fewer_workers_than_cpus() {
    let cpus = process_cpus();
    assert!(
        cpus.len() >= 2,
        "this test needs a process that may use at least two CPUs: {cpus:?}"
    );
    let workers = cpus.len() - 1;
    let text = with_workers(&config_text(&[(echo_backend(), 1)], ""), workers);
    check_workers(&text, workers, |cpus| vec![cpus.to_vec(); workers]);
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
