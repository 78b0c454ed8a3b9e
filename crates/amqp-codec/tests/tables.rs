//! Field tables (spec 4.2.5.5) with RabbitMQ's type letters: every letter decoded from
//! hand-written hex and encoded back, and the table operations.
//!
//! The letters are RabbitMQ's, not the 0-9-1 spec's (RabbitMQ's "AMQP 0-9-1 errata" page,
//! "Field types"): `s` is a signed 16-bit integer rather than a short string, and `x` is a
//! byte array, which the spec does not have.

use amqp_codec::methods::QueueDeclare;
use amqp_codec::{
    decode, Decimal, FieldArray, FieldTable, FieldValue, Frame, Limits, LongString, Method,
};
use bytes::{Bytes, BytesMut};

/// The octets of a hex string (whitespace ignored).
fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the arguments table starts in a queue.declare frame with an empty queue name:
/// frame header 7, class and method 4, reserved-1 2, queue name 1, bits 1.
const TABLE_AT: usize = 15;

/// Decodes a field table (the octets of `table_hex`, size included) by carrying it as the
/// arguments of a queue.declare frame, the way tables travel.
fn decode_table(table_hex: &str) -> FieldTable {
    let table = unhex(table_hex);
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&unhex("01 0001")); // method frame, channel 1
    frame.extend_from_slice(&((TABLE_AT - 7 + table.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&unhex("0032 000a 0000 00 00")); // queue.declare, ticket, "", bits
    frame.extend_from_slice(&table);
    frame.extend_from_slice(&[0xce]);
    match decode(&mut frame, &Limits::default()) {
        Ok(Some(Frame::Method(1, Method::QueueDeclare(declare)))) => {
            assert!(frame.is_empty());
            declare.arguments
        }
        other => panic!("{table_hex} decoded as {other:?}"),
    }
}

/// The octets of `table`, size included, as the encoder writes them.
fn encode_table(table: &FieldTable) -> Vec<u8> {
    let declare = QueueDeclare {
        arguments: table.clone(),
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    Frame::Method(1, declare.into())
        .encode(&mut buf, 0)
        .unwrap();
    buf[TABLE_AT..buf.len() - 1].to_vec()
}

/// Every type letter RabbitMQ defines, in one table.
#[rustfmt::skip]
const EVERY_TYPE_HEX: &str = concat!(
    "000000ba",                 // table size 186
    "0474727565",               // key "true"
    "74", "01",                 //   't' boolean: true
    "026938",                   // key "i8"
    "62", "85",                 //   'b' signed 8-bit: -123
    "027538",                   // key "u8"
    "42", "c8",                 //   'B' unsigned 8-bit: 200
    "03693136",                 // key "i16"
    "73", "8000",               //   's' signed 16-bit: -32768
    "03753136",                 // key "u16"
    "75", "ffff",               //   'u' unsigned 16-bit: 65535
    "03693332",                 // key "i32"
    "49", "fffffffe",           //   'I' signed 32-bit: -2
    "03753332",                 // key "u32"
    "69", "80000000",           //   'i' unsigned 32-bit: 2147483648
    "03693634",                 // key "i64"
    "6c", "ffffffffffffffff",   //   'l' signed 64-bit: -1
    "03753634",                 // key "u64"
    "4c", "8000000000000000",   //   'L' unsigned 64-bit: 2^63
    "03663332",                 // key "f32"
    "66", "3fc00000",           //   'f' 32-bit float: 1.5
    "03663634",                 // key "f64"
    "64", "c004000000000000",   //   'd' 64-bit float: -2.5
    "03646563",                 // key "dec"
    "44", "02", "00003039",     //   'D' decimal: scale 2, value 12345, so 123.45
    "03737472",                 // key "str"
    "53", "00000005",           //   'S' long string of 5:
    "68656c6c6f",               //     "hello"
    "0362696e",                 // key "bin"
    "78", "00000003",           //   'x' byte array of 3:
    "00ff7f",                   //     00 ff 7f
    "03617272",                 // key "arr"
    "41", "0000000b",           //   'A' array of 11 octets:
    "49", "00000001",           //     'I' 1
    "53", "00000000",           //     'S' ""
    "56",                       //     'V'
    "027473",                   // key "ts"
    "54", "0000000065f1c1c0",   //   'T' timestamp: 1710342592
    "03746162",                 // key "tab"
    "46", "00000006",           //   'F' table of 6 octets:
    "036b6579",                 //     key "key"
    "62", "07",                 //       'b' 7
    "04766f6964",               // key "void"
    "56",                       //   'V' void
);

/// Each letter's value as `EVERY_TYPE_HEX` holds it, in the same order.
fn every_type_values() -> Vec<(&'static str, FieldValue)> {
    vec![
        ("true", FieldValue::Bool(true)),
        ("i8", FieldValue::I8(-123)),
        ("u8", FieldValue::U8(200)),
        ("i16", FieldValue::I16(-32768)),
        ("u16", FieldValue::U16(65535)),
        ("i32", FieldValue::I32(-2)),
        ("u32", FieldValue::U32(2_147_483_648)),
        ("i64", FieldValue::I64(-1)),
        ("u64", FieldValue::U64(1 << 63)),
        ("f32", FieldValue::F32(1.5)),
        ("f64", FieldValue::F64(-2.5)),
        (
            "dec",
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 12345,
            }),
        ),
        ("str", FieldValue::LongString(LongString::from("hello"))),
        (
            "bin",
            FieldValue::ByteArray(Bytes::from_static(&[0x00, 0xff, 0x7f])),
        ),
        (
            "arr",
            FieldValue::Array(FieldArray(vec![
                FieldValue::I32(1),
                FieldValue::LongString(LongString::default()),
                FieldValue::Void,
            ])),
        ),
        ("ts", FieldValue::Timestamp(1_710_342_592)),
        (
            "tab",
            FieldValue::Table(FieldTable::from_iter([("key", FieldValue::I8(7))])),
        ),
        ("void", FieldValue::Void),
    ]
}

