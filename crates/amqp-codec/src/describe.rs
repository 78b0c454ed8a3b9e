//! Frames as people read them: one line of text, or one JSON object, per frame.
//!
//! `amqp-dump`, the frame tracer (`AMQP_TRACE=1`) and the sniffer all print through here, so
//! they agree on the format. Text, from [`text`]:
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
//! JSON, from [`json`], one object per frame:
//!
//! ```text
//! {"channel":1,"type":"method","class":"basic","method":"publish","class_id":60,"method_id":40,
//!  "fields":{"exchange":"","routing-key":"task_queue","mandatory":false,"immediate":false}}
//! {"channel":1,"type":"header","class":"basic","class_id":60,"body_size":12,
//!  "properties":{"delivery-mode":2}}
//! {"channel":1,"type":"body","size":12,"body":"Hello World!"}
//! ```
//!
//! (Each object is one line; it is wrapped here to fit.)
//!
//! Text names fields in snake case (`routing_key`); JSON uses the spec's names
//! (`"routing-key"`), so every field is findable in the spec XML. Reserved fields are left out
//! of both: they carry nothing. Content properties appear only when they are set.
//!
//! ## Strings, bodies and escaping
//! AMQP strings are octets, not text, and a peer may send anything. A rendering is always one
//! line that cannot fool a terminal or a JSON parser:
//! - Text shows valid UTF-8 as it is, inside `"…"`, with `"` and `\` escaped, newlines, tabs
//!   and other control characters escaped (`\n`, `\t`, `\x1b`, `\u{85}`), and octets that are
//!   not UTF-8 as `\xNN`.
//! - JSON escapes what JSON requires; octets that are not UTF-8 become U+FFFD, as JSON strings
//!   can only hold text.
//! - Bodies (and, in text, long strings) show at most `body_limit` octets. A cut body is
//!   followed by `...` in text and flagged `"body_truncated":true` in JSON. A cut never splits
//!   a UTF-8 character.
//!
//! Field table values show as their natural value: numbers, `true`/`false`, strings, nested
//! tables (`{"key": value}`) and arrays (`[…]`). In text a decimal shows with its point
//! (`1.50`), a timestamp as `T` and its seconds, a byte array as `x"…"`, void as `void`; in
//! JSON a decimal is `{"scale":2,"value":150}`, a timestamp its seconds, and void, NaN and the
//! infinities `null`.

use std::fmt::{self, Write};

use crate::frame::Frame;
use crate::spec::{FieldRef, METHODS};
use crate::types::{Decimal, FieldTable, FieldValue};

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

/// The name of the class with this id (`basic` for 60), if the spec has one.
fn class_name(class_id: u16) -> Option<&'static str> {
    METHODS
        .iter()
        .find(|m| m.class_id == class_id)
        .map(|m| m.class)
}

