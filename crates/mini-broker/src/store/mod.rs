//! Durable storage: definitions (durable exchanges, queues, bindings) and persistent
//! messages, under `--data-dir`.
//!
//! - Definitions are rewritten whole on every change (write, fsync, rename): they change
//!   rarely, and one small file is easy to read and to trust ([`definitions`]).
//! - Persistent messages routed to durable queues go to an append-only log of checksummed
//!   records ([`log`]), written by one thread. That thread batches whatever arrived while it
//!   was busy and fsyncs once per batch (group commit): many publishers share one fsync.
//!   Publisher confirms for such messages are sent by that thread *after* the fsync, so a
//!   confirmed message is on disk, even through `kill -9` or a power cut.
//! - Segments whose messages are all gone are deleted, oldest first; the oldest segment is
//!   compacted (its live messages copied forward) when few of its messages remain, so the
//!   log does not grow without bound under steady traffic.
//!
//! Segments are only ever deleted from the front: an ack record can only refer to a publish
//! in its own or an earlier segment, so deleting from the front never lets an acked message
//! come back.

pub mod definitions;
pub mod log;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqp_codec::methods::{BasicAck, BasicNack};
use amqp_codec::ChannelId;
use bytes::BytesMut;

use crate::delivery::{lock, Outbox};
use log::{list_segments, read_segment, segment_path, ActiveSegment, PublishRecord, Record};

/// How big a segment grows before the next one is started.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// Without confirms waiting, written data is still fsynced this often.
const IDLE_SYNC: Duration = Duration::from_millis(200);
/// The most bytes one batch writes before it syncs.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory.
    pub dir: PathBuf,
    /// Segment size (tests use small ones).
    pub segment_size: u64,
    /// Start even if a segment in the middle of the log is corrupt, skipping the rest of it.
    pub skip_corrupt: bool,
}

