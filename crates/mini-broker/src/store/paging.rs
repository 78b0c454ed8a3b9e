//! Paging: reading persistent messages back from the log, so that a queue with a deep backlog
//! need not hold every body in memory.
//!
//! A persistent message in a durable queue is in the log anyway, and safely so once the batch
//! holding its publish record was fsynced. From then on its queue may drop its copy of the
//! message and keep only its store id (page it out); before the message is delivered, the
//! queue reads it back (pages it in), many messages per read.
//!
//! ```text
//!   queue:  [ in memory (head) ........ | paged out: ids only ........ | in memory (newest) ]
//!                      ▲ page in, read ahead          ▲ page out, newest first
//!   log:    segment 7 ─ segment 8 ─ segment 9 (active)      Index: id → (segment, offset)
//! ```
//!
//! The writer thread keeps the [`Index`] of where each live message's publish record is.
//! Compaction moves an entry when it copies a record forward, and a segment's read handle is
//! dropped (under the same lock) before the segment is deleted, so a paged-out message is
//! always found: at its new place, or through a handle taken just before, which still reads
//! the deleted file.
//!
//! Only persistent messages in durable queues page, because they cost no extra write: a
//! transient message would first have to be written to a paging file of its own.
//! How much may stay in memory is one budget across the durable queues ([`Pager`]): above
//! it, queues page out their newest pageable messages until the total is back under three
//! quarters of it.
//!
//! A restart does not read the bodies of the recovered messages into memory at all: recovery
//! streams the log and keeps each live message's id, size and delivered mark, and each
//! queue takes its messages paged out, reading back only as many from its head as fit in
//! what is left of the budget's three quarters ([`Pager::room`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use bytes::{Bytes, BytesMut};

use super::log::{decode_record, segment_path, PublishRecord, Record};
use super::Store;
use crate::delivery::lock;

/// The default budget of message bodies in memory across durable queues, in bytes.
pub const DEFAULT_PAGING_THRESHOLD: u64 = 64 * 1024 * 1024;

/// The longest run of adjacent records read at once.
const MAX_READ: usize = 8 * 1024 * 1024;

/// Where a publish record is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The segment's number.
    pub segment: u64,
    /// The record's first octet in the segment.
    pub offset: u32,
    /// The record's octets, framing included; 0 when it cannot be read back by paging (an
    /// offset beyond 4 GiB, which only a huge segment size gives).
    pub len: u32,
}

impl Location {
    /// The record of `len` octets at `offset` in `segment`.
    pub fn new(segment: u64, offset: u64, len: usize) -> Location {
        match (u32::try_from(offset), u32::try_from(len)) {
            (Ok(offset), Ok(len)) => Location {
                segment,
                offset,
                len,
            },
            _ => Location {
                segment,
                offset: 0,
                len: 0,
            },
        }
    }

    fn end(self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// A map keyed by store id ([`IdHasher`]).
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of store ids ([`IdHasher`]).
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Hashes store ids for the maps the writer thread looks ids up in, once or twice per
/// publish, delivery and ack. The broker hands ids out in sequence (no peer chooses them)
/// and a backlog drains in id order, so ids that are neighbours are looked up one after the
/// other: the hash mixes the block of 64 ids an id is in and keeps the ids of a block in 64
/// neighbouring buckets (in order, from an offset mixed from the block), so that a drain
/// walks the table's memory instead of missing the cache on nearly every lookup, as with
/// the default hasher, which scatters them. Ids of one queue among many (every n-th id)
/// still spread over the whole table. The top seven bits, which the standard map compares
/// before the keys, are mixed from the whole id.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }

    fn finish(&self) -> u64 {
        const TOP: u64 = !(u64::MAX >> 7);
        let low = self.0 & 63;
        let block = mix(self.0 >> 6);
        // Within its block's 64 buckets, an id goes round from an offset taken from the
        // block's bits that the shift drops.
        let at = low.wrapping_add(block >> 58) & 63;
        let tag = low.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ block;
        (((block << 6) | at) & !TOP) | (tag & TOP)
    }
}

/// SplitMix64's finalizer: every output bit depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where the log's live messages are: kept by the writer thread, read by queues that page.
#[derive(Debug, Default)]
pub struct Index {
    /// Live message id to its (latest) publish record.
    pub live: IdMap<Location>,
    /// The segment being appended to.
    pub active: u64,
    /// How much of the active segment is known to be on disk.
    pub synced_len: u64,
    /// Read handles of segments, opened when first read from.
    readers: HashMap<u64, Arc<File>>,
}

impl Index {
    /// The index of `live` messages, with `synced_len` octets of segment `active` on disk.
    pub fn new(live: IdMap<Location>, active: u64, synced_len: u64) -> Index {
        Index {
            live,
            active,
            synced_len,
            readers: HashMap::new(),
        }
    }

