//! Message bodies: the first 16 bytes say who sent the message, its number and when it was
//! sent; the rest is zeros up to the requested size.
//!
//! ```text
//!  0               2                               8               10                             16
//!  ├─ producer id ─┼─ sequence number (48 bits) ───┼─ run tag ─────┼─ send time, ns (48 bits) ───┤
//! ```
//!
//! The run tag tells this run's messages from leftovers of an earlier one; the send time is
//! nanoseconds since the run's epoch (48 bits: 78 hours), so producer and consumer, in one
//! process, read the same clock.
//!
//! Small bodies are cut from large shared chunks, so a message costs no allocation of its own:
//! one chunk serves many messages, and is freed once the last of them is dropped. Large bodies
//! (from [`RECYCLE_MIN`]) are used again once the client has sent them: only their stamp is
//! written again, so a 64 KiB message costs neither a 64 KiB memset nor fresh pages.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// The smallest body that holds the stamp.
pub const STAMP_LEN: usize = 16;
const LOW_48: u64 = (1 << 48) - 1;
/// How much memory one chunk holds, unless a single body is larger.
const CHUNK: usize = 1 << 20;
/// Bodies from this size on are used again once sent (the client sends bodies over 4 KiB as
/// they are, without a copy, and drops them once written).
pub const RECYCLE_MIN: usize = 4096;
/// The most octets of large bodies tracked; beyond, the oldest is let go. Most of them are
/// still held by the client (its request queue takes up to 1024 publishes, 64 MiB of 64 KiB
/// bodies), so this bounds what is kept after the client let go, not what is in flight.
const RECYCLE_MAX_OCTETS: usize = 256 << 20;

/// What the first 16 bytes of a body say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which producer sent it.
    pub producer: u16,
    /// The producer's message number, from 0.
    pub sequence: u64,
    /// The run it belongs to.
    pub run: u16,
    /// When it was sent, in nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Reads the stamp at the start of a body; None if the body is too short.
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let first = u64::from_be_bytes(body.get(0..8)?.try_into().ok()?);
        let second = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
        Some(Stamp {
            producer: (first >> 48) as u16,
            sequence: first & LOW_48,
            run: (second >> 48) as u16,
            sent_ns: second & LOW_48,
        })
    }

    fn write(&self, out: &mut impl BufMut) {
        out.put_u64((u64::from(self.producer) << 48) | (self.sequence & LOW_48));
        out.put_u64((u64::from(self.run) << 48) | (self.sent_ns & LOW_48));
    }
}

/// Makes bodies of one size for one producer.
///
/// Small bodies are cut from a chunk zeroed when it is made; only the stamp is written per
/// body. Large ones are made zeroed once and then used again as the client lets them go
/// (the stamp is all that differs), so a 64 KiB body costs 16 octets of writing, not a 64 KiB
/// memset or 16 fresh pages.
pub struct BodyWriter {
    size: usize,
    chunk: BytesMut,
    /// Large bodies handed out, oldest first, to be used again once nobody else holds them.
    sent: VecDeque<Bytes>,
}

impl BodyWriter {
    /// A writer of `size`-byte bodies (at least [`STAMP_LEN`]).
    pub fn new(size: usize) -> BodyWriter {
        let size = size.max(STAMP_LEN);
        let chunk = if size >= RECYCLE_MIN {
            BytesMut::new()
        } else {
            BytesMut::zeroed(CHUNK)
        };
        BodyWriter {
            size,
            chunk,
            sent: VecDeque::new(),
        }
    }

    /// The next body, stamped.
    pub fn body(&mut self, stamp: Stamp) -> Bytes {
        if self.size >= RECYCLE_MIN {
            return self.large_body(stamp);
        }
        if self.chunk.len() < self.size {
            // The old chunk lives on in the bodies cut from it, until they are dropped.
            self.chunk = BytesMut::zeroed(CHUNK.max(self.size));
        }
        let mut body = self.chunk.split_to(self.size);
        let mut stamped = &mut body[..STAMP_LEN];
        stamp.write(&mut stamped);
        body.freeze()
    }