/// The first `limit` octets of `bytes`, and whether anything was left out.
///
/// The cut never splits a UTF-8 character: when the octet after the cut continues a character
/// (`0b10xx_xxxx`), the cut moves back to where that character starts, at most three octets.
fn shown(bytes: &[u8], limit: usize) -> (&[u8], bool) {
    let mut head = match bytes.get(..limit) {
        Some(head) if head.len() < bytes.len() => head,
        _ => return (bytes, false),
    };
    for _ in 0..3 {
        let continues = bytes.get(head.len()).is_some_and(|b| b & 0xc0 == 0x80);
        match head.split_last() {
            Some((_, rest)) if continues => head = rest,
            _ => break,
        }
    }
    (head, true)
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

/// ` name=value`, the spec's name in snake case.
fn write_text_field(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    value: FieldRef<'_>,
    limit: usize,
) -> fmt::Result {
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

/// `{"key": value, ...}`, in wire order.
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
        FieldValue::Decimal(d) => write_text_decimal(f, *d),
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

/// A decimal with its point where the scale puts it: value 150, scale 2 is `1.50`.
fn write_text_decimal(f: &mut fmt::Formatter<'_>, decimal: Decimal) -> fmt::Result {
    let digits = decimal.value.to_string();
    let scale = usize::from(decimal.scale);
    if scale == 0 {
        return f.write_str(&digits);
    }
    if digits.len() <= scale {
        f.write_str("0.")?;
        for _ in digits.len()..scale {
            f.write_char('0')?;
        }
        return f.write_str(&digits);
    }
    let (whole, fraction) = digits.split_at(digits.len().saturating_sub(scale));
    write!(f, "{whole}.{fraction}")
}

/// Writes octets as a quoted string: valid UTF-8 as it is (control characters escaped),
/// anything else as `\xNN`; past `limit` octets, `...` and the rest left out.
fn write_text_bytes(f: &mut fmt::Formatter<'_>, bytes: &[u8], limit: usize) -> fmt::Result {
    let (head, cut) = shown(bytes, limit);
    f.write_char('"')?;
    for chunk in head.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                // ASCII controls as the octet they are, others (C1, U+0080..U+009F) by code point.
                c if c.is_ascii_control() => write!(f, "\\x{:02x}", u32::from(c))?,
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
                write!(f, r#"{{"channel":{channel},"type":"header","#)?;
                if let Some(class) = class_name(header.class_id) {
                    write!(f, r#""class":"{class}","#)?;
                }
                write!(
                    f,
                    r#""class_id":{},"body_size":{},"properties":{{"#,
                    header.class_id, header.body_size
                )?;
                write_json_fields(
                    f,
                    &mut |visit| header.properties.for_each_field(visit),
                    limit,
                )?;
                f.write_str("}}")
            }
            Frame::Body(channel, body) => {
                write!(
                    f,
                    r#"{{"channel":{channel},"type":"body","size":{},"body":"#,
                    body.len()
                )?;
                let (head, cut) = shown(body, limit);
                write_json_string(f, head)?;
                if cut {
                    f.write_str(r#","body_truncated":true"#)?;
                }
                f.write_char('}')
            }
            Frame::Heartbeat => f.write_str(r#"{"channel":0,"type":"heartbeat"}"#),
        }
    }
}

/// Something that calls a visitor with each field's spec name and value.
type FieldWalk<'w> = dyn FnMut(&mut dyn FnMut(&'static str, FieldRef<'_>)) + 'w;

/// `"name":value,...`, without the braces.
fn write_json_fields(
    f: &mut fmt::Formatter<'_>,
    walk: &mut FieldWalk<'_>,
    limit: usize,
) -> fmt::Result {
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
        // Rust prints finite floats without an exponent ("0.00001"), which JSON accepts;
        // JSON has no NaN or infinity.
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

/// Writes octets as a JSON string (RFC 8259 section 7); invalid UTF-8 becomes U+FFFD.
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::ContentHeader;
    use crate::generated::{BasicProperties, Method};
    use crate::methods::{BasicPublish, ConnectionStart, QueueDeclare};
    use crate::types::{FieldArray, LongString};

    fn nested_table() -> FieldTable {
        let mut capabilities = FieldTable::new();
        capabilities.insert("publisher_confirms", true);
        capabilities.insert("consumer_priorities", true);
        let mut table = FieldTable::new();
        table.insert("product", "RabbitMQ");
        table.insert("capabilities", capabilities);
        table.insert(
            "list",
            FieldValue::Array(FieldArray(vec![
                FieldValue::I8(-1),
                FieldValue::Void,
                FieldValue::Timestamp(1_700_000_000),
            ])),
        );
        table.insert(
            "price",
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 150,
            }),
        );
        table.insert(
            "raw",
            FieldValue::ByteArray(Bytes::from_static(b"\x00\xff")),
        );
        table
    }

    #[test]
    fn text_shows_nested_table_values_in_wire_order() {
        let frame = Frame::Method(
            0,
            Method::ConnectionStart(ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: nested_table(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            }),
        );
        assert_eq!(
            text(&frame).to_string(),
            concat!(
                r#"ch=0 connection.start version_major=0 version_minor=9 server_properties={"#,
                r#""product": "RabbitMQ", "#,
                r#""capabilities": {"publisher_confirms": true, "consumer_priorities": true}, "#,
                r#""list": [-1, void, T1700000000], "#,
                r#""price": 1.50, "#,
                r#""raw": x"\x00\xff"} "#,
                r#"mechanisms="PLAIN" locales="en_US""#,
            )
        );
    }

    #[test]
    fn text_places_the_decimal_point_by_scale() {
        let cases = [
            (0, 7, "7"),
            (2, 150, "1.50"),
            (3, 5, "0.005"),
            (1, 0, "0.0"),
            (0, u32::MAX, "4294967295"),
        ];
        for (scale, value, expected) in cases {
            let mut table = FieldTable::new();
            table.insert("d", FieldValue::Decimal(Decimal { scale, value }));
            let frame = Frame::Method(
                1,
                Method::QueueDeclare(QueueDeclare {
                    arguments: table,
                    ..Default::default()
                }),
            );
            let line = text(&frame).to_string();
            assert!(
                line.ends_with(&format!(r#"arguments={{"d": {expected}}}"#)),
                "scale {scale} value {value}: {line}"
            );
        }
    }

    #[test]
    fn text_escapes_quotes_control_characters_and_invalid_utf8() {
        let frame = Frame::Method(
            1,
            Method::BasicPublish(BasicPublish {
                // quote, backslash, and NEL (U+0085), a C1 control.
                exchange: "a\"b\\c\u{85}".into(),
                // newline, tab, ESC (a terminal escape), then 0xff and a lone 0xc3: not UTF-8.
                routing_key: (&b"x\n\t\x1b[31m\xff\xc3"[..]).into(),
                ..Default::default()
            }),
        );
        assert_eq!(
            text(&frame).to_string(),
            r#"ch=1 basic.publish exchange="a\"b\\c\u{85}" routing_key="x\n\t\x1b[31m\xff\xc3" mandatory=false immediate=false"#
        );
    }

    #[test]
    fn text_cuts_body_at_limit_and_marks_the_cut() {
        let frame = Frame::Body(1, Bytes::from_static(b"Hello World!"));
        let line = Text {
            frame: &frame,
            body_limit: 5,
        }
        .to_string();
        assert_eq!(line, r#"ch=1 content-body size=12 "Hello"..."#);
    }

    #[test]
    fn text_cut_does_not_split_a_utf8_character() {
        // "añb": ñ is the two octets c3 b1; a cut after 2 octets would split it.
        let frame = Frame::Body(1, Bytes::from("añb"));
        let line = Text {
            frame: &frame,
            body_limit: 2,
        }
        .to_string();
        assert_eq!(line, r#"ch=1 content-body size=4 "a"..."#);
    }

    #[test]
    fn text_body_within_limit_is_shown_whole_without_mark() {
        let frame = Frame::Body(3, Bytes::from_static(b"Hello World!"));
        let line = Text {
            frame: &frame,
            body_limit: 12,
        }
        .to_string();
        assert_eq!(line, r#"ch=3 content-body size=12 "Hello World!""#);
    }

    #[test]
    fn text_cuts_long_strings_at_limit_but_not_short_strings() {
        let frame = Frame::Method(
            0,
            Method::ConnectionStart(ConnectionStart {
                mechanisms: LongString::from("PLAIN AMQPLAIN"),
                ..Default::default()
            }),
        );
        let line = Text {
            frame: &frame,
            body_limit: 5,
        }
        .to_string();
        assert!(line.contains(r#"mechanisms="PLAIN"..."#), "{line}");
    }

    #[test]
    fn text_header_shows_only_the_properties_that_are_set() {
        let frame = Frame::Header(
            1,
            ContentHeader::basic(
                12,
                BasicProperties {
                    delivery_mode: Some(2),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            text(&frame).to_string(),
            r#"ch=1 content-header class=60 body_size=12 content_type="text/plain" delivery_mode=2"#
        );
    }

    #[test]
    fn text_protocol_header_names_a_foreign_protocol_id() {
        let ours = Frame::ProtocolHeader(crate::frame::ProtocolHeader::AMQP_0_9_1);
        let other = Frame::ProtocolHeader(crate::frame::ProtocolHeader {
            version: [1, 1, 0, 10],
        });
        assert_eq!(text(&ours).to_string(), "protocol-header AMQP 0-9-1");
        assert_eq!(text(&other).to_string(), "protocol-header AMQP id=1 1-0-10");
    }

    #[test]
    fn json_header_names_the_class_and_spec_property_names() {
        let frame = Frame::Header(
            1,
            ContentHeader::basic(
                12,
                BasicProperties {
                    delivery_mode: Some(2),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            json(&frame).to_string(),
            r#"{"channel":1,"type":"header","class":"basic","class_id":60,"body_size":12,"properties":{"delivery-mode":2}}"#
        );
    }

    #[test]
    fn json_escapes_control_characters_and_replaces_invalid_utf8() {
        let frame = Frame::Body(2, Bytes::from_static(b"a\"\\\n\x01\xffz"));
        assert_eq!(
            json(&frame).to_string(),
            "{\"channel\":2,\"type\":\"body\",\"size\":7,\"body\":\"a\\\"\\\\\\n\\u0001\u{fffd}z\"}"
        );
    }

    #[test]
    fn json_marks_a_cut_body() {
        let frame = Frame::Body(1, Bytes::from_static(b"Hello World!"));
        let line = Json {
            frame: &frame,
            body_limit: 5,
        }
        .to_string();
        assert_eq!(
            line,
            r#"{"channel":1,"type":"body","size":12,"body":"Hello","body_truncated":true}"#
        );
    }
}
