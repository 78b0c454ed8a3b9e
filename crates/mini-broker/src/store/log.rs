//! The message log: append-only segment files of checksummed records.
//!
//! ```text
//! record  := size:u32  crc32:u32  kind:u8  payload      (big-endian; crc32 of kind+payload)
//! publish := id:u64  flags:u8  vhost  queue  exchange  routing_key  header  body
//!            (strings: u8 length + octets; header and body: u32 length + octets;
//!             header is the message's content header frame, as it goes on the wire)
//! ack     := id:u64            the message left its queue (acked, dropped, purged, deleted)
//! deliver := id:u64            the message was delivered once (it comes back redelivered)
//! ```
//!
//! A record is whole or it is not there: after a crash, a torn record at the end of the last
//! segment is detected by its size or checksum and cut off. The same damage in the middle of
//! the log is corruption and is reported with the file and offset.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A persistent message entered a durable queue.
    Publish(PublishRecord),
    /// A message left its queue for good.
    Ack(u64),
    /// A message was delivered (it is redelivered after a restart).
    Delivered(u64),
}

/// A persistent message in a durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRecord {
    /// The store's id for this queue's copy of the message.
    pub id: u64,
    /// Whether it had been delivered (set when compaction copies a record forward).
    pub delivered: bool,
    /// The vhost of the queue.
    pub vhost: Bytes,
    /// The queue.
    pub queue: Bytes,
    /// The exchange it was published to.
    pub exchange: Bytes,
    /// Its routing key.
    pub routing_key: Bytes,
    /// Its content header frame, encoded.
    pub header: Bytes,
    /// Its body.
    pub body: Bytes,
}

const KIND_PUBLISH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DELIVERED: u8 = 3;

/// Largest record accepted when reading: a bigger size field is damage, not a record.
const MAX_RECORD: u32 = 512 * 1024 * 1024;

impl Record {
    /// Appends the record, framed and checksummed, to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u32(0);
        match self {
            Record::Publish(p) => {
                buf.put_u8(KIND_PUBLISH);
                buf.put_u64(p.id);
                buf.put_u8(u8::from(p.delivered));
                for short in [&p.vhost, &p.queue, &p.exchange, &p.routing_key] {
                    buf.put_u8(short.len().min(255) as u8);
                    buf.put_slice(&short[..short.len().min(255)]);
                }
                for long in [&p.header, &p.body] {
                    buf.put_u32(long.len() as u32);
                    buf.put_slice(long);
                }
            }
            Record::Ack(id) => {
                buf.put_u8(KIND_ACK);
                buf.put_u64(*id);
            }
            Record::Delivered(id) => {
                buf.put_u8(KIND_DELIVERED);
                buf.put_u64(*id);
            }
        }
        let body = &buf[start + 8..];
        let size = body.len() as u32;
        let crc = crc32fast::hash(body);
        buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }

    /// The octets [`Record::encode`] appends for this record, framing included.
    pub fn encoded_len(&self) -> usize {
        let payload = match self {
            Record::Publish(p) => {
                let short = |b: &Bytes| 1 + b.len().min(255);
                8 + 1
                    + short(&p.vhost)
                    + short(&p.queue)
                    + short(&p.exchange)
                    + short(&p.routing_key)
                    + 4
                    + p.header.len()
                    + 4
                    + p.body.len()
            }
            Record::Ack(_) | Record::Delivered(_) => 8,
        };
        8 + 1 + payload
    }

    /// Parses a record's kind and payload (checksum already verified), its strings and
    /// octets sharing `kind_and_payload`'s memory.
    fn decode(kind_and_payload: Bytes) -> Option<Record> {
        Some(
            RecordView::parse(&kind_and_payload)?
                .to_record(|part| kind_and_payload.slice_ref(part)),
        )
    }
}

/// A record as it lies in a read buffer: parsed, nothing copied. Recovery reads what it
/// needs of a publish (its id, queue and body size) without copying the body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordView<'a> {
    /// A publish record's fields.
    Publish(PublishView<'a>),
    /// An ack record's id.
    Ack(u64),
    /// A delivered record's id.
    Delivered(u64),
}

