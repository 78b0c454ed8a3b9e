//! `amqp_codec::describe` checked with a real JSON parser (the codec crate has none): nested
//! table values, escaping, and, for any frame at all, JSON that parses and text that stays
//! on one line. The exact text renderings are unit-tested in `describe.rs` itself.

use amqp_codec::describe::{json, text, Json};
use amqp_codec::methods::{BasicPublish, ConnectionStart};
use amqp_codec::{Decimal, FieldArray, FieldTable, FieldValue, Frame, Method};
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};

fn parse(frame: &Frame) -> Value {
    let line = json(frame).to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn json_renders_nested_table_values_as_json_values() {
    let mut inner = FieldTable::new();
    inner.insert("publisher_confirms", true);
    inner.insert("depth", FieldValue::U8(2));
    let mut table = FieldTable::new();
    table.insert("capabilities", inner.clone());
    table.insert(
        "list",
        FieldValue::Array(FieldArray(vec![
            FieldValue::I16(-7),
            FieldValue::LongString("s".into()),
            FieldValue::Table(inner),
            FieldValue::Void,
        ])),
    );
    table.insert(
        "price",
        FieldValue::Decimal(Decimal {
            scale: 2,
            value: 150,
        }),
    );
    table.insert("ratio", FieldValue::F64(0.25));
    table.insert("nan", FieldValue::F32(f32::NAN));
    table.insert("big", FieldValue::U64(u64::MAX));
    table.insert("when", FieldValue::Timestamp(1_700_000_000));
    let frame = Frame::Method(
        0,
        Method::ConnectionStart(ConnectionStart {
            server_properties: table,
            ..Default::default()
        }),
    );
    let object = parse(&frame);
    assert_eq!(
        object["fields"]["server-properties"],
        json!({
            "capabilities": {"publisher_confirms": true, "depth": 2},
            "list": [-7, "s", {"publisher_confirms": true, "depth": 2}, null],
            "price": {"scale": 2, "value": 150},
            "ratio": 0.25,
            "nan": null,
            "big": u64::MAX,
            "when": 1_700_000_000,
        })
    );
}

#[test]
fn json_escapes_control_characters_and_replaces_invalid_utf8() {
    let mut arguments = FieldTable::new();
    // A key with a quote and a newline, a value with ESC and a byte that is not UTF-8.
    arguments.insert(
        "k\"\n",
        FieldValue::ByteArray(Bytes::from_static(b"\x1b[0m\xff")),
    );
    let frame = Frame::Method(
        1,
        Method::BasicPublish(BasicPublish {
            exchange: "tab\there".into(),
            routing_key: (&b"bad\xc3(utf8\x00"[..]).into(),
            ..Default::default()
        }),
    );
    let object = parse(&frame);
    assert_eq!(object["fields"]["exchange"], "tab\there");
    assert_eq!(object["fields"]["routing-key"], "bad\u{fffd}(utf8\0");

    let declare = Frame::Method(
        1,
        Method::QueueDeclare(amqp_codec::methods::QueueDeclare {
            arguments,
            ..Default::default()
        }),
    );
    let object = parse(&declare);
    assert_eq!(
        object["fields"]["arguments"],
        json!({"k\"\n": "\u{1b}[0m\u{fffd}"})
    );
}

#[test]
fn json_body_cut_is_valid_json_and_flagged() {
    // 3 × "é" (c3 a9): a limit of 5 octets would split the third; the cut keeps two.
    let frame = Frame::Body(7, Bytes::from("ééé"));
    let line = Json {
        frame: &frame,
        body_limit: 5,
    }
    .to_string();
    let object: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        object,
        json!({"channel": 7, "type": "body", "size": 6, "body": "éé", "body_truncated": true})
    );
}

/// Any frame the `arbitrary` feature can build, from fuzz-style input.
fn any_frame() -> impl Strategy<Value = Frame> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_filter_map("not enough input", |data| {
        Frame::arbitrary(&mut Unstructured::new(&data)).ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_of_any_frame_parses_and_names_the_frame(frame in any_frame()) {
        let line = json(&frame).to_string();
        let object: Value = serde_json::from_str(&line)
            .map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        match &frame {
            Frame::ProtocolHeader(header) => {
                prop_assert_eq!(&object["type"], "protocol-header");
                prop_assert_eq!(&object["revision"], header.version[3]);
            }
            Frame::Method(channel, method) => {
                let info = method.info();
                prop_assert_eq!(&object["type"], "method");
                prop_assert_eq!(&object["channel"], *channel);
                prop_assert_eq!(&object["class"], info.class);
                prop_assert_eq!(&object["method"], info.method);
                // Every field the spec declares, reserved ones aside, by its spec name.
                // (serde_json's map sorts its keys, so both sides are compared sorted.)
                let fields = object["fields"].as_object().unwrap();
                let mut spec_fields: Vec<&str> =
                    info.fields.iter().filter(|f| !f.reserved).map(|f| f.name).collect();
                spec_fields.sort_unstable();
                let found: Vec<&str> = fields.keys().map(String::as_str).collect();
                prop_assert_eq!(found, spec_fields);
            }
            Frame::Header(channel, header) => {
                prop_assert_eq!(&object["type"], "header");
                prop_assert_eq!(&object["channel"], *channel);
                prop_assert_eq!(&object["body_size"], header.body_size);
            }
            Frame::Body(channel, body) => {
                prop_assert_eq!(&object["type"], "body");
                prop_assert_eq!(&object["channel"], *channel);
                prop_assert_eq!(&object["size"], body.len());
            }
            Frame::Heartbeat => prop_assert_eq!(&object["type"], "heartbeat"),
        }
    }

    #[test]
    fn text_of_any_frame_is_one_line_without_control_characters(frame in any_frame()) {
        let line = text(&frame).to_string();
        prop_assert!(!line.chars().any(char::is_control), "{}", line);
    }
}