impl StoreOptions {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            skip_corrupt: false,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A segment other than the last is damaged: refusing to start rather than drop data.
    #[error("corrupt message log {path} at offset {offset}: {what} (start with --skip-corrupt to skip the rest of this segment)")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The definitions file could not be parsed.
    #[error("{path}: {what}")]
    Definitions {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A publisher confirm to send once the message is on disk.
pub struct Confirm {
    /// The publisher connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The publisher's channel.
    pub channel: ChannelId,
    /// The publish sequence number.
    pub delivery_tag: u64,
    /// Send basic.nack instead (the message was refused by a queue), after the others.
    pub nack: bool,
}

enum Op {
    Publish(PublishRecord),
    Ack(u64),
    Delivered(u64),
    Confirm(Confirm),
    Sync(mpsc::Sender<bool>),
}

/// A message found in the log at startup.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The record, `delivered` set if it had been delivered before the restart.
    pub record: PublishRecord,
}

/// The durable store. Cheap to share; the writing happens on its own thread.
pub struct Store {
    dir: PathBuf,
    ops: Mutex<mpsc::Sender<Op>>,
    next_id: AtomicU64,
    failed: Arc<AtomicBool>,
    /// The definitions of every vhost, as last saved.
    pub definitions: Mutex<definitions::Definitions>,
}

impl Store {
    /// Opens the store in `options.dir` (creating it), recovers the message log, and starts
    /// the writer thread. Returns the store and the messages to put back in their queues, in
    /// publish order.
    pub fn open(options: StoreOptions) -> Result<(Arc<Store>, Vec<Recovered>), StoreError> {
        let dir = options.dir.clone();
        let messages_dir = dir.join("messages");
        std::fs::create_dir_all(&messages_dir).map_err(io_error(&messages_dir))?;
        let definitions = definitions::Definitions::load(&dir)?;
        let recovery = recover(&messages_dir, options.skip_corrupt)?;
        let next_id = recovery
            .messages
            .keys()
            .next_back()
            .map_or(1, |id| id + 1)
            .max(recovery.max_id + 1);
        let (sender, receiver) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let active = ActiveSegment::open(
            &messages_dir,
            recovery.active_number,
            recovery.active_valid_len,
        )
        .map_err(io_error(&segment_path(
            &messages_dir,
            recovery.active_number,
        )))?;
        let writer = Writer {
            dir: messages_dir,
            segment_size: options.segment_size,
            active,
            live: recovery.live,
            delivered: recovery
                .messages
                .values()
                .filter(|r| r.delivered)
                .map(|r| r.id)
                .collect(),
            segments: recovery.segments,
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("mini-broker-store".into())
            .spawn(move || writer.run(receiver))
            .map_err(io_error(&dir))?;
        let recovered = recovery
            .messages
            .into_values()
            .map(|record| Recovered { record })
            .collect();
        let store = Arc::new(Store {
            dir,
            ops: Mutex::new(sender),
            next_id: AtomicU64::new(next_id),
            failed,
            definitions: Mutex::new(definitions),
        });
        Ok((store, recovered))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new message id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether writing failed (disk full, IO error): persistent publishes are then refused.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) {
        // The writer thread only stops with the process; a send cannot fail before that.
        let _ = lock(&self.ops).send(op);
    }

    /// Logs a persistent message entering a durable queue.
    pub fn publish(&self, record: PublishRecord) {
        self.send(Op::Publish(record));
    }

    /// Logs that a message left its queue for good.
    pub fn ack(&self, id: u64) {
        self.send(Op::Ack(id));
    }

    /// Logs a first delivery (so the message comes back redelivered after a restart).
    pub fn delivered(&self, id: u64) {
        self.send(Op::Delivered(id));
    }

    /// Sends a publisher confirm once everything logged before it is on disk.
    pub fn confirm(&self, confirm: Confirm) {
        self.send(Op::Confirm(confirm));
    }

    /// Waits until everything logged so far is on disk; false if writing failed.
    pub fn sync(&self) -> bool {
        let (done, wait) = mpsc::channel();
        self.send(Op::Sync(done));
        wait.recv().unwrap_or(false)
    }

    /// Saves the definitions of one vhost (called after every change to a durable entity).
    pub fn save_definitions(&self, vhost: &str, snapshot: definitions::VHostDefinitions) {
        let mut definitions = lock(&self.definitions);
        definitions.vhosts.insert(vhost.to_owned(), snapshot);
        if let Err(err) = definitions.save(&self.dir) {
            tracing::error!("cannot save definitions in {}: {err}", self.dir.display());
        }
    }
}

/// What the log says at startup.
struct Recovery {
    /// Live messages by id.
    messages: BTreeMap<u64, PublishRecord>,
    /// Live message id to the segment holding its (latest) publish record.
    live: HashMap<u64, u64>,
    /// Per segment: (live messages, publish records written).
    segments: BTreeMap<u64, SegmentCounts>,
    max_id: u64,
    active_number: u64,
    active_valid_len: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct SegmentCounts {
    live: u64,
    written: u64,
}

fn recover(dir: &Path, skip_corrupt: bool) -> Result<Recovery, StoreError> {
    let numbers = list_segments(dir).map_err(io_error(dir))?;
    let mut messages: BTreeMap<u64, PublishRecord> = BTreeMap::new();
    let mut location: HashMap<u64, u64> = HashMap::new();
    let mut segments: BTreeMap<u64, SegmentCounts> = BTreeMap::new();
    let mut max_id = 0;
    let mut active_valid_len = None;
    let started = Instant::now();
    for (index, &number) in numbers.iter().enumerate() {
        let path = segment_path(dir, number);
        let (records, damage) = read_segment(&path).map_err(io_error(&path))?;
        let counts = segments.entry(number).or_default();
        for (_, record) in records {
            match record {
                Record::Publish(publish) => {
                    max_id = max_id.max(publish.id);
                    counts.written += 1;
                    location.insert(publish.id, number);
                    messages.insert(publish.id, publish);
                }
                Record::Ack(id) => {
                    messages.remove(&id);
                    location.remove(&id);
                }
                Record::Delivered(id) => {
                    if let Some(message) = messages.get_mut(&id) {
                        message.delivered = true;
                    }
                }
            }
        }
        if let Some(damage) = damage {
            let last = index + 1 == numbers.len();
            if last {
                tracing::warn!(
                    "message log {}: {} at offset {}: a write torn by a crash; cutting the segment there",
                    path.display(),
                    damage.what,
                    damage.offset
                );
                active_valid_len = Some(damage.offset);
            } else if skip_corrupt {
                tracing::error!(
                    "message log {}: {} at offset {}: skipping the rest of this segment (--skip-corrupt)",
                    path.display(),
                    damage.what,
                    damage.offset
                );
            } else {
                return Err(StoreError::Corrupt {
                    path,
                    offset: damage.offset,
                    what: damage.what,
                });
            }
        }
    }
    for number in location.values() {
        if let Some(counts) = segments.get_mut(number) {
            counts.live += 1;
        }
    }
    let active_number = numbers.last().copied().unwrap_or(1);
    segments.entry(active_number).or_default();
    if !messages.is_empty() || !numbers.is_empty() {
        tracing::info!(
            "recovered {} persistent messages from {} segments in {:?}",
            messages.len(),
            numbers.len(),
            started.elapsed()
        );
    }
    Ok(Recovery {
        messages,
        live: location,
        segments,
        max_id,
        active_number,
        active_valid_len,
    })
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    segment_size: u64,
    active: ActiveSegment,
    /// Live message id to its segment.
    live: HashMap<u64, u64>,
    /// Live messages that were delivered (kept when copied forward).
    delivered: HashSet<u64>,
    segments: BTreeMap<u64, SegmentCounts>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<Op>) {
        let mut buf = BytesMut::with_capacity(1 << 20);
        let mut confirms: Vec<Confirm> = Vec::new();
        let mut syncs: Vec<mpsc::Sender<bool>> = Vec::new();
        let mut unsynced = false;
        let mut last_sync = Instant::now();
        loop {
            let first = match ops.recv_timeout(IDLE_SYNC) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if unsynced {
                        let _ = self.active.sync();
                    }
                    return;
                }
            };
            let mut batch_publishes = Vec::new();
            let mut batch_acks = Vec::new();
            if let Some(first) = first {
                let mut next = Some(first);
                while let Some(op) = next {
                    match op {
                        Op::Publish(record) => {
                            Record::Publish(record.clone()).encode(&mut buf);
                            batch_publishes.push(record.id);
                        }
                        Op::Ack(id) => {
                            if self.live.contains_key(&id) || batch_publishes.contains(&id) {
                                Record::Ack(id).encode(&mut buf);
                                batch_acks.push(id);
                            }
                        }
                        Op::Delivered(id) => {
                            if self.delivered.insert(id) {
                                Record::Delivered(id).encode(&mut buf);
                            }
                        }
                        Op::Confirm(confirm) => confirms.push(confirm),
                        Op::Sync(done) => syncs.push(done),
                    }
                    next = if buf.len() < MAX_BATCH_BYTES {
                        ops.try_recv().ok()
                    } else {
                        None
                    };
                }
            }
            if !buf.is_empty() {
                let number = self.active.number;
                let written = self.active.append(&buf);
                buf.clear();
                match written {
                    Ok(()) => {
                        unsynced = true;
                        let counts = self.segments.entry(number).or_default();
                        counts.written += batch_publishes.len() as u64;
                        counts.live += batch_publishes.len() as u64;
                        for id in batch_publishes {
                            self.live.insert(id, number);
                        }
                        for id in batch_acks {
                            self.forget(id);
                        }
                    }
                    Err(err) => self.fail("append to the message log", &err),
                }
            }
            // Confirms and syncs wait for an fsync now; other writes are synced at least every
            // IDLE_SYNC, so persistent messages without confirms reach the disk soon too.
            let waiting = !confirms.is_empty() || !syncs.is_empty();
            if unsynced && (waiting || last_sync.elapsed() >= IDLE_SYNC) {
                if let Err(err) = self.active.sync() {
                    self.fail("fsync the message log", &err);
                }
                unsynced = false;
                last_sync = Instant::now();
            }
            let ok = !self.failed.load(Ordering::Relaxed);
            for confirm in confirms.drain(..) {
                send_confirm(&confirm, ok && !confirm.nack);
            }
            if let Err(err) = self.reclaim() {
                self.fail("reclaim message log segments", &err);
            }
            // A sync answers once the batch is written, synced and its segments reclaimed.
            for done in syncs.drain(..) {
                let _ = done.send(ok);
            }
        }
    }

