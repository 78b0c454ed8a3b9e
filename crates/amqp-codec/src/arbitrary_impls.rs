//! `arbitrary::Arbitrary` for the codec's values (feature `arbitrary`), for the structured fuzz
//! target and the property tests: every value built here can be encoded, so decoding it back
//! must give it back.
//!
//! Short strings stay within 255 octets and tables nest at most four deep, so that what is
//! generated is always encodable.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use crate::frame::{ContentHeader, Frame, ProtocolHeader};
use crate::generated::{BasicProperties, Method};
use crate::types::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};

const MAX_DEPTH: usize = 4;

fn octets(u: &mut Unstructured<'_>, max: usize) -> Result<Bytes> {
    let len = u.int_in_range(0..=max)?;
    Ok(Bytes::copy_from_slice(u.bytes(len.min(u.len()))?))
}

impl<'a> Arbitrary<'a> for ShortString {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ShortString::new(octets(u, 255)?))
    }
}

impl<'a> Arbitrary<'a> for LongString {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(LongString::new(octets(u, 1024)?))
    }
}

impl<'a> Arbitrary<'a> for Decimal {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Decimal {
            scale: u.arbitrary()?,
            value: u.arbitrary()?,
        })
    }
}

fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldValue> {
    let nested = depth < MAX_DEPTH;
    let kind = u.int_in_range(0..=if nested { 17u8 } else { 15 })?;
    Ok(match kind {
        0 => FieldValue::Bool(u.arbitrary()?),
        1 => FieldValue::I8(u.arbitrary()?),
        2 => FieldValue::U8(u.arbitrary()?),
        3 => FieldValue::I16(u.arbitrary()?),
        4 => FieldValue::U16(u.arbitrary()?),
        5 => FieldValue::I32(u.arbitrary()?),
        6 => FieldValue::U32(u.arbitrary()?),
        7 => FieldValue::I64(u.arbitrary()?),
        8 => FieldValue::U64(u.arbitrary()?),
        9 => FieldValue::F32(u.arbitrary()?),
        10 => FieldValue::F64(u.arbitrary()?),
        11 => FieldValue::Decimal(u.arbitrary()?),
        12 => FieldValue::LongString(u.arbitrary()?),
        13 => FieldValue::ByteArray(octets(u, 256)?),
        14 => FieldValue::Timestamp(u.arbitrary()?),
        15 => FieldValue::Void,
        16 => FieldValue::Array(array(u, depth.saturating_add(1))?),
        _ => FieldValue::Table(table(u, depth.saturating_add(1))?),
    })
}

fn table(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldTable> {
    let mut table = FieldTable::new();
    for _ in 0..u.int_in_range(0..=6u8)? {
        table.push(u.arbitrary()?, value(u, depth)?);
    }
    Ok(table)
}

fn array(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldArray> {
    let mut values = Vec::new();
    for _ in 0..u.int_in_range(0..=6u8)? {
        values.push(value(u, depth)?);
    }
    Ok(FieldArray(values))
}

impl<'a> Arbitrary<'a> for FieldValue {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        value(u, 0)
    }
}

impl<'a> Arbitrary<'a> for FieldTable {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        table(u, 0)
    }
}

impl<'a> Arbitrary<'a> for FieldArray {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        array(u, 0)
    }
}

impl<'a> Arbitrary<'a> for ContentHeader {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ContentHeader::basic(
            u.arbitrary()?,
            BasicProperties::arbitrary(u)?,
        ))
    }
}

impl<'a> Arbitrary<'a> for Frame {
    /// Any frame that can be encoded: method, header, body, heartbeat or protocol header.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=9u8)? {
            0..=5 => Frame::Method(u.arbitrary()?, Method::arbitrary(u)?),
            6 | 7 => Frame::Header(u.arbitrary()?, u.arbitrary()?),
            8 => Frame::Body(u.arbitrary()?, octets(u, 4096)?),
            _ if u.arbitrary()? => Frame::Heartbeat,
            _ => Frame::ProtocolHeader(ProtocolHeader {
                version: u.arbitrary()?,
            }),
        })
    }
}