#[test]
fn every_rabbitmq_type_letter_decodes_from_hand_written_hex() {
    let table = decode_table(EVERY_TYPE_HEX);
    let expected = every_type_values();
    assert_eq!(table.len(), expected.len());
    for ((key, value), (expected_key, expected_value)) in table.iter().zip(&expected) {
        assert_eq!(key, expected_key);
        assert_eq!(value, expected_value, "value of {expected_key}");
        assert_eq!(table.get(expected_key), Some(expected_value));
    }
    let letters: String = table
        .iter()
        .map(|(_, v)| char::from(v.type_letter()))
        .collect();
    assert_eq!(letters, "tbBsuIilLfdDSxATFV");
}

#[test]
fn every_rabbitmq_type_letter_encodes_back_to_the_same_hex() {
    let table: FieldTable = every_type_values().into_iter().collect();
    assert_eq!(hex(&encode_table(&table)), hex(&unhex(EVERY_TYPE_HEX)));
    let decoded = decode_table(EVERY_TYPE_HEX);
    assert_eq!(decoded, table);
    assert_eq!(hex(&encode_table(&decoded)), hex(&unhex(EVERY_TYPE_HEX)));
}

#[test]
fn each_type_letter_alone_round_trips() {
    // One entry at a time, under key "v", so an error points at one letter.
    let cases: [(&str, FieldValue); 18] = [
        ("74 00", FieldValue::Bool(false)),
        ("62 7f", FieldValue::I8(127)),
        ("42 00", FieldValue::U8(0)),
        ("73 7fff", FieldValue::I16(32767)),
        ("75 0001", FieldValue::U16(1)),
        ("49 80000000", FieldValue::I32(i32::MIN)),
        ("69 ffffffff", FieldValue::U32(u32::MAX)),
        ("6c 8000000000000000", FieldValue::I64(i64::MIN)),
        ("4c ffffffffffffffff", FieldValue::U64(u64::MAX)),
        ("66 7fc00000", FieldValue::F32(f32::NAN)),
        ("64 7ff0000000000000", FieldValue::F64(f64::INFINITY)),
        ("44 00 00000000", FieldValue::Decimal(Decimal::default())),
        ("53 00000002 c3a9", FieldValue::LongString("é".into())),
        ("78 00000000", FieldValue::ByteArray(Bytes::new())),
        ("41 00000000", FieldValue::Array(FieldArray::default())),
        ("54 0000000000000000", FieldValue::Timestamp(0)),
        ("46 00000000", FieldValue::Table(FieldTable::new())),
        ("56", FieldValue::Void),
    ];
    for (value_hex, expected) in cases {
        let value = unhex(value_hex);
        // size, key "v", the value
        let table_hex = format!("{:08x} 0176 {}", 2 + value.len(), hex(&value));
        let table = decode_table(&table_hex);
        assert_eq!(table.get("v"), Some(&expected), "{value_hex}");
        assert_eq!(expected.type_letter(), value[0], "{value_hex}");
        let one: FieldTable = [("v", expected)].into_iter().collect();
        assert_eq!(hex(&encode_table(&one)), hex(&unhex(&table_hex)));
    }
}

