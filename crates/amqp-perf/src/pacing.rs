//! Publishing at a fixed rate: when each message is due, and how a producer waits for it.
//!
//! At `-r 10000` a message is due every 100 µs, message n at `start + n × 100 µs`. tokio's
//! timer counts whole milliseconds: a sleep ends on the first tick after its deadline and the
//! runtime's wait for that tick is rounded up again, so a producer that slept on it alone
//! would send a burst of about 20 messages every 2 ms: a different load, with fewer wake-ups,
//! than the steady one asked for. So a producer sleeps on the runtime's timer only while it is
//! more than [`COARSE_MARGIN`] ahead, and the rest of the wait on its thread, with the
//! operating system's high-resolution sleep. Blocking the thread is right here: each producer
//! owns its thread and runtime (see [`crate::run`]), and nothing else runs there but its
//! connection, which has written the previous publish before the producer sleeps.
//!
//! With `--burst N` messages go out N at a time, each group when its first message is due
//! (at 10,000 msg/s and N = 10: ten messages every millisecond): fewer wake-ups, a
//! burstier load.
//!
//! The stamp in a body is the time the publish is made, not the time it was due, as in
//! PerfTest: latency is measured from the publish. A producer that falls behind (it did not
//! get a core in time) catches up at once, and how far behind it was is counted apart, as the
//! schedule lag, so a late producer is visible in the summary instead of hidden.

use std::time::Duration;

/// How far ahead of a due time the runtime's millisecond timer is still used.
pub const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// The schedule of one producer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    start_ns: u64,
    interval_ns: f64,
    burst: u64,
}

/// What a producer does before its next publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The message is due (or overdue): publish now.
    Now,
    /// Far ahead: sleep on the runtime's timer, for this long.
    Coarse(Duration),
    /// Close: sleep on the thread, for this long.
    Fine(Duration),
}

impl Pacer {
    /// A schedule of `rate` messages per second from `start_ns`, in groups of `burst`; None
    /// for rate 0 (as fast as possible).
    pub fn new(start_ns: u64, rate: f64, burst: u32) -> Option<Pacer> {
        (rate > 0.0 && rate.is_finite()).then(|| Pacer {
            start_ns,
            interval_ns: 1e9 / rate,
            burst: u64::from(burst.max(1)),
        })
    }

    /// When message `sequence` (from 0) is due, in ns on the run's clock: when the first
    /// message of its group is.
    pub fn due_ns(&self, sequence: u64) -> u64 {
        let first = sequence - sequence % self.burst;
        self.start_ns + (first as f64 * self.interval_ns) as u64
    }

    /// How to wait for message `sequence` at `now_ns`.
    pub fn wait(&self, sequence: u64, now_ns: u64) -> Wait {
        let ahead = Duration::from_nanos(self.due_ns(sequence).saturating_sub(now_ns));
        if ahead.is_zero() {
            Wait::Now
        } else if ahead > COARSE_MARGIN {
            Wait::Coarse(ahead - COARSE_MARGIN)
        } else {
            Wait::Fine(ahead)
        }
    }

    /// How late message `sequence` went out when published at `now_ns` (0 if on time).
    pub fn lag_ns(&self, sequence: u64, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.due_ns(sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_for_rate_zero_is_none() {
        assert_eq!(Pacer::new(0, 0.0, 1), None);
        assert_eq!(Pacer::new(0, f64::INFINITY, 1), None);
    }

    #[test]
    fn due_times_are_evenly_spaced_from_the_start() {
        let pacer = Pacer::new(5_000, 10_000.0, 1).unwrap();
        assert_eq!(pacer.due_ns(0), 5_000);
        assert_eq!(pacer.due_ns(1), 105_000);
        assert_eq!(pacer.due_ns(10_000), 5_000 + 1_000_000_000);
    }

    #[test]
    fn due_times_in_bursts_are_those_of_each_group_s_first_message() {
        let pacer = Pacer::new(0, 10_000.0, 10).unwrap();
        assert_eq!(pacer.due_ns(0), 0);
        assert_eq!(pacer.due_ns(9), 0);
        assert_eq!(pacer.due_ns(10), 1_000_000);
        assert_eq!(pacer.due_ns(25), 2_000_000);
        assert_eq!(pacer.lag_ns(19, 1_000_500), 500);
    }

    #[test]
    fn burst_zero_is_taken_as_one() {
        let pacer = Pacer::new(0, 10_000.0, 0).unwrap();
        assert_eq!(pacer.due_ns(3), 300_000);
    }

    #[test]
    fn due_times_of_a_fractional_interval_do_not_drift() {
        // 3 msg/s: 333,333,333.3 ns apart; the 3 millionth message is due after 1 M s.
        let pacer = Pacer::new(0, 3.0, 1).unwrap();
        let due = pacer.due_ns(3_000_000);
        assert!(due.abs_diff(1_000_000 * 1_000_000_000) < 1_000, "{due}");
    }

    #[test]
    fn wait_is_now_when_due_or_overdue() {
        let pacer = Pacer::new(0, 10_000.0, 1).unwrap();
        assert_eq!(pacer.wait(1, 100_000), Wait::Now);
        assert_eq!(pacer.wait(1, 250_000), Wait::Now);
    }

    #[test]
    fn wait_below_the_margin_sleeps_on_the_thread_for_the_exact_rest() {
        let pacer = Pacer::new(0, 10_000.0, 1).unwrap();
        assert_eq!(
            pacer.wait(1, 40_000),
            Wait::Fine(Duration::from_nanos(60_000))
        );
    }

    #[test]
    fn wait_beyond_the_margin_sleeps_on_the_timer_until_the_margin() {
        // 10 msg/s: message 1 is due at 100 ms.
        let pacer = Pacer::new(0, 10.0, 1).unwrap();
        assert_eq!(
            pacer.wait(1, 10_000_000),
            Wait::Coarse(Duration::from_millis(90) - COARSE_MARGIN)
        );
        let fine_from = 100_000_000 - COARSE_MARGIN.as_nanos() as u64;
        assert_eq!(pacer.wait(1, fine_from), Wait::Fine(COARSE_MARGIN));
    }

    #[test]
    fn lag_is_time_past_due_and_zero_when_early() {
        let pacer = Pacer::new(1_000, 10_000.0, 1).unwrap();
        assert_eq!(pacer.lag_ns(2, 201_000), 0);
        assert_eq!(pacer.lag_ns(2, 150_000), 0);
        assert_eq!(pacer.lag_ns(2, 1_201_000), 1_000_000);
    }
}
