//! Reading and writing the primitive domains (spec 4.2.5): octets, shorts, longs, longlongs,
//! packed bits, short and long strings, field tables and arrays.
//!
//! [`Reader`] walks a frame payload with nom's *complete* parsers: the whole payload is in hand,
//! so running out of bytes is an error ([`DecodeError::Truncated`]), never "need more". It reads
//! the payload where it lies in the read buffer, and takes the frame out of the buffer as
//! [`Bytes`] only when a field must be a slice of it. The `put_*` functions append to a
//! caller's [`BytesMut`] and return an error for what cannot be encoded.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::number::complete::{
    be_f32, be_f64, be_i16, be_i32, be_i64, be_i8, be_u16, be_u32, be_u64, be_u8,
};
use nom::IResult;

use crate::constants::FRAME_OVERHEAD;
use crate::error::{DecodeError, EncodeError};
use crate::frame::split_payload;
use crate::types::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};

/// Where the payload a [`Reader`] reads lies.
enum Source<'a> {
    /// At the front of the read buffer, whole, after the 7-octet frame header.
    ReadBuffer {
        buf: &'a mut BytesMut,
        payload_len: usize,
    },
    /// In a [`Bytes`] of its own: split off the read buffer, or handed over.
    Payload(Bytes),
}

/// A cursor over one frame payload.
///
/// It starts where the payload lies, in the read buffer, and reads it in place: fixed fields
/// are copied out and short strings of up to [`ShortString::INLINE_CAPACITY`] octets kept
/// inline, so reading takes nothing from the buffer. The first field that must be a slice of
/// the frame (a long string, a table, a longer short string) splits the frame off the read
/// buffer as [`Bytes`] (no copy), and reading goes on from there. Most method and content
/// header frames have no such field, and then no reference to the read buffer is taken, nor
/// released when the frame is dropped.
///
/// A frame read in place leaves the read buffer when the reader is dropped, whether its
/// payload parsed or not, so that the frame can be built as the reader's last act and returned
/// as it is.
pub(crate) struct Reader<'a> {
    source: Source<'a>,
    /// Where the payload starts in the source's octets: after the frame header in the read
    /// buffer, at 0 in a payload of its own.
    start: usize,
    /// The next octet to read, counted from the start of the payload.
    pos: usize,
    /// Where reading stops, counted from the start of the payload: its end, or the end of the
    /// table or array being read.
    end: usize,
    /// What is being parsed, for error messages ("basic.publish", "content header").
    what: &'static str,
    /// How deep field tables may nest.
    max_depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the frame at the front of `buf`: its 7-octet header, `payload_len` octets
    /// of payload and the end octet, all there (the caller has checked).
    pub(crate) fn in_read_buffer(
        buf: &'a mut BytesMut,
        payload_len: usize,
        max_depth: usize,
    ) -> Self {
        Reader {
            source: Source::ReadBuffer { buf, payload_len },
            start: crate::constants::FRAME_HEADER_SIZE,
            pos: 0,
            end: payload_len,
            what: "frame",
            max_depth,
        }
    }

    /// A reader over a payload held as [`Bytes`].
    pub(crate) fn new(payload: Bytes, what: &'static str, max_depth: usize) -> Self {
        let end = payload.len();
        Reader {
            source: Source::Payload(payload),
            start: 0,
            pos: 0,
            end,
            what,
            max_depth,
        }
    }

    /// Names what is being parsed from now on (after the class and method ids are known).
    pub(crate) fn set_context(&mut self, what: &'static str) {
        self.what = what;
    }

    /// Fails unless every byte was consumed: a payload must hold exactly its fields.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.end {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what: self.what,
                left: self.end.saturating_sub(self.pos),
            })
        }
    }

    /// The octets not yet read (up to the end of the table or array being read).
    #[inline]
    fn rest(&self) -> &[u8] {
        let octets: &[u8] = match &self.source {
            Source::ReadBuffer { buf, .. } => buf,
            Source::Payload(payload) => payload,
        };
        octets
            .get(self.start.saturating_add(self.pos)..self.start.saturating_add(self.end))
            .unwrap_or_default()
    }

    /// Runs a parser of a fixed-size field over the rest and moves past what it consumed.
    #[inline]
    fn run<O>(
        &mut self,
        parser: impl FnOnce(&[u8]) -> IResult<&[u8], O>,
    ) -> Result<O, DecodeError> {
        let rest = self.rest();
        let before = rest.len();
        match parser(rest) {
            Ok((left, value)) => {
                self.pos = self.pos.saturating_add(before.saturating_sub(left.len()));
                Ok(value)
            }
            Err(_) => Err(DecodeError::Truncated(self.what)),
        }
    }

    #[inline]
    pub(crate) fn octet(&mut self) -> Result<u8, DecodeError> {
        self.run(|i| be_u8(i))
    }

    #[inline]
    pub(crate) fn short(&mut self) -> Result<u16, DecodeError> {
        self.run(|i| be_u16(i))
    }

    #[inline]
    pub(crate) fn long(&mut self) -> Result<u32, DecodeError> {
        self.run(|i| be_u32(i))
    }

    #[inline]
    pub(crate) fn longlong(&mut self) -> Result<u64, DecodeError> {
        self.run(|i| be_u64(i))
    }

    /// Up to eight consecutive bit fields share one octet, least significant bit first
    /// (spec 4.2.5.2). The generated method code reads the octet once and picks the bits.
    pub(crate) fn bits(&mut self) -> Result<u8, DecodeError> {
        self.octet()
    }

    /// Moves past the next `len` octets and returns where they are in the payload.
    fn skip(&mut self, len: usize) -> Result<Range<usize>, DecodeError> {
        let start = self.pos;
        match start.checked_add(len) {
            Some(end) if end <= self.end => {
                self.pos = end;
                Ok(start..end)
            }
            _ => Err(DecodeError::Truncated(self.what)),
        }
    }

    /// The octets at `range` of the payload, as a slice of the frame: the first time, this
    /// splits the frame off the read buffer if it was read in place.
    fn share(&mut self, range: Range<usize>) -> Bytes {
        let payload = match &mut self.source {
            Source::Payload(payload) => return payload.slice(range),
            Source::ReadBuffer { buf, payload_len } => split_payload(buf, *payload_len),
        };
        let shared = payload.slice(range);
        self.source = Source::Payload(payload);
        self.start = 0;
        shared
    }

    /// A short string: a copy of its octets when they fit inline, else a slice of the frame.
    #[inline]
    pub(crate) fn short_string(&mut self) -> Result<ShortString, DecodeError> {
        let rest = self.rest();
        if let (Some(&len), Some(inline)) = (rest.first(), ShortString::inline_from_wire(rest)) {
            self.pos = self.pos.saturating_add(usize::from(len)).saturating_add(1);
            return Ok(inline);
        }
        self.shared_short_string()
    }

    /// A short string too long to keep inline (or cut short): a slice of the frame.
    #[inline(never)]
    fn shared_short_string(&mut self) -> Result<ShortString, DecodeError> {
        let len = usize::from(self.octet()?);
        let range = self.skip(len)?;
        Ok(ShortString::new(self.share(range)))
    }

    pub(crate) fn long_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(self.what))?;
        let range = self.skip(len)?;
        Ok(self.share(range))
    }

    pub(crate) fn long_string(&mut self) -> Result<LongString, DecodeError> {
        Ok(LongString::new(self.long_bytes()?))
    }

    /// A field table at the top level of a method or header.
    pub(crate) fn table(&mut self) -> Result<FieldTable, DecodeError> {
        self.table_at(0)
    }

    /// Reads the `len`-octet contents of a table or array with `read`, which must stop where
    /// they end, and moves past them.
    fn within<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(self.what))?;
        let contents = self.skip(len)?;
        let (after, outer_end) = (self.pos, self.end);
        self.pos = contents.start;
        self.end = contents.end;
        let value = read(self);
        self.pos = after;
        self.end = outer_end;
        value
    }

    fn table_at(&mut self, depth: usize) -> Result<FieldTable, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TableTooDeep(self.max_depth));
        }
        self.within(|r| {
            let mut table = FieldTable::new();
            while r.pos < r.end {
                let key = r.short_string()?;
                let value = r.field_value(depth)?;
                table.push(key, value);
            }
            Ok(table)
        })
    }

    fn array_at(&mut self, depth: usize) -> Result<FieldArray, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TableTooDeep(self.max_depth));
        }
        self.within(|r| {
            let mut values = Vec::new();
            while r.pos < r.end {
                values.push(r.field_value(depth)?);
            }
            Ok(FieldArray(values))
        })
    }

    /// A type letter and its value; `depth` is the nesting of the table or array holding it.
    #[inline(always)]
    fn field_value(&mut self, depth: usize) -> Result<FieldValue, DecodeError> {
        let nested = depth.saturating_add(1);
        let value = match self.octet()? {
            b't' => FieldValue::Bool(self.octet()? != 0),
            b'b' => FieldValue::I8(self.run(|i| be_i8(i))?),
            b'B' => FieldValue::U8(self.octet()?),
            b's' => FieldValue::I16(self.run(|i| be_i16(i))?),
            b'u' => FieldValue::U16(self.short()?),
            b'I' => FieldValue::I32(self.run(|i| be_i32(i))?),
            b'i' => FieldValue::U32(self.long()?),
            b'l' => FieldValue::I64(self.run(|i| be_i64(i))?),
            b'L' => FieldValue::U64(self.longlong()?),
            b'f' => FieldValue::F32(self.run(|i| be_f32(i))?),
            b'd' => FieldValue::F64(self.run(|i| be_f64(i))?),
            b'D' => FieldValue::Decimal(Decimal {
                scale: self.octet()?,
                value: self.long()?,
            }),
            b'S' => FieldValue::LongString(self.long_string()?),
            b'x' => FieldValue::ByteArray(self.long_bytes()?),
            b'A' => FieldValue::Array(self.array_at(nested)?),
            b'T' => FieldValue::Timestamp(self.longlong()?),
            b'F' => FieldValue::Table(self.table_at(nested)?),
            b'V' => FieldValue::Void,
            other => return Err(DecodeError::UnknownFieldType(char::from(other))),
        };
        Ok(value)
    }
}

