//! Smooth weighted round robin, computed per pick from one shared cursor.
//!
//! One period of the order is `T = sum(weights) / gcd(weights)` picks, and
//! every worker together walks it through one atomic cursor: no lock, and
//! the split over a period is exact. The order is never stored (it would be
//! `T` entries, 5 million for 20,000 endpoints of weight 256, and as many
//! steps to build): position `p` of the period is found by descending a
//! balanced binary split of the endpoint list. At a split whose two halves
//! weigh `l` and `r`, the period of that subtree interleaves them evenly, as
//! a Bresenham line does: position `p` goes left when `(p + 1) * l` crosses
//! a multiple of `l + r` that `p * l` did not, and continues as position
//! "lefts before `p`" (or "rights before `p`") of the half it went to.
//!
//! So building is O(n) (prefix sums), memory is O(n), and a pick costs
//! O(log n) integer steps. Over any stretch of picks, each endpoint's share
//! stays within about one pick per level of the split (log2 n + 1) of its
//! weight's share, whereas nginx's running scores hold it within one: close
//! to nginx's smoothness, with none of its per-pick scan of every endpoint.

use super::{Pick, Policy};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Positions a pick walks past skipped endpoints before it scans the
/// endpoint list instead, so that a service with nearly every endpoint
/// skipped costs O(n) per pick, not O(period).
const WALK_LIMIT: usize = 64;

/// Smooth weighted round robin over endpoints' prefix sums.
#[derive(Debug)]
pub struct SmoothWeighted {
    /// `prefix[i]` = the reduced weights of endpoints `0..i`; `n + 1` entries.
    prefix: Vec<u64>,
    cursor: AtomicUsize,
}

impl SmoothWeighted {
    /// Prepares the order for these weights (a 0 counts as 1); O(n).
    pub fn new(weights: &[u32]) -> SmoothWeighted {
        let weights: Vec<u32> = weights.iter().map(|&w| w.max(1)).collect();
        let divisor = u64::from(weights.iter().copied().fold(0, gcd).max(1));
        let mut prefix = Vec::with_capacity(weights.len() + 1);
        prefix.push(0);
        let mut sum = 0u64;
        for &w in &weights {
            sum += u64::from(w) / divisor;
            prefix.push(sum);
        }
        SmoothWeighted {
            prefix,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks in one period before the order repeats.
    fn period(&self) -> u64 {
        self.prefix.last().copied().unwrap_or(0)
    }

    /// The endpoint at position `position` of the period.
    fn at(&self, position: u64) -> usize {
        let (mut lo, mut hi) = (0, self.prefix.len() - 1);
        let mut p = position;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let total = self.prefix[hi] - self.prefix[lo];
            let left = self.prefix[mid] - self.prefix[lo];
            let (before, is_left) = lefts(p, left, total);
            if is_left {
                hi = mid;
                p = before;
            } else {
                lo = mid;
                p -= before;
            }
        }
        lo
    }
}

/// Of positions `0..p` of a period of `total` that interleaves `left`
/// lefts evenly with the rest, how many are lefts, and whether position `p`
/// is one. Rounded to nearest, so the lefts sit in the middle of their
/// shares; over the whole period that is exactly `left`. One division:
/// position `p` is a left when `(p + 1) * left` crosses the next multiple of
/// `total`, which the remainder tells.
fn lefts(p: u64, left: u64, total: u64) -> (u64, bool) {
    let half = total / 2;
    if total <= u64::from(u32::MAX) {
        // p < total and left <= total: the product fits in 64 bits.
        let n = p * left + half;
        (n / total, n % total + left >= total)
    } else {
        let (left, total) = (u128::from(left), u128::from(total));
        let n = u128::from(p) * left + u128::from(half);
        // The quotient is at most `left`, so it fits back in 64 bits.
        let before = u64::try_from(n / total).unwrap_or(u64::MAX);
        (before, n % total + left >= total)
    }
}

impl Policy for SmoothWeighted {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let skip = request.skip;
        let period = self.period();
        if period == 0 {
            return None;
        }
        // A failover continues from where the cursor is, without taking the
        // next client's turn (as nginx's retry does): otherwise, with one dead
        // endpoint of two, every client would meet the dead one first.
        let start = if request.retry {
            self.cursor.load(Ordering::Relaxed)
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed)
        } as u64;
        let walk = (period as usize).min(WALK_LIMIT) as u64;
        let walked = (0..walk)
            .map(|k| self.at((start % period + k) % period))
            .find(|&i| !skip(i));
        walked.or_else(|| {
            let n = self.prefix.len() - 1;
            let from = self.at(start % period);
            (1..n).map(|k| (from + k) % n).find(|&i| !skip(i))
        })
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::pick_with;

