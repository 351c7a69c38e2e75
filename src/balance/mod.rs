//! Endpoint selection. Each policy lives in its own file behind [`Policy`];
//! policies are pure (no I/O, no clocks) and safe to share between workers.

mod least_conn;
mod p2c;
mod random;
mod round_robin;
mod source_hash;

pub use least_conn::LeastConn;
pub use p2c::PowerOfTwo;
pub use random::WeightedRandom;
pub use round_robin::SmoothWeighted;
pub use source_hash::{Maglev, TABLE_SIZE};

use crate::config::{BalancePolicy, EndpointConfig};
use std::fmt::Debug;
use std::net::IpAddr;

/// What a policy may look at to pick an endpoint for one new connection.
/// Endpoints are named by their index in the service's member list.
pub struct Pick<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// Whether this pick replaces an endpoint that just failed for this
    /// client (failover), rather than serving a new client.
    pub retry: bool,
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
        BalancePolicy::LeastConn => Box::new(LeastConn::new(&weights)),
        BalancePolicy::P2c => Box::new(PowerOfTwo::new(&weights)),
        BalancePolicy::SourceHash => Box::new(Maglev::new(endpoints)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

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

    /// A random client address, IPv4 three times in four.
    pub(crate) fn random_client(rng: &mut fastrand::Rng) -> IpAddr {
        if rng.u8(..4) == 0 {
            IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
        }
    }

    /// Opens `picks` connections one after another through `policy` (each
    /// pick sees the ones before it as active), returning the final active
    /// counts and the worst spread of active/weight seen after any pick.
    pub(crate) fn accumulate(policy: &dyn Policy, weights: &[u32], picks: u64) -> (Vec<u64>, f64) {
        let active = std::cell::RefCell::new(vec![0u64; weights.len()]);
        let mut worst: f64 = 0.0;
        for _ in 0..picks {
            let i = policy
                .pick(&Pick {
                    client: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    retry: false,
                    skip: &|_| false,
                    active: &|i| active.borrow()[i],
                })
                .expect("an endpoint is always usable here");
            active.borrow_mut()[i] += 1;
            let loads: Vec<f64> = active
                .borrow()
                .iter()
                .zip(weights)
                .map(|(&a, &w)| a as f64 / f64::from(w))
                .collect();
            let spread = loads.iter().cloned().fold(f64::MIN, f64::max)
                - loads.iter().cloned().fold(f64::MAX, f64::min);
            worst = worst.max(spread);
        }
        (active.into_inner(), worst)
    }

    /// A pick from 127.0.0.1 with no open connections, skipping per `skip`.
    pub(crate) fn pick_with(policy: &dyn Policy, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        policy.pick(&Pick {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            retry: false,
            skip,
            active: &|_| 0,
        })
    }

    /// A pick from `client` with no open connections, skipping per `skip`.
    fn pick_from(
        policy: &dyn Policy,
        client: IpAddr,
        skip: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        policy.pick(&Pick {
            client,
            retry: false,
            skip,
            active: &|_| 0,
        })
    }

    /// Over many picks from many clients with no connections open, the split
    /// follows the weights within 10% for every policy, and a skipped
    /// endpoint is never picked while another exists.
    #[test]
    fn it_should_honour_weights_and_skips_for_every_policy() {
        let weights = [1, 3, 6];
        let mut rng = fastrand::Rng::with_seed(4);
        // The policies draw from the thread's generator: seed it too.
        fastrand::seed(4);
        for (name, policy) in BalancePolicy::ALL {
            let picker = build(policy, &endpoints(&weights));
            let mut counts = [0u32; 3];
            for _ in 0..10_000 {
                let client = random_client(&mut rng);
                counts[pick_from(&*picker, client, &|_| false).unwrap()] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let expected = 10_000.0 * f64::from(*w) / 10.0;
                let error = (f64::from(counts[i]) - expected).abs() / expected;
                assert!(error < 0.1, "{name}: {counts:?}");
            }
            for _ in 0..1000 {
                let client = random_client(&mut rng);
                assert_ne!(pick_from(&*picker, client, &|i| i == 2), Some(2), "{name}");
            }
            assert_eq!(pick_with(&*picker, &|_| true), None, "{name}");
        }
    }

    /// Random services (0 to 10 endpoints, weights 1 to 256), random skip
    /// sets, random open connections and clients: every policy picks an
    /// endpoint that is not skipped, and nothing only when all are.
    #[test]
    fn it_should_never_pick_a_skipped_endpoint_while_another_exists() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (name, policy) in BalancePolicy::ALL {
            for _ in 0..60 {
                let n = rng.usize(..=10);
                let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..=256)).collect();
                let picker = build(policy, &endpoints(&weights));
                for _ in 0..50 {
                    let skipped = rng.u16(..);
                    let skip = |i: usize| skipped & (1 << i) != 0;
                    let active: Vec<u64> = (0..n).map(|_| rng.u64(..100)).collect();
                    let any_usable = (0..n).any(|i| !skip(i));
                    for _ in 0..5 {
                        let picked = picker.pick(&Pick {
                            client: random_client(&mut rng),
                            retry: false,
                            skip: &skip,
                            active: &|i| active[i],
                        });
                        match picked {
                            Some(i) => assert!(i < n && !skip(i), "{name}: {i} of {weights:?}"),
                            None => assert!(!any_usable, "{name}: nothing from {weights:?}"),
                        }
                    }
                }
            }
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
