//! The domain types of AMQP 0-9-1 (spec 4.2.5): short and long strings, field tables,
//! field arrays, decimals and field values.
//!
//! Strings are [`Bytes`]: decoding one takes a slice of the frame that was read, never a copy.
//! AMQP strings are octet strings; they are shown as UTF-8 where they are valid UTF-8.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

/// A `shortstr`: at most 255 octets, prefixed by a one-octet length (spec 4.2.5.3).
///
/// The 255-octet limit is checked when the string is encoded, with
/// [`crate::EncodeError::ShortStringTooLong`]; nothing is ever truncated.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortString(Bytes);

/// A `longstr`: up to 2^32 - 1 octets, prefixed by a four-octet length (spec 4.2.5.3).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongString(Bytes);

macro_rules! octet_string {
    ($name:ident) => {
        impl $name {
            /// A string of these octets.
            pub fn new(octets: impl Into<Bytes>) -> Self {
                $name(octets.into())
            }

            /// A string of a `'static` str, without copying it.
            pub const fn from_static(text: &'static str) -> Self {
                $name(Bytes::from_static(text.as_bytes()))
            }

            /// The octets of the string.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The octets, as the shared buffer they live in.
            pub fn bytes(&self) -> &Bytes {
                &self.0
            }

            /// The octets, consuming the string.
            pub fn into_bytes(self) -> Bytes {
                self.0
            }

            /// The string as UTF-8, if it is valid UTF-8.
            pub fn as_str(&self) -> Option<&str> {
                std::str::from_utf8(&self.0).ok()
            }

            /// The string as UTF-8, invalid sequences replaced by U+FFFD.
            pub fn to_str_lossy(&self) -> Cow<'_, str> {
                String::from_utf8_lossy(&self.0)
            }

            /// Length in octets.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether the string has no octets.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.as_str() {
                    Some(text) => fmt::Debug::fmt(text, f),
                    None => write!(f, "{}({:02x?})", stringify!($name), &self.0[..]),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_str_lossy())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name(Bytes::copy_from_slice(text.as_bytes()))
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name(Bytes::from(text))
            }
        }

        impl From<Bytes> for $name {
            fn from(octets: Bytes) -> Self {
                $name(octets)
            }
        }

        impl From<&[u8]> for $name {
            fn from(octets: &[u8]) -> Self {
                $name(Bytes::copy_from_slice(octets))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other.as_bytes()
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == other.as_bytes()
            }
        }
    };
}

octet_string!(ShortString);
octet_string!(LongString);

/// A `decimal-value`: `value` × 10^-`scale` (spec 4.2.5.5, type letter `D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One value of a field table or field array, tagged on the wire by a type letter.
///
/// The letters are RabbitMQ's, which depart from the 0-9-1 spec (see RabbitMQ's
/// "AMQP 0-9-1 errata" page, section "Field types"): `s` is a signed 16-bit integer (the spec
/// says short string, which RabbitMQ never sends), `x` is a RabbitMQ byte array, and the
/// unsigned `B`, `u`, `i`, `L` exist in the spec but RabbitMQ itself only sends the signed ones.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// `t`: a boolean, one octet.
    Bool(bool),
    /// `b`: a signed 8-bit integer.
    I8(i8),
    /// `B`: an unsigned 8-bit integer.
    U8(u8),
    /// `s`: a signed 16-bit integer (RabbitMQ; the spec's `s` was a short string).
    I16(i16),
    /// `u`: an unsigned 16-bit integer.
    U16(u16),
    /// `I`: a signed 32-bit integer.
    I32(i32),
    /// `i`: an unsigned 32-bit integer.
    U32(u32),
    /// `l`: a signed 64-bit integer.
    I64(i64),
    /// `L`: an unsigned 64-bit integer.
    U64(u64),
    /// `f`: an IEEE 754 single.
    F32(f32),
    /// `d`: an IEEE 754 double.
    F64(f64),
    /// `D`: a decimal.
    Decimal(Decimal),
    /// `S`: a long string.
    LongString(LongString),
    /// `x`: a byte array (RabbitMQ), a long string by another name.
    ByteArray(Bytes),
    /// `A`: a field array.
    Array(FieldArray),
    /// `T`: a timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: a nested field table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
}

impl FieldValue {
    /// The type letter that tags this value on the wire.
    pub fn type_letter(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::U64(_) => b'L',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::ByteArray(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }
}

/// Values are equal when they have the same type letter and the same value; floats compare by
/// their bits, so a NaN read from the wire equals the NaN that was written.
impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (U64(a), U64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) => a == b,
            (LongString(a), LongString(b)) => a == b,
            (ByteArray(a), ByteArray(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Table(a), Table(b)) => a == b,
            (Void, Void) => true,
            _ => false,
        }
    }
}

impl From<bool> for FieldValue {
    fn from(value: bool) -> Self {
        FieldValue::Bool(value)
    }
}

impl From<i32> for FieldValue {
    fn from(value: i32) -> Self {
        FieldValue::I32(value)
    }
}

impl From<i64> for FieldValue {
    fn from(value: i64) -> Self {
        FieldValue::I64(value)
    }
}

impl From<&str> for FieldValue {
    fn from(value: &str) -> Self {
        FieldValue::LongString(LongString::from(value))
    }
}

impl From<String> for FieldValue {
    fn from(value: String) -> Self {
        FieldValue::LongString(LongString::from(value))
    }
}

impl From<FieldTable> for FieldValue {
    fn from(value: FieldTable) -> Self {
        FieldValue::Table(value)
    }
}

/// A `field-table` (spec 4.2.5.5): named values, in the order they came on the wire.
///
/// Kept as a list rather than a map so that decoding allocates once and re-encoding gives the
/// same bytes. [`FieldTable::insert`] replaces an existing key, as a map would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(Vec<(ShortString, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// Sets `key` to `value`, replacing the value it had.
    pub fn insert(&mut self, key: impl Into<ShortString>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Appends an entry as it came from the wire, even if the key is already present.
    pub(crate) fn push(&mut self, key: ShortString, value: FieldValue) {
        self.0.push((key, value));
    }

    /// The value of `key`, if present (the first one, should the wire have repeated it).
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let index = self
            .0
            .iter()
            .position(|(k, _)| k.as_bytes() == key.as_bytes())?;
        Some(self.0.remove(index).1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortString, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both tables hold the same keys with the same values, in any order.
    ///
    /// `==` compares in wire order; this is the comparison a peer that re-orders keys needs.
    /// A key the wire repeated counts as often as it appears: each entry is matched with a
    /// distinct entry of `other`.
    pub fn same_entries(&self, other: &FieldTable) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let mut matched = vec![false; other.len()];
        self.0.iter().all(|entry| {
            let free = other
                .0
                .iter()
                .zip(matched.iter_mut())
                .find(|(candidate, used)| !**used && *candidate == entry);
            match free {
                Some((_, used)) => {
                    *used = true;
                    true
                }
                None => false,
            }
        })
    }
}

impl<K: Into<ShortString>, V: Into<FieldValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut table = FieldTable::new();
        for (k, v) in iter {
            table.insert(k, v);
        }
        table
    }
}

/// A `field-array` (RabbitMQ's type letter `A`): values without names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldArray(pub Vec<FieldValue>);

impl FieldArray {
    /// The values, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldValue> {
        self.0.iter()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the array has no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<FieldValue>> for FieldArray {
    fn from(values: Vec<FieldValue>) -> Self {
        FieldArray(values)
    }
}