#[test]
fn nan_read_from_the_wire_equals_the_nan_written() {
    // A NaN with payload bits: equal by bits, so a round trip compares equal.
    let table = decode_table("0000000b 0176 64 7ff8000000000001");
    let Some(FieldValue::F64(value)) = table.get("v") else {
        panic!("not a double: {table:?}");
    };
    assert!(value.is_nan());
    assert_eq!(value.to_bits(), 0x7ff8_0000_0000_0001);
    assert_eq!(
        table.get("v"),
        Some(&FieldValue::F64(f64::from_bits(0x7ff8_0000_0000_0001)))
    );
    assert_ne!(table.get("v"), Some(&FieldValue::F64(f64::NAN)));
}

#[test]
fn nonzero_boolean_octet_reads_as_true() {
    // 't' 02: any non-zero octet is true; it is written back as 01.
    let table = decode_table("00000004 0176 74 02");
    assert_eq!(table.get("v"), Some(&FieldValue::Bool(true)));
    assert_eq!(hex(&encode_table(&table)), "0000000401767401");
}

#[test]
fn insert_replaces_the_value_and_keeps_the_position() {
    let mut table = FieldTable::new();
    table.insert("x-max-length", 10);
    table.insert("x-queue-type", "quorum");
    table.insert("x-max-length", 20);
    assert_eq!(table.len(), 2);
    assert_eq!(table.get("x-max-length"), Some(&FieldValue::I32(20)));
    let keys: Vec<&str> = table.iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["x-max-length", "x-queue-type"]);
}

#[test]
fn remove_takes_the_entry_out() {
    let mut table: FieldTable = [("a", 1), ("b", 2)].into_iter().collect();
    assert_eq!(table.remove("a"), Some(FieldValue::I32(1)));
    assert_eq!(table.remove("a"), None);
    assert!(!table.contains_key("a"));
    assert!(table.contains_key("b"));
    assert_eq!(table.len(), 1);
}

#[test]
fn same_entries_ignores_order_where_equality_does_not() {
    let ab: FieldTable = [("a", 1), ("b", 2)].into_iter().collect();
    let ba: FieldTable = [("b", 2), ("a", 1)].into_iter().collect();
    assert!(ab.same_entries(&ba));
    assert!(ba.same_entries(&ab));
    assert_ne!(ab, ba);

    let other_value: FieldTable = [("b", 2), ("a", 3)].into_iter().collect();
    assert!(!ab.same_entries(&other_value));
    let other_type: FieldTable = [("b", FieldValue::I32(2)), ("a", FieldValue::I64(1))]
        .into_iter()
        .collect();
    assert!(!ab.same_entries(&other_type));
    let fewer: FieldTable = [("a", 1)].into_iter().collect();
    assert!(!ab.same_entries(&fewer));
    assert!(!fewer.same_entries(&ab));
}