impl Drop for Reader<'_> {
    /// A frame still in the read buffer leaves it now: its octets have been read, or were
    /// found malformed (after which the connection closes).
    fn drop(&mut self) {
        if let Source::ReadBuffer { buf, payload_len } = &mut self.source {
            buf.advance(payload_len.saturating_add(FRAME_OVERHEAD));
        }
    }
}

/// Sets bit `index` of a packed-bits octet.
pub(crate) fn bit(octet: u8, index: u32) -> bool {
    octet.checked_shr(index).unwrap_or(0) & 1 == 1
}

/// Packs up to eight bit fields into one octet, the first field in the least significant bit.
pub(crate) fn pack_bits(bits: &[bool]) -> u8 {
    bits.iter().enumerate().fold(0u8, |octet, (index, &set)| {
        if set {
            octet | 1u8.checked_shl(index as u32).unwrap_or(0)
        } else {
            octet
        }
    })
}

pub(crate) fn put_short_string(buf: &mut BytesMut, value: &ShortString) -> Result<(), EncodeError> {
    let len =
        u8::try_from(value.len()).map_err(|_| EncodeError::ShortStringTooLong(value.len()))?;
    buf.put_u8(len);
    buf.put_slice(value.as_bytes());
    Ok(())
}

pub(crate) fn put_long_bytes(
    buf: &mut BytesMut,
    value: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    let len = u32::try_from(value.len()).map_err(|_| EncodeError::TooLong {
        what,
        len: value.len(),
    })?;
    buf.put_u32(len);
    buf.put_slice(value);
    Ok(())
}

