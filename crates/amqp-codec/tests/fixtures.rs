//! Real AMQP 0-9-1 frames as hex, one comment per field: each is decoded and checked value by
//! value, then encoded back to the very same bytes.
//!
//! The frames a server sends (connection.start, connection.tune, basic.deliver and the
//! content that follows it) were captured from RabbitMQ 3.10.8 on Erlang/OTP 25.2.3 with a
//! python3 socket script that sent the protocol header, logged in as guest, declared an
//! exclusive queue `amqp-codec-fixture`, published "Hello World!" to it and consumed it. The
//! frames a client sends are written out by hand from the spec (section 4.2 and the method
//! definitions), as pika sends them.

use amqp_codec::methods::{
    BasicAck, BasicDeliver, BasicPublish, ConnectionTune, QueueDeclare, QueueDeclareOk,
};
use amqp_codec::{
    decode, encode_content, BasicProperties, ContentAssembler, ContentHeader, FieldTable,
    FieldValue, Frame, Limits, LongString, Method, ProtocolHeader, PROTOCOL_HEADER,
};
use bytes::{Bytes, BytesMut};

/// The octets of a hex string (whitespace ignored).
fn unhex(text: &str) -> BytesMut {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect::<Vec<u8>>()
        .as_slice()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes the fixture, which must hold exactly one frame, with RabbitMQ's default limits.
fn decode_only_frame(fixture: &str) -> Frame {
    let mut buf = unhex(fixture);
    let frame = decode(&mut buf, &Limits::default())
        .expect("fixture decodes")
        .expect("fixture holds a whole frame");
    assert!(buf.is_empty(), "{} octets left after the frame", buf.len());
    frame
}

/// Encodes `frame` and checks it gives the fixture's octets, of the predicted length.
fn assert_encodes_to(frame: &Frame, fixture: &str) {
    let mut out = BytesMut::new();
    frame.encode(&mut out, 131_072).expect("frame encodes");
    assert_eq!(hex(&out), hex(&unhex(fixture)));
    assert_eq!(frame.encoded_len(), out.len());
}

/// The eight octets a client opens the connection with (spec 4.2.2).
#[rustfmt::skip]
const PROTOCOL_HEADER_HEX: &str = concat!(
    "414d5150", // "AMQP"
    "00",       // protocol id 0
    "00",       // major version 0
    "09",       // minor version 9
    "01",       // revision 1
);

/// connection.start exactly as RabbitMQ 3.10.8 sent it in reply to the protocol header.
#[rustfmt::skip]
const CONNECTION_START_HEX: &str = concat!(
    "01",                                   // frame type 1: method
    "0000",                                 // channel 0
    "000001f0",                             // payload size 496
    "000a",                                 // class 10: connection
    "000a",                                 // method 10: start
    "00",                                   // version-major 0
    "09",                                   // version-minor 9
    "000001cb",                             // server-properties: a table of 459 octets
        "0c6361706162696c6974696573",       //   key "capabilities"
        "46",                               //   'F': a field table
        "000000c7",                         //     of 199 octets
            "127075626c69736865725f636f6e6669726d73",                   // key "publisher_confirms"
            "7401",                                                     // 't' true
            "1a65786368616e67655f65786368616e67655f62696e64696e6773",   // key "exchange_exchange_bindings"
            "7401",                                                     // 't' true
            "0a62617369632e6e61636b",                                   // key "basic.nack"
            "7401",                                                     // 't' true
            "16636f6e73756d65725f63616e63656c5f6e6f74696679",           // key "consumer_cancel_notify"
            "7401",                                                     // 't' true
            "12636f6e6e656374696f6e2e626c6f636b6564",                   // key "connection.blocked"
            "7401",                                                     // 't' true
            "13636f6e73756d65725f7072696f726974696573",                 // key "consumer_priorities"
            "7401",                                                     // 't' true
            "1c61757468656e7469636174696f6e5f6661696c7572655f636c6f7365", // key "authentication_failure_close"
            "7401",                                                     // 't' true
            "107065725f636f6e73756d65725f716f73",                       // key "per_consumer_qos"
            "7401",                                                     // 't' true
            "0f6469726563745f7265706c795f746f",                         // key "direct_reply_to"
            "7401",                                                     // 't' true
        "0c636c75737465725f6e616d65",       //   key "cluster_name"
        "5300000009",                       //   'S' long string of 9 octets:
        "72616262697440766d",               //     "rabbit@vm"
        "09636f70797269676874",             //   key "copyright"
        "5300000037",                       //   'S' long string of 55 octets:
        "436f707972696768742028632920323030372d3230323220564d776172652c20", // "Copyright (c) 2007-2022 VMware, "
        "496e632e206f722069747320616666696c69617465732e",                   // "Inc. or its affiliates."
        "0b696e666f726d6174696f6e",         //   key "information"
        "5300000039",                       //   'S' long string of 57 octets:
        "4c6963656e73656420756e64657220746865204d504c20322e302e2057656273", // "Licensed under the MPL 2.0. Webs"
        "6974653a2068747470733a2f2f7261626269746d712e636f6d",               // "ite: https://rabbitmq.com"
        "08706c6174666f726d",               //   key "platform"
        "5300000011",                       //   'S' long string of 17 octets:
        "45726c616e672f4f54502032352e322e33", //   "Erlang/OTP 25.2.3"
        "0770726f64756374",                 //   key "product"
        "5300000008",                       //   'S' long string of 8 octets:
        "5261626269744d51",                 //     "RabbitMQ"
        "0776657273696f6e",                 //   key "version"
        "5300000006",                       //   'S' long string of 6 octets:
        "332e31302e38",                     //     "3.10.8"
    "0000000e",                             // mechanisms: a long string of 14 octets:
    "414d51504c41494e20504c41494e",         //   "AMQPLAIN PLAIN"
    "00000005",                             // locales: a long string of 5 octets:
    "656e5f5553",                           //   "en_US"
    "ce",                                   // frame end
);

/// connection.tune as RabbitMQ 3.10.8 sent it (its defaults).
#[rustfmt::skip]
const CONNECTION_TUNE_HEX: &str = concat!(
    "01",       // frame type 1: method
    "0000",     // channel 0
    "0000000c", // payload size 12
    "000a",     // class 10: connection
    "001e",     // method 30: tune
    "07ff",     // channel-max 2047
    "00020000", // frame-max 131072
    "003c",     // heartbeat 60 seconds
    "ce",       // frame end
);

/// queue.declare of a durable "task_queue", as RabbitMQ's work-queues tutorial sends it.
#[rustfmt::skip]
const QUEUE_DECLARE_HEX: &str = concat!(
    "01",                     // frame type 1: method
    "0001",                   // channel 1
    "00000016",               // payload size 22
    "0032",                   // class 50: queue
    "000a",                   // method 10: declare
    "0000",                   // reserved-1 (ticket) 0
    "0a7461736b5f7175657565", // queue: short string of 10, "task_queue"
    "02",                     // bits, LSB first: passive 0, durable 1, exclusive 0,
                              //   auto-delete 0, no-wait 0
    "00000000",               // arguments: an empty table
    "ce",                     // frame end
);

/// queue.declare-ok for the fixture queue, as RabbitMQ 3.10.8 sent it.
#[rustfmt::skip]
const QUEUE_DECLARE_OK_HEX: &str = concat!(
    "01",                                     // frame type 1: method
    "0001",                                   // channel 1
    "0000001f",                               // payload size 31
    "0032",                                   // class 50: queue
    "000b",                                   // method 11: declare-ok
    "12616d71702d636f6465632d66697874757265", // queue: short string of 18, "amqp-codec-fixture"
    "00000000",                               // message-count 0
    "00000000",                               // consumer-count 0
    "ce",                                     // frame end
);

/// basic.publish of a persistent "Hello World!" to "task_queue" on channel 1 ...
#[rustfmt::skip]
const BASIC_PUBLISH_HEX: &str = concat!(
    "01",                     // frame type 1: method
    "0001",                   // channel 1
    "00000013",               // payload size 19
    "003c",                   // class 60: basic
    "0028",                   // method 40: publish
    "0000",                   // reserved-1 (ticket) 0
    "00",                     // exchange: short string of 0, the default exchange
    "0a7461736b5f7175657565", // routing-key: short string of 10, "task_queue"
    "00",                     // bits, LSB first: mandatory 0, immediate 0
    "ce",                     // frame end
);

/// ... its content header (delivery-mode 2, persistent) ...
#[rustfmt::skip]
const CONTENT_HEADER_HEX: &str = concat!(
    "02",               // frame type 2: content header
    "0001",             // channel 1
    "0000000f",         // payload size 15
    "003c",             // class 60: basic
    "0000",             // weight 0
    "000000000000000c", // body size 12
    "1000",             // property flags: bit 12, delivery-mode
    "02",               // delivery-mode 2: persistent
    "ce",               // frame end
);

/// ... and its body frame.
#[rustfmt::skip]
const CONTENT_BODY_HEX: &str = concat!(
    "03",                       // frame type 3: content body
    "0001",                     // channel 1
    "0000000c",                 // payload size 12
    "48656c6c6f20576f726c6421", // "Hello World!"
    "ce",                       // frame end
);

/// basic.deliver as RabbitMQ 3.10.8 sent it to consumer "ctag-fixture".
#[rustfmt::skip]
const BASIC_DELIVER_HEX: &str = concat!(
    "01",                                     // frame type 1: method
    "0001",                                   // channel 1
    "0000002e",                               // payload size 46
    "003c",                                   // class 60: basic
    "003c",                                   // method 60: deliver
    "0c637461672d66697874757265",             // consumer-tag: short string of 12, "ctag-fixture"
    "0000000000000001",                       // delivery-tag 1
    "00",                                     // bits: redelivered 0
    "00",                                     // exchange: short string of 0, the default exchange
    "12616d71702d636f6465632d66697874757265", // routing-key: short string of 18, "amqp-codec-fixture"
    "ce",                                     // frame end
);

/// basic.ack of every delivery up to tag 5.
#[rustfmt::skip]
const BASIC_ACK_HEX: &str = concat!(
    "01",               // frame type 1: method
    "0001",             // channel 1
    "0000000d",         // payload size 13
    "003c",             // class 60: basic
    "0050",             // method 80: ack
    "0000000000000005", // delivery-tag 5
    "01",               // bits: multiple 1
    "ce",               // frame end
);

/// A heartbeat: no payload, always channel 0 (spec 4.2.7).
#[rustfmt::skip]
const HEARTBEAT_HEX: &str = concat!(
    "08",       // frame type 8: heartbeat
    "0000",     // channel 0
    "00000000", // payload size 0
    "ce",       // frame end
);

#[test]
fn protocol_header_fixture_decodes_as_0_9_1_and_encodes_back() {
    let frame = decode_only_frame(PROTOCOL_HEADER_HEX);
    let Frame::ProtocolHeader(header) = frame else {
        panic!("expected a protocol header, got {frame:?}");
    };
    assert_eq!(header.version, [0, 0, 9, 1]);
    assert!(header.is_0_9_1());
    assert_eq!(&unhex(PROTOCOL_HEADER_HEX)[..], &PROTOCOL_HEADER[..]);
    assert_encodes_to(
        &Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
        PROTOCOL_HEADER_HEX,
    );
}

fn long_string(value: &FieldValue) -> &str {
    match value {
        FieldValue::LongString(s) => s.as_str().expect("UTF-8"),
        other => panic!("expected a long string, got {other:?}"),
    }
}

#[test]
fn rabbitmq_connection_start_decodes_field_by_field() {
    let frame = decode_only_frame(CONNECTION_START_HEX);
    assert_eq!(frame.channel(), 0);
    let Frame::Method(0, Method::ConnectionStart(start)) = &frame else {
        panic!("expected connection.start on channel 0, got {frame:?}");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));

    let props = &start.server_properties;
    let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "capabilities",
            "cluster_name",
            "copyright",
            "information",
            "platform",
            "product",
            "version"
        ]
    );
    let Some(FieldValue::Table(capabilities)) = props.get("capabilities") else {
        panic!(
            "capabilities is not a table: {:?}",
            props.get("capabilities")
        );
    };
    let expected_capabilities = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ];
    assert_eq!(capabilities.len(), expected_capabilities.len());
    for ((key, value), expected) in capabilities.iter().zip(expected_capabilities) {
        assert_eq!(key, expected);
        assert_eq!(value, &FieldValue::Bool(true), "capability {expected}");
    }
    assert_eq!(long_string(props.get("cluster_name").unwrap()), "rabbit@vm");
    assert_eq!(
        long_string(props.get("copyright").unwrap()),
        "Copyright (c) 2007-2022 VMware, Inc. or its affiliates."
    );
    assert_eq!(
        long_string(props.get("information").unwrap()),
        "Licensed under the MPL 2.0. Website: https://rabbitmq.com"
    );
    assert_eq!(
        long_string(props.get("platform").unwrap()),
        "Erlang/OTP 25.2.3"
    );
    assert_eq!(long_string(props.get("product").unwrap()), "RabbitMQ");
    assert_eq!(long_string(props.get("version").unwrap()), "3.10.8");
    assert_eq!(start.mechanisms, "AMQPLAIN PLAIN");
    assert_eq!(start.locales, "en_US");

    assert_encodes_to(&frame, CONNECTION_START_HEX);
}

