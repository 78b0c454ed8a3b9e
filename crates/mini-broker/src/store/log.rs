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
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
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

    /// Parses a record's kind and payload (checksum already verified).
    fn decode(kind_and_payload: Bytes) -> Option<Record> {
        let mut r = Cursor(kind_and_payload);
        match r.u8()? {
            KIND_PUBLISH => {
                let id = r.u64()?;
                let delivered = r.u8()? != 0;
                let vhost = r.short()?;
                let queue = r.short()?;
                let exchange = r.short()?;
                let routing_key = r.short()?;
                let header = r.long()?;
                let body = r.long()?;
                r.0.is_empty().then_some(Record::Publish(PublishRecord {
                    id,
                    delivered,
                    vhost,
                    queue,
                    exchange,
                    routing_key,
                    header,
                    body,
                }))
            }
            KIND_ACK => {
                let id = r.u64()?;
                r.0.is_empty().then_some(Record::Ack(id))
            }
            KIND_DELIVERED => {
                let id = r.u64()?;
                r.0.is_empty().then_some(Record::Delivered(id))
            }
            _ => None,
        }
    }
}

struct Cursor(Bytes);

impl Cursor {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        (self.0.len() >= n).then(|| self.0.split_to(n))
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b[..].try_into().unwrap_or([0; 8])))
    }
    fn short(&mut self) -> Option<Bytes> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }
    fn long(&mut self) -> Option<Bytes> {
        let len = self.u32()?;
        self.take(len as usize)
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
/// first damaged record and reports where.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let damage = |offset: u64, what: &str| Damage {
        offset,
        what: what.to_owned(),
    };
    loop {
        if offset == len {
            return Ok((records, None));
        }
        let mut head = [0u8; 8];
        if len - offset < 8 {
            return Ok((records, Some(damage(offset, "a record header cut short"))));
        }
        reader.read_exact(&mut head)?;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if size == 0 || size > MAX_RECORD {
            return Ok((
                records,
                Some(damage(offset, &format!("an impossible record size {size}"))),
            ));
        }
        if u64::from(size) > len - offset - 8 {
            return Ok((records, Some(damage(offset, "a record cut short"))));
        }
        let mut body = vec![0u8; size as usize];
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Ok((records, Some(damage(offset, "a checksum mismatch"))));
        }
        match Record::decode(Bytes::from(body)) {
            Some(record) => records.push((offset, record)),
            None => return Ok((records, Some(damage(offset, "an unreadable record")))),
        }
        offset += 8 + u64::from(size);
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
/// disk or a failing device would.
#[cfg(test)]
pub(crate) mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Fault {
        /// Appends write this many bytes, then fail with ENOSPC.
        Append { kept: usize },
        /// Syncs fail with EIO.
        Sync,
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

    fn tempdir() -> tests_support::TempDir {
        tests_support::tempdir()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
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
