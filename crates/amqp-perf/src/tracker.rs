//! The exactly-once check: which messages arrived, and how often.
//!
//! Each consumer keeps a bitset per producer (bit n = message n arrived), with no locking;
//! at the end the bitsets are merged, and a message seen by two consumers counts as a
//! duplicate just like one seen twice by the same consumer. Redelivered messages (the broker
//! says so) are expected to repeat and are counted apart.

/// What one consumer saw.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: Vec<Vec<u64>>,
    /// Messages seen before, not flagged redelivered.
    duplicates: u64,
    /// Messages seen before and flagged redelivered.
    redelivered_repeats: u64,
    /// Messages flagged redelivered (seen before or not).
    redelivered: u64,
    /// Messages of another run, or too short to carry a stamp.
    foreign: u64,
}

impl Tracker {
    /// A tracker for `producers` producers, with room for `expected` messages each.
    pub fn new(producers: usize, expected: u64) -> Tracker {
        let words = expected.div_ceil(64) as usize;
        Tracker {
            seen: (0..producers).map(|_| Vec::with_capacity(words)).collect(),
            ..Tracker::default()
        }
    }

    /// Notes message `sequence` of `producer`.
    #[inline]
    pub fn record(&mut self, producer: u16, sequence: u64, redelivered: bool) {
        if redelivered {
            self.redelivered += 1;
        }
        let Some(bits) = self.seen.get_mut(usize::from(producer)) else {
            self.foreign += 1;
            return;
        };
        let word = (sequence / 64) as usize;
        if word >= bits.len() {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (sequence % 64);
        if let Some(slot) = bits.get_mut(word) {
            if *slot & mask != 0 {
                if redelivered {
                    self.redelivered_repeats += 1;
                } else {
                    self.duplicates += 1;
                }
            }
            *slot |= mask;
        }
    }

    /// Notes a message that is not from this run.
    pub fn record_foreign(&mut self) {
        self.foreign += 1;
    }

    /// Adds what another consumer saw; a message both saw is a duplicate.
    pub fn merge(&mut self, other: &Tracker) {
        if self.seen.len() < other.seen.len() {
            self.seen.resize(other.seen.len(), Vec::new());
        }
        for (mine, theirs) in self.seen.iter_mut().zip(other.seen.iter()) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                self.duplicates += u64::from((*a & *b).count_ones());
                *a |= *b;
            }
        }
        self.duplicates += other.duplicates;
        self.redelivered_repeats += other.redelivered_repeats;
        self.redelivered += other.redelivered;
        self.foreign += other.foreign;
    }

    /// Compares what arrived with what was sent: `sent[p]` messages numbered 0.. by producer p.
    pub fn verdict(&self, sent: &[u64], nacked: u64) -> Verdict {
        let mut received_distinct = 0;
        let mut missing = 0;
        let mut unexpected = 0;
        let mut first_missing = None;
        for (producer, &count) in sent.iter().enumerate() {
            let bits = self.seen.get(producer).map(Vec::as_slice).unwrap_or(&[]);
            let present = count_below(bits, count);
            received_distinct += present;
            missing += count - present;
            unexpected += count_all(bits) - present;
            if first_missing.is_none() && present < count {
                first_missing = first_absent(bits, count).map(|seq| (producer as u16, seq));
            }
        }
        for bits in self.seen.iter().skip(sent.len()) {
            unexpected += count_all(bits);
        }
        Verdict {
            sent: sent.iter().sum(),
            received_distinct,
            missing,
            duplicates: self.duplicates,
            redelivered: self.redelivered,
            redelivered_repeats: self.redelivered_repeats,
            unexpected,
            foreign: self.foreign,
            nacked,
            first_missing,
        }
    }
}

fn count_all(bits: &[u64]) -> u64 {
    bits.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// Bits set among the first `limit`.
fn count_below(bits: &[u64], limit: u64) -> u64 {
    let full = (limit / 64) as usize;
    let mut count: u64 = bits
        .iter()
        .take(full)
        .map(|w| u64::from(w.count_ones()))
        .sum();
    let rest = limit % 64;
    if rest > 0 {
        if let Some(word) = bits.get(full) {
            count += u64::from((word & ((1u64 << rest) - 1)).count_ones());
        }
    }
    count
}

fn first_absent(bits: &[u64], limit: u64) -> Option<u64> {
    (0..limit).find(|&seq| {
        bits.get((seq / 64) as usize)
            .is_none_or(|w| w & (1 << (seq % 64)) == 0)
    })
}

/// The outcome of the exactly-once check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Messages published (the broker took them on the socket).
    pub sent: u64,
    /// Distinct messages of this run that arrived.
    pub received_distinct: u64,
    /// Sent but never received.
    pub missing: u64,
    /// Received more than once without the redelivered flag.
    pub duplicates: u64,
    /// Deliveries flagged redelivered.
    pub redelivered: u64,
    /// Repeats that were flagged redelivered (allowed).
    pub redelivered_repeats: u64,
    /// Stamped by this run but never sent (a sequence number past what a producer sent).
    pub unexpected: u64,
    /// Not from this run (leftovers in the queue, or bodies too short for a stamp).
    pub foreign: u64,
    /// Publishes the broker nacked: these may be missing.
    pub nacked: u64,
    /// The first missing message, as (producer, sequence).
    pub first_missing: Option<(u16, u64)>,
}