#[test]
fn rabbitmq_connection_start_rebuilt_from_values_encodes_to_captured_bytes() {
    // Built from scratch (not decoded), so the encoder's table layout is what is checked.
    let capabilities: FieldTable = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ]
    .into_iter()
    .map(|name| (name, true))
    .collect();
    let mut server_properties = FieldTable::new();
    server_properties.insert("capabilities", capabilities);
    server_properties.insert("cluster_name", "rabbit@vm");
    server_properties.insert(
        "copyright",
        "Copyright (c) 2007-2022 VMware, Inc. or its affiliates.",
    );
    server_properties.insert(
        "information",
        "Licensed under the MPL 2.0. Website: https://rabbitmq.com",
    );
    server_properties.insert("platform", "Erlang/OTP 25.2.3");
    server_properties.insert("product", "RabbitMQ");
    server_properties.insert("version", "3.10.8");
    let start = amqp_codec::methods::ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: LongString::from("AMQPLAIN PLAIN"),
        locales: LongString::from("en_US"),
    };
    assert_encodes_to(&Frame::Method(0, start.into()), CONNECTION_START_HEX);
}

#[test]
fn rabbitmq_connection_tune_decodes_its_defaults() {
    let frame = decode_only_frame(CONNECTION_TUNE_HEX);
    let expected = ConnectionTune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    };
    assert_eq!(frame, Frame::Method(0, Method::ConnectionTune(expected)));
    assert_encodes_to(&frame, CONNECTION_TUNE_HEX);
}

