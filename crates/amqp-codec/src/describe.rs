//! Frames as people read them: one line of text, or one JSON object, per frame.
//!
//! `amqp-dump`, the frame tracer (`AMQP_TRACE=1`) and the sniffer all print through here, so
//! they agree on the format:
//!
//! ```text
//! protocol-header AMQP 0-9-1
//! ch=0 connection.tune channel_max=2047 frame_max=131072 heartbeat=60
//! ch=1 basic.publish exchange="" routing_key="task_queue" mandatory=false immediate=false
//! ch=1 content-header class=60 body_size=12 delivery_mode=2
//! ch=1 content-body size=12 "Hello World!"
//! ch=0 heartbeat
//! ```
//!
//! Text names fields in snake case (`routing_key`); JSON uses the spec's names
//! (`"routing-key"`), so every field is findable in the spec XML.

use std::fmt::{self, Write};

use crate::frame::Frame;
use crate::spec::FieldRef;
use crate::types::{FieldTable, FieldValue};

/// How much of a body (or long string) to show before eliding the rest.
pub const DEFAULT_BODY_LIMIT: usize = 64;

/// A frame rendered as one line of text; `body_limit` caps how many body octets are shown.
pub struct Text<'a> {
    /// The frame.
    pub frame: &'a Frame,
    /// Octets of body shown before `...`.
    pub body_limit: usize,
}

/// A frame rendered as one JSON object (no trailing newline).
pub struct Json<'a> {
    /// The frame.
    pub frame: &'a Frame,
    /// Octets of body shown before the text is cut (`"body_truncated": true` then).
    pub body_limit: usize,
}

/// One line of text for `frame`, bodies cut at [`DEFAULT_BODY_LIMIT`].
pub fn text(frame: &Frame) -> Text<'_> {
    Text {
        frame,
        body_limit: DEFAULT_BODY_LIMIT,
    }
}

/// One JSON object for `frame`, bodies cut at [`DEFAULT_BODY_LIMIT`].
pub fn json(frame: &Frame) -> Json<'_> {
    Json {
        frame,
        body_limit: DEFAULT_BODY_LIMIT,
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.frame {
            Frame::ProtocolHeader(header) => {
                let [id, major, minor, revision] = header.version;
                if id == 0 {
                    write!(f, "protocol-header AMQP {major}-{minor}-{revision}")
                } else {
                    write!(f, "protocol-header AMQP id={id} {major}-{minor}-{revision}")
                }
            }
            Frame::Method(channel, method) => {
                write!(f, "ch={channel} {}", method.name())?;
                let mut result = Ok(());
                method.for_each_field(&mut |name, value| {
                    if result.is_ok() {
                        result = write_text_field(f, name, value, self.body_limit);
                    }
                });
                result
            }
            Frame::Header(channel, header) => {
                write!(
                    f,
                    "ch={channel} content-header class={} body_size={}",
                    header.class_id, header.body_size
                )?;
                let mut result = Ok(());
                header.properties.for_each_field(&mut |name, value| {
                    if result.is_ok() {
                        result = write_text_field(f, name, value, self.body_limit);
                    }
                });
                result
            }
            Frame::Body(channel, body) => {
                write!(f, "ch={channel} content-body size={} ", body.len())?;
                write_text_bytes(f, body, self.body_limit)
            }
            Frame::Heartbeat => f.write_str("ch=0 heartbeat"),
        }
    }
}

fn write_text_field(f: &mut fmt::Formatter<'_>, name: &str, value: FieldRef<'_>, limit: usize) -> fmt::Result {
    f.write_char(' ')?;
    for c in name.chars() {
        f.write_char(if c == '-' { '_' } else { c })?;
    }
    f.write_char('=')?;
    match value {
        FieldRef::Bit(v) => write!(f, "{v}"),
        FieldRef::Octet(v) => write!(f, "{v}"),
        FieldRef::Short(v) => write!(f, "{v}"),
        FieldRef::Long(v) => write!(f, "{v}"),
        FieldRef::LongLong(v) | FieldRef::Timestamp(v) => write!(f, "{v}"),
        FieldRef::ShortStr(v) => write_text_bytes(f, v.as_bytes(), usize::MAX),
        FieldRef::LongStr(v) => write_text_bytes(f, v.as_bytes(), limit),
        FieldRef::Table(v) => write_text_table(f, v, limit),
    }
}