#[test]
fn same_entries_tells_apart_tables_with_a_repeated_key() {
    // The wire may repeat a key; insert never does, so these come from hex.
    // size 8: "k" 't' 1, "k" 't' 1
    let twice = decode_table("00000008 016b 7401 016b 7401");
    // size 8: "k" 't' 1, "j" 't' 1
    let k_and_j = decode_table("00000008 016b 7401 016a 7401");
    assert_eq!(twice.len(), 2);
    assert_eq!(twice.get("k"), Some(&FieldValue::Bool(true)));
    assert!(!twice.same_entries(&k_and_j));
    assert!(!k_and_j.same_entries(&twice));
    assert!(twice.same_entries(&twice.clone()));
    // The repeated key survives a round trip.
    assert_eq!(hex(&encode_table(&twice)), "00000008016b7401016b7401");
}

#[test]
fn nested_tables_and_arrays_round_trip_by_value() {
    let mut inner = FieldTable::new();
    inner.insert("x-dead-letter-exchange", "dlx");
    inner.insert("x-message-ttl", 60_000);
    let array = FieldArray(vec![
        FieldValue::Table(inner.clone()),
        FieldValue::Array(FieldArray(vec![FieldValue::Bool(false)])),
        FieldValue::I64(-5),
    ]);
    let mut table = FieldTable::new();
    table.insert("policy", inner);
    table.insert("list", FieldValue::Array(array));
    let decoded = decode_table(&hex(&encode_table(&table)));
    assert_eq!(decoded, table);
    assert!(decoded.same_entries(&table));
}

/// Every string and byte array of `value`, nested ones included.
fn value_octets<'a>(value: &'a FieldValue, out: &mut Vec<&'a [u8]>) {
    match value {
        FieldValue::LongString(text) => out.push(text.as_bytes()),
        FieldValue::ByteArray(octets) => out.push(octets),
        FieldValue::Array(values) => values.iter().for_each(|v| value_octets(v, out)),
        FieldValue::Table(table) => table_octets(table, out),
        _ => {}
    }
}

/// Every name, string and byte array of `table`, nested ones included.
fn table_octets<'a>(table: &'a FieldTable, out: &mut Vec<&'a [u8]>) {
    for (name, value) in table.iter() {
        out.push(name.as_bytes());
        value_octets(value, out);
    }
}

#[test]
fn a_detached_table_keeps_no_octet_of_its_frame() {
    let long_name = "x-a-name-longer-than-thirty-one-octets";
    let mut inner = FieldTable::new();
    inner.insert(long_name, "y".repeat(40).as_str());
    let mut table = FieldTable::new();
    table.insert("x-dead-letter-exchange", "a dead letter exchange");
    table.insert("nested", inner);
    table.insert(
        "list",
        FieldValue::Array(FieldArray(vec![
            FieldValue::LongString("in an array".into()),
            FieldValue::ByteArray(Bytes::from_static(b"raw octets")),
            FieldValue::I32(7),
        ])),
    );
    let declare = QueueDeclare {
        queue: "a-queue-name-longer-than-thirty-one-octets".into(),
        arguments: table.clone(),
        ..Default::default()
    };
    let mut wire = BytesMut::new();
    Frame::Method(1, declare.into())
        .encode(&mut wire, 0)
        .unwrap();
    let frame_octets = wire.as_ptr_range();
    let Ok(Some(Frame::Method(1, Method::QueueDeclare(decoded)))) =
        decode(&mut wire, &Limits::default())
    else {
        panic!("not a queue.declare");
    };
    let in_frame = |octets: &&[u8]| frame_octets.contains(&octets.as_ptr());

    let mut viewed = vec![decoded.queue.as_bytes()];
    table_octets(&decoded.arguments, &mut viewed);
    assert!(
        viewed.iter().any(in_frame),
        "a decoded table is a view of its frame (else this test shows nothing)"
    );

    let queue = decoded.queue.detached();
    let arguments = decoded.arguments.detached();
    assert_eq!(queue, decoded.queue);
    assert_eq!(arguments, table);
    let mut kept = vec![queue.as_bytes()];
    table_octets(&arguments, &mut kept);
    assert_eq!(kept.len(), viewed.len());
    assert!(!kept.iter().any(in_frame), "no octet of the frame kept");
}