#[test]
fn queue_declare_durable_sets_only_the_second_bit() {
    let frame = decode_only_frame(QUEUE_DECLARE_HEX);
    let expected = QueueDeclare {
        queue: "task_queue".into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    };
    assert_eq!(frame, Frame::Method(1, Method::QueueDeclare(expected)));
    assert_encodes_to(&frame, QUEUE_DECLARE_HEX);
}

#[test]
fn queue_declare_bits_share_one_octet_least_significant_first() {
    // passive, durable, exclusive, auto-delete, no-wait: bits 0 to 4 of one octet.
    type SetBit = fn(&mut QueueDeclare);
    let setters: [(SetBit, u8); 5] = [
        (|m| m.passive = true, 0x01),
        (|m| m.durable = true, 0x02),
        (|m| m.exclusive = true, 0x04),
        (|m| m.auto_delete = true, 0x08),
        (|m| m.no_wait = true, 0x10),
    ];
    // The bits octet sits after class, method, reserved-1 and the empty queue name.
    let bits_at = 7 + 4 + 2 + 1;
    let mut all = QueueDeclare::default();
    for (set, octet) in setters {
        let mut declare = QueueDeclare::default();
        set(&mut declare);
        set(&mut all);
        let mut out = BytesMut::new();
        let frame = Frame::Method(1, declare.into());
        frame.encode(&mut out, 0).unwrap();
        assert_eq!(out[bits_at], octet, "{frame:?}");
        assert_eq!(out.len(), bits_at + 1 + 4 + 1, "one octet holds every bit");
        assert_eq!(decode(&mut out, &Limits::default()).unwrap(), Some(frame));
    }
    let mut out = BytesMut::new();
    Frame::Method(1, all.clone().into())
        .encode(&mut out, 0)
        .unwrap();
    assert_eq!(out[bits_at], 0x1f);
    assert_eq!(
        decode(&mut out, &Limits::default()).unwrap(),
        Some(Frame::Method(1, all.into()))
    );
}