/// A publish record's fields, in the read buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishView<'a> {
    /// See [`PublishRecord::id`].
    pub id: u64,
    /// See [`PublishRecord::delivered`].
    pub delivered: bool,
    /// See [`PublishRecord::vhost`].
    pub vhost: &'a [u8],
    /// See [`PublishRecord::queue`].
    pub queue: &'a [u8],
    /// See [`PublishRecord::exchange`].
    pub exchange: &'a [u8],
    /// See [`PublishRecord::routing_key`].
    pub routing_key: &'a [u8],
    /// See [`PublishRecord::header`].
    pub header: &'a [u8],
    /// See [`PublishRecord::body`].
    pub body: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Parses a record's kind and payload (checksum already verified); None if they are not
    /// a record, octet for octet.
    fn parse(kind_and_payload: &'a [u8]) -> Option<RecordView<'a>> {
        let mut r = Cursor(kind_and_payload);
        let view = match r.u8()? {
            KIND_PUBLISH => RecordView::Publish(PublishView {
                id: r.u64()?,
                delivered: r.u8()? != 0,
                vhost: r.short()?,
                queue: r.short()?,
                exchange: r.short()?,
                routing_key: r.short()?,
                header: r.long()?,
                body: r.long()?,
            }),
            KIND_ACK => RecordView::Ack(r.u64()?),
            KIND_DELIVERED => RecordView::Delivered(r.u64()?),
            _ => return None,
        };
        r.0.is_empty().then_some(view)
    }

    /// The record, its strings and octets made [`Bytes`] by `bytes`.
    fn to_record(self, bytes: impl Fn(&[u8]) -> Bytes) -> Record {
        match self {
            RecordView::Publish(p) => Record::Publish(PublishRecord {
                id: p.id,
                delivered: p.delivered,
                vhost: bytes(p.vhost),
                queue: bytes(p.queue),
                exchange: bytes(p.exchange),
                routing_key: bytes(p.routing_key),
                header: bytes(p.header),
                body: bytes(p.body),
            }),
            RecordView::Ack(id) => Record::Ack(id),
            RecordView::Delivered(id) => Record::Delivered(id),
        }
    }

    /// The record, copied out of the read buffer.
    pub fn to_owned_record(self) -> Record {
        self.to_record(Bytes::copy_from_slice)
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn short(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }
    fn long(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(usize::try_from(len).ok()?)
    }
}

/// A segment file's path: `<dir>/segment-000042.log`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("segment-{number:06}.log"))
}

/// The segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(number) = name
            .strip_prefix("segment-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Why a segment could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The byte offset of the first bad record.
    pub offset: u64,
    /// What is wrong there.
    pub what: String,
}

/// What a segment holds: its valid records with their offsets, and the damage that stopped
/// the reading, if any.
pub type SegmentContents = (Vec<(u64, Record)>, Option<Damage>);

/// Reads every whole, valid record of a segment, in order, with its offset. Stops at the
/// first damaged record and reports where. (All of it in memory: for small segments and
/// tests; recovery and compaction go through a [`SegmentReader`].)
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut reader = SegmentReader::open(path)?;
    let mut records = Vec::new();
    loop {
        match reader.next_record()? {
            Next::Record { offset, record, .. } => records.push((offset, record.to_owned_record())),
            Next::Damaged(damage) => return Ok((records, Some(damage))),
            Next::End => return Ok((records, None)),
        }
    }
}

/// How much of a segment a [`SegmentReader`] reads at a time.
pub const READ_CHUNK: usize = 1024 * 1024;