    /// One period of the order.
    fn order(weights: &[u32]) -> Vec<usize> {
        let rr = SmoothWeighted::new(weights);
        (0..rr.period()).map(|p| rr.at(p)).collect()
    }

    #[test]
    fn it_should_interleave_rather_than_send_runs() {
        // nginx gives a a b a c a a for a=5, b=1, c=1: no run longer than
        // four across the period's wrap; this order has none longer than three.
        assert_eq!(order(&[5, 1, 1]), vec![0, 1, 0, 0, 0, 2, 0]);
        assert_eq!(order(&[2, 6]), vec![1, 0, 1, 1]);
        assert_eq!(order(&[3, 3, 3]), vec![1, 0, 2]);
    }

    /// Random weights (1 to 256, 1 to 300 endpoints): over one period every
    /// endpoint appears exactly its reduced weight's number of times, and in
    /// every prefix of the period its count stays within log2(n) + 2 of its
    /// exact share.
    #[test]
    fn it_should_keep_every_prefix_within_a_few_picks_of_the_weights() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..40 {
            let n = rng.usize(1..=300);
            let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..=256)).collect();
            let rr = SmoothWeighted::new(&weights);
            let period = rr.period();
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let bound = f64::from(usize::BITS - n.leading_zeros()) + 2.0;
            let mut counts = vec![0u64; n];
            for p in 0..period {
                counts[rr.at(p)] += 1;
                if p % 97 == 0 || p + 1 == period {
                    for (i, &w) in weights.iter().enumerate() {
                        let exact = (p + 1) as f64 * f64::from(w) / total as f64;
                        let off = (counts[i] as f64 - exact).abs();
                        assert!(off <= bound, "n={n} p={p} endpoint {i}: off by {off}");
                    }
                }
            }
            for (i, &w) in weights.iter().enumerate() {
                assert_eq!(counts[i] * total, u64::from(w) * period, "{weights:?}");
            }
        }
    }

    #[test]
    fn it_should_prepare_20000_endpoints_in_linear_space_and_pick_fast() {
        let weights: Vec<u32> = (0..20_000u32).map(|i| 1 + i % 256).collect();
        let rr = SmoothWeighted::new(&weights);
        // O(n) state: one prefix sum per endpoint, not one entry per pick.
        assert_eq!(rr.prefix.len(), 20_001);
        assert_eq!(
            rr.period(),
            weights.iter().map(|&w| u64::from(w)).sum::<u64>()
        );
        let mut seen = vec![false; 20_000];
        for _ in 0..200_000 {
            seen[pick_with(&rr, &|_| false).unwrap()] = true;
        }
        // 200,000 picks are 7.8% of the period; the heaviest endpoints appear.
        assert!(
            seen[255] && seen[19_999 - 16],
            "the heaviest were never picked"
        );
    }

    #[test]
    fn it_should_count_lefts_the_same_past_32_bits() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..10_000 {
            let total = rng.u64(1..=u64::from(u32::MAX) * 300);
            let (left, p) = (rng.u64(0..=total), rng.u64(0..total));
            let (t, l, q, h) = (
                u128::from(total),
                u128::from(left),
                u128::from(p),
                u128::from(total / 2),
            );
            let before = (q * l + h) / t;
            let through = ((q + 1) * l + h) / t;
            assert_eq!(
                lefts(p, left, total),
                (before as u64, through > before),
                "p={p} left={left} total={total}"
            );
        }
    }

    #[test]
    fn it_should_find_the_one_endpoint_left_when_nearly_all_are_skipped() {
        let weights: Vec<u32> = vec![256; 1000];
        let rr = SmoothWeighted::new(&weights);
        for _ in 0..100 {
            assert_eq!(pick_with(&rr, &|i| i != 777), Some(777));
        }
        assert_eq!(pick_with(&rr, &|_| true), None);
    }

    #[test]
    fn it_should_not_take_the_next_clients_turn_on_failover() {
        let rr = SmoothWeighted::new(&[1, 1]);
        let pick = |retry: bool, skip: &dyn Fn(usize) -> bool| {
            rr.pick(&Pick {
                client: "127.0.0.1".parse().unwrap(),
                retry,
                skip,
                active: &|_| 0,
            })
        };
        // Client 1 meets endpoint 0, which fails; its retry gets endpoint 1.
        assert_eq!(pick(false, &|_| false), Some(0));
        assert_eq!(pick(true, &|i| i == 0), Some(1));
        // Client 2 still gets its own turn, endpoint 1, not endpoint 0 again.
        assert_eq!(pick(false, &|_| false), Some(1));
        assert_eq!(pick(false, &|_| false), Some(0));
    }

    #[test]
    fn it_should_split_400_picks_exactly_by_weight() {
        let rr = SmoothWeighted::new(&[1, 3]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[pick_with(&rr, &|_| false).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }
}