    fn fail(&self, what: &str, err: &std::io::Error) {
        tracing::error!(
            "cannot {what} in {}: {err}; persistent messages are refused (nacked) from now on",
            self.dir.display()
        );
        self.failed.store(true, Ordering::Relaxed);
    }

    /// A message is gone: count it out of its segment.
    fn forget(&mut self, id: u64) {
        self.delivered.remove(&id);
        if let Some(number) = self.live.remove(&id) {
            if let Some(counts) = self.segments.get_mut(&number) {
                counts.live = counts.live.saturating_sub(1);
            }
        }
    }

    /// Starts a new segment when the active one is full; deletes dead segments from the
    /// front; compacts the oldest one when little of it is still live.
    fn reclaim(&mut self) -> std::io::Result<()> {
        if self.active.len >= self.segment_size {
            self.active.sync()?;
            let next = self.active.number + 1;
            self.active = ActiveSegment::open(&self.dir, next, None)?;
            self.segments.entry(next).or_default();
        }
        loop {
            let Some((&oldest, &counts)) = self.segments.iter().next() else {
                return Ok(());
            };
            if oldest == self.active.number {
                return Ok(());
            }
            if counts.live == 0 {
                std::fs::remove_file(segment_path(&self.dir, oldest)).or_else(ignore_missing)?;
                self.segments.remove(&oldest);
                continue;
            }
            // Copy the survivors forward when at most a quarter of the segment is live.
            if counts.live * 4 <= counts.written {
                self.compact(oldest)?;
                continue;
            }
            return Ok(());
        }
    }

