//! Endpoint selection. Each policy lives in its own file behind [`Policy`];
//! policies are pure (no I/O, no clocks) and safe to share between workers.

mod random;
mod round_robin;

pub use random::WeightedRandom;
pub use round_robin::SmoothWeighted;

use crate::config::{BalancePolicy, EndpointConfig};
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

/// Builds `policy` over these endpoints (index = endpoint). Policies that
/// hash need each endpoint's address, not just its weight, so that an
/// endpoint keeps its place when others join or leave.
pub fn build(policy: BalancePolicy, endpoints: &[EndpointConfig]) -> Box<dyn Policy> {
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    match policy {
        BalancePolicy::RoundRobin => Box::new(SmoothWeighted::new(&weights)),
        BalancePolicy::Random => Box::new(WeightedRandom::new(&weights)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    /// Endpoints 10.0.0.1:80, 10.0.0.2:80, ... with these weights.
    pub(crate) fn endpoints(weights: &[u32]) -> Vec<EndpointConfig> {
        weights
            .iter()
            .zip(1u32..)
            .map(|(&weight, n)| EndpointConfig {
                addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + n), 80)),
                weight,
            })
            .collect()
    }

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
            let picker = build(policy, &endpoints(&weights));
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
            assert_eq!(
                pick_with(&*build(policy, &endpoints(&[])), &|_| false),
                None
            );
        }
    }
}
