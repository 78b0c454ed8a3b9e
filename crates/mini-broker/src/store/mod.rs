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
//!   compacted (its live messages copied forward) when few of its messages remain and none
//!   has been consumed from it for a while, so the log does not grow without bound under
//!   steady traffic (while a backlog drains in order, its segments empty by themselves).
//! - Queues with deep backlogs drop the bodies of persistent messages that are on disk and
//!   read them back before delivery ([`paging`]); the writer keeps the index of where each
//!   live message is.
//! - A restart reads the log one record at a time ([`log::SegmentReader`]) and keeps no body:
//!   per live message its place in the log and its queue, size and delivered mark. Each
//!   queue the saved definitions restore takes its messages paged out
//!   ([`Store::take_recovered`]) and reads back only what the paging budget holds, so a
//!   restart with a deep backlog needs about the memory the running broker needed.
//!
//! Segments are only ever deleted from the front: an ack record can only refer to a publish
//! in its own or an earlier segment, so deleting from the front never lets an acked message
//! come back.
//!
//! ## When the disk fails (full, or an IO error)
//!
//! - A failed append is cut back off the segment, so the log never holds a torn record
//!   before good ones. A failed fsync cuts the segment back to its last synced length: what
//!   was written since may or may not have reached the disk, and is treated as lost.
//! - The publishes that did not reach the disk are dropped from the log (they stay in their
//!   queues in memory until a restart); every confirm that covers one of them is a
//!   basic.nack. While the store has failed, [`Store::has_failed`] is true and the broker
//!   refuses persistent messages to durable queues at once (basic.nack): nothing is
//!   confirmed that is not on disk. Transient messages and everything else keep working.
//! - Acks and deliveries that cannot be written are applied in memory at once (so dead
//!   segments can still be deleted, freeing space) and kept to be written later. A restart
//!   before they are written brings those acked messages back: at least once, never lost.
//! - Every second the writer tries again: it cuts off any leftover torn bytes, writes and
//!   removes a 1 MiB probe file (so a disk with a few bytes free does not flap between
//!   accepting and refusing), writes the kept acks and fsyncs. When all of that works, the
//!   failure is cleared, logged, and persistent messages are accepted again. The failure is
//!   therefore not sticky: freeing space (or consumers acking messages, which lets whole
//!   segments be deleted) brings the broker back without a restart.
//! - A failure to save the definitions is retried the same way.

pub mod definitions;
pub mod log;
pub mod paging;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqp_codec::methods::{BasicAck, BasicNack};
use amqp_codec::ChannelId;
use bytes::{Bytes, BytesMut};

use crate::delivery::{lock, Outbox};
use log::{
    list_segments, segment_path, ActiveSegment, Next, PublishRecord, Record, RecordView,
    SegmentReader,
};
use paging::{IdMap, IdSet, Index, Location, Pager};

/// Replaces the file at `path` with `contents` so that a crash leaves the old file or the
/// new one, never a mix: a temporary file next to it, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => log::sync_dir(dir),
        _ => Ok(()),
    }
}

/// The file a clean shutdown leaves in the data directory.
const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// How big a segment grows before the next one is started.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// Without confirms waiting, written data is still fsynced this often.
const IDLE_SYNC: Duration = Duration::from_millis(200);
/// The most bytes one batch writes before it syncs.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// After a write failed, how often it is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The free space a retry must find (by writing a probe file) before the store accepts
/// persistent messages again.
const PROBE_BYTES: usize = 1024 * 1024;
/// After a compaction failed, how long before the next attempt.
const COMPACTION_BACKOFF: Duration = Duration::from_secs(5);
/// How long the oldest segment's live count must stay the same before it is compacted.
pub const DEFAULT_COMPACTION_QUIET: Duration = Duration::from_secs(2);
/// How often the writer logs its group-commit counters (at debug level).
const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory.
    pub dir: PathBuf,
    /// Segment size (tests use small ones).
    pub segment_size: u64,
    /// Start even if a segment in the middle of the log is corrupt, skipping the rest of it.
    pub skip_corrupt: bool,
    /// How long the oldest segment's live count must stay the same before its survivors
    /// are copied forward: a segment whose messages are still being consumed (a backlog
    /// draining in order) empties by itself, and copying its last quarter would be wasted
    /// work.
    pub compaction_quiet: Duration,
}

impl StoreOptions {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            skip_corrupt: false,
            compaction_quiet: DEFAULT_COMPACTION_QUIET,
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
    /// The channel's count of confirms handed to the store and not yet sent; the store
    /// takes this one off once it is sent (the channel coalesces its own acks only while
    /// the count is 0).
    pub unsent: Arc<AtomicU64>,
}

enum Op {
    /// `seq` orders publishes for the confirms that cover them ([`Store::confirm`]).
    Publish {
        seq: u64,
        record: PublishRecord,
    },
    Ack(u64),
    Delivered(u64),
    /// Covers the publishes from sequence number `since` on.
    Confirm {
        since: u64,
        confirm: Confirm,
    },
    Sync(mpsc::Sender<bool>),
}

/// Publish sequence numbers, process-wide so that those of different stores compare too.
static PUBLISH_SEQ: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The first publish logged from this thread since its last confirm.
    static UNCONFIRMED_SINCE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A message found in the log at startup: what its queue needs to hold it paged out. Its
/// body is read back when the queue needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// The store's id.
    pub id: u64,
    /// Its body size.
    pub size: u32,
    /// Whether it was delivered before the restart (it is then redelivered).
    pub delivered: bool,
}

/// Counters of the writer thread, for profiling the group commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches written (one write each).
    pub batches: u64,
    /// fsyncs of the message log.
    pub fsyncs: u64,
    /// Nanoseconds spent in those fsyncs.
    pub fsync_nanos: u64,
    /// Publish records written.
    pub publishes: u64,
    /// Publisher confirms sent (basic.ack and basic.nack).
    pub confirms: u64,
    /// Bytes appended to the log.
    pub bytes: u64,
    /// Publishes that did not reach the disk (dropped while the disk failed).
    pub dropped: u64,
}