fn write_text_table(f: &mut fmt::Formatter<'_>, table: &FieldTable, limit: usize) -> fmt::Result {
    f.write_char('{')?;
    for (i, (key, value)) in table.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_text_bytes(f, key.as_bytes(), usize::MAX)?;
        f.write_str(": ")?;
        write_text_value(f, value, limit)?;
    }
    f.write_char('}')
}

fn write_text_value(f: &mut fmt::Formatter<'_>, value: &FieldValue, limit: usize) -> fmt::Result {
    match value {
        FieldValue::Bool(v) => write!(f, "{v}"),
        FieldValue::I8(v) => write!(f, "{v}"),
        FieldValue::U8(v) => write!(f, "{v}"),
        FieldValue::I16(v) => write!(f, "{v}"),
        FieldValue::U16(v) => write!(f, "{v}"),
        FieldValue::I32(v) => write!(f, "{v}"),
        FieldValue::U32(v) => write!(f, "{v}"),
        FieldValue::I64(v) => write!(f, "{v}"),
        FieldValue::U64(v) => write!(f, "{v}"),
        FieldValue::F32(v) => write!(f, "{v}"),
        FieldValue::F64(v) => write!(f, "{v}"),
        FieldValue::Decimal(d) => write!(f, "{}e-{}", d.value, d.scale),
        FieldValue::LongString(v) => write_text_bytes(f, v.as_bytes(), limit),
        FieldValue::ByteArray(v) => {
            f.write_char('x')?;
            write_text_bytes(f, v, limit)
        }
        FieldValue::Array(values) => {
            f.write_char('[')?;
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_text_value(f, value, limit)?;
            }
            f.write_char(']')
        }
        FieldValue::Timestamp(v) => write!(f, "T{v}"),
        FieldValue::Table(t) => write_text_table(f, t, limit),
        FieldValue::Void => f.write_str("void"),
    }
}