    /// Whether the record at `location` is on disk for good (fsynced), so that a queue may
    /// drop its copy.
    fn is_synced(&self, location: Location) -> bool {
        location.len > 0
            && (location.segment < self.active
                || (location.segment == self.active && location.end() <= self.synced_len))
    }

    /// A read handle of segment `number`.
    fn reader(&mut self, dir: &Path, number: u64) -> io::Result<Arc<File>> {
        if let Some(file) = self.readers.get(&number) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(segment_path(dir, number))?);
        self.readers.insert(number, file.clone());
        Ok(file)
    }

    /// Forgets the read handle of a segment about to be deleted (so that its space is
    /// freed once no read is under way).
    pub fn drop_reader(&mut self, number: u64) {
        self.readers.remove(&number);
    }
}

/// The budget of message bodies the durable queues keep in memory.
#[derive(Debug)]
pub struct Pager {
    threshold: AtomicU64,
    resident: AtomicI64,
}

impl Default for Pager {
    fn default() -> Self {
        Pager {
            threshold: AtomicU64::new(DEFAULT_PAGING_THRESHOLD),
            resident: AtomicI64::new(0),
        }
    }
}

impl Pager {
    /// Sets the budget; 0 turns paging off.
    pub fn set_threshold(&self, bytes: u64) {
        self.threshold.store(bytes, Ordering::Relaxed);
    }

    /// Counts body bytes that came into (positive) or left (negative) the durable queues'
    /// memory.
    pub fn add_resident(&self, delta: i64) {
        if delta != 0 {
            self.resident.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Body bytes the durable queues hold in memory.
    pub fn resident(&self) -> u64 {
        u64::try_from(self.resident.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Whether queues should page out: over the budget.
    pub fn over_budget(&self) -> bool {
        let threshold = self.threshold.load(Ordering::Relaxed);
        threshold > 0 && self.resident() > threshold
    }

    /// Where paging out stops: three quarters of the budget.
    pub fn low_water(&self) -> u64 {
        self.threshold.load(Ordering::Relaxed) / 4 * 3
    }

    /// How many more body bytes may come into memory before the durable queues are back
    /// at [`Pager::low_water`] (no limit while paging is off): what a restart reads back of
    /// the messages it recovered, the rest staying paged out.
    pub fn room(&self) -> u64 {
        if self.threshold.load(Ordering::Relaxed) == 0 {
            return u64::MAX;
        }
        self.low_water().saturating_sub(self.resident())
    }
}

/// The index, locked, for a queue deciding what it may page out.
pub struct OnDisk<'a>(MutexGuard<'a, Index>);

impl OnDisk<'_> {
    /// Whether message `id` is on disk for good, so its body may leave memory.
    pub fn contains(&self, id: u64) -> bool {
        self.0.live.get(&id).is_some_and(|&l| self.0.is_synced(l))
    }
}

impl Store {
    /// The memory budget of paging.
    pub fn pager(&self) -> &Pager {
        &self.pager
    }

    /// Locks the index to ask which messages are on disk for good.
    pub fn on_disk(&self) -> OnDisk<'_> {
        OnDisk(lock(&self.index))
    }

    /// Reads messages `ids` back from the log (paging them in), in that order, as many as
    /// fit in `max_bytes` (at least one). Each is None when it is gone (acked, or not on disk
    /// for good) or its record is damaged (logged): it can never be read.
    ///
    /// A read that fails (a segment that cannot be opened or read: an I/O error) ends the
    /// list before the first message it concerns: that message and those after it stay on
    /// disk, to be read another time, never taken for lost. The failure is returned, not
    /// logged: a queue retries such a read every 100 ms and logs once for all its retries.
    pub fn page_in(&self, ids: &[u64], max_bytes: usize) -> PagedIn {
        let dir = self.dir.join("messages");
        // The first failed read, in the order of the reads.
        let mut failure = None;
        let mut wanted: Vec<(usize, Location, Arc<File>)> = Vec::new();
        let mut count = 0;
        // The first of `ids` whose read failed.
        let mut failed_at = usize::MAX;
        {
            let mut index = lock(&self.index);
            let mut total = 0usize;
            for (at, &id) in ids.iter().enumerate() {
                if at > 0 && total >= max_bytes {
                    break;
                }
                count = at + 1;
                let Some(location) = index.live.get(&id).copied() else {
                    continue;
                };
                if !index.is_synced(location) {
                    continue;
                }
                match index.reader(&dir, location.segment) {
                    Ok(file) => {
                        total += location.len as usize;
                        wanted.push((at, location, file));
                    }
                    Err(source) => {
                        failure.get_or_insert(ReadError::Open {
                            segment: location.segment,
                            id,
                            source,
                        });
                        failed_at = failed_at.min(at);
                    }
                }
            }
        }
        #[cfg(test)]
        super::log::faults::before_read(&dir);
        let mut found: Vec<Option<PublishRecord>> = vec![None; count];
        wanted.sort_by_key(|(_, l, _)| (l.segment, l.offset));
        let mut next = 0;
        while let Some((_, start, file)) = wanted.get(next) {
            // A run of records that follow each other in one segment: one read.
            let first = next;
            let mut end = start.end();
            next += 1;
            while let Some((_, location, _)) = wanted.get(next) {
                let adjacent = location.segment == start.segment
                    && u64::from(location.offset) == end
                    && location.end() - u64::from(start.offset) <= MAX_READ as u64;
                if !adjacent {
                    break;
                }
                end = location.end();
                next += 1;
            }
            let read = read_at(file, u64::from(start.offset), end);
            #[cfg(test)]
            let read = match super::log::faults::read_fails(&dir) {
                true => Err(io::Error::from_raw_os_error(5)),
                false => read,
            };
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(source) => {
                    failure.get_or_insert(ReadError::Read {
                        segment: start.segment,
                        offset: start.offset,
                        source,
                    });
                    let run = wanted.get(first..next).unwrap_or_default();
                    failed_at = run.iter().map(|(at, _, _)| *at).fold(failed_at, usize::min);
                    continue;
                }
            };
            for (at, location, _) in wanted.get(first..next).unwrap_or_default() {
                let offset = (location.offset - start.offset) as usize;
                let id = ids.get(*at).copied().unwrap_or(0);
                let record = bytes
                    .get(offset..)
                    .and_then(|_| decode_record(&bytes.slice(offset..)));
                match (record, found.get_mut(*at)) {
                    (Some(Record::Publish(publish)), Some(slot)) if publish.id == id => {
                        *slot = Some(publish);
                    }
                    _ => tracing::error!(
                        "message log segment {} at {}: no readable record of message {id}",
                        location.segment,
                        location.offset
                    ),
                }
            }
        }
        found.truncate(failed_at);
        PagedIn {
            records: found,
            failure,
        }
    }
}

