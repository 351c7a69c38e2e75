//! Weighted least connections.
//!
//! Picks the usable endpoint with the fewest open connections relative to its
//! weight, comparing `active / weight` by cross-multiplying so no float or
//! division is needed. Active counts are process-wide, so every worker sees
//! the connections the others opened. Ties are broken at random in proportion
//! to weight: with no connections open the split follows the weights, as
//! weighted random's would, instead of always favouring the first endpoint.
//!
//! One pass over the endpoints, reading each count once, so a count that
//! changes under a pick (another worker connecting) cannot make it
//! inconsistent.

use super::{Pick, Policy};

/// Picks the endpoint with the lowest active connections per unit of weight.
#[derive(Debug)]
pub struct LeastConn {
    weights: Vec<u64>,
}

impl LeastConn {
    /// Builds the picker for these weights. Validation keeps weights at 1 or
    /// more; a 0 would count as 1 rather than divide by nothing.
    pub fn new(weights: &[u32]) -> LeastConn {
        LeastConn {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
        }
    }
}

impl Policy for LeastConn {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        // The best endpoint so far, its active count and weight, and the
        // total weight of the endpoints tied with it.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut tied_weight = 0;
        for (i, &weight) in self.weights.iter().enumerate() {
            if (request.skip)(i) {
                continue;
            }
            let active = (request.active)(i);
            let Some((_, best_active, best_weight)) = best else {
                best = Some((i, active, weight));
                tied_weight = weight;
                continue;
            };
            // active / weight against best_active / best_weight; u128 so the
            // products never overflow.
            let load = u128::from(active) * u128::from(best_weight);
            let best_load = u128::from(best_active) * u128::from(weight);
            if load < best_load {
                best = Some((i, active, weight));
                tied_weight = weight;
            } else if load == best_load {
                // Weighted reservoir sampling: after the loop each tied
                // endpoint has won with probability weight / tied_weight.
                tied_weight += weight;
                if fastrand::u64(..tied_weight) < weight {
                    best = Some((i, active, weight));
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::accumulate;
    use std::net::{IpAddr, Ipv4Addr};

    fn pick(policy: &LeastConn, active: &[u64], skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        policy.pick(&Pick {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            retry: false,
            skip,
            active: &|i| active[i],
        })
    }

    #[test]
    fn it_should_pick_the_endpoint_with_the_fewest_connections_per_weight() {
        let policy = LeastConn::new(&[1, 2, 4]);
        // Loads 3/1, 5/2 and 9/4: the last is the lightest.
        assert_eq!(pick(&policy, &[3, 5, 9], &|_| false), Some(2));
        // Loads 2/1, 3/2 and 9/4: the middle one.
        assert_eq!(pick(&policy, &[2, 3, 9], &|_| false), Some(1));
        // Skipping the lightest gives the next lightest.
        assert_eq!(pick(&policy, &[2, 3, 9], &|i| i == 1), Some(0));
    }

    #[test]
    fn it_should_break_ties_at_random_in_proportion_to_weight() {
        fastrand::seed(1);
        let policy = LeastConn::new(&[1, 3, 1]);
        // Loads 2/1, 6/3 and 5/1: the first two tie, 1 to 3 by weight.
        let mut counts = [0u32; 3];
        for _ in 0..8000 {
            counts[pick(&policy, &[2, 6, 5], &|_| false).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        // Binomial(8000, 0.25): mean 2000, sd 39; ±200 is over five sd.
        assert!((1800..=2200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn it_should_keep_active_per_weight_within_one_as_connections_accumulate() {
        let weights = [1u32, 3, 6, 2];
        let total: u32 = weights.iter().sum();
        let policy = LeastConn::new(&weights);
        let picks = 12_000u64;
        let (active, worst) = accumulate(&policy, &weights, picks);
        assert!(worst <= 1.0, "{worst}: {active:?}");
        // Within one of balanced means within one weight of the exact share.
        for (a, w) in active.iter().zip(weights) {
            let exact = picks * u64::from(w) / u64::from(total);
            assert!(a.abs_diff(exact) <= u64::from(w), "{active:?}");
        }
    }

    #[test]
    fn it_should_refill_the_endpoint_whose_connections_closed() {
        let policy = LeastConn::new(&[1, 1, 1]);
        // Endpoint 1 lost its connections (a restart): new ones go there
        // until it has caught up.
        let mut active = [40u64, 0, 40];
        for _ in 0..40 {
            let i = pick(&policy, &active, &|_| false).unwrap();
            assert_eq!(i, 1, "{active:?}");
            active[i] += 1;
        }
    }
}