/// Reads a segment's records one after the other, a chunk of the file at a time: memory
/// holds one chunk (or one record, if it is larger), however large the segment is.
///
/// Each record is checked as it is read: a plausible size, the whole record there, its
/// checksum, a payload that parses. The first that fails is the segment's [`Damage`], and
/// reading stops there.
pub struct SegmentReader {
    file: File,
    /// The file's length when opened.
    len: u64,
    /// The file offset of `buf[start]`.
    offset: u64,
    /// Read from the file, not yet handed out: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    chunk: usize,
    /// Damage was found: nothing more is read.
    stopped: bool,
}

/// What a [`SegmentReader`] found next.
#[derive(Debug, PartialEq)]
pub enum Next<'a> {
    /// A whole, valid record.
    Record {
        /// Its first octet in the segment.
        offset: u64,
        /// Its octets, framing included.
        len: usize,
        /// What it says.
        record: RecordView<'a>,
    },
    /// The record at [`Damage::offset`] is not whole or not valid: reading stops.
    Damaged(Damage),
    /// The end of the segment, after a whole record.
    End,
}

impl SegmentReader {
    /// A reader of the segment at `path`, [`READ_CHUNK`] octets at a time.
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        SegmentReader::with_chunk(path, READ_CHUNK)
    }

    /// A reader of the segment at `path`, `chunk` octets at a time.
    pub fn with_chunk(path: &Path, chunk: usize) -> io::Result<SegmentReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SegmentReader {
            file,
            len,
            offset: 0,
            buf: Vec::new(),
            start: 0,
            end: 0,
            chunk: chunk.max(8),
            stopped: false,
        })
    }

    /// The next record, the damage that ends the segment early, or its end.
    pub fn next_record(&mut self) -> io::Result<Next<'_>> {
        if self.stopped || self.offset == self.len {
            return Ok(Next::End);
        }
        let offset = self.offset;
        let left = self.len - offset;
        if left < 8 {
            return Ok(self.damaged("a record header cut short".to_owned()));
        }
        self.fill(8)?;
        let head = self.buf.get(self.start..self.start + 8).unwrap_or_default();
        let &[s0, s1, s2, s3, c0, c1, c2, c3] = head else {
            return Ok(self.damaged("a record header cut short".to_owned()));
        };
        let size = u32::from_be_bytes([s0, s1, s2, s3]);
        let crc = u32::from_be_bytes([c0, c1, c2, c3]);
        if size == 0 || size > MAX_RECORD {
            return Ok(self.damaged(format!("an impossible record size {size}")));
        }
        if u64::from(size) > left - 8 {
            return Ok(self.damaged("a record cut short".to_owned()));
        }
        let whole = 8 + size as usize;
        self.fill(whole)?;
        let Some(body) = self.buf.get(self.start + 8..self.start + whole) else {
            return Ok(self.damaged("a record cut short".to_owned()));
        };
        if crc32fast::hash(body) != crc {
            return Ok(self.damaged("a checksum mismatch".to_owned()));
        }
        let at = self.start + 8;
        // Parsed once, borrowing only the buffer, so the position can move on past it.
        let Some(record) = self
            .buf
            .get(at..at + size as usize)
            .and_then(RecordView::parse)
        else {
            // As `damaged`, field by field: the buffer is still borrowed here.
            self.stopped = true;
            return Ok(Next::Damaged(Damage {
                offset,
                what: "an unreadable record".to_owned(),
            }));
        };
        self.start += whole;
        self.offset += whole as u64;
        Ok(Next::Record {
            offset,
            len: whole,
            record,
        })
    }

    fn damaged(&mut self, what: String) -> Next<'static> {
        self.stopped = true;
        Next::Damaged(Damage {
            offset: self.offset,
            what,
        })
    }

    /// Makes `buf[start..]` hold at least `wanted` octets (the caller checked that the file
    /// has them), reading a chunk or more from the file.
    fn fill(&mut self, wanted: usize) -> io::Result<()> {
        if self.end - self.start >= wanted {
            return Ok(());
        }
        // Move what is left to the front; a record larger than the chunk gets a buffer of
        // its own size, given back once the reading is past it.
        let capacity = wanted.max(self.chunk);
        if self.buf.len() != capacity && (self.buf.len() < capacity || capacity == self.chunk) {
            let mut buf = vec![0u8; capacity];
            let kept = self.end - self.start;
            buf[..kept].copy_from_slice(&self.buf[self.start..self.end]);
            self.buf = buf;
            self.end = kept;
        } else {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
        }
        self.start = 0;
        let unread = self.len - self.offset - self.end as u64;
        let room = self.buf.len() - self.end;
        let read = usize::try_from(unread).map_or(room, |unread| unread.min(room));
        self.file
            .read_exact(&mut self.buf[self.end..self.end + read])?;
        self.end += read;
        Ok(())
    }
}