    /// A large body: the oldest one sent if the client is done with it (zeros after its
    /// stamp, as made), else a new one.
    fn large_body(&mut self, stamp: Stamp) -> Bytes {
        let oldest_free = self.sent.front().is_some_and(Bytes::is_unique);
        let reused = if oldest_free {
            self.sent
                .pop_front()
                .and_then(|body| body.try_into_mut().ok())
        } else {
            None
        };
        let mut body = reused.unwrap_or_else(|| BytesMut::zeroed(self.size));
        let mut stamped = &mut body[..STAMP_LEN];
        stamp.write(&mut stamped);
        let body = body.freeze();
        if (self.sent.len() + 1) * self.size > RECYCLE_MAX_OCTETS {
            self.sent.pop_front();
        }
        self.sent.push_back(body.clone());
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_requested_size_and_reads_back_its_stamp() {
        let mut writer = BodyWriter::new(100);
        let stamp = Stamp {
            producer: 3,
            sequence: 123_456_789,
            run: 0xBEEF,
            sent_ns: 987_654_321,
        };
        let body = writer.body(stamp);
        assert_eq!(body.len(), 100);
        assert_eq!(Stamp::read(&body), Some(stamp));
        assert!(body[STAMP_LEN..].iter().all(|b| *b == 0));
    }

    #[test]
    fn bodies_cut_across_chunks_are_whole_stamped_and_zero_after_the_stamp() {
        // 1,048 bodies of 1,000 octets per 1 MiB chunk: the 1,049th comes from a new chunk.
        let mut writer = BodyWriter::new(1000);
        let bodies: Vec<Bytes> = (0..2100)
            .map(|sequence| {
                writer.body(Stamp {
                    producer: 1,
                    sequence,
                    run: 2,
                    sent_ns: 3,
                })
            })
            .collect();
        for (sequence, body) in bodies.iter().enumerate() {
            assert_eq!(body.len(), 1000);
            assert_eq!(Stamp::read(body).map(|s| s.sequence), Some(sequence as u64));
            assert!(body[STAMP_LEN..].iter().all(|b| *b == 0), "body {sequence}");
        }
    }

    #[test]
    fn a_large_body_is_used_again_once_dropped_and_only_its_stamp_changes() {
        let mut writer = BodyWriter::new(RECYCLE_MIN);
        let stamp = |sequence| Stamp {
            producer: 1,
            sequence,
            run: 2,
            sent_ns: 3,
        };
        let first = writer.body(stamp(0));
        let first_at = first.as_ptr();
        // Still held (by the client, say): the next body is a new one.
        let second = writer.body(stamp(1));
        assert_ne!(second.as_ptr(), first_at);
        drop(first);
        let third = writer.body(stamp(2));
        assert_eq!(third.as_ptr(), first_at, "the dropped body is used again");
        assert_eq!(Stamp::read(&third).map(|s| s.sequence), Some(2));
        assert!(third[STAMP_LEN..].iter().all(|b| *b == 0));
        assert_eq!(third.len(), RECYCLE_MIN);
        assert_eq!(Stamp::read(&second).map(|s| s.sequence), Some(1));
    }

    #[test]
    fn large_bodies_held_elsewhere_are_not_kept_beyond_the_bound() {
        let size = 16 << 20;
        let mut writer = BodyWriter::new(size);
        let held: Vec<Bytes> = (0..20)
            .map(|sequence| {
                writer.body(Stamp {
                    producer: 0,
                    sequence,
                    run: 0,
                    sent_ns: 0,
                })
            })
            .collect();
        assert!(writer.sent.len() * size <= RECYCLE_MAX_OCTETS);
        for (sequence, body) in held.iter().enumerate() {
            assert_eq!(Stamp::read(body).map(|s| s.sequence), Some(sequence as u64));
        }
    }

    #[test]
    fn stamp_layout_is_producer_sequence_run_time_big_endian() {
        let mut writer = BodyWriter::new(16);
        let body = writer.body(Stamp {
            producer: 1,
            sequence: 2,
            run: 3,
            sent_ns: 4,
        });
        let expected = [
            0x00, 0x01, // producer id 1
            0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // sequence number 2
            0x00, 0x03, // run tag 3
            0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // send time 4 ns
        ];
        assert_eq!(&body[..], &expected);
    }

    #[test]
    fn stamp_read_of_short_body_is_none() {
        assert_eq!(Stamp::read(&[0; 15]), None);
    }

    #[test]
    fn writer_keeps_earlier_bodies_intact_across_chunks() {
        let mut writer = BodyWriter::new(300_000);
        let bodies: Vec<Bytes> = (0..10)
            .map(|n| {
                writer.body(Stamp {
                    producer: 0,
                    sequence: n,
                    run: 0,
                    sent_ns: n,
                })
            })
            .collect();
        for (n, body) in bodies.iter().enumerate() {
            assert_eq!(body.len(), 300_000);
            assert_eq!(Stamp::read(body).map(|s| s.sequence), Some(n as u64));
        }
    }
}
