//! Endpoint selection. Each policy lives in its own file behind [`Policy`];
//! policies are pure (no I/O, no clocks) and safe to share between workers.

mod random;
mod round_robin;

pub use random::WeightedRandom;
pub use round_robin::SmoothWeighted;

use crate::config::BalancePolicy;
use std::fmt::Debug;

/// A way of picking one endpoint of a service for a new connection.
pub trait Policy: Send + Sync + Debug {
    /// Picks the index of an endpoint for which `skip` is false, or `None`
    /// when every endpoint is skipped (or there are none). `skip` lets the
    /// caller exclude endpoints already tried for this client.
    fn pick(&self, skip: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Builds `policy` over endpoints with these weights (index = endpoint).
pub fn build(policy: BalancePolicy, weights: &[u32]) -> Box<dyn Policy> {
    match policy {
        BalancePolicy::RoundRobin => Box::new(SmoothWeighted::new(weights)),
        BalancePolicy::Random => Box::new(WeightedRandom::new(weights)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over many picks the split follows the weights, for every policy, and a
    /// skipped endpoint is never picked while another exists.
    #[test]
    fn it_should_honour_weights_and_skips_for_every_policy() {
        let weights = [1, 3, 6];
        for (name, policy) in BalancePolicy::ALL {
            let picker = build(policy, &weights);
            let mut counts = [0u32; 3];
            for _ in 0..10_000 {
                counts[picker.pick(&|_| false).unwrap()] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let expected = 10_000.0 * f64::from(*w) / 10.0;
                let error = (f64::from(counts[i]) - expected).abs() / expected;
                assert!(error < 0.1, "{name}: {counts:?}");
            }
            for _ in 0..1000 {
                assert_ne!(picker.pick(&|i| i == 2), Some(2), "{name}");
            }
            assert_eq!(picker.pick(&|_| true), None, "{name}");
        }
    }

    #[test]
    fn it_should_pick_nothing_from_an_empty_service() {
        for (_, policy) in BalancePolicy::ALL {
            assert_eq!(build(policy, &[]).pick(&|_| false), None);
        }
    }
}
