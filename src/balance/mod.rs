//! Endpoint selection. Each policy lives in its own file behind [`Policy`];
//! policies are pure (no I/O, no clocks) and safe to share between workers.

mod random;
mod round_robin;

pub use random::WeightedRandom;
pub use round_robin::SmoothWeighted;

use crate::config::BalancePolicy;
use std::fmt::Debug;
use std::net::IpAddr;

/// What a policy may look at to pick an endpoint for one new connection.
/// Endpoints are named by their index in the service's member list.
pub struct Pick<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// True for endpoints that must not be picked (already tried for this
    /// client, draining, unhealthy or full).
    pub skip: &'a dyn Fn(usize) -> bool,
    /// Connections open now to an endpoint, across all workers.
    pub active: &'a dyn Fn(usize) -> u64,
}

/// A way of picking one endpoint of a service for a new connection.
pub trait Policy: Send + Sync + Debug {
    /// Picks the index of an endpoint that `request.skip` allows, or `None`
    /// when every endpoint is skipped (or there are none).
    fn pick(&self, request: &Pick<'_>) -> Option<usize>;
}

/// Builds `policy` over endpoints with these weights (index = endpoint).
pub fn build(policy: BalancePolicy, weights: &[u32]) -> Box<dyn Policy> {
    match policy {
        BalancePolicy::RoundRobin => Box::new(SmoothWeighted::new(weights)),
        BalancePolicy::Random => Box::new(WeightedRandom::new(weights)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A pick from 127.0.0.1 with no open connections, skipping per `skip`.
    pub(crate) fn pick_with(policy: &dyn Policy, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        policy.pick(&Pick {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            skip,
            active: &|_| 0,
        })
    }

    /// Over many picks the split follows the weights, for every policy, and a
    /// skipped endpoint is never picked while another exists.
    #[test]
    fn it_should_honour_weights_and_skips_for_every_policy() {
        let weights = [1, 3, 6];
        for (name, policy) in BalancePolicy::ALL {
            let picker = build(policy, &weights);
            let mut counts = [0u32; 3];
            for _ in 0..10_000 {
                counts[pick_with(&*picker, &|_| false).unwrap()] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let expected = 10_000.0 * f64::from(*w) / 10.0;
                let error = (f64::from(counts[i]) - expected).abs() / expected;
                assert!(error < 0.1, "{name}: {counts:?}");
            }
            for _ in 0..1000 {
                assert_ne!(pick_with(&*picker, &|i| i == 2), Some(2), "{name}");
            }
            assert_eq!(pick_with(&*picker, &|_| true), None, "{name}");
        }
    }

    #[test]
    fn it_should_pick_nothing_from_an_empty_service() {
        for (_, policy) in BalancePolicy::ALL {
            assert_eq!(pick_with(&*build(policy, &[]), &|_| false), None);
        }
    }
}
