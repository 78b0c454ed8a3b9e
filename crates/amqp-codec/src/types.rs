//! The domain types of AMQP 0-9-1 (spec 4.2.5): short and long strings, field tables,
//! field arrays, decimals and field values.
//!
//! Long strings are [`Bytes`]: decoding one takes a slice of the frame that was read, never a
//! copy. Short strings of up to 31 octets are kept inline, longer ones are [`Bytes`] too.
//! AMQP strings are octet strings; they are shown as UTF-8 where they are valid UTF-8.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// A `shortstr`: at most 255 octets, prefixed by a one-octet length (spec 4.2.5.3).
///
/// Up to [`ShortString::INLINE_CAPACITY`] octets are kept in the value itself; longer strings
/// are [`Bytes`]. Nearly every short string on the wire is that short: exchange names, routing
/// keys, content types, and the consumer tags and queue names RabbitMQ makes up
/// (`amq.ctag-` or `amq.gen-` and 22 characters). Decoding one is then a copy of a few octets,
/// with no reference taken on the read buffer and nothing to release when the frame is
/// dropped; a longer one is a slice of the frame, never a copy.
///
/// Two strings are equal, ordered and hashed by their octets alone, however they are held.
/// The 255-octet limit is checked when the string is encoded, with
/// [`crate::EncodeError::ShortStringTooLong`]; nothing is ever truncated.
#[derive(Clone)]
pub struct ShortString(ShortOctets);

/// How a [`ShortString`] holds its octets.
#[derive(Clone)]
enum ShortOctets {
    /// A string of up to [`ShortString::INLINE_CAPACITY`] octets, in the value itself.
    Inline(InlineOctets),
    /// Octets in a shared buffer: a slice of a frame, a `'static` str, or a string too long to
    /// keep inline.
    Shared(Bytes),
}

/// A short string as it is on the wire: its length octet, then its octets. What follows them
/// is not part of the string.
///
/// Aligned as [`Bytes`] is, so that it lies where a [`Bytes`] would in a [`ShortString`], and a
/// string is copied in whole words, as it was written: reading one from the wire copies the
/// 32 octets from its length octet on at once, with no separate store of the length.
#[derive(Clone, Copy)]
#[repr(align(8))]
struct InlineOctets([u8; 32]);

/// A `longstr`: up to 2^32 - 1 octets, prefixed by a four-octet length (spec 4.2.5.3).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongString(Bytes);

impl ShortString {
    /// The most octets a short string keeps inline: with its length octet, 32 octets, which
    /// with the tag that tells inline from shared make a string as large as a [`Bytes`] and a
    /// tag, 40 octets. The consumer tags and queue names RabbitMQ makes up are 31 and 30.
    pub const INLINE_CAPACITY: usize = 31;

    /// A string of these octets, held as [`Bytes`] without a copy.
    pub fn new(octets: impl Into<Bytes>) -> Self {
        ShortString(ShortOctets::Shared(octets.into()))
    }

    /// A string of a `'static` str, without copying it.
    pub const fn from_static(text: &'static str) -> Self {
        ShortString(ShortOctets::Shared(Bytes::from_static(text.as_bytes())))
    }

    /// A copy of `octets`: inline when they fit, else in a new [`Bytes`].
    pub fn copy_from_slice(octets: &[u8]) -> Self {
        ShortString::inline(octets)
            .unwrap_or_else(|| ShortString::new(Bytes::copy_from_slice(octets)))
    }

    /// A copy of `octets` kept inline, or `None` if they are more than
    /// [`Self::INLINE_CAPACITY`].
    pub(crate) fn inline(octets: &[u8]) -> Option<Self> {
        let len = u8::try_from(octets.len()).ok()?;
        let mut inline = [0u8; 32];
        let (first, rest) = inline.split_first_mut()?;
        *first = len;
        rest.get_mut(..octets.len())?.copy_from_slice(octets);
        Some(ShortString(ShortOctets::Inline(InlineOctets(inline))))
    }

    /// A copy of the short string at the front of `wire` (its length octet, then its octets)
    /// kept inline, or `None` if it is longer than [`Self::INLINE_CAPACITY`] or cut short.
    ///
    /// When `wire` holds 32 octets or more, they are copied at once: a copy of a size known
    /// when compiling, in whole words.
    pub(crate) fn inline_from_wire(wire: &[u8]) -> Option<Self> {
        let len = usize::from(*wire.first()?);
        if len > Self::INLINE_CAPACITY {
            return None;
        }
        let inline = match wire.first_chunk::<32>() {
            Some(chunk) => *chunk,
            None => {
                let mut inline = [0u8; 32];
                let whole = len.checked_add(1)?;
                inline.get_mut(..whole)?.copy_from_slice(wire.get(..whole)?);
                inline
            }
        };
        Some(ShortString(ShortOctets::Inline(InlineOctets(inline))))
    }

