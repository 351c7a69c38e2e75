//! Live health state shared between threads: per endpoint (inside the
//! `Endpoint`, so it carries over reloads with it) and per service. Workers
//! read one byte per candidate endpoint when they pick and write only when
//! a connect fails or an ejection happens; the health thread writes probe
//! verdicts and re-admissions. All relaxed atomics: each field is a fact of
//! its own, and a pick that sees a change one connection late is harmless.

use super::outlier;
use super::threshold::Verdict;
use crate::log_limit::LogLimit;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Active checks failed: down until `healthy_threshold` passes.
const DOWN: u8 = 1;
/// Joined a serving service: waits for its first passed probe.
const PENDING: u8 = 2;
/// Ejected by outlier detection until `ejected_until_ms`.
const EJECTED: u8 = 4;

/// One endpoint's health: the active checks' verdict, the passive
/// detector's streak and ejection.
#[derive(Debug)]
pub struct EndpointHealth {
    /// `DOWN`, `PENDING` and `EJECTED` bits; 0 means usable.
    flags: AtomicU8,
    /// Connect failures in a row (workers).
    failures: AtomicU32,
    /// Ejections in a row, for the next ejection's length.
    multiplier: AtomicU32,
    /// When the current ejection ends, on [`super::monotonic_ms`]'s clock.
    ejected_until_ms: AtomicU64,
    /// When the last ejection ended, plus one (0: never ejected).
    readmitted_at_ms: AtomicU64,
    /// Why the last probe failed, for /config (health thread only).
    last_failure: ArcSwapOption<String>,
}

/// An ejection that just happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long it lasts.
    pub duration: Duration,
    /// Which ejection in a row it is.
    pub multiplier: u32,
}

impl EndpointHealth {
    /// State for a new endpoint whose checks start at `verdict`.
    pub fn new(verdict: Verdict) -> EndpointHealth {
        let flags = match verdict {
            Verdict::Up => 0,
            Verdict::Down => DOWN,
            Verdict::Pending => PENDING,
        };
        EndpointHealth {
            flags: AtomicU8::new(flags),
            failures: AtomicU32::new(0),
            multiplier: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            readmitted_at_ms: AtomicU64::new(0),
            last_failure: ArcSwapOption::empty(),
        }
    }

    /// Whether health allows picking it: checks up and not ejected.
    #[inline]
    pub fn is_usable(&self) -> bool {
        self.flags.load(Ordering::Relaxed) == 0
    }

    /// What the active checks say (up when there are none).
    pub fn verdict(&self) -> Verdict {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & PENDING != 0 {
            Verdict::Pending
        } else if flags & DOWN != 0 {
            Verdict::Down
        } else {
            Verdict::Up
        }
    }

    /// Records the active checks' verdict (health thread).
    pub fn set_verdict(&self, verdict: Verdict) {
        let set = match verdict {
            Verdict::Up => 0,
            Verdict::Down => DOWN,
            Verdict::Pending => PENDING,
        };
        self.flags.fetch_and(!(DOWN | PENDING), Ordering::Relaxed);
        if set != 0 {
            self.flags.fetch_or(set, Ordering::Relaxed);
        }
    }

    /// Why the last probe failed, if it did.
    pub fn last_failure(&self) -> Option<Arc<String>> {
        self.last_failure.load_full()
    }

    /// Records the last probe's outcome (health thread).
    pub fn set_last_failure(&self, why: Option<String>) {
        self.last_failure.store(why.map(Arc::new));
    }

