//! Latency histograms with a fixed set of log-linear buckets: recording is an index
//! computation and an increment, with no allocation, so it costs the measured path nothing
//! worth mentioning.
//!
//! Values below 64 have a bucket each; above, every power of two is split into 32 buckets, so
//! a reported percentile is within about 3% of the true value (the bucket's midpoint is
//! reported). Values are nanoseconds.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Values below this have a bucket of their own.
const LINEAR_LIMIT: u64 = 1 << (SUB_BITS + 1);
/// Enough buckets for every u64.
const BUCKETS: usize = (65 - SUB_BITS as usize) * SUB_COUNT;

/// The bucket a value falls in.
fn bucket_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) as usize;
    (shift as usize + 1) * SUB_COUNT + (mantissa - SUB_COUNT)
}

/// The smallest and largest value of a bucket.
fn bucket_range(index: usize) -> (u64, u64) {
    if (index as u64) < LINEAR_LIMIT {
        return (index as u64, index as u64);
    }
    let shift = (index / SUB_COUNT - 1) as u32;
    let mantissa = (index % SUB_COUNT + SUB_COUNT) as u64;
    let low = mantissa << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

/// A histogram owned by one task.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, value: u64) {
        if let Some(count) = self.counts.get_mut(bucket_of(value)) {
            *count += 1;
        }
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value recorded (exact), None when empty.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// The largest value recorded (exact), None when empty.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The value below which `percent` of the values fall (the midpoint of its bucket, clamped
    /// to the exact min and max), None when empty.
    pub fn percentile(&self, percent: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((percent / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = bucket_range(index);
                let middle = low + (high - low) / 2;
                return Some(middle.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The summary the reports print.
    pub fn summary(&self) -> Option<LatencySummary> {
        Some(LatencySummary {
            count: self.total,
            min: self.min()?,
            median: self.percentile(50.0)?,
            p75: self.percentile(75.0)?,
            p95: self.percentile(95.0)?,
            p99: self.percentile(99.0)?,
            p999: self.percentile(99.9)?,
            max: self.max()?,
        })
    }
}

/// Latency percentiles, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// 50th percentile.
    pub median: u64,
    /// 75th percentile.
    pub p75: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile: at 10,000 msg/s, the worst 10 messages of each second lie above.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// A histogram that several tasks record into while a reporter takes snapshots: each
/// recording is one relaxed increment.
pub struct SharedHistogram {
    counts: Box<[AtomicU64]>,
    min: AtomicU64,
    max: AtomicU64,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram::new()
    }
}

impl SharedHistogram {
    /// An empty histogram.
    pub fn new() -> SharedHistogram {
        SharedHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&self, value: u64) {
        if let Some(count) = self.counts.get(bucket_of(value)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if value < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(value, Ordering::Relaxed);
        }
        if value > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(value, Ordering::Relaxed);
        }
    }

    /// Everything recorded since the last call, leaving the histogram empty.
    pub fn take(&self) -> Histogram {
        let mut taken = Histogram::new();
        for (slot, count) in taken.counts.iter_mut().zip(self.counts.iter()) {
            let value = count.swap(0, Ordering::Relaxed);
            *slot = value;
            taken.total += value;
        }
        taken.min = self.min.swap(u64::MAX, Ordering::Relaxed);
        taken.max = self.max.swap(0, Ordering::Relaxed);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_values_below_64_is_the_value_itself() {
        for value in 0..64 {
            assert_eq!(bucket_of(value), value as usize);
            assert_eq!(bucket_range(value as usize), (value, value));
        }
    }

    #[test]
    fn bucket_range_contains_every_value_mapped_to_it() {
        let mut value = 1u64;
        while value < u64::MAX / 3 {
            for probe in [value, value + 1, value * 3 / 2, value * 2 - 1] {
                let (low, high) = bucket_range(bucket_of(probe));
                assert!(
                    low <= probe && probe <= high,
                    "{probe} not in {low}..={high}"
                );
                assert!(
                    (high - low) as f64 <= probe as f64 / 32.0 + 1.0,
                    "bucket too wide for {probe}"
                );
            }
            value *= 2;
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentile_of_uniform_values_is_within_three_percent() {
        let mut histogram = Histogram::new();
        for value in 1..=100_000u64 {
            histogram.record(value);
        }
        for (percent, expected) in [(50.0, 50_000.0), (95.0, 95_000.0), (99.0, 99_000.0)] {
            let got = histogram.percentile(percent).unwrap() as f64;
            assert!(
                (got - expected).abs() / expected < 0.03,
                "p{percent}: {got} vs {expected}"
            );
        }
        assert_eq!(histogram.min(), Some(1));
        assert_eq!(histogram.max(), Some(100_000));
    }

    #[test]
    fn summary_p999_sees_a_tail_of_two_in_a_thousand_that_p99_misses() {
        let mut histogram = Histogram::new();
        for _ in 0..9_980 {
            histogram.record(100_000);
        }
        for _ in 0..20 {
            histogram.record(5_000_000);
        }
        let summary = histogram.summary().unwrap();
        assert_eq!(summary.p99, 100_000);
        assert_eq!(summary.p999, 5_000_000);
        assert_eq!(summary.max, 5_000_000);
    }

    #[test]
    fn summary_p999_ignores_a_tail_of_one_in_ten_thousand() {
        let mut histogram = Histogram::new();
        for _ in 0..99_990 {
            histogram.record(100_000);
        }
        for _ in 0..10 {
            histogram.record(5_000_000);
        }
        assert_eq!(histogram.summary().map(|s| s.p999), Some(100_000));
    }

    #[test]
    fn percentile_of_empty_histogram_is_none() {
        assert_eq!(Histogram::new().percentile(50.0), None);
        assert!(Histogram::new().summary().is_none());
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(5_000);
        b.record(7);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.min(), Some(7));
        assert_eq!(a.max(), Some(5_000));
    }

    #[test]
    fn shared_histogram_take_returns_recorded_values_and_empties_it() {
        let shared = SharedHistogram::new();
        shared.record(100);
        shared.record(300);
        let taken = shared.take();
        assert_eq!(taken.count(), 2);
        assert_eq!(taken.min(), Some(100));
        assert_eq!(taken.max(), Some(300));
        assert_eq!(shared.take().count(), 0);
    }
}
