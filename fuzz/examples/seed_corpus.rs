//! Writes the seed corpus of the fuzz targets: realistic AMQP 0-9-1 byte streams, as a client
//! and RabbitMQ send them, into `fuzz/corpus/<target>/seed-<name>`.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! - `decode_frame`, `decode_roundtrip`: the same streams: both handshakes, declaring and
//!   binding, publish (method + header + body, the body in two frames), deliver, ack / nack /
//!   reject, a field table with every type letter RabbitMQ knows, closing; one frame of every
//!   method of the spec with all its fields zero; and a few broken frames, one per error the
//!   decoder reports.
//! - `encode_structured`: its input is what `arbitrary` reads, not AMQP, so its seeds are
//!   pseudo-random bytes of several lengths (a fixed xorshift, so reruns write the same files).
//!
//! Rerunning overwrites the seeds and leaves every other corpus file alone.

use std::fs;
use std::path::{Path, PathBuf};

use amqp_codec::methods::*;
use amqp_codec::spec::{WireType, METHODS};
use amqp_codec::{
    BasicProperties, ContentHeader, Decimal, FieldArray, FieldTable, FieldValue, Frame,
    ProtocolHeader,
};
use bytes::{Bytes, BytesMut};

fn main() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (name, data) in decode_seeds() {
        for target in ["decode_frame", "decode_roundtrip"] {
            write(&corpus.join(target), name, &data);
            written += 1;
        }
    }
    for (len, data) in structured_seeds() {
        write(
            &corpus.join("encode_structured"),
            &format!("random-{len}"),
            &data,
        );
        written += 1;
    }
    println!("wrote {written} seed files under {}", corpus.display());
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::create_dir_all(dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

/// Encodes frames back to back, as they would travel on one connection.
fn stream(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame
            .encode(&mut buf, 0)
            .expect("seed frames are encodable");
    }
    buf.to_vec()
}

fn decode_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("client-handshake", stream(&client_handshake())),
        ("server-handshake", stream(&server_handshake())),
        ("topology", stream(&topology())),
        ("publish", stream(&publish())),
        ("deliver-ack", stream(&deliver_and_settle())),
        ("every-type-letter", stream(&every_type_letter())),
        ("close", stream(&close())),
        ("every-method-zeroed", every_method_zeroed()),
    ];
    let mut zeroed = BytesMut::from(&seeds[7].1[..]);
    for info in METHODS {
        let frame = amqp_codec::decode(&mut zeroed, &Default::default());
        assert!(
            matches!(frame, Ok(Some(_))),
            "{} zeroed: {frame:?}",
            info.name
        );
    }
    // The whole client side of a session, in one stream.
    let mut session = Vec::new();
    for frames in [client_handshake(), topology(), publish(), close()] {
        session.extend(stream(&frames));
    }
    seeds.push(("client-session", session));
    seeds.extend(broken_frames());
    seeds
}

fn table<const N: usize>(entries: [(&str, FieldValue); N]) -> FieldTable {
    entries.into_iter().collect()
}

fn client_handshake() -> Vec<Frame> {
    let capabilities = table([
        ("publisher_confirms", true.into()),
        ("exchange_exchange_bindings", true.into()),
        ("basic.nack", true.into()),
        ("consumer_cancel_notify", true.into()),
        ("connection.blocked", true.into()),
        ("authentication_failure_close", true.into()),
    ]);
    let client_properties = table([
        ("product", "amqp-rs".into()),
        ("version", "0.1.0".into()),
        ("platform", "Rust".into()),
        ("connection_name", "seed".into()),
        ("capabilities", capabilities.into()),
    ]);
    vec![
        Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
        Frame::Method(
            0,
            ConnectionStartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
        ),
        Frame::Method(1, ChannelOpen.into()),
        Frame::Method(1, ConfirmSelect { nowait: false }.into()),
    ]
}

