//! `runtime.cpu_affinity`: which CPU each worker thread runs on.
//!
//! A thread-per-core proxy keeps its workers on their own cores: left to
//! the scheduler, two busy workers can end up time-sharing one core while
//! the load generator and the backend share the other, and every connection
//! of the worker that waits sees it in its tail latency (see the README's
//! benchmark notes). A list is numbers and ascending ranges: `"0-3,8"`.

use std::fmt;

/// Where worker threads run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuAffinity {
    /// When there is a worker for every CPU the process may run on (or
    /// more), worker `i` on the `i`-th of them, in turn; with fewer workers
    /// than CPUs, unpinned.
    Auto,
    /// Wherever the kernel's scheduler puts them.
    Off,
    /// Worker `i` on `cpus[i % cpus.len()]`.
    Cpus(Vec<usize>),
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::Auto => f.write_str("auto"),
            CpuAffinity::Off => f.write_str("off"),
            CpuAffinity::Cpus(cpus) => f.write_str(&cpu_list(cpus)),
        }
    }
}

/// CPU numbers as a list with runs joined into ranges: `0-3,8`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i + 1 {
            format!("{}-{}", cpus[i], cpus[j])
        } else if j == i + 1 {
            format!("{},{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Parses `"auto"`, `"off"` or a CPU list (`"0-3,8"`: numbers and
/// ascending ranges below `max`, each CPU once). The error says what is
/// wrong with which part.
pub fn parse_cpu_affinity(text: &str, max: usize) -> Result<CpuAffinity, String> {
    match text.trim() {
        "auto" => return Ok(CpuAffinity::Auto),
        "off" => return Ok(CpuAffinity::Off),
        "" => return Err("it is empty".into()),
        _ => {}
    }
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (cpu(a, max)?, cpu(b, max)?),
            None => (cpu(part, max)?, cpu(part, max)?),
        };
        if first > last {
            return Err(format!("the range {part:?} runs backwards"));
        }
        for n in first..=last {
            if cpus.contains(&n) {
                return Err(format!("CPU {n} is listed twice"));
            }
            cpus.push(n);
        }
    }
    Ok(CpuAffinity::Cpus(cpus))
}

fn cpu(text: &str, max: usize) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n < max => Ok(n),
        Ok(n) => Err(format!(
            "CPU {n} is out of range: CPU numbers go up to {}",
            max - 1
        )),
        Err(_) => Err(format!("{text:?} is not a CPU number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_read_names_numbers_and_ranges() {
        assert_eq!(parse_cpu_affinity("auto", 1024), Ok(CpuAffinity::Auto));
        assert_eq!(parse_cpu_affinity(" off ", 1024), Ok(CpuAffinity::Off));
        assert_eq!(
            parse_cpu_affinity("0-2, 8", 1024),
            Ok(CpuAffinity::Cpus(vec![0, 1, 2, 8]))
        );
        assert_eq!(parse_cpu_affinity("5", 1024).unwrap().to_string(), "5");
        assert_eq!(
            parse_cpu_affinity("8,0-3", 1024).unwrap().to_string(),
            "8,0-3"
        );
    }

    #[test]
    fn it_should_write_runs_of_cpus_as_ranges() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8]), "0-3,8");
        assert_eq!(cpu_list(&[0, 1, 5, 7, 8, 9]), "0,1,5,7-9");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn it_should_explain_a_bad_list() {
        let error = |text| parse_cpu_affinity(text, 1024).unwrap_err();
        assert_eq!(error(""), "it is empty");
        assert_eq!(error("0,x"), "\"x\" is not a CPU number");
        assert_eq!(error("3-1"), "the range \"3-1\" runs backwards");
        assert_eq!(error("1,0-1"), "CPU 1 is listed twice");
        assert_eq!(
            error("1024"),
            "CPU 1024 is out of range: CPU numbers go up to 1023"
        );
        assert_eq!(error("0-"), "\"\" is not a CPU number");
    }
}