/// Writes octets as a quoted string: valid UTF-8 as it is (control characters escaped),
/// anything else as `\xNN`; past `limit` octets, `...` and the rest left out.
fn write_text_bytes(f: &mut fmt::Formatter<'_>, bytes: &[u8], limit: usize) -> fmt::Result {
    let (shown, cut) = match bytes.get(..limit) {
        Some(head) if head.len() < bytes.len() => (head, true),
        _ => (bytes, false),
    };
    f.write_char('"')?;
    for chunk in shown.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        for byte in chunk.invalid() {
            write!(f, "\\x{byte:02x}")?;
        }
    }
    f.write_char('"')?;
    if cut {
        f.write_str("...")?;
    }
    Ok(())
}

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.body_limit;
        match self.frame {
            Frame::ProtocolHeader(header) => {
                let [id, major, minor, revision] = header.version;
                write!(
                    f,
                    r#"{{"type":"protocol-header","protocol_id":{id},"major":{major},"minor":{minor},"revision":{revision}}}"#
                )
            }
            Frame::Method(channel, method) => {
                let info = method.info();
                write!(
                    f,
                    r#"{{"channel":{channel},"type":"method","class":"{}","method":"{}","class_id":{},"method_id":{},"fields":{{"#,
                    info.class, info.method, info.class_id, info.method_id
                )?;
                write_json_fields(f, &mut |visit| method.for_each_field(visit), limit)?;
                f.write_str("}}")
            }
            Frame::Header(channel, header) => {
                write!(
                    f,
                    r#"{{"channel":{channel},"type":"header","class_id":{},"body_size":{},"properties":{{"#,
                    header.class_id, header.body_size
                )?;
                write_json_fields(f, &mut |visit| header.properties.for_each_field(visit), limit)?;
                f.write_str("}}")
            }
            Frame::Body(channel, body) => {
                write!(f, r#"{{"channel":{channel},"type":"body","size":{},"body":"#, body.len())?;
                let cut = body.len() > limit;
                write_json_string(f, body.get(..limit).unwrap_or(body))?;
                if cut {
                    f.write_str(r#","body_truncated":true"#)?;
                }
                f.write_char('}')
            }
            Frame::Heartbeat => f.write_str(r#"{"channel":0,"type":"heartbeat"}"#),
        }
    }
}

type FieldWalk<'w> = dyn FnMut(&mut dyn FnMut(&'static str, FieldRef<'_>)) + 'w;

fn write_json_fields(f: &mut fmt::Formatter<'_>, walk: &mut FieldWalk<'_>, limit: usize) -> fmt::Result {
    let mut result = Ok(());
    let mut first = true;
    walk(&mut |name, value| {
        if result.is_err() {
            return;
        }
        result = (|| {
            if !first {
                f.write_char(',')?;
            }
            first = false;
            write_json_string(f, name.as_bytes())?;
            f.write_char(':')?;
            write_json_field(f, value, limit)
        })();
    });
    result
}

fn write_json_field(f: &mut fmt::Formatter<'_>, value: FieldRef<'_>, limit: usize) -> fmt::Result {
    match value {
        FieldRef::Bit(v) => write!(f, "{v}"),
        FieldRef::Octet(v) => write!(f, "{v}"),
        FieldRef::Short(v) => write!(f, "{v}"),
        FieldRef::Long(v) => write!(f, "{v}"),
        FieldRef::LongLong(v) | FieldRef::Timestamp(v) => write!(f, "{v}"),
        FieldRef::ShortStr(v) => write_json_string(f, v.as_bytes()),
        FieldRef::LongStr(v) => write_json_string(f, v.as_bytes()),
        FieldRef::Table(t) => write_json_table(f, t, limit),
    }
}

fn write_json_table(f: &mut fmt::Formatter<'_>, table: &FieldTable, limit: usize) -> fmt::Result {
    f.write_char('{')?;
    for (i, (key, value)) in table.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write_json_string(f, key.as_bytes())?;
        f.write_char(':')?;
        write_json_value(f, value, limit)?;
    }
    f.write_char('}')
}

fn write_json_value(f: &mut fmt::Formatter<'_>, value: &FieldValue, limit: usize) -> fmt::Result {
    match value {
        FieldValue::Bool(v) => write!(f, "{v}"),
        FieldValue::I8(v) => write!(f, "{v}"),
        FieldValue::U8(v) => write!(f, "{v}"),
        FieldValue::I16(v) => write!(f, "{v}"),
        FieldValue::U16(v) => write!(f, "{v}"),
        FieldValue::I32(v) => write!(f, "{v}"),
        FieldValue::U32(v) => write!(f, "{v}"),
        FieldValue::I64(v) => write!(f, "{v}"),
        FieldValue::U64(v) => write!(f, "{v}"),
        FieldValue::F32(v) if v.is_finite() => write!(f, "{v}"),
        FieldValue::F64(v) if v.is_finite() => write!(f, "{v}"),
        FieldValue::F32(_) | FieldValue::F64(_) | FieldValue::Void => f.write_str("null"),
        FieldValue::Decimal(d) => write!(f, r#"{{"scale":{},"value":{}}}"#, d.scale, d.value),
        FieldValue::LongString(v) => write_json_string(f, v.as_bytes()),
        FieldValue::ByteArray(v) => write_json_string(f, v),
        FieldValue::Array(values) => {
            f.write_char('[')?;
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    f.write_char(',')?;
                }
                write_json_value(f, value, limit)?;
            }
            f.write_char(']')
        }
        FieldValue::Timestamp(v) => write!(f, "{v}"),
        FieldValue::Table(t) => write_json_table(f, t, limit),
    }
}

/// Writes octets as a JSON string; invalid UTF-8 becomes U+FFFD.
fn write_json_string(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_char('"')?;
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}
