//! What the spec XML says of each method and property, kept at run time.
//!
//! The tables themselves ([`METHODS`], [`BASIC_PROPERTIES`]) are generated from the XML; the
//! types describing them are here. The frame tracer and `amqp-dump` walk fields through
//! [`FieldRef`], so every field is printed by its spec name without a hand-written list.

pub use crate::generated::{BASIC_PROPERTIES, METHODS};
use crate::types::{FieldTable, LongString, ShortString};

/// The wire type a field's domain resolves to (spec 4.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// One bit, packed with its neighbours into octets.
    Bit,
    /// An unsigned 8-bit integer.
    Octet,
    /// An unsigned 16-bit integer.
    Short,
    /// An unsigned 32-bit integer.
    Long,
    /// An unsigned 64-bit integer.
    LongLong,
    /// A 64-bit POSIX time.
    Timestamp,
    /// A short string.
    ShortStr,
    /// A long string.
    LongStr,
    /// A field table.
    Table,
}

/// One field of a method or one basic property, as the spec declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// The spec's name (`routing-key`).
    pub name: &'static str,
    /// The spec's domain (`shortstr`, `queue-name`).
    pub domain: &'static str,
    /// The wire type the domain resolves to.
    pub wire: WireType,
    /// Reserved fields carry a fixed value and are not part of the Rust structs.
    pub reserved: bool,
}

/// One method, as the spec declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// `class.method`, as in `basic.publish`.
    pub name: &'static str,
    /// The class name.
    pub class: &'static str,
    /// The class id.
    pub class_id: u16,
    /// The method name within its class.
    pub method: &'static str,
    /// The method id within its class.
    pub method_id: u16,
    /// Whether the spec marks it synchronous (a request or its reply).
    pub synchronous: bool,
    /// Whether a content header and body follow it.
    pub content: bool,
    /// The method names (within the class) that answer it.
    pub responses: &'static [&'static str],
    /// Whether a client may send it (the server chassis implements it).
    pub sent_by_client: bool,
    /// Whether a server may send it (the client chassis implements it).
    pub sent_by_server: bool,
    /// All fields in wire order, reserved ones included.
    pub fields: &'static [FieldInfo],
}

impl MethodInfo {
    /// The method with these ids, if the spec has one.
    pub fn lookup(class_id: u16, method_id: u16) -> Option<&'static MethodInfo> {
        METHODS
            .iter()
            .find(|m| m.class_id == class_id && m.method_id == method_id)
    }
}

/// A borrowed field value, for code that walks fields generically (tracing, dumping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    /// A bit.
    Bit(bool),
    /// An octet.
    Octet(u8),
    /// A short.
    Short(u16),
    /// A long.
    Long(u32),
    /// A longlong.
    LongLong(u64),
    /// A timestamp.
    Timestamp(u64),
    /// A short string.
    ShortStr(&'a ShortString),
    /// A long string.
    LongStr(&'a LongString),
    /// A field table.
    Table(&'a FieldTable),
}