    /// The octets of the string.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            ShortOctets::Inline(InlineOctets(inline)) => match inline.split_first() {
                Some((len, octets)) => octets.get(..usize::from(*len)).unwrap_or_default(),
                None => &[],
            },
            ShortOctets::Shared(bytes) => bytes,
        }
    }

    /// The octets as [`Bytes`]: a new reference to the shared buffer they live in, or, for a
    /// string kept inline, a copy.
    pub fn bytes(&self) -> Bytes {
        match &self.0 {
            ShortOctets::Inline(_) => Bytes::copy_from_slice(self.as_bytes()),
            ShortOctets::Shared(bytes) => bytes.clone(),
        }
    }

    /// The octets, consuming the string (a copy if they were kept inline).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            ShortOctets::Inline(_) => Bytes::copy_from_slice(self.as_bytes()),
            ShortOctets::Shared(bytes) => bytes,
        }
    }

    /// The same string, sharing no memory with the frame it was read from: a string kept
    /// inline is already apart, a shared one is copied. What outlives a frame (a queue's
    /// name, a binding's key) is detached, so that it does not keep the whole read buffer
    /// the frame was a slice of alive.
    pub fn detached(&self) -> Self {
        match &self.0 {
            ShortOctets::Inline(_) => self.clone(),
            ShortOctets::Shared(bytes) => ShortString::copy_from_slice(bytes),
        }
    }
}

impl Default for ShortString {
    /// The empty string, inline.
    fn default() -> Self {
        ShortString(ShortOctets::Inline(InlineOctets([0; 32])))
    }
}

impl PartialEq for ShortString {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortString {}

impl PartialOrd for ShortString {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortString {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for ShortString {
    /// Hashes the octets as [`Bytes`] does, so a string hashes the same however it is held.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl From<&str> for ShortString {
    fn from(text: &str) -> Self {
        ShortString::copy_from_slice(text.as_bytes())
    }
}

impl From<&[u8]> for ShortString {
    fn from(octets: &[u8]) -> Self {
        ShortString::copy_from_slice(octets)
    }
}

impl LongString {
    /// A string of these octets.
    pub fn new(octets: impl Into<Bytes>) -> Self {
        LongString(octets.into())
    }

    /// A string of a `'static` str, without copying it.
    pub const fn from_static(text: &'static str) -> Self {
        LongString(Bytes::from_static(text.as_bytes()))
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

    /// A copy of the string, sharing no memory with the frame it was read from (see
    /// [`ShortString::detached`]).
    pub fn detached(&self) -> Self {
        LongString(Bytes::copy_from_slice(&self.0))
    }
}

impl From<&str> for LongString {
    fn from(text: &str) -> Self {
        LongString(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<&[u8]> for LongString {
    fn from(octets: &[u8]) -> Self {
        LongString(Bytes::copy_from_slice(octets))
    }
}

/// What short and long strings have alike, over their octets.
macro_rules! octet_string {
    ($name:ident) => {
        impl $name {
            /// The string as UTF-8, if it is valid UTF-8.
            pub fn as_str(&self) -> Option<&str> {
                std::str::from_utf8(self.as_bytes()).ok()
            }

            /// The string as UTF-8, invalid sequences replaced by U+FFFD.
            pub fn to_str_lossy(&self) -> Cow<'_, str> {
                String::from_utf8_lossy(self.as_bytes())
            }

            /// Length in octets.
            pub fn len(&self) -> usize {
                self.as_bytes().len()
            }

            /// Whether the string has no octets.
            pub fn is_empty(&self) -> bool {
                self.as_bytes().is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.as_str() {
                    Some(text) => fmt::Debug::fmt(text, f),
                    None => write!(f, "{}({:02x?})", stringify!($name), self.as_bytes()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_str_lossy())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name::new(Bytes::from(text))
            }
        }

        impl From<Bytes> for $name {
            fn from(octets: Bytes) -> Self {
                $name::new(octets)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_bytes() == other.as_bytes()
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
    /// A copy of the value, sharing no memory with the frame it was read from: its strings
    /// and byte arrays are copied, nested tables and arrays detached in turn.
    pub fn detached(&self) -> Self {
        match self {
            FieldValue::LongString(text) => FieldValue::LongString(text.detached()),
            FieldValue::ByteArray(octets) => FieldValue::ByteArray(Bytes::copy_from_slice(octets)),
            FieldValue::Array(values) => FieldValue::Array(values.detached()),
            FieldValue::Table(table) => FieldValue::Table(table.detached()),
            scalar => scalar.clone(),
        }
    }

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
    #[inline]
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

    /// A copy of the table, sharing no memory with the frame it was read from: names and
    /// values detached (see [`ShortString::detached`]). A decoded table is a view of its
    /// frame; a table kept beyond the frame (a queue's arguments) is detached first.
    pub fn detached(&self) -> FieldTable {
        FieldTable(
            self.0
                .iter()
                .map(|(name, value)| (name.detached(), value.detached()))
                .collect(),
        )
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

    /// A copy of the array, sharing no memory with the frame it was read from.
    pub fn detached(&self) -> FieldArray {
        FieldArray(self.0.iter().map(FieldValue::detached).collect())
    }
}

impl From<Vec<FieldValue>> for FieldArray {
    fn from(values: Vec<FieldValue>) -> Self {
        FieldArray(values)
    }
}