#[test]
fn rabbitmq_queue_declare_ok_decodes_name_and_counts() {
    let frame = decode_only_frame(QUEUE_DECLARE_OK_HEX);
    let expected = QueueDeclareOk {
        queue: "amqp-codec-fixture".into(),
        message_count: 0,
        consumer_count: 0,
    };
    assert_eq!(frame, Frame::Method(1, Method::QueueDeclareOk(expected)));
    assert_encodes_to(&frame, QUEUE_DECLARE_OK_HEX);
}

fn publish_message_hex() -> String {
    [BASIC_PUBLISH_HEX, CONTENT_HEADER_HEX, CONTENT_BODY_HEX].concat()
}

fn hello_publish() -> BasicPublish {
    BasicPublish {
        exchange: "".into(),
        routing_key: "task_queue".into(),
        mandatory: false,
        immediate: false,
    }
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

#[test]
fn basic_publish_header_and_body_decode_frame_by_frame() {
    let publish = decode_only_frame(BASIC_PUBLISH_HEX);
    assert_eq!(
        publish,
        Frame::Method(1, Method::BasicPublish(hello_publish()))
    );
    assert_encodes_to(&publish, BASIC_PUBLISH_HEX);

    let header = decode_only_frame(CONTENT_HEADER_HEX);
    let expected = ContentHeader {
        class_id: 60,
        body_size: 12,
        properties: persistent(),
    };
    assert_eq!(header, Frame::Header(1, expected));
    assert_encodes_to(&header, CONTENT_HEADER_HEX);

    let body = decode_only_frame(CONTENT_BODY_HEX);
    assert_eq!(body, Frame::Body(1, Bytes::from_static(b"Hello World!")));
    assert_encodes_to(&body, CONTENT_BODY_HEX);
}

#[test]
fn encode_content_writes_publish_header_and_body_as_in_the_fixture() {
    let mut out = BytesMut::new();
    encode_content(
        &mut out,
        1,
        &hello_publish().into(),
        &persistent(),
        b"Hello World!",
        131_072,
    )
    .unwrap();
    assert_eq!(hex(&out), publish_message_hex());
}

#[test]
fn publish_fixture_assembles_into_one_command() {
    let mut buf = unhex(&publish_message_hex());
    let mut assembler = ContentAssembler::default();
    let mut commands = Vec::new();
    while let Some(frame) = decode(&mut buf, &Limits::default()).unwrap() {
        assert_eq!(frame.channel(), 1);
        commands.extend(assembler.feed(frame).unwrap());
    }
    assert!(buf.is_empty());
    assert_eq!(commands.len(), 1);
    let command = &commands[0];
    assert_eq!(command.method, Method::BasicPublish(hello_publish()));
    let content = command.content.as_ref().expect("publish carries content");
    assert_eq!(content.header.body_size, 12);
    assert_eq!(content.header.properties, persistent());
    assert_eq!(&content.body[..], b"Hello World!");
}

#[test]
fn rabbitmq_basic_deliver_decodes_tag_and_routing_key() {
    let frame = decode_only_frame(BASIC_DELIVER_HEX);
    let expected = BasicDeliver {
        consumer_tag: "ctag-fixture".into(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "".into(),
        routing_key: "amqp-codec-fixture".into(),
    };
    assert_eq!(frame, Frame::Method(1, Method::BasicDeliver(expected)));
    assert!(frame_has_content(&frame));
    assert_encodes_to(&frame, BASIC_DELIVER_HEX);
}

fn frame_has_content(frame: &Frame) -> bool {
    matches!(frame, Frame::Method(_, method) if method.has_content())
}

#[test]
fn basic_ack_multiple_sets_the_bit_after_the_tag() {
    let frame = decode_only_frame(BASIC_ACK_HEX);
    let expected = BasicAck {
        delivery_tag: 5,
        multiple: true,
    };
    assert_eq!(frame, Frame::Method(1, Method::BasicAck(expected)));
    assert!(!frame_has_content(&frame));
    assert_encodes_to(&frame, BASIC_ACK_HEX);
}

#[test]
fn heartbeat_fixture_decodes_on_channel_zero() {
    let frame = decode_only_frame(HEARTBEAT_HEX);
    assert_eq!(frame, Frame::Heartbeat);
    assert_eq!(frame.channel(), 0);
    assert_encodes_to(&frame, HEARTBEAT_HEX);
}

#[test]
fn captured_rabbitmq_stream_decodes_frame_after_frame() {
    // What RabbitMQ sent, back to back, as one read buffer would hold it; the content of the
    // delivery is the same header and body frame as the published one.
    let stream = [
        CONNECTION_START_HEX,
        CONNECTION_TUNE_HEX,
        QUEUE_DECLARE_OK_HEX,
        BASIC_DELIVER_HEX,
        CONTENT_HEADER_HEX,
        CONTENT_BODY_HEX,
        HEARTBEAT_HEX,
    ]
    .concat();
    let mut buf = unhex(&stream);
    let mut seen = Vec::new();
    while let Some(frame) = decode(&mut buf, &Limits::default()).unwrap() {
        seen.push(match &frame {
            Frame::Method(_, method) => method.name(),
            Frame::Header(..) => "header",
            Frame::Body(..) => "body",
            Frame::Heartbeat => "heartbeat",
            Frame::ProtocolHeader(_) => "protocol header",
        });
    }
    assert!(buf.is_empty());
    assert_eq!(
        seen,
        [
            "connection.start",
            "connection.tune",
            "queue.declare-ok",
            "basic.deliver",
            "header",
            "body",
            "heartbeat"
        ]
    );
}