pub(crate) fn put_long_string(buf: &mut BytesMut, value: &LongString) -> Result<(), EncodeError> {
    put_long_bytes(buf, value.as_bytes(), "long string")
}

/// Writes a table: a four-octet size, back-patched once the entries are written.
pub(crate) fn put_table(buf: &mut BytesMut, table: &FieldTable) -> Result<(), EncodeError> {
    put_table_at(buf, table, 0)
}

/// Tables and arrays deeper than this are refused when encoding, as when decoding.
pub const MAX_ENCODE_DEPTH: usize = crate::frame::DEFAULT_MAX_TABLE_DEPTH;

fn put_table_at(buf: &mut BytesMut, table: &FieldTable, depth: usize) -> Result<(), EncodeError> {
    if depth >= MAX_ENCODE_DEPTH {
        return Err(EncodeError::TableTooDeep(MAX_ENCODE_DEPTH));
    }
    put_sized(buf, "field table", |buf| {
        for (key, value) in table.iter() {
            put_short_string(buf, key)?;
            put_field_value(buf, value, depth)?;
        }
        Ok(())
    })
}

fn put_array_at(buf: &mut BytesMut, array: &FieldArray, depth: usize) -> Result<(), EncodeError> {
    if depth >= MAX_ENCODE_DEPTH {
        return Err(EncodeError::TableTooDeep(MAX_ENCODE_DEPTH));
    }
    put_sized(buf, "field array", |buf| {
        for value in array.iter() {
            put_field_value(buf, value, depth)?;
        }
        Ok(())
    })
}