/// What [`Store::page_in`] read back.
#[derive(Debug)]
pub struct PagedIn {
    /// The records of the ids asked for, in their order, up to the first that a failed read
    /// concerns.
    pub records: Vec<Option<PublishRecord>>,
    /// The first read that failed, if one did.
    pub failure: Option<ReadError>,
}

/// A read of paged-out messages that failed: the log could not be opened or read (an I/O
/// error such as EIO or EMFILE). The messages stay on disk, to be read another time.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A segment could not be opened.
    #[error("cannot open message log segment {segment} to page message {id} in: {source}")]
    Open {
        /// The segment's number.
        segment: u64,
        /// The first message wanted from it.
        id: u64,
        /// Why.
        source: io::Error,
    },
    /// A segment could not be read.
    #[error("cannot read message log segment {segment} at {offset} to page messages in: {source}")]
    Read {
        /// The segment's number.
        segment: u64,
        /// Where the read began.
        offset: u32,
        /// Why.
        source: io::Error,
    },
}

/// Octets `start..end` of a segment.
fn read_at(file: &File, start: u64, end: u64) -> io::Result<Bytes> {
    let len = usize::try_from(end.saturating_sub(start)).map_err(io::Error::other)?;
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, start)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn bucket(id: u64, buckets: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(id) & (buckets - 1)
    }

    #[test]
    fn neighbouring_ids_hash_to_neighbouring_buckets() {
        for block in [0u64, 1, 77, 1 << 20] {
            let first = bucket(block * 64, 1 << 16);
            let region = first & !63;
            for i in 0..64 {
                let expected = region | ((first + i) & 63);
                assert_eq!(bucket(block * 64 + i, 1 << 16), expected);
            }
        }
    }

    #[test]
    fn ids_of_one_queue_among_many_still_spread_over_the_table() {
        // Every 1024th id (a queue among 1024 that take turns), 4096 of them, in a table of
        // 65536 buckets: kept apart (an identity hash would put them in 64 buckets).
        for stride in [2u64, 64, 1024, 1 << 16] {
            let buckets: std::collections::HashSet<u64> =
                (0..4096).map(|j| bucket(j * stride, 1 << 16)).collect();
            assert!(buckets.len() > 3800, "stride {stride}: {}", buckets.len());
        }
    }
}
