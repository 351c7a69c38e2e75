//! Weighted random choice.

use super::{Pick, Policy};

/// Picks endpoints at random in proportion to their weights.
#[derive(Debug)]
pub struct WeightedRandom {
    weights: Vec<u64>,
    /// Running sums of `weights`, for a binary search.
    cumulative: Vec<u64>,
}

impl WeightedRandom {
    /// Builds the picker for these weights (each at least 1).
    pub fn new(weights: &[u32]) -> WeightedRandom {
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        let cumulative = weights
            .iter()
            .scan(0, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        WeightedRandom {
            weights,
            cumulative,
        }
    }
}

impl Policy for WeightedRandom {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        let skip = request.skip;
        let total = *self.cumulative.last()?;
        // The common case: one draw over everything, O(log n).
        let draw = fastrand::u64(..total);
        let first = self.cumulative.partition_point(|&c| c <= draw);
        if !skip(first) {
            return Some(first);
        }
        // Some endpoints are excluded: draw again over the rest only.
        let usable: u64 = (0..self.weights.len())
            .filter(|&i| !skip(i))
            .map(|i| self.weights[i])
            .sum();
        if usable == 0 {
            return None;
        }
        let mut draw = fastrand::u64(..usable);
        for (i, &w) in self.weights.iter().enumerate() {
            if skip(i) {
                continue;
            }
            if draw < w {
                return Some(i);
            }
            draw -= w;
        }
        None
    }
}
