//! `connection_rate_per_client`: its token bucket kept lock-free in one
//! atomic as GCRA's "theoretical arrival time" (the algorithm of nginx's
//! `limit_req` and redis-cell).

use crate::config::Rate;
use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds between two tokens of `rate` (at least 1).
fn interval(rate: &Rate) -> u64 {
    let nanos = rate.per.as_nanos() / u128::from(rate.count.max(1));
    u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
}

/// Takes one token of `rate` from the bucket `tat` at `now` (nanoseconds
/// since the table's epoch). The bucket is the time at which it will be
/// full again (GCRA's theoretical arrival time; at or before `now` means
/// full): an arrival moves it one interval on, and is allowed if that
/// leaves it at most `burst` intervals ahead of `now`. A refusal leaves
/// the bucket as it was.
pub(super) fn take_token(tat: &AtomicU64, rate: &Rate, now: u64) -> bool {
    let interval = interval(rate);
    let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)));
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = current.max(now).saturating_add(interval);
        if next - now > tolerance {
            return false;
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// Whether the bucket `tat` is full at `now`: nothing taken from it is
/// still to be paid back.
pub(super) fn is_full(tat: &AtomicU64, now: u64) -> bool {
    tat.load(Ordering::Acquire) <= now
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECOND: u64 = 1_000_000_000;

    fn per_second(count: u32, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        }
    }

    #[test]
    fn it_should_let_a_burst_through_then_one_token_per_interval() {
        let (tat, rate) = (AtomicU64::new(0), per_second(5, 5));
        let start = 10 * SECOND;
        assert_eq!(
            (0..6)
                .map(|_| take_token(&tat, &rate, start))
                .collect::<Vec<_>>(),
            [true, true, true, true, true, false]
        );
        assert!(!take_token(&tat, &rate, start + SECOND / 5 - 1));
        assert!(take_token(&tat, &rate, start + SECOND / 5));
        assert!(!take_token(&tat, &rate, start + SECOND / 5));
    }

    #[test]
    fn it_should_leave_the_bucket_as_it_was_on_a_refusal() {
        let (tat, rate) = (AtomicU64::new(0), per_second(1, 1));
        assert!(take_token(&tat, &rate, SECOND));
        let before = tat.load(Ordering::Relaxed);
        assert!(!take_token(&tat, &rate, SECOND));
        assert_eq!(tat.load(Ordering::Relaxed), before);
        assert_eq!(before, 2 * SECOND);
    }

    #[test]
    fn it_should_read_a_burst_of_zero_as_one() {
        let (tat, rate) = (AtomicU64::new(0), per_second(10, 0));
        assert!(take_token(&tat, &rate, SECOND));
        assert!(!take_token(&tat, &rate, SECOND));
    }

    #[test]
    fn it_should_call_a_bucket_full_once_its_debt_is_paid() {
        let (tat, rate) = (AtomicU64::new(0), per_second(2, 2));
        assert!(is_full(&tat, SECOND));
        assert!(take_token(&tat, &rate, SECOND));
        assert!(!is_full(&tat, SECOND + SECOND / 2 - 1));
        assert!(is_full(&tat, SECOND + SECOND / 2));
    }
}
