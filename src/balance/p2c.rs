//! Power of two random choices (Envoy's `least_request`).
//!
//! Draws two distinct usable endpoints at random in proportion to weight and
//! takes the one with fewer active connections relative to its weight
//! (cross-multiplied, no floats). On a tie the first draw wins; since that
//! draw is itself weighted, with equal loads the split follows the weights
//! exactly. Looking at two endpoints instead of all of them keeps a pick
//! O(log n) and, unlike least connections, does not send a burst of
//! simultaneous picks, which all see the same counts, to one endpoint.

use super::{Pick, Policy};

/// Picks the less loaded of two endpoints drawn at random by weight.
#[derive(Debug)]
pub struct PowerOfTwo {
    weights: Vec<u64>,
    /// Running sums of `weights`, for a binary search.
    cumulative: Vec<u64>,
}

impl PowerOfTwo {
    /// Builds the picker for these weights. Validation keeps weights at 1 or
    /// more; a 0 would count as 1 rather than leave nothing to draw from.
    pub fn new(weights: &[u32]) -> PowerOfTwo {
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let cumulative = weights
            .iter()
            .scan(0, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        PowerOfTwo {
            weights,
            cumulative,
        }
    }

    /// Draws an endpoint by weight among those `skip` allows, other than
    /// `other`; `None` when there is none.
    fn draw(&self, skip: &dyn Fn(usize) -> bool, other: Option<usize>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let excluded = other.map_or(0, |o| self.weights[o]);
        if total == excluded {
            return None;
        }
        // The common case: one draw over everything but `other`, O(log n).
        // Draws at or past `other`'s range shift up over it.
        let mut draw = fastrand::u64(..total - excluded);
        if let Some(o) = other
            && draw >= self.cumulative[o] - self.weights[o]
        {
            draw += excluded;
        }
        let first = self.cumulative.partition_point(|&c| c <= draw);
        if !skip(first) {
            return Some(first);
        }
        // Some endpoints are excluded: draw again over the usable rest only.
        // Together the two steps still give each usable endpoint exactly
        // weight / usable weight.
        let usable = |i: &usize| Some(*i) != other && !skip(*i);
        let usable_weight: u64 = (0..self.weights.len())
            .filter(usable)
            .map(|i| self.weights[i])
            .sum();
        if usable_weight == 0 {
            return None;
        }
        let mut draw = fastrand::u64(..usable_weight);
        for i in (0..self.weights.len()).filter(usable) {
            if draw < self.weights[i] {
                return Some(i);
            }
            draw -= self.weights[i];
        }
        None
    }
}

impl Policy for PowerOfTwo {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let first = self.draw(request.skip, None)?;
        let Some(second) = self.draw(request.skip, Some(first)) else {
            return Some(first);
        };
        // active / weight of the second against the first; u128 so the
        // products never overflow.
        let second_load = u128::from((request.active)(second)) * u128::from(self.weights[first]);
        let first_load = u128::from((request.active)(first)) * u128::from(self.weights[second]);
        Some(if second_load < first_load {
            second
        } else {
            first
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::accumulate;
    use std::net::{IpAddr, Ipv4Addr};

    fn pick(policy: &PowerOfTwo, active: &[u64], skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        policy.pick(&Pick {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            retry: false,
            skip,
            active: &|i| active[i],
        })
    }

    #[test]
    fn it_should_take_the_less_loaded_of_two_endpoints() {
        // With two endpoints both are always drawn.
        let policy = PowerOfTwo::new(&[1, 3]);
        for _ in 0..1000 {
            // Loads 2/1 and 5/3.
            assert_eq!(pick(&policy, &[2, 5], &|_| false), Some(1));
            // Loads 1/1 and 4/3.
            assert_eq!(pick(&policy, &[1, 4], &|_| false), Some(0));
        }
    }

    #[test]
    fn it_should_never_pick_the_most_loaded_of_three() {
        fastrand::seed(1);
        let policy = PowerOfTwo::new(&[1, 1, 1]);
        let mut counts = [0u32; 3];
        for _ in 0..9000 {
            counts[pick(&policy, &[5, 1, 3], &|_| false).unwrap()] += 1;
        }
        // Endpoint 1 wins whenever it is drawn (2 pairs in 3), endpoint 2 in
        // the remaining pair, endpoint 0 never.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!((5700..=6300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn it_should_draw_two_distinct_endpoints_by_weight() {
        // A heavy endpoint is drawn first most of the time; the second draw
        // must still be another endpoint, so a less loaded light endpoint is
        // found whenever it is drawn second.
        let policy = PowerOfTwo::new(&[100, 1]);
        for _ in 0..1000 {
            assert_eq!(pick(&policy, &[1, 0], &|_| false), Some(1));
        }
    }

    #[test]
    fn it_should_keep_active_per_weight_close_as_connections_accumulate() {
        fastrand::seed(2);
        let weights = [1u32, 3, 6, 2];
        let total: u32 = weights.iter().sum();
        let policy = PowerOfTwo::new(&weights);
        let picks = 12_000u64;
        let (active, worst_spread) = accumulate(&policy, &weights, picks);
        println!("p2c: worst active/weight spread over {picks} picks: {worst_spread:.2}");
        // Two choices are not all of them: allow a few connections of spread,
        // far below the hundreds that weighted random drifts by.
        assert!(worst_spread <= 4.0, "{worst_spread}");
        for (a, w) in active.iter().zip(weights) {
            let exact = picks * u64::from(w) / u64::from(total);
            assert!(a.abs_diff(exact) <= 4 * u64::from(w), "{active:?}");
        }
    }
}
