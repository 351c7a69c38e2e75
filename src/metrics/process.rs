//! The standard `process_*` metrics, read from /proc/self and getrlimit.
//!
//! The /proc files are opened once ([`ProcessStats::open_sources`], called
//! when the admin listener starts) and read again from their start on each
//! scrape, so a scrape needs no new descriptor: while the process is out of
//! descriptors, which is exactly when `process_open_fds` matters, the
//! figures stay true instead of reading 0. A figure that cannot be read is
//! `None` and left out of the exposition, never reported as 0.

use rustix::fs::{Dir, Mode, OFlags};
use rustix::process::{Resource, getrlimit};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

/// What the kernel says about this process; `None` where it could not say.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory in bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft file descriptor limit.
    pub max_fds: Option<u64>,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// procfs reports times in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The /proc files, kept open for the life of the process.
struct Sources {
    stat: Option<File>,
    status: Option<File>,
    /// `/proc/self/fd`, rewound for each count.
    fds: Option<Mutex<Dir>>,
    /// The boot time (`btime` of /proc/stat), which never changes.
    boot_time: Option<f64>,
}

static SOURCES: OnceLock<Sources> = OnceLock::new();

impl Sources {
    fn open() -> Sources {
        let fds = rustix::fs::open(
            "/proc/self/fd",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| Dir::new(fd).ok())
        .map(Mutex::new);
        Sources {
            stat: File::open("/proc/self/stat").ok(),
            status: File::open("/proc/self/status").ok(),
            fds,
            boot_time: boot_time(),
        }
    }
}

impl ProcessStats {
    /// Opens the /proc files the figures come from, if not done yet; later
    /// reads need no new descriptor.
    pub fn open_sources() {
        SOURCES.get_or_init(Sources::open);
    }

    /// Reads them now.
    pub fn read() -> ProcessStats {
        let sources = SOURCES.get_or_init(Sources::open);
        let mut stats = ProcessStats {
            max_fds: getrlimit(Resource::Nofile).current,
            open_fds: sources.fds.as_ref().and_then(count_fds),
            ..ProcessStats::default()
        };
        if let Some(stat) = sources.stat.as_ref().and_then(read_from_start) {
            // Fields after the command name, which is in parentheses and may
            // hold spaces: field 3 of stat(5) is at index 0 here.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
            stats.cpu_seconds = field(14)
                .zip(field(15))
                .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
            stats.virtual_bytes = field(23).map(|v| v as u64);
            stats.start_time_seconds = sources
                .boot_time
                .zip(field(22))
                .map(|(boot, ticks)| boot + ticks / TICKS_PER_SECOND);
        }
        if let Some(status) = sources.status.as_ref().and_then(read_from_start) {
            stats.resident_bytes = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024);
        }
        stats
    }
}

/// The whole of a /proc file, read again from its start (procfs builds the
/// text anew for a read at offset 0).
fn read_from_start(file: &File) -> Option<String> {
    let mut text = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match file.read_at(&mut chunk, text.len() as u64) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
    String::from_utf8(text).ok()
}

/// The entries of /proc/self/fd but `.` and `..`: the open descriptors,
/// this directory's own among them.
fn count_fds(dir: &Mutex<Dir>) -> Option<u64> {
    let mut dir = dir.lock().ok()?;
    dir.rewind();
    let mut count = 0;
    for entry in dir.by_ref() {
        let name = entry.ok()?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            count += 1;
        }
    }
    Some(count)
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_read_this_processs_figures() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.unwrap() > 0);
        assert!(stats.virtual_bytes.unwrap() > stats.resident_bytes.unwrap());
        assert!(stats.cpu_seconds.unwrap() >= 0.0);
        let open = stats.open_fds.unwrap();
        assert!(open >= 3);
        assert!(stats.max_fds.unwrap() >= open);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = stats.start_time_seconds.unwrap();
        assert!(start > now - 3600.0 && start <= now + 1.0);
    }

    #[test]
    fn it_should_count_descriptors_as_they_open_and_close_without_opening_one() {
        ProcessStats::open_sources();
        let before = ProcessStats::read().open_fds.unwrap();
        let files: Vec<File> = (0..10).map(|_| File::open("/dev/null").unwrap()).collect();
        // Other tests' threads may open files meanwhile: at least ours count.
        assert!(ProcessStats::read().open_fds.unwrap() >= before + 10);
        drop(files);
    }
}