    fn compact(&mut self, number: u64) -> std::io::Result<()> {
        let path = segment_path(&self.dir, number);
        let (records, _) = read_segment(&path)?;
        let mut buf = BytesMut::new();
        let mut moved = Vec::new();
        for (_, record) in records {
            if let Record::Publish(mut publish) = record {
                if self.live.get(&publish.id) == Some(&number) {
                    publish.delivered = self.delivered.contains(&publish.id);
                    moved.push(publish.id);
                    Record::Publish(publish).encode(&mut buf);
                }
            }
        }
        self.active.append(&buf)?;
        self.active.sync()?;
        let target = self.active.number;
        let counts = self.segments.entry(target).or_default();
        counts.written += moved.len() as u64;
        counts.live += moved.len() as u64;
        for id in moved {
            self.live.insert(id, target);
        }
        std::fs::remove_file(&path).or_else(ignore_missing)?;
        self.segments.remove(&number);
        tracing::debug!("compacted message log segment {number} into {target}");
        Ok(())
    }
}

fn ignore_missing(err: std::io::Error) -> std::io::Result<()> {
    if err.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends basic.ack (or basic.nack when the message could not be stored or was refused).
fn send_confirm(confirm: &Confirm, ack: bool) {
    if ack {
        confirm.outbox.send_method(
            confirm.channel,
            BasicAck {
                delivery_tag: confirm.delivery_tag,
                multiple: false,
            },
        );
    } else {
        confirm.outbox.send_method(
            confirm.channel,
            BasicNack {
                delivery_tag: confirm.delivery_tag,
                multiple: false,
                requeue: false,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::log::tests_support::tempdir;
    use super::*;
    use bytes::Bytes;

    fn record(id: u64, size: usize) -> PublishRecord {
        PublishRecord {
            id,
            delivered: false,
            vhost: Bytes::from_static(b"/"),
            queue: Bytes::from_static(b"q"),
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            header: Bytes::from_static(b"h"),
            body: Bytes::from(vec![id as u8; size]),
        }
    }

    fn open(dir: &Path, segment_size: u64) -> (Arc<Store>, Vec<Recovered>) {
        let mut options = StoreOptions::new(dir);
        options.segment_size = segment_size;
        Store::open(options).unwrap()
    }

    fn segments(dir: &Path) -> Vec<u64> {
        list_segments(&dir.join("messages")).unwrap()
    }

    #[test]
    fn recovery_returns_unacked_messages_in_order_with_their_delivered_mark() {
        let dir = tempdir();
        let (store, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert!(recovered.is_empty());
        for id in 1..=5 {
            store.publish(record(id, 10));
        }
        store.ack(2);
        store.delivered(3);
        assert!(store.sync());
        drop(store);
        let (store, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let ids: Vec<(u64, bool)> = recovered
            .iter()
            .map(|r| (r.record.id, r.record.delivered))
            .collect();
        assert_eq!(ids, vec![(1, false), (3, true), (4, false), (5, false)]);
        assert!(store.next_id() > 5, "ids are never reused");
    }

    #[test]
    fn steady_publish_and_ack_keeps_the_log_bounded() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        for id in 1..=2000 {
            store.publish(record(id, 100));
            if id > 10 {
                store.ack(id - 10);
            }
            if id % 100 == 0 {
                assert!(store.sync());
            }
        }
        assert!(store.sync());
        // ~220 KB were written in 4 KB segments; only the last few can still be live.
        let left = segments(&dir);
        assert!(left.len() <= 4, "segments left: {left:?}");
        drop(store);
        let (_, recovered) = open(&dir, 4096);
        let ids: Vec<u64> = recovered.iter().map(|r| r.record.id).collect();
        assert_eq!(ids, (1991..=2000).collect::<Vec<_>>());
    }

    #[test]
    fn a_long_lived_message_is_compacted_forward_so_old_segments_go() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        store.publish(record(1, 100)); // never acked
        for id in 2..=500 {
            store.publish(record(id, 100));
            store.ack(id);
        }
        assert!(store.sync());
        let left = segments(&dir);
        assert!(
            left.len() <= 2,
            "the first segment was compacted away: {left:?}"
        );
        assert!(!left.contains(&1));
        drop(store);
        let (_, recovered) = open(&dir, 4096);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].record, record(1, 100));
    }

    #[test]
    fn torn_tail_of_the_last_segment_is_cut_and_writing_continues() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        store.publish(record(1, 50));
        store.publish(record(2, 50));
        assert!(store.sync());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let path = segment_path(&dir.join("messages"), 1);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let (store, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert_eq!(recovered.len(), 1, "the torn second record is dropped");
        store.publish(record(3, 50));
        assert!(store.sync());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let ids: Vec<u64> = recovered.iter().map(|r| r.record.id).collect();
        assert_eq!(ids, vec![1, 3], "new records follow the cut, readable");
    }

    #[test]
    fn corrupt_middle_segment_refuses_to_start_naming_file_and_offset_unless_skipped() {
        let dir = tempdir();
        let (store, _) = open(&dir, 1024);
        for id in 1..=40 {
            store.publish(record(id, 100));
        }
        assert!(store.sync());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let first = segment_path(&dir.join("messages"), 1);
        let mut bytes = std::fs::read(&first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let err = Store::open(StoreOptions {
            segment_size: 1024,
            ..StoreOptions::new(&dir)
        })
        .err()
        .expect("refuses to start");
        let text = err.to_string();
        assert!(text.contains("segment-000001.log"), "{text}");
        assert!(text.contains("at offset"), "{text}");
        let (_, recovered) = Store::open(StoreOptions {
            segment_size: 1024,
            skip_corrupt: true,
            ..StoreOptions::new(&dir)
        })
        .unwrap();
        assert!(
            !recovered.is_empty() && recovered.len() < 40,
            "the rest of the bad segment is skipped"
        );
    }
}
