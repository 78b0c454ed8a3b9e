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
//! Bodies are cut from large shared chunks, so a message costs no allocation of its own: one
//! chunk serves many messages, and is freed once the last of them is dropped.

use bytes::{BufMut, Bytes, BytesMut};

/// The smallest body that holds the stamp.
pub const STAMP_LEN: usize = 16;
const LOW_48: u64 = (1 << 48) - 1;
/// How much memory one chunk holds, unless a single body is larger.
const CHUNK: usize = 1 << 20;

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
/// Bodies are cut from a chunk zeroed when it is made (by `calloc`, so the kernel's fresh
/// pages are not written twice); only the stamp is written per body, so a 64 KiB body costs
/// 16 octets of writing, not a 64 KiB memset.
pub struct BodyWriter {
    size: usize,
    chunk: BytesMut,
}

impl BodyWriter {
    /// A writer of `size`-byte bodies (at least [`STAMP_LEN`]).
    pub fn new(size: usize) -> BodyWriter {
        let size = size.max(STAMP_LEN);
        BodyWriter {
            size,
            chunk: BytesMut::zeroed(CHUNK.max(size)),
        }
    }

    /// The next body, stamped.
    pub fn body(&mut self, stamp: Stamp) -> Bytes {
        if self.chunk.len() < self.size {
            // The old chunk lives on in the bodies cut from it, until they are dropped.
            self.chunk = BytesMut::zeroed(CHUNK.max(self.size));
        }
        let mut body = self.chunk.split_to(self.size);
        let mut stamped = &mut body[..STAMP_LEN];
        stamp.write(&mut stamped);
        body.freeze()
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
        // Three 400 KiB bodies per 1 MiB chunk: the fourth comes from a new chunk.
        let mut writer = BodyWriter::new(400 * 1024);
        let bodies: Vec<Bytes> = (0..7)
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
            assert_eq!(body.len(), 400 * 1024);
            assert_eq!(Stamp::read(body).map(|s| s.sequence), Some(sequence as u64));
            assert!(body[STAMP_LEN..].iter().all(|b| *b == 0), "body {sequence}");
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