/// The record at the start of `bytes` (a slice of a segment read back), checked as
/// [`read_segment`] checks it: a plausible size, the whole record there, its checksum. None
/// if it is damaged.
pub fn decode_record(bytes: &Bytes) -> Option<Record> {
    let &[s0, s1, s2, s3, c0, c1, c2, c3] = bytes.first_chunk::<8>()?;
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    let crc = u32::from_be_bytes([c0, c1, c2, c3]);
    if size == 0 || size > MAX_RECORD {
        return None;
    }
    let body = bytes.get(8..8 + size as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Record::decode(bytes.slice(8..8 + size as usize))
}

/// The segment being appended to.
///
/// Its file always holds whole records only: an append that fails part way (a full disk) is
/// cut back off, so that later appends never follow a torn record. If even the cut fails,
/// the segment refuses appends until [`ActiveSegment::repair`] manages it.
pub struct ActiveSegment {
    /// Its number.
    pub number: u64,
    file: File,
    /// Its size so far: the end of its last whole record.
    pub len: u64,
    /// Bytes past `len` may be on file (a failed append could not be cut back).
    broken: bool,
    #[cfg(test)]
    dir: PathBuf,
}

impl ActiveSegment {
    /// Opens (or creates) segment `number` for appending, cutting it to `valid_len` bytes
    /// (the end of its last whole record). The directory is synced too, so that what is
    /// later synced in a new file cannot be lost with its directory entry in a power cut.
    pub fn open(dir: &Path, number: u64, valid_len: Option<u64>) -> io::Result<ActiveSegment> {
        let path = segment_path(dir, number);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        sync_dir(dir)?;
        let len = match valid_len {
            Some(valid) => {
                file.set_len(valid)?;
                file.sync_all()?;
                valid
            }
            None => file.metadata()?.len(),
        };
        file.seek(SeekFrom::Start(len))?;
        Ok(ActiveSegment {
            number,
            file,
            len,
            broken: false,
            #[cfg(test)]
            dir: dir.to_owned(),
        })
    }

    /// Appends encoded records. On failure nothing of them stays in the file (or the
    /// segment is marked broken and the next append first retries the cut).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            self.repair()?;
        }
        match self.write(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Left broken if even the cut fails.
                let _ = self.truncate(self.len);
                Err(err)
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(kept) = faults::append_fails(&self.dir) {
            // A full disk: part of the write lands, then ENOSPC.
            self.file.write_all(&bytes[..kept.min(bytes.len())])?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.file.write_all(bytes)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if faults::sync_fails(&self.dir) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.file.sync_data()
    }

    /// Cuts the file back to `len` bytes (the end of a whole record) and makes the cut
    /// durable; appends continue there. If that fails, the segment is broken and the next
    /// append or [`ActiveSegment::repair`] retries the cut to `len`.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.len = len;
        self.broken = true;
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len))?;
        self.file.sync_all()?;
        self.broken = false;
        Ok(())
    }

    /// Retries cutting off what a failed append left behind, if anything.
    pub fn repair(&mut self) -> io::Result<()> {
        if self.broken {
            self.truncate(self.len)?;
        }
        Ok(())
    }
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Test-only fault injection: makes a directory's segment appends or syncs fail, as a full
/// disk or a failing device would, or holds up a read.
#[cfg(test)]
pub(crate) mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Fault {
        /// Appends write this many bytes, then fail with ENOSPC.
        Append { kept: usize },
        /// Syncs fail with EIO.
        Sync,
        /// Reads of messages paged out fail with EIO.
        Read,
    }

    static FAULTS: Mutex<Vec<(PathBuf, Fault)>> = Mutex::new(Vec::new());

    /// Makes the segments under `dir` fail (None: work again).
    pub(crate) fn set(dir: &Path, fault: Option<Fault>) {
        let mut faults = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        faults.retain(|(d, _)| d != dir);
        if let Some(fault) = fault {
            faults.push((dir.to_owned(), fault));
        }
    }

    fn find(dir: &Path) -> Option<Fault> {
        let faults = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        faults.iter().find(|(d, _)| d == dir).map(|(_, f)| *f)
    }

    pub(crate) fn append_fails(dir: &Path) -> Option<usize> {
        match find(dir) {
            Some(Fault::Append { kept }) => Some(kept),
            _ => None,
        }
    }

    pub(crate) fn sync_fails(dir: &Path) -> bool {
        matches!(find(dir), Some(Fault::Sync))
    }

    /// `dir` being the segments' directory (`messages`) or the store's, above it.
    pub(crate) fn read_fails(dir: &Path) -> bool {
        [Some(dir), dir.parent()]
            .into_iter()
            .flatten()
            .any(|dir| matches!(find(dir), Some(Fault::Read)))
    }

    /// A read of a directory's segments held up until let go, as a slow disk would hold it.
    #[derive(Default)]
    pub(crate) struct HeldRead {
        /// (the read reached the disk, it was let go).
        state: Mutex<(bool, bool)>,
        changed: Condvar,
    }

    impl HeldRead {
        /// Waits until the read reached the disk; false if it did not within `timeout`.
        pub(crate) fn wait_reached(&self, timeout: Duration) -> bool {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (state, _) = self
                .changed
                .wait_timeout_while(state, timeout, |(reached, _)| !*reached)
                .unwrap_or_else(|e| e.into_inner());
            state.0
        }

        /// Lets the read go on.
        pub(crate) fn release(&self) {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
            self.changed.notify_all();
        }
    }

    static HELD: Mutex<Vec<(PathBuf, Arc<HeldRead>)>> = Mutex::new(Vec::new());

    /// Holds up the next read of the segments under `dir` until [`HeldRead::release`].
    pub(crate) fn hold_next_read(dir: &Path) -> Arc<HeldRead> {
        let held = Arc::new(HeldRead::default());
        let mut all = HELD.lock().unwrap_or_else(|e| e.into_inner());
        all.push((dir.to_owned(), held.clone()));
        held
    }

    /// Called by a read of the segments under `dir` before it reads: waits if it is held.
    pub(crate) fn before_read(dir: &Path) {
        let held = {
            let mut all = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let at = all.iter().position(|(d, _)| d == dir);
            at.map(|at| all.remove(at).1)
        };
        if let Some(held) = held {
            let mut state = held.state.lock().unwrap_or_else(|e| e.into_inner());
            state.0 = true;
            held.changed.notify_all();
            while !state.1 {
                state = held.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(id: u64) -> Record {
        Record::Publish(PublishRecord {
            id,
            delivered: false,
            vhost: Bytes::from_static(b"/"),
            queue: Bytes::from_static(b"task_queue"),
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"task_queue"),
            header: Bytes::from_static(b"\x02\x00\x01"),
            body: Bytes::from(vec![7u8; 100]),
        })
    }

    fn write(dir: &Path, records: &[Record]) -> PathBuf {
        let mut buf = BytesMut::new();
        for record in records {
            record.encode(&mut buf);
        }
        let path = segment_path(dir, 1);
        std::fs::write(&path, &buf).unwrap();
        path
    }

    #[test]
    fn records_round_trip_through_a_segment() {
        let dir = tempdir();
        let records = vec![publish(1), Record::Delivered(1), Record::Ack(1), publish(2)];
        let path = write(&dir, &records);
        let (read, damage) = read_segment(&path).unwrap();
        assert_eq!(damage, None);
        assert_eq!(
            read.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            records
        );
    }

    #[test]
    fn a_record_read_back_from_its_offset_decodes_and_its_length_is_known() {
        let records = [publish(7), Record::Ack(7), Record::Delivered(9)];
        let mut buf = BytesMut::new();
        let mut offsets = Vec::new();
        for record in &records {
            offsets.push(buf.len());
            record.encode(&mut buf);
            assert_eq!(buf.len() - offsets.last().unwrap(), record.encoded_len());
        }
        let bytes = buf.freeze();
        for (record, offset) in records.iter().zip(offsets) {
            assert_eq!(decode_record(&bytes.slice(offset..)).as_ref(), Some(record));
        }
        let mut damaged = bytes.to_vec();
        damaged[20] ^= 1;
        assert_eq!(decode_record(&Bytes::from(damaged)), None);
        assert_eq!(decode_record(&bytes.slice(..10)), None, "cut short");
    }

    #[test]
    fn torn_tail_is_reported_at_the_start_of_the_torn_record() {
        let dir = tempdir();
        let path = write(&dir, &[publish(1), publish(2)]);
        let full = std::fs::read(&path).unwrap();
        let first_len = full.len() / 2;
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let (read, damage) = read_segment(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(damage.unwrap().offset, first_len as u64);
    }

    #[test]
    fn flipped_bit_is_a_checksum_mismatch() {
        let dir = tempdir();
        let path = write(&dir, &[publish(1), publish(2)]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (read, damage) = read_segment(&path).unwrap();
        assert!(read.is_empty());
        let damage = damage.unwrap();
        assert_eq!(damage.offset, 0);
        assert_eq!(damage.what, "a checksum mismatch");
    }

    #[test]
    fn impossible_size_is_damage_not_an_allocation() {
        let dir = tempdir();
        let path = segment_path(&dir, 1);
        std::fs::write(&path, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1]).unwrap();
        let (_, damage) = read_segment(&path).unwrap();
        assert!(damage.unwrap().what.contains("impossible record size"));
    }

    /// Everything a reader reading `chunk` octets at a time finds in a segment: the records
    /// (with offsets and lengths) and the damage that stopped it.
    fn read_in_chunks(path: &Path, chunk: usize) -> (Vec<(u64, usize, Record)>, Option<Damage>) {
        let mut reader = SegmentReader::with_chunk(path, chunk).unwrap();
        let mut records = Vec::new();
        loop {
            match reader.next_record().unwrap() {
                Next::Record {
                    offset,
                    len,
                    record,
                } => records.push((offset, len, record.to_owned_record())),
                Next::Damaged(damage) => {
                    assert_eq!(reader.next_record().unwrap(), Next::End, "reading stops");
                    return (records, Some(damage));
                }
                Next::End => return (records, None),
            }
        }
    }

    /// Publishes of growing body sizes (some larger than the chunk) with acks between them.
    fn mixed_records() -> Vec<Record> {
        let mut records = Vec::new();
        for (id, size) in [0usize, 1, 37, 100, 250, 1000, 3, 4096, 64]
            .iter()
            .enumerate()
        {
            let id = id as u64 + 1;
            records.push(Record::Publish(PublishRecord {
                id,
                delivered: id % 2 == 0,
                vhost: Bytes::from_static(b"/"),
                queue: Bytes::from(format!("queue-{id}")),
                exchange: Bytes::from_static(b"amq.direct"),
                routing_key: Bytes::from(format!("key-{id}")),
                header: Bytes::from(vec![id as u8; 20]),
                body: Bytes::from(vec![id as u8; *size]),
            }));
            records.push(Record::Ack(id));
            records.push(Record::Delivered(id + 100));
        }
        records
    }

    #[test]
    fn streaming_reader_finds_records_that_span_its_chunks_whatever_the_chunk_size() {
        let dir = tempdir();
        let records = mixed_records();
        let path = write(&dir, &records);
        let (whole, _) = read_segment(&path).unwrap();
        // 8 octets: not even one whole record header; 64 and 100: publishes span chunks and
        // most are larger than one; 1 MiB: all in one chunk.
        for chunk in [8, 13, 64, 100, 333, READ_CHUNK] {
            let (read, damage) = read_in_chunks(&path, chunk);
            assert_eq!(damage, None, "chunk {chunk}");
            let found: Vec<Record> = read.iter().map(|(_, _, r)| r.clone()).collect();
            assert_eq!(found, records, "chunk {chunk}");
            let offsets: Vec<u64> = read.iter().map(|(offset, _, _)| *offset).collect();
            let expected: Vec<u64> = whole.iter().map(|(offset, _)| *offset).collect();
            assert_eq!(offsets, expected, "chunk {chunk}");
            for (offset, len, record) in &read {
                assert_eq!(*len, record.encoded_len(), "chunk {chunk} at {offset}");
            }
        }
    }

    #[test]
    fn streaming_reader_reports_a_torn_tail_at_the_start_of_the_torn_record() {
        let dir = tempdir();
        let records = mixed_records();
        let path = write(&dir, &records);
        let full = std::fs::read(&path).unwrap();
        let last_len = records.last().unwrap().encoded_len();
        // Cut inside the last record's header, and inside its payload.
        for cut in [3, last_len - 2] {
            std::fs::write(&path, &full[..full.len() - last_len + cut]).unwrap();
            for chunk in [16, 64, READ_CHUNK] {
                let (read, damage) = read_in_chunks(&path, chunk);
                assert_eq!(read.len(), records.len() - 1, "cut {cut}, chunk {chunk}");
                let damage = damage.unwrap();
                assert_eq!(damage.offset, (full.len() - last_len) as u64);
                assert!(damage.what.contains("cut short"), "{damage:?}");
            }
        }
    }

    #[test]
    fn streaming_reader_stops_at_a_checksum_failure_in_the_middle_and_says_where() {
        let dir = tempdir();
        let records = mixed_records();
        let path = write(&dir, &records);
        let (whole, _) = read_segment(&path).unwrap();
        // Damage the body of the 4096-octet publish (record 21), well inside it.
        let (offset, _) = whole[21];
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize + 2000] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        for chunk in [16, 100, 1000, READ_CHUNK] {
            let (read, damage) = read_in_chunks(&path, chunk);
            assert_eq!(read.len(), 21, "the records before it, chunk {chunk}");
            assert_eq!(
                damage,
                Some(Damage {
                    offset,
                    what: "a checksum mismatch".to_owned()
                }),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_record_view_parses_what_was_encoded_and_nothing_longer_or_shorter() {
        for record in mixed_records() {
            let mut buf = BytesMut::new();
            record.encode(&mut buf);
            let payload = &buf[8..];
            assert_eq!(
                RecordView::parse(payload).map(RecordView::to_owned_record),
                Some(record.clone())
            );
            assert_eq!(RecordView::parse(&payload[..payload.len() - 1]), None);
            let mut longer = payload.to_vec();
            longer.push(0);
            assert_eq!(RecordView::parse(&longer), None);
        }
    }

    fn tempdir() -> tests_support::TempDir {
        tests_support::tempdir()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use bytes::Bytes;
    use std::path::{Path, PathBuf};

    /// A fresh, empty directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The publish record of message `id` to queue q of vhost / (through the default
    /// exchange).
    pub(crate) fn record_for_q(id: u64, header: Bytes, body: Bytes) -> super::PublishRecord {
        super::PublishRecord {
            id,
            delivered: false,
            vhost: Bytes::from_static(b"/"),
            queue: Bytes::from_static(b"q"),
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            header,
            body,
        }
    }

    pub(crate) fn tempdir() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "mini-broker-store-{}-{}",
            std::process::id(),
            crate::broker::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
