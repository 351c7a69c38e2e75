//! A process-wide "at most one line per interval" gate for log lines that a
//! fault could otherwise repeat thousands of times a second.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The gate for every line about running out of descriptors or kernel
/// memory (accept and connect alike): one line a second for the process.
pub static RESOURCE_ERRORS: LogLimit = LogLimit::new(Duration::from_secs(1));

/// The gate for lines about clients turned away before they were routed (a
/// bad PROXY header, an untrusted sender, a per-client limit): one line
/// every ten seconds for the process, each a sample of the kind; the
/// metrics count every one.
pub static ADMISSION_REFUSALS: LogLimit = LogLimit::new(Duration::from_secs(10));

/// Lets one log line through per interval, counting the ones it holds back.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] of the last line let through, plus one
    /// (0 means never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A gate that opens once per `interval`.
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now_ms`; if so, returns how many were
    /// held back since the last one.
    pub fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || stamp >= last + self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// [`Self::allow_at`] with the current time.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_let_one_line_per_second_through_and_count_the_rest() {
        let gate = LogLimit::new(Duration::from_secs(1));
        assert_eq!(gate.allow_at(0), Some(0));
        assert_eq!(gate.allow_at(10), None);
        assert_eq!(gate.allow_at(999), None);
        assert_eq!(gate.allow_at(1000), Some(2));
        assert_eq!(gate.allow_at(1500), None);
        assert_eq!(gate.allow_at(2100), Some(1));
    }
}