    /// Whether outlier detection has it ejected.
    pub fn is_ejected(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// How long its ejection still lasts at `now_ms`, if ejected.
    pub fn ejected_for(&self, now_ms: u64) -> Option<Duration> {
        self.is_ejected().then(|| {
            let until = self.ejected_until_ms.load(Ordering::Relaxed);
            Duration::from_millis(until.saturating_sub(now_ms))
        })
    }

    /// A connect succeeded: the failure streak ends. Writes only when there
    /// is a streak, so a healthy endpoint's cache line stays shared.
    #[inline]
    pub fn connect_succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failed: returns the failures in a row, this one included.
    pub fn connect_failed(&self) -> u32 {
        self.failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Ejects it at `now_ms` for `base × ejections in a row`, capped at
    /// `max`. The caller holds its service's [`ServiceHealth::try_eject`]
    /// guard and checked `max_ejection_percent`.
    pub fn eject(&self, now_ms: u64, base: Duration, max: Duration) -> Ejection {
        let readmitted = self.readmitted_at_ms.load(Ordering::Relaxed);
        let admitted_for =
            (readmitted != 0).then(|| Duration::from_millis(now_ms.saturating_sub(readmitted - 1)));
        let previous = self.multiplier.load(Ordering::Relaxed);
        let multiplier = outlier::multiplier(previous, admitted_for, base);
        let duration = outlier::ejection_time(base, max, multiplier);
        let until = now_ms.saturating_add(duration.as_millis() as u64);
        self.multiplier.store(multiplier, Ordering::Relaxed);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.flags.fetch_or(EJECTED, Ordering::Relaxed);
        super::EJECTIONS.notify_waiters();
        Ejection {
            duration,
            multiplier,
        }
    }

    /// Ends its ejection if it is due at `now_ms` (or `now` is forced, when
    /// outlier detection was turned off); returns whether it did.
    pub fn readmit(&self, now_ms: u64, force: bool) -> bool {
        if !self.is_ejected() || (!force && now_ms < self.ejected_until_ms.load(Ordering::Relaxed))
        {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.readmitted_at_ms
            .store(now_ms.saturating_add(1), Ordering::Relaxed);
        self.flags.fetch_and(!EJECTED, Ordering::Relaxed);
        true
    }
}

/// A service's health state that outlives snapshots (carried over by name).
#[derive(Debug)]
pub struct ServiceHealth {
    /// Held while one worker decides an ejection, so two workers never both
    /// eject past `max_ejection_percent`.
    ejecting: AtomicBool,
    /// Panic-mode lines: one every 10 s.
    pub panic_log: LogLimit,
    /// "Not ejected: the service cannot spare it" lines: one every 10 s.
    pub spare_log: LogLimit,
}

impl Default for ServiceHealth {
    fn default() -> Self {
        ServiceHealth {
            ejecting: AtomicBool::new(false),
            panic_log: LogLimit::new(Duration::from_secs(10)),
            spare_log: LogLimit::new(Duration::from_secs(10)),
        }
    }
}

impl ServiceHealth {
    /// The right to decide one ejection, or `None` if another worker is
    /// deciding one now (never waits: the caller tries again at its next
    /// failure).
    pub fn try_eject(&self) -> Option<EjectGuard<'_>> {
        self.ejecting
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| EjectGuard(&self.ejecting))
    }
}

/// Held while one ejection is decided.
#[derive(Debug)]
pub struct EjectGuard<'a>(&'a AtomicBool);

impl Drop for EjectGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn it_should_combine_verdict_and_ejection_into_one_usable_bit() {
        let h = EndpointHealth::new(Verdict::Up);
        assert!(h.is_usable());
        h.set_verdict(Verdict::Down);
        assert!(!h.is_usable());
        assert_eq!(h.verdict(), Verdict::Down);
        h.eject(0, S, 10 * S);
        h.set_verdict(Verdict::Up);
        assert!(!h.is_usable(), "still ejected");
        assert!(h.readmit(1000, false));
        assert!(h.is_usable());
        assert_eq!(
            EndpointHealth::new(Verdict::Pending).verdict(),
            Verdict::Pending
        );
    }

    #[test]
    fn it_should_count_failures_in_a_row_until_a_success() {
        let h = EndpointHealth::new(Verdict::Up);
        assert_eq!(h.connect_failed(), 1);
        assert_eq!(h.connect_failed(), 2);
        h.connect_succeeded();
        assert_eq!(h.connect_failed(), 1);
    }

    #[test]
    fn it_should_lengthen_repeated_ejections_and_readmit_when_due() {
        let h = EndpointHealth::new(Verdict::Up);
        let first = h.eject(0, 10 * S, 25 * S);
        assert_eq!((first.duration, first.multiplier), (10 * S, 1));
        assert_eq!(h.ejected_for(4000), Some(6 * S));
        assert!(!h.readmit(9_999, false));
        assert!(h.readmit(10_000, false));
        assert_eq!(h.ejected_for(10_000), None);
        // Ejected again 1 s after its return: twice as long, then capped.
        let second = h.eject(11_000, 10 * S, 25 * S);
        assert_eq!((second.duration, second.multiplier), (20 * S, 2));
        assert!(h.readmit(31_000, false));
        assert_eq!(h.eject(31_500, 10 * S, 25 * S).duration, 25 * S);
        assert!(h.readmit(31_600, true), "forced when detection is off");
    }

    #[test]
    fn it_should_let_one_worker_decide_an_ejection_at_a_time() {
        let s = ServiceHealth::default();
        let guard = s.try_eject();
        assert!(guard.is_some());
        assert!(s.try_eject().is_none());
        drop(guard);
        assert!(s.try_eject().is_some());
    }
}
