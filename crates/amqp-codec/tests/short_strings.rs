//! Short strings: up to 31 octets kept inline, longer ones as a slice of the frame, the same
//! values either way; and frames whose fields must be slices of the frame, which the decoder
//! reads partly in place and then from the frame split off the read buffer.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use amqp_codec::methods::{BasicAck, BasicDeliver, BasicPublish};
use amqp_codec::{
    decode, BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, Limits, LongString,
    Method, ShortString,
};
use bytes::{Bytes, BytesMut};

const FRAME_MAX: u32 = 131_072;

fn hash_of(value: &ShortString) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Encodes `frames` one after another into one read buffer.
fn read_buffer(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf, FRAME_MAX).unwrap();
    }
    buf
}

/// Decodes every frame of `buf`, which must end on a frame boundary.
fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decode(&mut buf, &Limits::with_frame_max(FRAME_MAX)).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} octets left after the frames", buf.len());
    frames
}

/// `len` octets of printable text that are not all the same.
fn text(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

#[test]
fn short_strings_held_inline_or_shared_are_equal_ordered_and_hashed_by_their_octets() {
    for len in [0, 1, 31, ShortString::INLINE_CAPACITY, 39, 255] {
        let octets = text(len);
        let copied = ShortString::from(octets.as_str());
        let shared = ShortString::new(Bytes::from(octets.clone()));
        assert_eq!(copied, shared, "{len} octets");
        assert_eq!(copied.cmp(&shared), std::cmp::Ordering::Equal);
        assert_eq!(hash_of(&copied), hash_of(&shared));
        assert_eq!(copied.as_bytes(), octets.as_bytes());
        assert_eq!(copied.len(), len);
        assert_eq!(copied.bytes(), shared.bytes());
        assert_eq!(copied.clone().into_bytes(), Bytes::from(octets.clone()));
        assert_eq!(format!("{copied:?}"), format!("{shared:?}"));
        assert_eq!(copied, octets.as_str());
    }
    let (inline, shared) = (ShortString::from("abc"), ShortString::from_static("abd"));
    assert_eq!(inline.cmp(&shared), std::cmp::Ordering::Less);
    let (shared, inline) = (ShortString::from_static("ab"), ShortString::from("abc"));
    assert_eq!(shared.cmp(&inline), std::cmp::Ordering::Less);
    assert_ne!(ShortString::from("abc"), ShortString::from("abcd"));
    assert_eq!(ShortString::default(), ShortString::from_static(""));
    assert!(ShortString::default().is_empty());
}

#[test]
fn short_string_that_is_not_utf8_shows_its_octets_in_either_form() {
    let octets: &[u8] = &[0xff, 0x00, 0x41];
    let copied = ShortString::from(octets);
    let shared = ShortString::new(Bytes::from_static(octets));
    assert_eq!(format!("{copied:?}"), "ShortString([ff, 00, 41])");
    assert_eq!(format!("{shared:?}"), "ShortString([ff, 00, 41])");
    assert_eq!(copied.as_str(), None);
}

#[test]
fn decode_reads_short_strings_on_either_side_of_the_inline_capacity() {
    let capacity = ShortString::INLINE_CAPACITY;
    let frames: Vec<Frame> = [0, 1, capacity - 1, capacity, capacity + 1, 200, 255]
        .into_iter()
        .map(|len| {
            Frame::Method(
                1,
                BasicDeliver {
                    consumer_tag: text(len).into(),
                    delivery_tag: len as u64,
                    redelivered: true,
                    exchange: "amq.direct".into(),
                    routing_key: text(255 - len).into(),
                }
                .into(),
            )
        })
        .collect();

    assert_eq!(decode_all(read_buffer(&frames)), frames);
}

#[test]
fn decode_reads_a_method_whose_last_string_is_too_long_to_keep_inline_then_the_next_frame() {
    // The exchange is read in place, the routing key (over 31 octets) makes the frame a slice
    // of the read buffer; the ack after it must be read from where the publish ended.
    let publish = Frame::Method(
        1,
        BasicPublish {
            exchange: "amq.topic".into(),
            routing_key: "orders.eu-west-1.customer-12345.created.v2".into(),
            mandatory: true,
            immediate: false,
        }
        .into(),
    );
    let ack = Frame::Method(
        1,
        BasicAck {
            delivery_tag: 7,
            multiple: true,
        }
        .into(),
    );
    let frames = vec![publish, ack.clone(), ack];

    assert_eq!(decode_all(read_buffer(&frames)), frames);
}

#[test]
fn decode_reads_a_header_whose_nested_table_needs_the_frame_then_the_body() {
    // content-type is read in place; deep in the headers table, a key over 31 octets and a
    // long string make the frame a slice of the read buffer, while a nested table is being
    // read; the properties after the table and the body frame must still come out right.
    let mut inner = FieldTable::new();
    inner.insert("count", 3);
    inner.insert(text(45).as_str(), "a long string value");
    let mut headers = FieldTable::new();
    headers.insert("x-short", true);
    headers.insert("x-nested", inner);
    headers.insert("x-after", 42i64);
    let properties = BasicProperties {
        content_type: Some("application/json".into()),
        headers: Some(headers),
        delivery_mode: Some(2),
        correlation_id: Some(text(60).into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        timestamp: Some(1_700_000_000),
        app_id: Some("billing".into()),
        ..BasicProperties::default()
    };
    let frames = vec![
        Frame::Header(1, ContentHeader::basic(5, properties)),
        Frame::Body(1, Bytes::from_static(b"hello")),
    ];

    assert_eq!(decode_all(read_buffer(&frames)), frames);
}

#[test]
fn decode_reads_a_method_with_a_table_of_short_keys_and_fixed_values_in_place() {
    // A table needs the frame only for long strings, byte arrays and long keys: this one is
    // read in place, and must come out the same.
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-length", 1000);
    arguments.insert("x-message-ttl", 60_000i64);
    arguments.insert("x-single-active-consumer", true);
    let declare = Frame::Method(
        1,
        Method::QueueDeclare(amqp_codec::methods::QueueDeclare {
            queue: "tasks".into(),
            durable: true,
            arguments,
            ..Default::default()
        }),
    );
    let secure_ok = Frame::Method(
        0,
        Method::ConnectionSecureOk(amqp_codec::methods::ConnectionSecureOk {
            response: LongString::from("\0guest\0guest"),
        }),
    );
    let frames = vec![declare.clone(), secure_ok, declare];

    assert_eq!(decode_all(read_buffer(&frames)), frames);
    // The value types are what was written, not just equal by some looser comparison.
    let Frame::Method(_, Method::QueueDeclare(decoded)) = &decode_all(read_buffer(&frames))[0]
    else {
        panic!("queue.declare expected");
    };
    assert_eq!(
        decoded.arguments.get("x-message-ttl"),
        Some(&FieldValue::I64(60_000))
    );
}
