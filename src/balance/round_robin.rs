//! Smooth weighted round robin, nginx's algorithm.
//!
//! nginx keeps a running score per endpoint; every pick adds each weight to
//! its score, takes the highest and subtracts the total. That sequence repeats
//! after `sum(weights) / gcd(weights)` picks, so it is computed once when the
//! snapshot is built and workers share one atomic cursor into it: every
//! worker together follows the exact weighted, interleaved order with no lock.

use super::{Pick, Policy};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smooth weighted round robin over a precomputed schedule.
#[derive(Debug)]
pub struct SmoothWeighted {
    schedule: Vec<u32>,
    cursor: AtomicUsize,
}

impl SmoothWeighted {
    /// Builds the schedule for these weights (each at least 1).
    pub fn new(weights: &[u32]) -> SmoothWeighted {
        SmoothWeighted {
            schedule: schedule(weights),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl Policy for SmoothWeighted {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let skip = request.skip;
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        // A failover continues from where the cursor is, without taking the
        // next client's turn (as nginx's retry does): otherwise, with one dead
        // endpoint of two, every client would meet the dead one first.
        let start = if request.retry {
            self.cursor.load(Ordering::Relaxed)
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed)
        };
        (0..len)
            .map(|k| self.schedule[(start + k) % len] as usize)
            .find(|&i| !skip(i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of nginx's smooth weighted round robin.
fn schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut score = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            score[i] += w;
            if score[i] > score[best] {
                best = i;
            }
        }
        score[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::pick_with;

    #[test]
    fn it_should_interleave_like_nginx() {
        // nginx's documented example: weights a=5, b=1, c=1 give a a b a c a a.
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[2, 6]), vec![1, 0, 1, 1]);
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