fn server_handshake() -> Vec<Frame> {
    let capabilities = table([
        ("publisher_confirms", true.into()),
        ("exchange_exchange_bindings", true.into()),
        ("basic.nack", true.into()),
        ("consumer_cancel_notify", true.into()),
        ("connection.blocked", true.into()),
        ("consumer_priorities", true.into()),
        ("authentication_failure_close", true.into()),
        ("per_consumer_qos", true.into()),
        ("direct_reply_to", true.into()),
    ]);
    let server_properties = table([
        ("capabilities", capabilities.into()),
        ("cluster_name", "rabbit@localhost".into()),
        (
            "copyright",
            "Copyright (c) 2007-2024 Broadcom Inc and/or its subsidiaries".into(),
        ),
        (
            "information",
            "Licensed under the MPL 2.0. Website: https://rabbitmq.com".into(),
        ),
        ("platform", "Erlang/OTP 26.2.5".into()),
        ("product", "RabbitMQ".into()),
        ("version", "3.13.7".into()),
    ]);
    vec![
        Frame::Method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties,
                mechanisms: "AMQPLAIN PLAIN".into(),
                locales: "en_US".into(),
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }
            .into(),
        ),
        Frame::Method(0, ConnectionOpenOk.into()),
        Frame::Method(1, ChannelOpenOk.into()),
        Frame::Method(1, ConfirmSelectOk.into()),
        Frame::Heartbeat,
    ]
}

