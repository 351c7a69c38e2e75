//! Pins each worker thread to its CPU (`runtime.cpu_affinity`), as nginx's
//! `worker_cpu_affinity auto` and HAProxy's `cpu-map` do.

use crate::config::{CpuAffinity, cpu_list as list};
use rustix::process::getpid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPU for each of `workers` workers (`None`: unpinned), given the CPUs
/// this process may run on, and a warning when listed CPUs had to be left
/// out. Pure, so the rules are tested without touching the process.
pub fn assign(
    affinity: &CpuAffinity,
    allowed: &[usize],
    workers: usize,
) -> (Vec<Option<usize>>, Option<String>) {
    let (cpus, warning) = match affinity {
        CpuAffinity::Off => (Vec::new(), None),
        // Fewer workers than CPUs: this process does not have the machine to
        // itself (a sidecar with a CPU quota, say), and pinning every such
        // instance's worker 0 to the same first CPU would pile them up.
        CpuAffinity::Auto if workers < allowed.len() => (Vec::new(), None),
        CpuAffinity::Auto => (allowed.to_vec(), None),
        CpuAffinity::Cpus(listed) => {
            let (usable, refused): (Vec<usize>, Vec<usize>) =
                listed.iter().partition(|cpu| allowed.contains(cpu));
            let warning = (!refused.is_empty()).then(|| {
                format!(
                    "runtime.cpu_affinity = \"{affinity}\": CPU(s) {} are not among the CPUs this \
                     process may run on ({}); {}; fix: list only those CPUs, or use \"auto\"",
                    list(&refused),
                    list(allowed),
                    if usable.is_empty() {
                        "the workers run unpinned".to_string()
                    } else {
                        format!("the workers use {}", list(&usable))
                    }
                )
            });
            (usable, warning)
        }
    };
    if cpus.is_empty() {
        return (vec![None; workers], warning);
    }
    let pinned = (0..workers).map(|i| Some(cpus[i % cpus.len()])).collect();
    (pinned, warning)
}

/// The CPU for each worker, given the CPUs this process may run on; logs
/// where they go.
pub fn worker_cpus(affinity: &CpuAffinity, workers: usize) -> Vec<Option<usize>> {
    if *affinity == CpuAffinity::Off {
        return vec![None; workers];
    }
    // The main thread's mask, which every thread inherits unless pinned.
    let allowed: Vec<usize> = match sched_getaffinity(Some(getpid())) {
        Ok(set) => (0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(e) => {
            log::warn!("cannot read this process's CPUs ({e}); the workers run unpinned");
            return vec![None; workers];
        }
    };
    let (cpus, warning) = assign(affinity, &allowed, workers);
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let pinned: Vec<usize> = cpus.iter().flatten().copied().collect();
    if !pinned.is_empty() {
        log::info!(
            "workers pinned to CPUs {} (runtime.cpu_affinity = \"{affinity}\")",
            list(&pinned)
        );
    } else if *affinity == CpuAffinity::Auto {
        log::info!(
            "{workers} worker(s) for {} CPUs: left to the scheduler (runtime.cpu_affinity = \
             \"auto\" pins only when there is a worker for every CPU; list CPUs to pin anyway)",
            allowed.len()
        );
    }
    cpus
}

/// Pins the calling thread, worker `index`, to `cpu`; if the kernel
/// refuses, says so and leaves the thread unpinned.
pub fn pin_current_thread(index: usize, cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu);
    if let Err(e) = sched_setaffinity(None, &set) {
        log::warn!("worker {index}: cannot pin to CPU {cpu} ({e}); it runs unpinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_spread_workers_over_the_allowed_cpus_in_turn() {
        let (cpus, warning) = assign(&CpuAffinity::Auto, &[2, 3], 3);
        assert_eq!(cpus, vec![Some(2), Some(3), Some(2)]);
        assert_eq!(warning, None);
        assert_eq!(assign(&CpuAffinity::Off, &[0, 1], 2).0, vec![None, None]);
    }

    #[test]
    fn it_should_not_pin_automatically_with_fewer_workers_than_cpus() {
        let (cpus, warning) = assign(&CpuAffinity::Auto, &[0, 1, 2, 3], 2);
        assert_eq!(cpus, vec![None, None]);
        assert_eq!(warning, None);
        // A list is the operator's choice, and is honoured.
        let listed = CpuAffinity::Cpus(vec![2, 3]);
        assert_eq!(assign(&listed, &[0, 1, 2, 3], 2).0, vec![Some(2), Some(3)]);
    }

    #[test]
    fn it_should_leave_out_listed_cpus_the_process_may_not_use_and_say_so() {
        let (cpus, warning) = assign(&CpuAffinity::Cpus(vec![1, 7]), &[0, 1], 2);
        assert_eq!(cpus, vec![Some(1), Some(1)]);
        let warning = warning.unwrap();
        assert!(warning.contains("CPU(s) 7 are not among"), "{warning}");
        assert!(warning.contains("the workers use 1"), "{warning}");
        let (cpus, warning) = assign(&CpuAffinity::Cpus(vec![9]), &[0, 1], 2);
        assert_eq!(cpus, vec![None, None]);
        assert!(warning.unwrap().contains("the workers run unpinned"));
    }
}