#[derive(Default)]
struct SharedStats {
    batches: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    publishes: AtomicU64,
    confirms: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> StoreStats {
        StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            fsync_nanos: self.fsync_nanos.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            confirms: self.confirms.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The durable store. Cheap to share; the writing happens on its own thread.
pub struct Store {
    dir: PathBuf,
    ops: Mutex<mpsc::Sender<Op>>,
    next_id: AtomicU64,
    failed: Arc<AtomicBool>,
    stats: Arc<SharedStats>,
    /// The definitions of every vhost, as last saved (or as last changed, while saving them
    /// fails: the writer thread retries).
    pub definitions: Arc<Mutex<definitions::Definitions>>,
    definitions_unsaved: Arc<AtomicBool>,
    /// Where the live messages are (kept by the writer thread; read when paging).
    index: Arc<Mutex<Index>>,
    /// The memory budget of paging.
    pager: Pager,
    /// The messages recovered for each queue, until the queue takes them.
    recovered: Mutex<HashMap<QueueKey, Vec<RecoveredMessage>>>,
}

impl Store {
    /// Opens the store in `options.dir` (creating it), recovers the message log, and starts
    /// the writer thread.
    ///
    /// Recovery streams the log and keeps no body in memory: the live messages of each
    /// queue wait in the store, as ids and sizes, until that queue takes them
    /// ([`Store::take_recovered`]) and reads back only what its memory budget holds. Those no
    /// queue takes (a queue whose deletion was not saved, a vhost no longer served) are
    /// dropped by id, unread, by [`Store::forget_unclaimed`].
    pub fn open(options: StoreOptions) -> Result<Arc<Store>, StoreError> {
        let dir = options.dir.clone();
        let messages_dir = dir.join("messages");
        std::fs::create_dir_all(&messages_dir).map_err(io_error(&messages_dir))?;
        let definitions = definitions::Definitions::load(&dir)?;
        let mut recovery = recover(&messages_dir, options.skip_corrupt)?;
        // After a crash, a delivery's mark may not have reached the disk before the crash
        // did: every recovered message may have been delivered, so each is flagged
        // redelivered (the flag means "may have been delivered before", spec 1.8.3.9).
        // A clean shutdown leaves a marker saying the marks are exact.
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean = marker.exists();
        if !clean {
            for message in recovery.messages.values_mut() {
                message.delivered = true;
            }
        }
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: marker,
                    source,
                })
            }
        }
        let next_id = recovery.max_id + 1;
        let (sender, receiver) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SharedStats::default());
        let definitions_unsaved = Arc::new(AtomicBool::new(false));
        let active_path = segment_path(&messages_dir, recovery.active_number);
        let mut active = ActiveSegment::open(
            &messages_dir,
            recovery.active_number,
            recovery.active_valid_len,
        )
        .map_err(io_error(&active_path))?;
        if !clean {
            // Keep the redelivered flags of this crash recovery through later clean restarts.
            let mut marks = BytesMut::new();
            for id in recovery.messages.keys() {
                Record::Delivered(*id).encode(&mut marks);
                if marks.len() >= MAX_BATCH_BYTES {
                    active.append(&marks).map_err(io_error(&active_path))?;
                    marks.clear();
                }
            }
            active.append(&marks).map_err(io_error(&active_path))?;
        }
        // What a killed broker left in the page cache is on disk from here on.
        active.sync().map_err(io_error(&active_path))?;
        let index = Arc::new(Mutex::new(Index::new(
            std::mem::take(&mut recovery.live),
            active.number,
            active.len,
        )));
        let delivered: IdSet = recovery
            .messages
            .iter()
            .filter(|(_, m)| m.delivered)
            .map(|(&id, _)| id)
            .collect();
        let recovered = by_queue(recovery.messages, recovery.queues);
        let definitions = Arc::new(Mutex::new(definitions));
        let writer = Writer {
            data_dir: dir.clone(),
            dir: messages_dir,
            segment_size: options.segment_size,
            synced_len: active.len,
            active,
            index: index.clone(),
            delivered,
            segments: recovery.segments,
            unsynced: Unsynced::default(),
            deferred: Vec::new(),
            last_dropped: 0,
            dropped: 0,
            failure: None,
            failed: failed.clone(),
            compact_after: Instant::now(),
            compaction_quiet: options.compaction_quiet,
            oldest_seen: None,
            definitions: definitions.clone(),
            definitions_unsaved: definitions_unsaved.clone(),
            definitions_retry: Instant::now(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("mini-broker-store".into())
            .spawn(move || writer.run(receiver))
            .map_err(io_error(&dir))?;
        let store = Arc::new(Store {
            dir,
            ops: Mutex::new(sender),
            next_id: AtomicU64::new(next_id),
            failed,
            stats,
            definitions,
            definitions_unsaved,
            index,
            pager: Pager::default(),
            recovered: Mutex::new(recovered),
        });
        Ok(store)
    }

    /// Takes the messages recovered for queue `queue` of vhost `vhost`, in publish order
    /// (once: a second call gets none). Their bodies are in the log, to be read back with
    /// [`Store::page_in`].
    pub fn take_recovered(&self, vhost: &str, queue: &[u8]) -> Vec<RecoveredMessage> {
        let mut recovered = lock(&self.recovered);
        if recovered.is_empty() {
            return Vec::new();
        }
        let key = (
            Bytes::copy_from_slice(vhost.as_bytes()),
            Bytes::copy_from_slice(queue),
        );
        recovered.remove(&key).unwrap_or_default()
    }

    /// Drops the recovered messages no queue took (their queue's deletion was not saved, or
    /// it was saved in a vhost the broker no longer serves), by id, without reading them;
    /// returns how many. Meant to be called once the broker restored its queues.
    pub fn forget_unclaimed(&self) -> usize {
        let unclaimed = std::mem::take(&mut *lock(&self.recovered));
        let mut count = 0;
        for ((vhost, queue), messages) in unclaimed {
            tracing::warn!(
                "dropping {} persistent messages of queue '{}' in vhost '{}', which is not restored",
                messages.len(),
                String::from_utf8_lossy(&queue),
                String::from_utf8_lossy(&vhost)
            );
            count += messages.len();
            for message in messages {
                self.ack(message.id);
            }
        }
        count
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new message id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether writing the message log fails (disk full, IO error): persistent publishes
    /// are then refused. Cleared by the writer thread once writing works again.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The writer thread's counters so far.
    pub fn stats(&self) -> StoreStats {
        self.stats.snapshot()
    }

    fn send(&self, op: Op) {
        // The writer thread only stops with the process; a send cannot fail before that.
        let _ = lock(&self.ops).send(op);
    }

    /// Logs a persistent message entering a durable queue.
    pub fn publish(&self, record: PublishRecord) {
        let ops = lock(&self.ops);
        // Numbered under the lock: the writer sees publishes in sequence order.
        let seq = PUBLISH_SEQ.fetch_add(1, Ordering::Relaxed);
        let _ = ops.send(Op::Publish { seq, record });
        drop(ops);
        UNCONFIRMED_SINCE.with(|since| {
            if since.get().is_none() {
                since.set(Some(seq));
            }
        });
    }

    /// Logs that a message left its queue for good.
    pub fn ack(&self, id: u64) {
        self.send(Op::Ack(id));
    }

    /// Logs a first delivery (so the message comes back redelivered after a restart).
    pub fn delivered(&self, id: u64) {
        self.send(Op::Delivered(id));
    }

    /// Sends a publisher confirm once everything logged before it is on disk: basic.ack, or
    /// basic.nack if one of the publishes it covers did not reach the disk.
    ///
    /// It covers every publish logged *from this thread* since this thread's previous
    /// confirm: the broker logs a message's publishes and asks for its confirm in one
    /// synchronous call, so they are all there (and perhaps a few more, which only makes a
    /// nack more likely, never an ack wrong). A confirm with no publish before it on this
    /// thread is treated as covering everything ever logged.
    pub fn confirm(&self, confirm: Confirm) {
        let since = UNCONFIRMED_SINCE.with(Cell::take).unwrap_or(1);
        self.send(Op::Confirm { since, confirm });
    }

    /// Waits until everything logged so far is on disk; false if writing failed.
    pub fn sync(&self) -> bool {
        let (done, wait) = mpsc::channel();
        self.send(Op::Sync(done));
        wait.recv().unwrap_or(false)
    }

    /// Makes everything durable and records a clean shutdown, so the next start trusts the
    /// delivered marks instead of flagging every message redelivered.
    pub fn close_cleanly(&self) -> bool {
        if !self.sync() {
            return false;
        }
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        let written = std::fs::File::create(&marker).and_then(|file| file.sync_all());
        written.is_ok()
            && std::fs::File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .is_ok()
    }

    /// Saves the definitions of one vhost (called after every change to a durable entity).
    /// If the file cannot be written, the writer thread retries every second.
    pub fn save_definitions(&self, vhost: &str, snapshot: definitions::VHostDefinitions) {
        let mut definitions = lock(&self.definitions);
        definitions.vhosts.insert(vhost.to_owned(), snapshot);
        match definitions.save(&self.dir) {
            Ok(()) => self.definitions_unsaved.store(false, Ordering::Relaxed),
            Err(err) => {
                tracing::error!(
                    "cannot save definitions in {}: {err}; retrying every {RETRY_INTERVAL:?} (until then a restart loses this change to durable exchanges, queues or bindings)",
                    self.dir.display()
                );
                self.definitions_unsaved.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// What the log says at startup.
struct Recovery {
    /// Live messages, by id (in publish order): what their queues need to know of them.
    messages: BTreeMap<u64, Summary>,
    /// The queues the live messages are in: [`Summary::queue`] indexes this.
    queues: Vec<QueueKey>,
    /// Live message id to its (latest) publish record.
    live: IdMap<Location>,
    /// Per segment: (live messages, publish records written).
    segments: BTreeMap<u64, SegmentCounts>,
    /// The highest id any record mentions.
    max_id: u64,
    active_number: u64,
    active_valid_len: Option<u64>,
}

/// A queue, as publish records name it: (vhost, queue).
type QueueKey = (Bytes, Bytes);

/// What recovery keeps of a live message: not its body (that stays in the log, where its
/// queue reads it back from), only what its queue needs to count it and find it.
#[derive(Debug, Clone, Copy)]
struct Summary {
    /// Its queue, in [`Recovery::queues`].
    queue: u32,
    /// Its body size.
    size: u32,
    /// Whether it had been delivered.
    delivered: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct SegmentCounts {
    live: u64,
    written: u64,
}

/// Reads the whole log, one record at a time, keeping a [`Summary`] of each live message:
/// memory holds a read chunk and the summaries, never the bodies.
fn recover(dir: &Path, skip_corrupt: bool) -> Result<Recovery, StoreError> {
    let numbers = list_segments(dir).map_err(io_error(dir))?;
    let mut messages: BTreeMap<u64, Summary> = BTreeMap::new();
    let mut queues: Vec<QueueKey> = Vec::new();
    let mut queue_numbers: HashMap<QueueKey, u32> = HashMap::new();
    let mut last_queue = 0u32;
    let mut location: IdMap<Location> = IdMap::default();
    let mut segments: BTreeMap<u64, SegmentCounts> = BTreeMap::new();
    let mut max_id = 0;
    let mut active_valid_len = None;
    let started = Instant::now();
    for (index, &number) in numbers.iter().enumerate() {
        let path = segment_path(dir, number);
        let mut reader = SegmentReader::open(&path).map_err(io_error(&path))?;
        let counts = segments.entry(number).or_default();
        let damage = loop {
            let (offset, len, record) = match reader.next_record().map_err(io_error(&path))? {
                Next::Record {
                    offset,
                    len,
                    record,
                } => (offset, len, record),
                Next::Damaged(damage) => break Some(damage),
                Next::End => break None,
            };
            match record {
                RecordView::Publish(publish) => {
                    max_id = max_id.max(publish.id);
                    counts.written += 1;
                    location.insert(publish.id, Location::new(number, offset, len));
                    // Records come in runs of one queue: the last one's number is tried first.
                    let same = |(vhost, queue): &QueueKey| {
                        vhost[..] == *publish.vhost && queue[..] == *publish.queue
                    };
                    let queue = match queues.get(last_queue as usize) {
                        Some(key) if same(key) => last_queue,
                        _ => {
                            let key = (
                                Bytes::copy_from_slice(publish.vhost),
                                Bytes::copy_from_slice(publish.queue),
                            );
                            let next = u32::try_from(queues.len()).unwrap_or(u32::MAX);
                            let queue = *queue_numbers.entry(key.clone()).or_insert(next);
                            if queue == next {
                                queues.push(key);
                            }
                            queue
                        }
                    };
                    last_queue = queue;
                    let summary = Summary {
                        queue,
                        size: u32::try_from(publish.body.len()).unwrap_or(u32::MAX),
                        delivered: publish.delivered,
                    };
                    messages.insert(publish.id, summary);
                }
                RecordView::Ack(id) => {
                    max_id = max_id.max(id);
                    messages.remove(&id);
                    location.remove(&id);
                }
                RecordView::Delivered(id) => {
                    max_id = max_id.max(id);
                    if let Some(message) = messages.get_mut(&id) {
                        message.delivered = true;
                    }
                }
            }
        };
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
    for found in location.values() {
        if let Some(counts) = segments.get_mut(&found.segment) {
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
        queues,
        live: location,
        segments,
        max_id,
        active_number,
        active_valid_len,
    })
}

/// Sorts the live messages (in publish order) by queue, each list in publish order.
fn by_queue(
    messages: BTreeMap<u64, Summary>,
    queues: Vec<QueueKey>,
) -> HashMap<QueueKey, Vec<RecoveredMessage>> {
    let mut lists: Vec<Vec<RecoveredMessage>> = vec![Vec::new(); queues.len()];
    // The map is freed as it is walked.
    for (id, summary) in messages {
        // Every summary's queue is in `queues` (recovery numbered it).
        if let Some(list) = lists.get_mut(summary.queue as usize) {
            list.push(RecoveredMessage {
                id,
                size: summary.size,
                delivered: summary.delivered,
            });
        }
    }
    queues
        .into_iter()
        .zip(lists)
        .filter(|(_, list)| !list.is_empty())
        .collect()
}

/// The writer thread's state.
struct Writer {
    /// The data directory (definitions.json).
    data_dir: PathBuf,
    /// The message log directory.
    dir: PathBuf,
    segment_size: u64,
    active: ActiveSegment,
    /// How much of the active segment is known to be on disk.
    synced_len: u64,
    /// Where the live messages are (shared with the queues that page).
    index: Arc<Mutex<Index>>,
    /// Live messages that were delivered (kept when copied forward).
    delivered: IdSet,
    segments: BTreeMap<u64, SegmentCounts>,
    /// Written to the active segment since its last fsync: what a failed fsync takes back.
    unsynced: Unsynced,
    /// Acks and deliveries not written because writing failed; written when it works again.
    deferred: Vec<Mark>,
    /// The sequence number of the latest publish that did not reach the disk.
    last_dropped: u64,
    /// Publishes dropped since the failure began.
    dropped: u64,
    failure: Option<Failure>,
    failed: Arc<AtomicBool>,
    compact_after: Instant,
    compaction_quiet: Duration,
    /// The oldest segment as reclaim last saw it: its number, its live count, and since when
    /// that count has not changed.
    oldest_seen: Option<(u64, u64, Instant)>,
    definitions: Arc<Mutex<definitions::Definitions>>,
    definitions_unsaved: Arc<AtomicBool>,
    definitions_retry: Instant,
    stats: Arc<SharedStats>,
}

/// An ack or delivery record, by message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Ack(u64),
    Delivered(u64),
}

impl Mark {
    fn encode(self, buf: &mut BytesMut) {
        match self {
            Mark::Ack(id) => Record::Ack(id).encode(buf),
            Mark::Delivered(id) => Record::Delivered(id).encode(buf),
        }
    }
}

#[derive(Default)]
struct Unsynced {
    publishes: Vec<u64>,
    last_seq: u64,
    marks: Vec<Mark>,
}

/// Writing failed; since when, and when to try again.
struct Failure {
    since: Instant,
    next_retry: Instant,
}

/// What one turn of the writer loop collected.
#[derive(Default)]
struct Batch {
    buf: BytesMut,
    publishes: Vec<u64>,
    last_seq: u64,
    marks: Vec<Mark>,
    confirms: Vec<(u64, Confirm)>,
    syncs: Vec<mpsc::Sender<bool>>,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<Op>) {
        let mut batch = Batch {
            buf: BytesMut::with_capacity(1 << 20),
            ..Batch::default()
        };
        let mut last_sync = Instant::now();
        let mut last_stats = (Instant::now(), StoreStats::default());
        loop {
            let first = match ops.recv_timeout(IDLE_SYNC) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            };
            let mut next = first;
            // The index is locked once for the whole batch, not once per op.
            let index = Arc::clone(&self.index);
            let mut live = lock(&index);
            while let Some(op) = next {
                self.take(op, &mut batch, &mut live);
                next = if batch.buf.len() < MAX_BATCH_BYTES {
                    ops.try_recv().ok()
                } else {
                    None
                };
            }
            drop(live);
            let mut ok = self.failure.is_none();
            if !batch.buf.is_empty() {
                ok &= self.write(&mut batch);
            }
            // Confirms and syncs wait for an fsync now; other writes are synced at least every
            // IDLE_SYNC, so persistent messages without confirms reach the disk soon too.
            let waiting = !batch.confirms.is_empty() || !batch.syncs.is_empty();
            if ok
                && self.active.len > self.synced_len
                && (waiting || last_sync.elapsed() >= IDLE_SYNC)
            {
                ok &= self.sync_active();
                last_sync = Instant::now();
            }
            add(&self.stats.confirms, batch.confirms.len() as u64);
            let last_dropped = self.last_dropped;
            send_confirms(batch.confirms.drain(..).map(|(since, confirm)| {
                let stored = ok && since > last_dropped;
                let ack = stored && !confirm.nack;
                (confirm, ack)
            }));
            self.reclaim();
            // A sync answers once the batch is written, synced and its segments reclaimed.
            for done in batch.syncs.drain(..) {
                let _ = done.send(ok);
            }
            let now = Instant::now();
            if self.failure.as_ref().is_some_and(|f| now >= f.next_retry) {
                self.retry();
            }
            if self.definitions_unsaved.load(Ordering::Relaxed) && now >= self.definitions_retry {
                self.retry_definitions();
            }
            if now.duration_since(last_stats.0) >= STATS_INTERVAL {
                last_stats = (
                    now,
                    self.log_stats(now.duration_since(last_stats.0), last_stats.1),
                );
            }
        }
    }

    /// Adds one op to the batch (or, while writing fails, handles it without writing).
    fn take(&mut self, op: Op, batch: &mut Batch, index: &mut Index) {
        let failing = self.failure.is_some();
        match op {
            Op::Publish { seq, record } => {
                if failing {
                    self.last_dropped = self.last_dropped.max(seq);
                    self.dropped += 1;
                    add(&self.stats.dropped, 1);
                    return;
                }
                // Live at once, so that an ack later in the batch finds it; taken back if
                // the append fails.
                let offset = self.active.len + batch.buf.len() as u64;
                let id = record.id;
                Record::Publish(record).encode(&mut batch.buf);
                let len = (self.active.len + batch.buf.len() as u64 - offset) as usize;
                let location = Location::new(self.active.number, offset, len);
                index.live.insert(id, location);
                batch.publishes.push(id);
                batch.last_seq = seq;
            }
            Op::Ack(id) => {
                if !index.live.contains_key(&id) {
                    return;
                }
                if failing {
                    // Applied now so that dead segments can go (freeing space); written later.
                    self.forget(index, id);
                    self.deferred.push(Mark::Ack(id));
                } else {
                    Mark::Ack(id).encode(&mut batch.buf);
                    batch.marks.push(Mark::Ack(id));
                }
            }
            Op::Delivered(id) => {
                if !index.live.contains_key(&id) || !self.delivered.insert(id) {
                    return;
                }
                if failing {
                    self.deferred.push(Mark::Delivered(id));
                } else {
                    Mark::Delivered(id).encode(&mut batch.buf);
                    batch.marks.push(Mark::Delivered(id));
                }
            }
            Op::Confirm { since, confirm } => batch.confirms.push((since, confirm)),
            Op::Sync(done) => batch.syncs.push(done),
        }
    }

    /// Appends the batch; false if that failed (the batch's publishes are then dropped).
    fn write(&mut self, batch: &mut Batch) -> bool {
        let number = self.active.number;
        let written = self.active.append(&batch.buf);
        add(&self.stats.batches, 1);
        let publishes = std::mem::take(&mut batch.publishes);
        let marks = std::mem::take(&mut batch.marks);
        let ok = match written {
            Ok(()) => {
                add(&self.stats.bytes, batch.buf.len() as u64);
                add(&self.stats.publishes, publishes.len() as u64);
                let counts = self.segments.entry(number).or_default();
                counts.written += publishes.len() as u64;
                counts.live += publishes.len() as u64;
                let index = Arc::clone(&self.index);
                let mut index = lock(&index);
                for mark in &marks {
                    if let Mark::Ack(id) = mark {
                        self.forget(&mut index, *id);
                    }
                }
                drop(index);
                self.unsynced.publishes.extend(publishes);
                self.unsynced.last_seq = self.unsynced.last_seq.max(batch.last_seq);
                self.unsynced.marks.extend(marks);
                true
            }
            Err(err) => {
                // The segment cut the partial write off; nothing of the batch is on disk.
                let mut index = lock(&self.index);
                for id in &publishes {
                    index.live.remove(id);
                    self.delivered.remove(id);
                }
                drop(index);
                self.drop_publishes(publishes.len(), batch.last_seq);
                self.defer(marks);
                self.enter_failure("append to the message log", &err);
                false
            }
        };
        batch.buf.clear();
        batch.last_seq = 0;
        ok
    }

    /// Fsyncs the active segment; false if that failed (what was written since the last
    /// fsync is then cut off and treated as lost).
    fn sync_active(&mut self) -> bool {
        let started = Instant::now();
        let synced = self.active.sync();
        add(&self.stats.fsyncs, 1);
        add(
            &self.stats.fsync_nanos,
            started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX),
        );
        match synced {
            Ok(()) => {
                self.set_synced_len(self.active.len);
                self.unsynced = Unsynced::default();
                true
            }
            Err(err) => {
                self.undo_unsynced();
                self.enter_failure("fsync the message log", &err);
                false
            }
        }
    }

    /// After a failed fsync: cuts the active segment back to its last synced length and
    /// forgets the publishes written since; their acks and deliveries are kept for later.
    fn undo_unsynced(&mut self) {
        let unsynced = std::mem::take(&mut self.unsynced);
        if let Err(err) = self.active.truncate(self.synced_len) {
            tracing::error!(
                "cannot cut message log segment {} back to {} bytes: {err}; retrying",
                self.active.number,
                self.synced_len
            );
        }
        let number = self.active.number;
        let counts = self.segments.entry(number).or_default();
        counts.written = counts
            .written
            .saturating_sub(unsynced.publishes.len() as u64);
        let mut index = lock(&self.index);
        for id in &unsynced.publishes {
            if index.live.get(id).is_some_and(|l| l.segment == number) {
                index.live.remove(id);
                self.delivered.remove(id);
                counts.live = counts.live.saturating_sub(1);
            }
        }
        drop(index);
        self.drop_publishes(unsynced.publishes.len(), unsynced.last_seq);
        let gone: IdSet = unsynced.publishes.into_iter().collect();
        let marks = unsynced
            .marks
            .into_iter()
            .filter(|mark| match mark {
                Mark::Ack(id) | Mark::Delivered(id) => !gone.contains(id),
            })
            .collect();
        self.defer(marks);
    }

    fn drop_publishes(&mut self, count: usize, last_seq: u64) {
        self.last_dropped = self.last_dropped.max(last_seq);
        self.dropped += count as u64;
        add(&self.stats.dropped, count as u64);
    }

    /// Keeps acks and deliveries of messages still on disk, to write them later; an ack is
    /// applied in memory at once.
    fn defer(&mut self, marks: Vec<Mark>) {
        let index = Arc::clone(&self.index);
        let mut index = lock(&index);
        for mark in marks {
            match mark {
                Mark::Ack(id) if index.live.contains_key(&id) => {
                    self.forget(&mut index, id);
                    self.deferred.push(mark);
                }
                Mark::Ack(_) => self.deferred.push(mark),
                Mark::Delivered(id) if index.live.contains_key(&id) => self.deferred.push(mark),
                Mark::Delivered(_) => {}
            }
        }
    }

    fn enter_failure(&mut self, what: &str, err: &std::io::Error) {
        let now = Instant::now();
        if let Some(failure) = &mut self.failure {
            tracing::debug!("still cannot {what} in {}: {err}", self.dir.display());
            failure.next_retry = now + RETRY_INTERVAL;
            return;
        }
        tracing::error!(
            "cannot {what} in {}: {err}; persistent messages to durable queues are refused (publishers get basic.nack) until it can be written again (retrying every {RETRY_INTERVAL:?})",
            self.dir.display()
        );
        self.failure = Some(Failure {
            since: now,
            next_retry: now + RETRY_INTERVAL,
        });
        self.failed.store(true, Ordering::Relaxed);
    }

    /// While failing: tries to write again (leftover torn bytes cut, a probe file, the
    /// deferred acks, an fsync); clears the failure if all of it works.
    fn retry(&mut self) {
        match self.try_write_again() {
            Ok(()) => {
                let since = self.failure.take().map(|f| f.since.elapsed());
                tracing::info!(
                    "the message log in {} can be written again after {:?}; accepting persistent messages again ({} that were on their way to the disk when it failed were not stored; publishers using confirms got basic.nack)",
                    self.dir.display(),
                    since.unwrap_or_default(),
                    self.dropped
                );
                self.dropped = 0;
                self.failed.store(false, Ordering::Relaxed);
            }
            Err(err) => {
                tracing::debug!(
                    "the message log in {} still cannot be written: {err}",
                    self.dir.display()
                );
                if let Some(failure) = &mut self.failure {
                    failure.next_retry = Instant::now() + RETRY_INTERVAL;
                }
            }
        }
    }

    fn try_write_again(&mut self) -> std::io::Result<()> {
        self.active.repair()?;
        probe_free_space(&self.dir)?;
        if !self.deferred.is_empty() {
            let mut buf = BytesMut::with_capacity(self.deferred.len() * 17);
            for mark in &self.deferred {
                mark.encode(&mut buf);
            }
            self.active.append(&buf)?;
            add(&self.stats.bytes, buf.len() as u64);
            let deferred = std::mem::take(&mut self.deferred);
            self.unsynced.marks.extend(deferred);
        }
        let synced = self.active.sync();
        add(&self.stats.fsyncs, 1);
        if let Err(err) = synced {
            self.undo_unsynced();
            return Err(err);
        }
        self.set_synced_len(self.active.len);
        self.unsynced = Unsynced::default();
        Ok(())
    }

    fn retry_definitions(&mut self) {
        let definitions = lock(&self.definitions);
        match definitions.save(&self.data_dir) {
            Ok(()) => {
                self.definitions_unsaved.store(false, Ordering::Relaxed);
                tracing::info!("saved the definitions in {}", self.data_dir.display());
            }
            Err(err) => {
                tracing::debug!("still cannot save the definitions: {err}");
                self.definitions_retry = Instant::now() + RETRY_INTERVAL;
            }
        }
    }

    /// Logs the group-commit counters of the last interval (debug level); returns the
    /// counters now.
    fn log_stats(&self, elapsed: Duration, before: StoreStats) -> StoreStats {
        let now = self.stats.snapshot();
        let publishes = now.publishes - before.publishes;
        let fsyncs = now.fsyncs - before.fsyncs;
        if publishes > 0 || fsyncs > 0 {
            tracing::debug!(
                "group commit over {elapsed:.1?}: {publishes} messages, {} confirms, {fsyncs} fsyncs ({:.1} messages per fsync, {:.2} ms per fsync), {} batches, {} MB written",
                now.confirms - before.confirms,
                publishes as f64 / fsyncs.max(1) as f64,
                (now.fsync_nanos - before.fsync_nanos) as f64 / 1e6 / fsyncs.max(1) as f64,
                now.batches - before.batches,
                (now.bytes - before.bytes) / 1_000_000
            );
        }
        now
    }

    /// The ops channel closed (the store was dropped): makes what was written durable.
    fn finish(&mut self) {
        if self.failure.is_some() {
            self.retry();
        } else if self.active.len > self.synced_len {
            self.sync_active();
        }
    }

    /// Records how much of the active segment is on disk (for paging, too).
    fn set_synced_len(&mut self, len: u64) {
        self.synced_len = len;
        let mut index = lock(&self.index);
        index.active = self.active.number;
        index.synced_len = len;
    }

    /// Makes `segment` the active one, empty so far.
    fn start_segment(&mut self, segment: ActiveSegment) {
        self.active = segment;
        self.segments.entry(self.active.number).or_default();
        self.set_synced_len(0);
    }

    /// Deletes segment `number`'s file, dropping its read handle first.
    fn delete_segment(&mut self, number: u64) -> std::io::Result<()> {
        lock(&self.index).drop_reader(number);
        std::fs::remove_file(segment_path(&self.dir, number)).or_else(ignore_missing)
    }

    /// A message is gone: count it out of its segment.
    fn forget(&mut self, index: &mut Index, id: u64) {
        self.delivered.remove(&id);
        if let Some(Location { segment, .. }) = index.live.remove(&id) {
            if let Some(counts) = self.segments.get_mut(&segment) {
                counts.live = counts.live.saturating_sub(1);
            }
        }
    }

    /// Starts a new segment when the active one is full; deletes dead segments from the
    /// front; compacts the oldest one when little of it is still live. While writing fails,
    /// only deletes (a dead active segment too, when it is the only one), to free space.
    fn reclaim(&mut self) {
        if self.failure.is_none() && self.active.len >= self.segment_size {
            if !self.sync_active() {
                return;
            }
            let next = self.active.number + 1;
            match ActiveSegment::open(&self.dir, next, None) {
                Ok(segment) => self.start_segment(segment),
                Err(err) => {
                    self.enter_failure("start a new message log segment", &err);
                    return;
                }
            }
        }
        if self.failure.is_some() {
            self.roll_dead_active();
        }
        loop {
            let Some((&oldest, &counts)) = self.segments.iter().next() else {
                return;
            };
            if oldest == self.active.number {
                return;
            }
            if counts.live == 0 {
                match self.delete_segment(oldest) {
                    Ok(()) => {
                        self.segments.remove(&oldest);
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!("cannot delete message log segment {oldest}: {err}");
                        return;
                    }
                }
            }
            // Copy the survivors forward when at most a quarter of the segment is live.
            if counts.live * 4 <= counts.written
                && self.failure.is_none()
                && Instant::now() >= self.compact_after
                && self.is_quiet(oldest, counts.live)
            {
                match self.compact(oldest) {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(err) => {
                        tracing::warn!(
                            "cannot compact message log segment {oldest}: {err}; trying again in {COMPACTION_BACKOFF:?}"
                        );
                        self.compact_after = Instant::now() + COMPACTION_BACKOFF;
                        return;
                    }
                }
            }
            return;
        }
    }

    /// Whether segment `number`, with `live` messages, has kept that count for
    /// `compaction_quiet`: nobody is consuming from it any more.
    fn is_quiet(&mut self, number: u64, live: u64) -> bool {
        let now = Instant::now();
        match self.oldest_seen {
            Some((seen, seen_live, since)) if seen == number && seen_live == live => {
                now.duration_since(since) >= self.compaction_quiet
            }
            _ => {
                self.oldest_seen = Some((number, live, now));
                self.compaction_quiet.is_zero()
            }
        }
    }

    /// While writing fails: if the active segment is the only one and none of its messages
    /// is live, replaces it with an empty one (it is deleted next, from the front). Nothing
    /// in it matters any more: no earlier segment is left for its acks to refer to.
    fn roll_dead_active(&mut self) {
        let number = self.active.number;
        let dead = self.segments.len() == 1
            && self.segments.get(&number).is_some_and(|c| c.live == 0)
            && self.active.len > 0;
        if !dead {
            return;
        }
        match ActiveSegment::open(&self.dir, number + 1, None) {
            Ok(segment) => {
                self.start_segment(segment);
                self.unsynced = Unsynced::default();
                self.deferred.clear();
            }
            Err(err) => tracing::debug!("cannot start a new message log segment: {err}"),
        }
    }

    /// Copies the live messages of segment `number` into the active one and deletes it.
    /// Ok(false) if the copies could not be made durable (the store has failed).
    fn compact(&mut self, number: u64) -> std::io::Result<bool> {
        let path = segment_path(&self.dir, number);
        let mut reader = SegmentReader::open(&path)?;
        let mut buf = BytesMut::new();
        let mut moved = Vec::new();
        let target = self.active.number;
        while let Next::Record { record, .. } = reader.next_record()? {
            let RecordView::Publish(publish) = record else {
                continue;
            };
            let here = lock(&self.index)
                .live
                .get(&publish.id)
                .is_some_and(|l| l.segment == number);
            if !here {
                continue;
            }
            let Record::Publish(mut publish) = record.to_owned_record() else {
                continue;
            };
            publish.delivered = self.delivered.contains(&publish.id);
            let offset = self.active.len + buf.len() as u64;
            let id = publish.id;
            Record::Publish(publish).encode(&mut buf);
            let len = (self.active.len + buf.len() as u64 - offset) as usize;
            moved.push((id, Location::new(target, offset, len)));
        }
        if !moved.is_empty() {
            self.active.append(&buf)?;
            add(&self.stats.bytes, buf.len() as u64);
            if !self.sync_active() {
                return Ok(false);
            }
        }
        let counts = self.segments.entry(target).or_default();
        counts.written += moved.len() as u64;
        counts.live += moved.len() as u64;
        // Paging finds the copies from here on (a read that took the old segment's handle
        // before still reads the old copies).
        let mut index = lock(&self.index);
        for (id, location) in moved {
            index.live.insert(id, location);
        }
        drop(index);
        // Nothing live is left in it; if the delete fails, the next reclaim retries it.
        if let Some(counts) = self.segments.get_mut(&number) {
            counts.live = 0;
        }
        self.delete_segment(number)?;
        self.segments.remove(&number);
        tracing::debug!("compacted message log segment {number} into {target}");
        Ok(true)
    }
}

/// Writes, syncs and removes a file of [`PROBE_BYTES`]: fails unless that much space is
/// free.
fn probe_free_space(dir: &Path) -> std::io::Result<()> {
    let path = dir.join("free-space-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_data()
    })();
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

fn ignore_missing(err: std::io::Error) -> std::io::Result<()> {
    if err.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends a batch's confirms, each `(confirm, ack)`: basic.ack, or basic.nack when the
/// message could not be stored or was refused. Consecutive acks of one channel go out as one
/// basic.ack with multiple=true (RabbitMQ coalesces its confirms the same way): every tag
/// before them on the channel was confirmed already, since the channel sends its own acks
/// before it hands a confirm to the store, nacks go out in order, and the store sends the
/// confirms of one channel in the order it got them.
fn send_confirms(confirms: impl Iterator<Item = (Confirm, bool)>) {
    // The run of consecutive acks being gathered, per channel.
    let mut runs: Vec<AckRun> = Vec::new();
    for (confirm, ack) in confirms {
        let run = runs.iter().position(|run| run.is_of(&confirm));
        if let Some(run) = run {
            if ack && runs[run].last.delivery_tag.checked_add(1) == Some(confirm.delivery_tag) {
                runs[run].extend(confirm);
                continue;
            }
            runs.swap_remove(run).send();
        }
        if ack {
            runs.push(AckRun {
                last: confirm,
                count: 1,
            });
        } else {
            send_nack(&confirm);
        }
    }
    for run in runs {
        run.send();
    }
}

/// Consecutive acks of one channel, up to `last`.
struct AckRun {
    last: Confirm,
    count: u64,
}

impl AckRun {
    fn is_of(&self, confirm: &Confirm) -> bool {
        Arc::ptr_eq(&self.last.outbox, &confirm.outbox) && self.last.channel == confirm.channel
    }

    fn extend(&mut self, confirm: Confirm) {
        self.last = confirm;
        self.count += 1;
    }

    fn send(self) {
        let Confirm {
            outbox,
            channel,
            delivery_tag,
            unsent,
            ..
        } = self.last;
        outbox.send_method(
            channel,
            BasicAck {
                delivery_tag,
                multiple: self.count > 1,
            },
        );
        unsent.fetch_sub(self.count, Ordering::Release);
    }
}

/// Sends basic.nack for a message that could not be stored or was refused.
fn send_nack(confirm: &Confirm) {
    // RabbitMQ's publisher nacks say requeue=true (observed with 3.10; the field means
    // nothing to a publisher).
    confirm.outbox.send_method(
        confirm.channel,
        BasicNack {
            delivery_tag: confirm.delivery_tag,
            multiple: false,
            requeue: true,
        },
    );
    confirm.unsent.fetch_sub(1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::log::faults::{self, Fault};
    use super::log::read_segment;
    use super::log::tests_support::{record_for_q, tempdir};
    use super::*;
    use amqp_codec::{Frame, Method};
    use bytes::Bytes;

    fn record(id: u64, size: usize) -> PublishRecord {
        record_for_q(
            id,
            Bytes::from_static(b"h"),
            Bytes::from(vec![id as u8; size]),
        )
    }

    /// Opens the store; returns it and the messages it recovered for queue q of vhost /.
    fn open(dir: &Path, segment_size: u64) -> (Arc<Store>, Vec<RecoveredMessage>) {
        let store = open_store(dir, segment_size);
        let recovered = store.take_recovered("/", b"q");
        (store, recovered)
    }

    /// Opens the store, no queue taking its messages yet.
    fn open_store(dir: &Path, segment_size: u64) -> Arc<Store> {
        let mut options = StoreOptions::new(dir);
        options.segment_size = segment_size;
        options.compaction_quiet = Duration::ZERO;
        Store::open(options).unwrap()
    }

    fn segments(dir: &Path) -> Vec<u64> {
        list_segments(&dir.join("messages")).unwrap()
    }

    /// The confirms a store sent to `outbox`: (delivery tag, acked).
    fn confirms(outbox: &Outbox) -> Vec<(u64, bool)> {
        let mut buf = outbox.take().contiguous();
        let mut seen = Vec::new();
        while let Some(frame) =
            amqp_codec::decode(&mut buf, &amqp_codec::Limits::default()).unwrap()
        {
            match frame {
                Frame::Method(_, Method::BasicAck(ack)) => seen.push((ack.delivery_tag, true)),
                Frame::Method(_, Method::BasicNack(nack)) => seen.push((nack.delivery_tag, false)),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        seen
    }

    /// Publishes message `id` and asks for its confirm with delivery tag `id`.
    fn publish_confirmed(store: &Store, outbox: &Arc<Outbox>, id: u64) {
        store.publish(record(id, 100));
        store.confirm(Confirm {
            outbox: outbox.clone(),
            channel: 1,
            delivery_tag: id,
            nack: false,
            unsent: Arc::new(AtomicU64::new(1)),
        });
    }

    fn wait_until_writable(store: &Store) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.has_failed() {
            assert!(Instant::now() < deadline, "the store did not recover");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn recovered_ids(dir: &Path) -> Vec<u64> {
        let (_, recovered) = open(dir, DEFAULT_SEGMENT_SIZE);
        recovered.iter().map(|r| r.id).collect()
    }

    #[test]
    fn synced_messages_are_read_back_by_id_in_the_order_asked() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=10 {
            store.publish(record(id, 1000));
        }
        assert!(store.sync());
        assert!((1..=10).all(|id| store.on_disk().contains(id)));
        assert!(!store.on_disk().contains(11), "never published");
        let read = store.page_in(&[3, 1, 2, 11], usize::MAX).records;
        assert_eq!(
            read,
            vec![
                Some(record(3, 1000)),
                Some(record(1, 1000)),
                Some(record(2, 1000)),
                None
            ]
        );
        // A budget of octets: as many as fit, at least one.
        let ids: Vec<u64> = (1..=10).collect();
        let some = store.page_in(&ids, 2500).records;
        assert_eq!(some.len(), 3, "three records of ~1 KB pass 2500 octets");
        assert_eq!(store.page_in(&ids, 1).records, vec![Some(record(1, 1000))]);
        // Gone once acked.
        store.ack(2);
        assert!(store.sync());
        assert!(!store.on_disk().contains(2));
        assert_eq!(store.page_in(&[2], usize::MAX).records, vec![None]);
    }

    #[test]
    fn a_paged_out_message_is_found_after_compaction_copied_it_forward() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        store.publish(record(1, 100)); // never acked: paged out
        assert!(store.sync());
        // A read opens (and keeps) a handle of segment 1.
        assert_eq!(
            store.page_in(&[1], usize::MAX).records,
            vec![Some(record(1, 100))]
        );
        for id in 2..=500 {
            store.publish(record(id, 100));
            store.ack(id);
        }
        store.publish(record(501, 100));
        assert!(store.sync());
        assert!(!segments(&dir).contains(&1), "segment 1 was compacted away");
        assert!(store.on_disk().contains(1));
        let read = store.page_in(&[501, 1], usize::MAX).records;
        assert_eq!(read, vec![Some(record(501, 100)), Some(record(1, 100))]);
        // The deleted segment's handle was dropped: its space is free (no open file left).
        let fds = std::fs::read_dir("/proc/self/fd").unwrap();
        let segment_1 = segment_path(&dir.join("messages"), 1);
        assert!(fds
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .all(|target| !target.starts_with(&segment_1)));
    }

    #[test]
    fn a_read_that_fails_ends_the_list_before_the_messages_it_concerns() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=3 {
            store.publish(record(id, 1000));
        }
        assert!(store.sync());
        faults::set(&messages, Some(Fault::Read));
        // Not None (which would say lost): no answer at all, to be asked again.
        assert_eq!(store.page_in(&[1, 2, 3], usize::MAX).records, vec![]);
        faults::set(&messages, None);
        assert_eq!(
            store.page_in(&[1, 2, 3], usize::MAX).records,
            vec![
                Some(record(1, 1000)),
                Some(record(2, 1000)),
                Some(record(3, 1000))
            ]
        );
    }

    #[test]
    fn a_message_whose_fsync_failed_is_never_paged() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        store.publish(record(1, 100));
        assert!(store.sync());
        faults::set(&messages, Some(Fault::Sync));
        store.publish(record(2, 100));
        assert!(!store.sync());
        faults::set(&messages, None);
        assert!(store.on_disk().contains(1));
        assert!(!store.on_disk().contains(2), "not on disk for good");
        assert_eq!(store.page_in(&[2], usize::MAX).records, vec![None]);
        wait_until_writable(&store);
        store.publish(record(3, 100));
        assert!(store.sync());
        assert_eq!(
            store.page_in(&[3], usize::MAX).records,
            vec![Some(record(3, 100))]
        );
    }

    #[test]
    fn recovered_messages_can_be_read_back_where_recovery_found_them() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        for id in 1..=60 {
            store.publish(record(id, 100));
        }
        assert!(store.close_cleanly());
        drop(store);
        let (store, recovered) = open(&dir, 4096);
        assert_eq!(recovered.len(), 60);
        assert!(segments(&dir).len() > 1);
        let ids: Vec<u64> = (1..=60).rev().collect();
        let read = store.page_in(&ids, usize::MAX).records;
        let expected: Vec<_> = ids.iter().map(|&id| Some(record(id, 100))).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn failed_append_nacks_its_confirms_leaves_no_torn_record_and_recovers_when_space_returns() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let outbox = Arc::new(Outbox::new(131_072));
        publish_confirmed(&store, &outbox, 1);
        assert!(store.sync());
        assert_eq!(confirms(&outbox), vec![(1, true)]);

        // The disk fills up in the middle of the next write.
        faults::set(&messages, Some(Fault::Append { kept: 30 }));
        publish_confirmed(&store, &outbox, 2);
        assert!(!store.sync(), "a sync reports the failure");
        assert!(store.has_failed());
        publish_confirmed(&store, &outbox, 3);
        assert!(!store.sync());
        assert_eq!(confirms(&outbox), vec![(2, false), (3, false)]);

        faults::set(&messages, None);
        wait_until_writable(&store);
        publish_confirmed(&store, &outbox, 4);
        assert!(store.sync());
        assert_eq!(confirms(&outbox), vec![(4, true)]);
        drop(store);
        std::thread::sleep(Duration::from_millis(50));

        let (records, damage) = read_segment(&segment_path(&messages, 1)).unwrap();
        assert_eq!(damage, None, "the partial write was cut off");
        assert_eq!(records.len(), 2);
        assert_eq!(recovered_ids(&dir), vec![1, 4]);
    }

    #[test]
    fn failed_fsync_cuts_the_segment_back_to_its_last_synced_length_and_nacks() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let outbox = Arc::new(Outbox::new(131_072));
        publish_confirmed(&store, &outbox, 1);
        assert!(store.sync());
        let synced_len = std::fs::metadata(segment_path(&messages, 1)).unwrap().len();

        faults::set(&messages, Some(Fault::Sync));
        publish_confirmed(&store, &outbox, 2);
        assert!(!store.sync());
        assert_eq!(
            std::fs::metadata(segment_path(&messages, 1)).unwrap().len(),
            synced_len,
            "what was written since the last fsync is cut off"
        );
        faults::set(&messages, None);
        wait_until_writable(&store);
        publish_confirmed(&store, &outbox, 3);
        assert!(store.sync());
        assert_eq!(confirms(&outbox), vec![(1, true), (2, false), (3, true)]);
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(recovered_ids(&dir), vec![1, 3]);
    }

    #[test]
    fn acks_that_could_not_be_written_are_written_once_the_disk_works_again() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=3 {
            store.publish(record(id, 100));
        }
        assert!(store.sync());
        faults::set(&messages, Some(Fault::Append { kept: 0 }));
        store.publish(record(4, 100));
        assert!(!store.sync());
        store.ack(1);
        store.delivered(2);
        assert!(!store.sync());
        faults::set(&messages, None);
        wait_until_writable(&store);
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let ids: Vec<(u64, bool)> = recovered.iter().map(|r| (r.id, r.delivered)).collect();
        assert_eq!(ids, vec![(2, true), (3, false)]);
    }

    #[test]
    fn while_failing_a_dead_only_segment_is_deleted_to_free_its_space() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=10 {
            store.publish(record(id, 1000));
        }
        assert!(store.sync());
        faults::set(&messages, Some(Fault::Append { kept: 0 }));
        store.publish(record(11, 1000));
        assert!(!store.sync());
        for id in 1..=10 {
            store.ack(id);
        }
        assert!(!store.sync());
        assert_eq!(segments(&dir), vec![2], "the dead segment 1 is gone");
        faults::set(&messages, None);
        wait_until_writable(&store);
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        assert!(recovered_ids(&dir).is_empty());
    }

    #[test]
    fn confirm_covering_a_dropped_publish_is_a_nack_even_after_recovery() {
        let dir = tempdir();
        let messages = dir.join("messages");
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let outbox = Arc::new(Outbox::new(131_072));
        faults::set(&messages, Some(Fault::Append { kept: 0 }));
        // The publish fails; its confirm only reaches the writer after the disk recovered.
        store.publish(record(1, 100));
        assert!(!store.sync());
        faults::set(&messages, None);
        wait_until_writable(&store);
        store.confirm(Confirm {
            outbox: outbox.clone(),
            channel: 1,
            delivery_tag: 1,
            nack: false,
            unsent: Arc::new(AtomicU64::new(1)),
        });
        assert!(store.sync());
        assert_eq!(confirms(&outbox), vec![(1, false)]);
    }

    /// What `send_confirms` sends for `(channel, delivery tag, ack)`s from one batch, as
    /// `(channel, delivery tag, multiple, ack)`; checks that each channel's count of unsent
    /// confirms comes down to zero.
    fn coalesced(batch: &[(ChannelId, u64, bool)]) -> Vec<(ChannelId, u64, bool, bool)> {
        let outbox = Arc::new(Outbox::new(131_072));
        let unsent: HashMap<ChannelId, Arc<AtomicU64>> = batch
            .iter()
            .map(|&(channel, _, _)| (channel, Arc::new(AtomicU64::new(0))))
            .collect();
        let confirms: Vec<(Confirm, bool)> = batch
            .iter()
            .map(|&(channel, delivery_tag, ack)| {
                unsent[&channel].fetch_add(1, Ordering::Relaxed);
                let confirm = Confirm {
                    outbox: outbox.clone(),
                    channel,
                    delivery_tag,
                    nack: !ack,
                    unsent: unsent[&channel].clone(),
                };
                (confirm, ack)
            })
            .collect();
        send_confirms(confirms.into_iter());
        assert!(unsent.values().all(|n| n.load(Ordering::Relaxed) == 0));
        let mut buf = outbox.take().contiguous();
        let mut sent = Vec::new();
        while let Some(frame) =
            amqp_codec::decode(&mut buf, &amqp_codec::Limits::default()).unwrap()
        {
            match frame {
                Frame::Method(channel, Method::BasicAck(ack)) => {
                    sent.push((channel, ack.delivery_tag, ack.multiple, true))
                }
                Frame::Method(channel, Method::BasicNack(nack)) => {
                    sent.push((channel, nack.delivery_tag, nack.multiple, false))
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        sent.sort_by_key(|&(channel, tag, ..)| (channel, tag));
        sent
    }

    #[test]
    fn consecutive_store_acks_of_a_channel_go_out_as_one_multiple_ack() {
        let batch: Vec<_> = (1..=50).map(|tag| (1, tag, true)).collect();
        assert_eq!(coalesced(&batch), vec![(1, 50, true, true)]);
        assert_eq!(coalesced(&[(1, 7, true)]), vec![(1, 7, false, true)]);
    }

    #[test]
    fn a_store_nack_splits_the_acks_around_it_and_goes_out_alone() {
        let batch = [
            (1, 1, true),
            (1, 2, true),
            (1, 3, false),
            (1, 4, true),
            (1, 5, true),
            (1, 6, true),
        ];
        assert_eq!(
            coalesced(&batch),
            vec![(1, 2, true, true), (1, 3, false, false), (1, 6, true, true)]
        );
    }

    #[test]
    fn store_acks_coalesce_per_channel_and_only_over_consecutive_tags() {
        // Channel 2's tag 3 was confirmed by the connection (a transient publish): 4 does
        // not follow 2, so it is acked alone.
        let batch = [
            (1, 10, true),
            (2, 1, true),
            (1, 11, true),
            (2, 2, true),
            (2, 4, true),
            (1, 12, true),
            (2, 5, false),
        ];
        assert_eq!(
            coalesced(&batch),
            vec![
                (1, 12, true, true),
                (2, 2, true, true),
                (2, 4, false, true),
                (2, 5, false, false)
            ]
        );
    }

    #[test]
    fn definitions_that_could_not_be_saved_are_saved_by_a_retry() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        // A directory where the temporary file goes makes the save fail.
        let blocker = dir.join("definitions.json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let mut snapshot = definitions::VHostDefinitions::default();
        snapshot.queues.push(definitions::QueueDefinition {
            name: "kept".into(),
            auto_delete: false,
            arguments: serde_json::json!({}),
        });
        store.save_definitions("/", snapshot);
        assert!(!dir.join("definitions.json").exists());
        std::fs::remove_dir(&blocker).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("definitions.json").exists() {
            assert!(Instant::now() < deadline, "no retry saved the definitions");
            std::thread::sleep(Duration::from_millis(20));
        }
        let saved = definitions::Definitions::load(&dir).unwrap();
        assert_eq!(saved.vhosts["/"].queues[0].name, "kept");
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
        assert!(store.close_cleanly());
        drop(store);
        let (store, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        let ids: Vec<(u64, bool)> = recovered.iter().map(|r| (r.id, r.delivered)).collect();
        assert_eq!(ids, vec![(1, false), (3, true), (4, false), (5, false)]);
        assert!(store.next_id() > 5, "ids are never reused");
    }

    #[test]
    fn after_a_crash_every_recovered_message_is_flagged_redelivered() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=3 {
            store.publish(record(id, 10));
        }
        // Synced but never closed cleanly: as after kill -9.
        assert!(store.sync());
        drop(store);
        let (store, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert!(
            recovered.iter().all(|r| r.delivered),
            "a delivered mark may have been lost"
        );
        assert!(store.close_cleanly());
        drop(store);
        let (_, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert!(
            recovered.iter().all(|r| r.delivered),
            "marks recovered after the crash stay set"
        );
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
        let ids: Vec<u64> = recovered.iter().map(|r| r.id).collect();
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
        store.publish(record(501, 100));
        assert!(store.sync());
        let left = segments(&dir);
        assert!(
            left.len() <= 2,
            "the first segment was compacted away: {left:?}"
        );
        assert!(!left.contains(&1));
        assert!(store.close_cleanly());
        drop(store);
        let (_, recovered) = open(&dir, 4096);
        let ids: Vec<u64> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(
            ids,
            vec![1, 501],
            "the copy of 1 comes back first: publish order"
        );
        assert_eq!(
            store_after_restart(&dir).page_in(&[1], usize::MAX).records,
            vec![Some(record(1, 100))]
        );
    }

    fn store_after_restart(dir: &Path) -> Arc<Store> {
        open(dir, 4096).0
    }

    /// With 4 KiB segments: messages 1 to 40 fill segment 1, message 41 is in segment 2.
    fn fill_segment_one(store: &Store, dir: &Path) {
        for id in 1..=40 {
            store.publish(record(id, 100));
        }
        assert!(store.sync());
        assert_eq!(segments(dir), vec![1, 2], "segment 1 is full");
        store.publish(record(41, 100));
        assert!(store.sync());
    }

    #[test]
    fn a_segment_still_being_consumed_is_not_compacted() {
        let dir = tempdir();
        let mut options = StoreOptions::new(&*dir);
        options.segment_size = 4096;
        options.compaction_quiet = Duration::from_secs(3600);
        let store = Store::open(options).unwrap();
        fill_segment_one(&store, &dir);
        // Most of segment 1 is consumed: at first sight, it is not copied forward.
        for id in 1..=35 {
            store.ack(id);
        }
        assert!(store.sync());
        assert_eq!(
            segments(&dir),
            vec![1, 2],
            "segment 1 is left to empty by itself"
        );
        for id in 36..=40 {
            store.ack(id);
        }
        assert!(store.sync());
        assert_eq!(segments(&dir), vec![2], "emptied, it is deleted");
    }

    #[test]
    fn a_message_copied_forward_behind_a_newer_one_still_comes_back_in_publish_order() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        fill_segment_one(&store, &dir);
        // Segment 1 now only holds message 1: it is copied forward, behind 41.
        for id in 2..=40 {
            store.ack(id);
        }
        assert!(store.sync());
        assert_eq!(segments(&dir), vec![2]);
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, 4096);
        let ids: Vec<u64> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 41]);
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
        let ids: Vec<u64> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 3], "new records follow the cut, readable");
    }

    #[test]
    fn messages_are_recovered_for_their_queue_as_ids_and_sizes_and_those_no_queue_takes_are_dropped_unread(
    ) {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        for id in 1..=60 {
            store.publish(record(id, 100 + id as usize));
        }
        // A queue deleted without its deletion saved: its messages are orphans.
        for id in 61..=70 {
            let mut orphan = record(id, 10);
            orphan.queue = Bytes::from_static(b"deleted");
            store.publish(orphan);
        }
        store.ack(2);
        store.delivered(3);
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        // No segment may be read while the store opens.
        let held = faults::hold_next_read(&dir.join("messages"));
        let opener = {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || open(&dir, 4096))
        };
        let read_while_opening = loop {
            if held.wait_reached(Duration::from_millis(10)) {
                break true;
            }
            if opener.is_finished() {
                break false;
            }
        };
        held.release();
        let (store, recovered) = opener.join().unwrap();
        assert!(!read_while_opening, "a record was read back");
        let expected: Vec<RecoveredMessage> = (1..=60)
            .filter(|&id| id != 2)
            .map(|id| RecoveredMessage {
                id,
                size: 100 + id as u32,
                delivered: id == 3,
            })
            .collect();
        assert_eq!(recovered, expected);
        assert!(store.take_recovered("/", b"q").is_empty(), "taken once");
        assert!(store.take_recovered("other", b"q").is_empty());
        assert_eq!(store.forget_unclaimed(), 10, "the orphans, dropped by id");
        assert!(store.sync());
        assert!((61..=70).all(|id| !store.on_disk().contains(id)));
        let ids: Vec<u64> = recovered.iter().map(|m| m.id).collect();
        let read = store.page_in(&ids, usize::MAX).records;
        let expected: Vec<_> = ids
            .iter()
            .map(|&id| Some(record(id, 100 + id as usize)))
            .collect();
        assert!(read == expected, "bodies come from the log, as published");
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (store, recovered) = open(&dir, 4096);
        assert_eq!(recovered.len(), 59);
        assert!(
            store.take_recovered("/", b"deleted").is_empty(),
            "gone for good"
        );
        assert_eq!(store.forget_unclaimed(), 0);
    }

    #[test]
    fn messages_no_queue_took_are_dropped_from_the_log_when_forgotten() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=3 {
            store.publish(record(id, 10));
        }
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let store = open_store(&dir, DEFAULT_SEGMENT_SIZE);
        // The broker did not restore queue q.
        assert_eq!(store.forget_unclaimed(), 3);
        assert!(store.take_recovered("/", b"q").is_empty());
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert!(recovered.is_empty(), "gone for good");
    }

    #[test]
    fn after_a_crash_messages_recovered_for_a_queue_are_flagged_delivered() {
        let dir = tempdir();
        let (store, _) = open(&dir, DEFAULT_SEGMENT_SIZE);
        for id in 1..=3 {
            store.publish(record(id, 10));
        }
        assert!(store.sync());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, DEFAULT_SEGMENT_SIZE);
        assert_eq!(recovered.len(), 3);
        assert!(recovered.iter().all(|m| m.delivered));
    }

    #[test]
    fn a_log_recovered_without_bodies_in_memory_is_still_compacted() {
        let dir = tempdir();
        let (store, _) = open(&dir, 4096);
        fill_segment_one(&store, &dir);
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (store, recovered) = open(&dir, 4096);
        assert_eq!(recovered.len(), 41);
        // Only message 1 of segment 1 stays: it is copied forward and segment 1 goes.
        for id in 2..=40 {
            store.ack(id);
        }
        assert!(store.sync());
        assert!(!segments(&dir).contains(&1), "segment 1 was compacted away");
        assert_eq!(
            store.page_in(&[1, 41], usize::MAX).records,
            vec![Some(record(1, 100)), Some(record(41, 100))]
        );
        assert!(store.close_cleanly());
        drop(store);
        std::thread::sleep(Duration::from_millis(50));
        let (_, recovered) = open(&dir, 4096);
        let ids: Vec<u64> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 41]);
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
            ..StoreOptions::new(&*dir)
        })
        .err()
        .expect("refuses to start");
        let text = err.to_string();
        assert!(text.contains("segment-000001.log"), "{text}");
        assert!(text.contains("at offset"), "{text}");
        let store = Store::open(StoreOptions {
            segment_size: 1024,
            skip_corrupt: true,
            ..StoreOptions::new(&*dir)
        })
        .unwrap();
        let recovered = store.take_recovered("/", b"q");
        assert!(
            !recovered.is_empty() && recovered.len() < 40,
            "the rest of the bad segment is skipped"
        );
    }
}
