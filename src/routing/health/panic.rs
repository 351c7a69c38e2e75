//! The panic decision: when too few of a service's endpoints are usable,
//! health is ignored and every endpoint shares the load, because sending all
//! traffic to the few that are left would overload them too (Envoy's panic
//! threshold). Pure.

/// Whether a service with `usable` of `total` endpoints usable (healthy and
/// not ejected) is in panic mode at `threshold` percent: always when none is
/// usable, and when fewer than `threshold`% are.
pub fn engaged(usable: usize, total: usize, threshold: u8) -> bool {
    total > 0 && (usable == 0 || usable * 100 < total * usize::from(threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_panic_at_threshold_zero_only_when_nothing_is_usable() {
        assert!(engaged(0, 3, 0));
        assert!(!engaged(1, 3, 0));
        assert!(
            !engaged(0, 0, 0),
            "an empty service has nothing to spread over"
        );
    }

    #[test]
    fn it_should_panic_below_the_threshold_but_not_at_it() {
        assert!(engaged(1, 4, 50));
        assert!(!engaged(2, 4, 50));
        assert!(engaged(2, 3, 67));
        assert!(!engaged(2, 3, 66));
        assert!(engaged(9, 10, 100));
        assert!(!engaged(10, 10, 100));
    }
}
