//! When probes run: each endpoint's first probe at a random point within the
//! interval and then every interval ±10%, so the probes of many endpoints
//! (and of many proxies probing one endpoint) spread out instead of lining
//! up. Pure: the random draw, uniform in `[0, 1)`, is passed in.

use std::time::Duration;

/// The share of the interval by which each wait varies, either way.
pub const JITTER: f64 = 0.1;

/// The wait before an endpoint's first probe: `interval × draw`.
pub fn first_probe(interval: Duration, draw: f64) -> Duration {
    interval.mul_f64(draw.clamp(0.0, 1.0))
}

/// The time from one probe's start to the next: `interval × (1 ± JITTER)`.
pub fn next_probe(interval: Duration, draw: f64) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(2);

    #[test]
    fn it_should_start_anywhere_within_the_interval() {
        assert_eq!(first_probe(I, 0.0), Duration::ZERO);
        assert_eq!(first_probe(I, 0.5), Duration::from_secs(1));
        assert!(first_probe(I, 0.999_999) < I);
    }

    #[test]
    fn it_should_jitter_each_wait_by_ten_percent_either_way() {
        assert_eq!(next_probe(I, 0.0), Duration::from_millis(1800));
        assert_eq!(next_probe(I, 0.5), I);
        assert!(next_probe(I, 0.999_999) < Duration::from_millis(2200));
        let mut rng = fastrand::Rng::with_seed(3);
        let waits: Vec<Duration> = (0..1000).map(|_| next_probe(I, rng.f64())).collect();
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(1800)..Duration::from_millis(2200)).contains(w))
        );
        let mean = waits.iter().sum::<Duration>() / 1000;
        assert!(mean.abs_diff(I) < Duration::from_millis(20), "{mean:?}");
    }
}