impl Verdict {
    /// Whether every message sent arrived exactly once (redeliveries aside) and nothing else
    /// arrived. Nacked messages may be missing.
    pub fn ok(&self) -> bool {
        self.missing <= self.nacked
            && self.duplicates == 0
            && self.unexpected == 0
            && self.foreign == 0
    }

    /// One line saying so, or what went wrong.
    pub fn describe(&self) -> String {
        if self.ok() && self.missing == 0 {
            let mut text = format!("all {} messages received exactly once", self.sent);
            if self.redelivered > 0 {
                text.push_str(&format!(
                    " ({} redeliveries, {} of them repeats)",
                    self.redelivered, self.redelivered_repeats
                ));
            }
            return text;
        }
        let mut problems = Vec::new();
        if self.missing > 0 {
            let mut text = format!("{} missing", self.missing);
            if let Some((producer, seq)) = self.first_missing {
                text.push_str(&format!(" (first: producer {producer} message {seq})"));
            }
            if self.nacked > 0 {
                text.push_str(&format!(", {} nacked by the broker", self.nacked));
            }
            problems.push(text);
        }
        if self.duplicates > 0 {
            problems.push(format!(
                "{} duplicates without the redelivered flag",
                self.duplicates
            ));
        }
        if self.unexpected > 0 {
            problems.push(format!("{} never sent", self.unexpected));
        }
        if self.foreign > 0 {
            problems.push(format!("{} not from this run", self.foreign));
        }
        let verdict = if self.ok() { "OK" } else { "MISMATCH" };
        format!(
            "{verdict}: {} of {} messages received: {}",
            self.received_distinct,
            self.sent,
            problems.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_of_every_message_once_is_ok() {
        let mut tracker = Tracker::new(2, 100);
        for seq in 0..100 {
            tracker.record(0, seq, false);
            tracker.record(1, seq, false);
        }
        let verdict = tracker.verdict(&[100, 100], 0);
        assert!(verdict.ok());
        assert_eq!(verdict.received_distinct, 200);
        assert_eq!(verdict.describe(), "all 200 messages received exactly once");
    }

    #[test]
    fn verdict_reports_first_missing_message() {
        let mut tracker = Tracker::new(1, 10);
        for seq in (0..10).filter(|s| *s != 7) {
            tracker.record(0, seq, false);
        }
        let verdict = tracker.verdict(&[10], 0);
        assert!(!verdict.ok());
        assert_eq!(verdict.missing, 1);
        assert_eq!(verdict.first_missing, Some((0, 7)));
        assert!(verdict.describe().starts_with("MISMATCH: 9 of 10"));
    }

    #[test]
    fn duplicate_without_redelivered_flag_fails_and_with_flag_passes() {
        let mut tracker = Tracker::new(1, 3);
        for seq in 0..3 {
            tracker.record(0, seq, false);
        }
        tracker.record(0, 1, true);
        assert!(tracker.verdict(&[3], 0).ok());
        tracker.record(0, 2, false);
        let verdict = tracker.verdict(&[3], 0);
        assert_eq!(verdict.duplicates, 1);
        assert!(!verdict.ok());
    }

    #[test]
    fn merge_counts_message_seen_by_two_consumers_as_duplicate() {
        let mut a = Tracker::new(1, 130);
        let mut b = Tracker::new(1, 130);
        for seq in 0..130 {
            if seq % 2 == 0 {
                a.record(0, seq, false);
            } else {
                b.record(0, seq, false);
            }
        }
        b.record(0, 128, false);
        a.merge(&b);
        let verdict = a.verdict(&[130], 0);
        assert_eq!(verdict.received_distinct, 130);
        assert_eq!(verdict.duplicates, 1);
    }

    #[test]
    fn sequence_past_what_was_sent_is_unexpected() {
        let mut tracker = Tracker::new(1, 2);
        tracker.record(0, 0, false);
        tracker.record(0, 1, false);
        tracker.record(0, 5, false);
        let verdict = tracker.verdict(&[2], 0);
        assert_eq!(verdict.unexpected, 1);
        assert!(!verdict.ok());
    }

    #[test]
    fn missing_nacked_messages_are_not_a_mismatch() {
        let mut tracker = Tracker::new(1, 4);
        for seq in 0..3 {
            tracker.record(0, seq, false);
        }
        assert!(tracker.verdict(&[4], 1).ok());
        assert!(!tracker.verdict(&[4], 0).ok());
    }
}