fn topology() -> Vec<Frame> {
    let queue_arguments = table([
        ("x-queue-type", "quorum".into()),
        ("x-message-ttl", FieldValue::I32(60_000)),
        ("x-max-length", FieldValue::I64(10_000)),
        ("x-dead-letter-exchange", "dlx".into()),
    ]);
    vec![
        Frame::Method(
            1,
            ExchangeDeclare {
                exchange: "logs".into(),
                kind: "fanout".into(),
                durable: true,
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(1, ExchangeDeclareOk.into()),
        Frame::Method(
            1,
            QueueDeclare {
                queue: "task_queue".into(),
                durable: true,
                arguments: queue_arguments,
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(
            1,
            QueueDeclareOk {
                queue: "task_queue".into(),
                message_count: 3,
                consumer_count: 1,
            }
            .into(),
        ),
        Frame::Method(
            1,
            QueueBind {
                queue: "task_queue".into(),
                exchange: "logs".into(),
                routing_key: "black".into(),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(1, QueueBindOk.into()),
        Frame::Method(
            1,
            BasicQos {
                prefetch_size: 0,
                prefetch_count: 1,
                global: false,
            }
            .into(),
        ),
        Frame::Method(1, BasicQosOk.into()),
        Frame::Method(
            1,
            BasicConsume {
                queue: "task_queue".into(),
                consumer_tag: "amq.ctag-seed".into(),
                arguments: table([("x-priority", FieldValue::I32(10))]),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicConsumeOk {
                consumer_tag: "amq.ctag-seed".into(),
            }
            .into(),
        ),
    ]
}

fn full_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        headers: Some(table([
            ("x-retry", FieldValue::I32(2)),
            ("trace", "abc".into()),
        ])),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("c0ffee".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some("msg-1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("greeting".into()),
        user_id: Some("guest".into()),
        app_id: Some("seed".into()),
        cluster_id: Some("".into()),
    }
}

fn publish() -> Vec<Frame> {
    let body = b"{\"hello\":\"world\"}";
    let (first, second) = body.split_at(9);
    vec![
        Frame::Method(
            1,
            BasicPublish {
                exchange: "".into(),
                routing_key: "task_queue".into(),
                mandatory: true,
                immediate: false,
            }
            .into(),
        ),
        Frame::Header(
            1,
            ContentHeader::basic(body.len() as u64, full_properties()),
        ),
        Frame::Body(1, Bytes::copy_from_slice(first)),
        Frame::Body(1, Bytes::copy_from_slice(second)),
        // An empty message: a header with body_size 0 and no body frame.
        Frame::Method(
            1,
            BasicPublish {
                exchange: "logs".into(),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(0, BasicProperties::default())),
    ]
}

fn deliver_and_settle() -> Vec<Frame> {
    let properties = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let mut frames = Vec::new();
    for tag in 1..=2u64 {
        frames.push(Frame::Method(
            1,
            BasicDeliver {
                consumer_tag: "amq.ctag-seed".into(),
                delivery_tag: tag,
                redelivered: tag == 2,
                exchange: "".into(),
                routing_key: "task_queue".into(),
            }
            .into(),
        ));
        frames.push(Frame::Header(
            1,
            ContentHeader::basic(12, properties.clone()),
        ));
        frames.push(Frame::Body(1, Bytes::from_static(b"Hello World!")));
    }
    frames.extend([
        Frame::Method(
            1,
            BasicAck {
                delivery_tag: 1,
                multiple: false,
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicNack {
                delivery_tag: 2,
                multiple: true,
                requeue: true,
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicReject {
                delivery_tag: 3,
                requeue: false,
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicGetOk {
                delivery_tag: 4,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 0,
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(2, BasicProperties::default())),
        Frame::Body(1, Bytes::from_static(b"hi")),
        Frame::Method(1, BasicGetEmpty.into()),
        Frame::Heartbeat,
    ]);
    frames
}

/// A table holding every type letter RabbitMQ knows, one level nested in an array and a table.
fn every_type_letter() -> Vec<Frame> {
    let values = vec![
        ("t", FieldValue::Bool(true)),
        ("b", FieldValue::I8(-8)),
        ("B", FieldValue::U8(200)),
        ("s", FieldValue::I16(-1600)),
        ("u", FieldValue::U16(60_000)),
        ("I", FieldValue::I32(-320_000)),
        ("i", FieldValue::U32(4_000_000_000)),
        ("l", FieldValue::I64(-6_400_000_000)),
        ("L", FieldValue::U64(u64::MAX)),
        ("f", FieldValue::F32(1.5)),
        ("d", FieldValue::F64(-2.25e-3)),
        (
            "D",
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 31_415,
            }),
        ),
        ("S", FieldValue::LongString("long string".into())),
        (
            "x",
            FieldValue::ByteArray(Bytes::from_static(&[0, 1, 0xfe, 0xff])),
        ),
        ("T", FieldValue::Timestamp(1_700_000_000)),
        ("V", FieldValue::Void),
    ];
    let array = FieldArray(values.iter().map(|(_, v)| v.clone()).collect());
    let mut headers: FieldTable = values.into_iter().collect();
    headers.insert("A", FieldValue::Array(array));
    let nested = headers.clone();
    headers.insert("F", FieldValue::Table(nested));
    vec![
        Frame::Method(
            1,
            BasicPublish {
                exchange: "amq.headers".into(),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Header(
            1,
            ContentHeader::basic(
                1,
                BasicProperties {
                    headers: Some(headers.clone()),
                    ..Default::default()
                },
            ),
        ),
        Frame::Body(1, Bytes::from_static(b"!")),
        Frame::Method(
            1,
            ExchangeBind {
                destination: "dst".into(),
                source: "amq.headers".into(),
                routing_key: "".into(),
                no_wait: false,
                arguments: headers,
            }
            .into(),
        ),
    ]
}

fn close() -> Vec<Frame> {
    vec![
        Frame::Method(
            1,
            BasicCancel {
                consumer_tag: "amq.ctag-seed".into(),
                no_wait: false,
            }
            .into(),
        ),
        Frame::Method(
            1,
            ChannelClose {
                reply_code: 406,
                reply_text: "PRECONDITION_FAILED - unknown delivery tag 3".into(),
                class_id: 60,
                method_id: 80,
            }
            .into(),
        ),
        Frame::Method(1, ChannelCloseOk.into()),
        Frame::Method(
            0,
            ConnectionBlocked {
                reason: "low on memory".into(),
            }
            .into(),
        ),
        Frame::Method(0, ConnectionUnblocked.into()),
        Frame::Method(
            0,
            ConnectionClose {
                reply_code: 200,
                reply_text: "Goodbye".into(),
                class_id: 0,
                method_id: 0,
            }
            .into(),
        ),
        Frame::Method(0, ConnectionCloseOk.into()),
    ]
}

/// One method frame per method of the spec, every field zero or empty, built from the spec
/// table rather than the structs so that a method the generated code forgot would show up.
fn every_method_zeroed() -> Vec<u8> {
    let mut out = Vec::new();
    for info in METHODS {
        let mut payload = Vec::new();
        payload.extend(info.class_id.to_be_bytes());
        payload.extend(info.method_id.to_be_bytes());
        let mut bits_open = 0usize; // bits already packed into the last octet
        for field in info.fields {
            let zeros = match field.wire {
                WireType::Bit if bits_open > 0 && bits_open < 8 => {
                    bits_open += 1;
                    continue;
                }
                WireType::Bit => {
                    bits_open = 1;
                    payload.push(0);
                    continue;
                }
                WireType::Octet | WireType::ShortStr => 1,
                WireType::Short => 2,
                WireType::Long | WireType::LongStr | WireType::Table => 4,
                WireType::LongLong | WireType::Timestamp => 8,
            };
            bits_open = 0;
            payload.extend(std::iter::repeat_n(0u8, zeros));
        }
        out.push(1); // type: method
        out.extend(0u16.to_be_bytes()); // channel 0
        out.extend((payload.len() as u32).to_be_bytes()); // size
        out.extend(payload);
        out.push(0xCE); // frame end
    }
    out
}

/// One broken frame per error the decoder reports, each after a good heartbeat.
fn broken_frames() -> Vec<(&'static str, Vec<u8>)> {
    let heartbeat: &[u8] = &[8, 0, 0, 0, 0, 0, 0, 0xCE];
    let broken: [(&'static str, &[u8]); 10] = [
        // "AMQP" 1 1 0 10: AMQP 0-10, decoded as a protocol header of another version
        ("protocol-0-10", b"AMQP\x01\x01\x00\x0a"),
        // "HTTP/1.1": not AMQP at all
        ("not-amqp", b"GET / HTTP/1.1\r\n"),
        // type 4 (none), channel 0, size 0, end
        ("unknown-frame-type", &[4, 0, 0, 0, 0, 0, 0, 0xCE]),
        // type 3 (body), channel 1, size 0x00100000 (over any fuzz frame_max)
        ("frame-too-large", &[3, 0, 1, 0, 0x10, 0, 0]),
        // heartbeat, end octet 0x00 instead of 0xCE
        ("bad-frame-end", &[8, 0, 0, 0, 0, 0, 0, 0]),
        // heartbeat on channel 1
        ("heartbeat-on-channel", &[8, 0, 1, 0, 0, 0, 0, 0xCE]),
        // method frame, size 4: class 60, method 999 (unknown)
        (
            "unknown-method",
            &[1, 0, 1, 0, 0, 0, 4, 0, 60, 0x03, 0xE7, 0xCE],
        ),
        // method frame, size 5: basic.ack (60.80) with only 1 of its 9 argument octets
        (
            "truncated-ack",
            &[1, 0, 1, 0, 0, 0, 5, 0, 60, 0, 80, 0, 0xCE],
        ),
        // header frame, size 14: class 60, weight 0, body size 1, flags 0x0002 (unknown bit 1)
        (
            "unknown-property-flag",
            &[
                2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0xCE,
            ],
        ),
        // method frame, size 11: connection.start-ok (10.11) whose table holds 'Z' (unknown type)
        (
            "unknown-field-type",
            &[
                1, 0, 0, 0, 0, 0, 11, 0, 10, 0, 11, 0, 0, 0, 3, 1, b'k', b'Z', 0xCE,
            ],
        ),
    ];
    broken
        .into_iter()
        .map(|(name, bytes)| {
            let mut data = heartbeat.to_vec();
            data.extend_from_slice(bytes);
            (name, data)
        })
        .collect()
}

/// Pseudo-random inputs for the structured target, from a fixed xorshift64 seed.
fn structured_seeds() -> Vec<(usize, Vec<u8>)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    [16, 64, 256, 1024, 4096]
        .into_iter()
        .map(|len| {
            let data = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_be_bytes()[0]
                })
                .collect();
            (len, data)
        })
        .collect()
}
