//! Passive outlier ejection's arithmetic: when a streak of connect failures
//! ejects an endpoint, for how long, and whether the service can spare it.
//! Pure: times are milliseconds on the caller's monotonic clock, passed in.

use std::time::Duration;

/// Whether a streak of `failures` connect failures in a row reaches the
/// `consecutive` that ejects.
pub fn reached(failures: u32, consecutive: u32) -> bool {
    failures >= consecutive
}

/// Whether one more of a service's `total` endpoints may be ejected while
/// `ejected` already are, without ejecting more than `max_percent` of them.
/// Integer arithmetic, so 50% of 3 endpoints allows one, and 0% none.
pub fn may_eject(ejected: usize, total: usize, max_percent: u8) -> bool {
    (ejected + 1) * 100 <= total * usize::from(max_percent)
}

/// Which ejection in a row this one is, given the previous count and how
/// long the endpoint has been admitted since its last ejection ended
/// (`None`: never ejected). Each `base` of good behaviour forgives one
/// earlier ejection, so an endpoint that fails again soon after it returns
/// stays out longer, and one that behaved for a while starts over.
pub fn multiplier(previous: u32, admitted_for: Option<Duration>, base: Duration) -> u32 {
    let forgiven = match admitted_for {
        None => return 1,
        Some(admitted) => admitted.as_millis() / base.as_millis().max(1),
    };
    let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
    previous.saturating_sub(forgiven).saturating_add(1)
}

/// How long ejection number `multiplier` (in a row) lasts: `base ×
/// multiplier`, capped at `max`.
pub fn ejection_time(base: Duration, max: Duration, multiplier: u32) -> Duration {
    base.saturating_mul(multiplier.max(1)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn it_should_eject_after_exactly_the_consecutive_failures() {
        assert!(!reached(4, 5));
        assert!(reached(5, 5));
        assert!(reached(1, 1));
    }

    #[test]
    fn it_should_never_eject_more_than_max_ejection_percent() {
        assert!(may_eject(0, 2, 50));
        assert!(!may_eject(1, 2, 50));
        assert!(!may_eject(0, 3, 30)); // 30% of 3 is 0.9 endpoints: none
        assert!(may_eject(0, 3, 34));
        assert!(!may_eject(0, 10, 0));
        assert!(may_eject(9, 10, 100));
        assert!(!may_eject(10, 10, 100));
        assert!(!may_eject(0, 0, 100));
        // Over every small service and percentage, the ejected count after
        // one more ejection never exceeds the share.
        for total in 0..30 {
            for percent in 0..=100u8 {
                for ejected in 0..=total {
                    if may_eject(ejected, total, percent) {
                        assert!((ejected + 1) as f64 <= total as f64 * f64::from(percent) / 100.0);
                    }
                }
            }
        }
    }

    #[test]
    fn it_should_grow_ejections_in_a_row_and_forgive_one_per_base_of_good_behaviour() {
        let base = 30 * S;
        assert_eq!(multiplier(0, None, base), 1);
        // Failed again 10 s after coming back: the second in a row.
        assert_eq!(multiplier(1, Some(10 * S), base), 2);
        assert_eq!(multiplier(2, Some(29 * S), base), 3);
        // 65 s of good behaviour forgive two.
        assert_eq!(multiplier(3, Some(65 * S), base), 2);
        // A long quiet spell starts over.
        assert_eq!(multiplier(7, Some(3600 * S), base), 1);
        assert_eq!(multiplier(u32::MAX, Some(S), base), u32::MAX);
    }

    #[test]
    fn it_should_last_base_times_the_count_up_to_the_cap() {
        let (base, max) = (30 * S, 300 * S);
        assert_eq!(ejection_time(base, max, 1), 30 * S);
        assert_eq!(ejection_time(base, max, 3), 90 * S);
        assert_eq!(ejection_time(base, max, 10), 300 * S);
        assert_eq!(ejection_time(base, max, 11), 300 * S);
        assert_eq!(ejection_time(base, max, u32::MAX), 300 * S);
        assert_eq!(ejection_time(base, max, 0), 30 * S);
    }
}
