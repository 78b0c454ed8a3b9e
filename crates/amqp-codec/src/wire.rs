//! Reading and writing the primitive domains (spec 4.2.5): octets, shorts, longs, longlongs,
//! packed bits, short and long strings, field tables and arrays.
//!
//! [`Reader`] walks a frame payload with nom's *complete* parsers: the whole payload is in hand,
//! so running out of bytes is an error ([`DecodeError::Truncated`]), never "need more". Strings
//! are sliced out of the frame's [`Bytes`] without a copy. The `put_*` functions append to a
//! caller's [`BytesMut`] and return an error for what cannot be encoded.

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{
    be_f32, be_f64, be_i16, be_i32, be_i64, be_i8, be_u16, be_u32, be_u64, be_u8,
};
use nom::IResult;

use crate::error::{DecodeError, EncodeError};
use crate::types::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};

/// A cursor over one frame payload.
pub(crate) struct Reader<'a> {
    /// The buffer `input` borrows from, so strings can be sliced out of it without a copy.
    frame: &'a Bytes,
    /// What is left to read.
    input: &'a [u8],
    /// What is being parsed, for error messages ("basic.publish", "content header").
    what: &'static str,
    /// How deep field tables may nest.
    max_depth: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(frame: &'a Bytes, what: &'static str, max_depth: usize) -> Self {
        Reader {
            frame,
            input: frame.as_ref(),
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
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what: self.what,
                left: self.input.len(),
            })
        }
    }

    fn run<O>(
        &mut self,
        mut parser: impl FnMut(&'a [u8]) -> IResult<&'a [u8], O>,
    ) -> Result<O, DecodeError> {
        match parser(self.input) {
            Ok((rest, value)) => {
                self.input = rest;
                Ok(value)
            }
            Err(_) => Err(DecodeError::Truncated(self.what)),
        }
    }

    pub(crate) fn octet(&mut self) -> Result<u8, DecodeError> {
        self.run(be_u8)
    }

    pub(crate) fn short(&mut self) -> Result<u16, DecodeError> {
        self.run(be_u16)
    }

    pub(crate) fn long(&mut self) -> Result<u32, DecodeError> {
        self.run(be_u32)
    }

    pub(crate) fn longlong(&mut self) -> Result<u64, DecodeError> {
        self.run(be_u64)
    }

    /// Up to eight consecutive bit fields share one octet, least significant bit first
    /// (spec 4.2.5.2). The generated method code reads the octet once and picks the bits.
    pub(crate) fn bits(&mut self) -> Result<u8, DecodeError> {
        self.octet()
    }

    /// `len` octets as a slice of the frame buffer.
    fn slice(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let taken: &'a [u8] = self.run(take(len))?;
        Ok(self.frame.slice_ref(taken))
    }

    pub(crate) fn short_string(&mut self) -> Result<ShortString, DecodeError> {
        let len = self.octet()?;
        Ok(ShortString::new(self.slice(usize::from(len))?))
    }

    pub(crate) fn long_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(self.what))?;
        self.slice(len)
    }

    pub(crate) fn long_string(&mut self) -> Result<LongString, DecodeError> {
        Ok(LongString::new(self.long_bytes()?))
    }

    /// A field table at the top level of a method or header.
    pub(crate) fn table(&mut self) -> Result<FieldTable, DecodeError> {
        self.table_at(0)
    }

    fn table_at(&mut self, depth: usize) -> Result<FieldTable, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TableTooDeep(self.max_depth));
        }
        let bytes = self.long_bytes()?;
        let mut inner = Reader::new(&bytes, self.what, self.max_depth);
        let mut table = FieldTable::new();
        while !inner.input.is_empty() {
            let key = inner.short_string()?;
            let value = inner.field_value(depth)?;
            table.push(key, value);
        }
        Ok(table)
    }

    fn array_at(&mut self, depth: usize) -> Result<FieldArray, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TableTooDeep(self.max_depth));
        }
        let bytes = self.long_bytes()?;
        let mut inner = Reader::new(&bytes, self.what, self.max_depth);
        let mut values = Vec::new();
        while !inner.input.is_empty() {
            values.push(inner.field_value(depth)?);
        }
        Ok(FieldArray(values))
    }

    /// A type letter and its value; `depth` is the nesting of the table or array holding it.
    fn field_value(&mut self, depth: usize) -> Result<FieldValue, DecodeError> {
        let nested = depth.saturating_add(1);
        let value = match self.octet()? {
            b't' => FieldValue::Bool(self.octet()? != 0),
            b'b' => FieldValue::I8(self.run(be_i8)?),
            b'B' => FieldValue::U8(self.octet()?),
            b's' => FieldValue::I16(self.run(be_i16)?),
            b'u' => FieldValue::U16(self.short()?),
            b'I' => FieldValue::I32(self.run(be_i32)?),
            b'i' => FieldValue::U32(self.long()?),
            b'l' => FieldValue::I64(self.run(be_i64)?),
            b'L' => FieldValue::U64(self.longlong()?),
            b'f' => FieldValue::F32(self.run(be_f32)?),
            b'd' => FieldValue::F64(self.run(be_f64)?),
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
