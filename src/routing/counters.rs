//! Lock-free, per-worker counters and histograms.
//!
//! Every statistic has one slot per worker, padded to its own cache line.
//! A worker only ever writes its own slot, with a relaxed load and store
//! (no locked instruction, no sharing of cache lines between cores); the
//! scraper sums the slots when /metrics is read. Slots live in the routing
//! objects they describe (listener, service, endpoint), which carry over
//! reloads, so the counters do too.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic count written by one thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the slot's owning worker calls this, so a load and a
    /// store are enough (and cheaper than an atomic add).
    #[inline]
    pub fn add(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One slot per worker.
#[derive(Debug)]
pub struct PerWorker<T>(Box<[CachePadded<T>]>);

impl<T: Default> PerWorker<T> {
    /// Slots for `workers` workers.
    pub fn new(workers: usize) -> PerWorker<T> {
        PerWorker(
            (0..workers.max(1))
                .map(|_| CachePadded::new(T::default()))
                .collect(),
        )
    }
}

impl<T> PerWorker<T> {
    /// Worker `index`'s slot (the last one if out of range, which only the
    /// control side, which writes nothing, could ask for).
    #[inline]
    pub fn slot(&self, index: usize) -> &T {
        &self.0[index.min(self.0.len() - 1)]
    }

    /// Sums `value` over every worker's slot.
    pub fn sum(&self, value: impl Fn(&T) -> u64) -> u64 {
        self.0.iter().map(|slot| value(slot)).sum()
    }

    /// Every slot.
    pub fn slots(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|slot| &**slot)
    }
}

/// Upper bounds (seconds) of connect-time buckets: connects on a LAN take
/// tens of microseconds, timeouts take seconds.
pub const CONNECT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of connection-duration buckets: from one request
/// to long-lived streams.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// One worker's share of a histogram with `N` buckets.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Observations at or below each bound (not cumulative; summed at scrape).
    pub buckets: [Counter; N],
    /// Observations above the last bound.
    pub overflow: Counter,
    /// Sum of observations, in microseconds.
    pub sum_micros: Counter,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            overflow: Counter::default(),
            sum_micros: Counter::default(),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Records one observation against these bucket bounds.
    #[inline]
    pub fn observe(&self, bounds: &[f64; N], seconds: f64) {
        match bounds.iter().position(|&bound| seconds <= bound) {
            Some(i) => self.buckets[i].add(1),
            None => self.overflow.add(1),
        }
        self.sum_micros.add((seconds * 1e6) as u64);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Counter::get).sum::<u64>() + self.overflow.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_sum_every_workers_slot() {
        let counters: PerWorker<Counter> = PerWorker::new(3);
        counters.slot(0).add(2);
        counters.slot(2).add(5);
        counters.slot(2).add(1);
        assert_eq!(counters.sum(Counter::get), 8);
    }

    #[test]
    fn it_should_put_each_observation_in_its_bucket() {
        let h: Histogram<14> = Histogram::default();
        h.observe(&CONNECT_BUCKETS, 0.00005);
        h.observe(&CONNECT_BUCKETS, 0.001);
        h.observe(&CONNECT_BUCKETS, 7.0);
        assert_eq!(h.buckets[0].get(), 1);
        assert_eq!(h.buckets[3].get(), 1);
        assert_eq!(h.overflow.get(), 1);
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_micros.get(), 50 + 1000 + 7_000_000);
    }
}