/// Reserves a four-octet size, runs `body`, and writes the number of octets it appended.
fn put_sized(
    buf: &mut BytesMut,
    what: &'static str,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let size_at = buf.len();
    buf.put_u32(0);
    body(buf)?;
    let len = buf.len().saturating_sub(size_at).saturating_sub(4);
    let size = u32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    if let Some(slot) = buf.get_mut(size_at..size_at.saturating_add(4)) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    Ok(())
}

fn put_field_value(
    buf: &mut BytesMut,
    value: &FieldValue,
    depth: usize,
) -> Result<(), EncodeError> {
    let nested = depth.saturating_add(1);
    buf.put_u8(value.type_letter());
    match value {
        FieldValue::Bool(v) => buf.put_u8(u8::from(*v)),
        FieldValue::I8(v) => buf.put_i8(*v),
        FieldValue::U8(v) => buf.put_u8(*v),
        FieldValue::I16(v) => buf.put_i16(*v),
        FieldValue::U16(v) => buf.put_u16(*v),
        FieldValue::I32(v) => buf.put_i32(*v),
        FieldValue::U32(v) => buf.put_u32(*v),
        FieldValue::I64(v) => buf.put_i64(*v),
        FieldValue::U64(v) => buf.put_u64(*v),
        FieldValue::F32(v) => buf.put_f32(*v),
        FieldValue::F64(v) => buf.put_f64(*v),
        FieldValue::Decimal(v) => {
            buf.put_u8(v.scale);
            buf.put_u32(v.value);
        }
        FieldValue::LongString(v) => put_long_string(buf, v)?,
        FieldValue::ByteArray(v) => put_long_bytes(buf, v, "byte array")?,
        FieldValue::Array(v) => put_array_at(buf, v, nested)?,
        FieldValue::Timestamp(v) => buf.put_u64(*v),
        FieldValue::Table(v) => put_table_at(buf, v, nested)?,
        FieldValue::Void => {}
    }
    Ok(())
}

/// Encoded size of a short string: length octet plus octets.
pub(crate) fn short_string_len(value: &ShortString) -> usize {
    value.len().saturating_add(1)
}

/// Encoded size of a long string: four-octet length plus octets.
pub(crate) fn long_string_len(value: &LongString) -> usize {
    value.len().saturating_add(4)
}

/// Encoded size of a field table, its four-octet size included.
pub(crate) fn table_len(table: &FieldTable) -> usize {
    table.iter().fold(4usize, |sum, (key, value)| {
        sum.saturating_add(short_string_len(key))
            .saturating_add(field_value_len(value))
    })
}

fn field_value_len(value: &FieldValue) -> usize {
    let payload = match value {
        FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
        FieldValue::I16(_) | FieldValue::U16(_) => 2,
        FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
        FieldValue::I64(_) | FieldValue::U64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => {
            8
        }
        FieldValue::Decimal(_) => 5,
        FieldValue::LongString(v) => long_string_len(v),
        FieldValue::ByteArray(v) => v.len().saturating_add(4),
        FieldValue::Array(v) => v.iter().fold(4usize, |sum, value| {
            sum.saturating_add(field_value_len(value))
        }),
        FieldValue::Table(v) => table_len(v),
        FieldValue::Void => 0,
    };
    payload.saturating_add(1)
}
