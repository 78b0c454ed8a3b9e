//! What the codec refuses, and with which reply code: every `DecodeError` variant from a
//! minimal input, partial frames that are not errors at all, and the encoding errors, which
//! leave the caller's buffer as it was.

use amqp_codec::methods::{BasicAck, BasicPublish, QueueDeclare};
use amqp_codec::{
    decode, encode_content, BasicProperties, ContentAssembler, ContentHeader, DecodeError,
    EncodeError, FieldTable, FieldValue, Frame, Limits, Method, ReplyCode,
};
use bytes::{Bytes, BytesMut};

/// The octets of a hex string (whitespace ignored).
fn unhex(text: &str) -> BytesMut {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    let octets: Vec<u8> = digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect();
    BytesMut::from(&octets[..])
}

/// Decodes `hex` (which must hold a whole frame) and returns the error it must give.
fn decode_error(hex: &str, limits: &Limits) -> DecodeError {
    let mut buf = unhex(hex);
    match decode(&mut buf, limits) {
        Err(e) => e,
        Ok(other) => panic!("{hex} decoded as {other:?}, expected an error"),
    }
}

/// A table nested `depth` levels deep: `{"n": {"n": ... {}}}` with `depth` tables in all.
fn nested_table(depth: usize) -> FieldTable {
    let mut table = FieldTable::new();
    for _ in 1..depth {
        let mut outer = FieldTable::new();
        outer.insert("n", table);
        table = outer;
    }
    table
}

/// A queue.declare frame on channel 1 with `arguments` (hex of a whole field table).
fn queue_declare_with_arguments(arguments: &str) -> String {
    let arguments = unhex(arguments);
    let payload_len = 2 + 2 + 2 + 1 + 1 + arguments.len();
    format!(
        "01 0001 {payload_len:08x} 0032 000a 0000 00 00 {} ce",
        arguments
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[test]
fn every_decode_error_comes_from_a_minimal_input_with_its_reply_code() {
    let default = Limits::default();
    let cases: Vec<(&str, DecodeError, DecodeError, u16)> = vec![
        (
            "protocol header that is not AMQP",
            decode_error("414d5158 00000901", &default), // "AMQX", 0 0 9 1
            DecodeError::BadProtocolHeader {
                found: *b"AMQX\x00\x00\x09\x01",
            },
            501,
        ),
        (
            "frame type 4 (the spec's unused OOB method type)",
            // type 4, channel 0, size 0, end
            decode_error("04 0000 00000000 ce", &default),
            DecodeError::UnknownFrameType(4),
            501,
        ),
        (
            "frame larger than frame_max",
            // type 3 (body), channel 1, size 4089: one over 4096 - 8
            decode_error("03 0001 00000ff9", &Limits::with_frame_max(4096)),
            DecodeError::FrameTooLarge {
                size: 4089,
                frame_max: 4096,
            },
            501,
        ),
        (
            "frame end octet not 0xce",
            // heartbeat, channel 0, size 0, end octet 0x00
            decode_error("08 0000 00000000 00", &default),
            DecodeError::BadFrameEnd(0x00),
            501,
        ),
        (
            "heartbeat on channel 3",
            // heartbeat, channel 3, size 0, end
            decode_error("08 0003 00000000 ce", &default),
            DecodeError::HeartbeatOnChannel(3),
            501,
        ),
        (
            "heartbeat with a payload",
            // heartbeat, channel 0, size 1, payload 00, end
            decode_error("08 0000 00000001 00 ce", &default),
            DecodeError::HeartbeatWithPayload(1),
            501,
        ),
        (
            "unknown method of a known class",
            // method, channel 1, size 4, class 60 (basic), method 99, end
            decode_error("01 0001 00000004 003c 0063 ce", &default),
            DecodeError::UnknownMethod {
                class_id: 60,
                method_id: 99,
            },
            503,
        ),
        (
            "method of an unknown class",
            // method, channel 1, size 4, class 99, method 10, end
            decode_error("01 0001 00000004 0063 000a ce", &default),
            DecodeError::UnknownMethod {
                class_id: 99,
                method_id: 10,
            },
            503,
        ),
        (
            "content header for a class without content",
            // header, channel 1, size 14, class 50 (queue), weight 0, body size 0, flags 0, end
            decode_error(
                "02 0001 0000000e 0032 0000 0000000000000000 0000 ce",
                &default,
            ),
            DecodeError::UnknownContentClass(50),
            503,
        ),
        (
            "method arguments cut short",
            // method, channel 1, size 8, basic.ack, delivery-tag with 4 of its 8 octets, end
            decode_error("01 0001 00000008 003c 0050 00000000 ce", &default),
            DecodeError::Truncated("basic.ack"),
            502,
        ),
        (
            "method frame too short for its class and method ids",
            // method, channel 1, size 2, class 60 and no method id, end
            decode_error("01 0001 00000002 003c ce", &default),
            DecodeError::Truncated("method frame"),
            502,
        ),
        (
            "bytes after the last argument",
            // method, channel 1, size 14, basic.ack, delivery-tag 1, bits 0, one extra octet, end
            decode_error(
                "01 0001 0000000e 003c 0050 0000000000000001 00 ff ce",
                &default,
            ),
            DecodeError::TrailingBytes {
                what: "basic.ack",
                left: 1,
            },
            502,
        ),
        (
            "unknown field type letter",
            decode_error(
                // table of 4 octets: key "k", type 'Z' (no such type), one octet
                &queue_declare_with_arguments("00000004 016b 5a 00"),
                &default,
            ),
            DecodeError::UnknownFieldType('Z'),
            502,
        ),
        (
            "tables nested deeper than the limit",
            decode_error(
                // table of 14: key "a", 'F', table of 7: key "b", 'F', empty table
                &queue_declare_with_arguments("0000000e 0161 46 00000007 0162 46 00000000"),
                &Limits {
                    max_table_depth: 2,
                    ..Limits::default()
                },
            ),
            DecodeError::TableTooDeep(2),
            502,
        ),
        (
            "content header with unknown property flags",
            // header, channel 1, size 14, class 60, weight 0, body size 0, flags bit 1, end
            decode_error(
                "02 0001 0000000e 003c 0000 0000000000000000 0002 ce",
                &default,
            ),
            DecodeError::UnknownPropertyFlags(0x0002),
            502,
        ),
        (
            "content header with a weight",
            // header, channel 1, size 14, class 60, weight 1, body size 0, flags 0, end
            decode_error(
                "02 0001 0000000e 003c 0001 0000000000000000 0000 ce",
                &default,
            ),
            DecodeError::NonZeroWeight(1),
            502,
        ),
        (
            "content body without a method",
            ContentAssembler::default()
                .feed(Frame::Body(1, Bytes::from_static(b"x")))
                .unwrap_err(),
            DecodeError::UnexpectedFrame("content body without a content header"),
            505,
        ),
        (
            "body larger than the assembler accepts",
            {
                let mut assembler = ContentAssembler::new(10);
                assembler
                    .feed_method(BasicPublish::default().into())
                    .unwrap();
                assembler
                    .feed_header(ContentHeader::basic(11, BasicProperties::default()))
                    .unwrap_err()
            },
            DecodeError::ContentTooLarge { size: 11, max: 10 },
            406,
        ),
        (
            "body frames beyond the announced size",
            {
                let mut assembler = ContentAssembler::default();
                assembler
                    .feed_method(BasicPublish::default().into())
                    .unwrap();
                assembler
                    .feed_header(ContentHeader::basic(1, BasicProperties::default()))
                    .unwrap();
                assembler.feed_body(Bytes::from_static(b"xy")).unwrap_err()
            },
            DecodeError::BodyTooLarge {
                expected: 1,
                received: 2,
            },
            501,
        ),
    ];
    for (what, error, expected, code) in cases {
        assert_eq!(error, expected, "{what}");
        assert_eq!(error.reply_code(), ReplyCode(code), "{what}: {error}");
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn decode_refuses_frame_larger_than_frame_max_from_its_header_alone() {
    let limits = Limits::with_frame_max(4096);
    // Only the 7-octet header: type 3 (body), channel 1, size 4089. No payload has arrived.
    let mut buf = unhex("03 0001 00000ff9");
    let error = decode(&mut buf, &limits).unwrap_err();
    assert_eq!(
        error,
        DecodeError::FrameTooLarge {
            size: 4089,
            frame_max: 4096
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::FRAME_ERROR);
}

#[test]
fn decode_waits_for_a_frame_of_exactly_frame_max() {
    let limits = Limits::with_frame_max(4096);
    // type 3 (body), channel 1, size 4088: header, payload and end make 4096.
    let header = unhex("03 0001 00000ff8");
    let mut buf = header.clone();
    assert_eq!(decode(&mut buf, &limits), Ok(None));
    assert_eq!(buf, header);
    buf.extend_from_slice(&[0x2a; 4088]);
    buf.extend_from_slice(&[0xce]);
    let frame = decode(&mut buf, &limits).unwrap().unwrap();
    assert_eq!(frame, Frame::Body(1, Bytes::from(vec![0x2a; 4088])));
    assert!(buf.is_empty());
}

#[test]
fn decode_with_frame_max_zero_accepts_any_size() {
    let limits = Limits::with_frame_max(0);
    // type 3 (body), channel 1, size 0xfffffff0: far beyond any negotiated frame_max.
    let header = unhex("03 0001 fffffff0");
    let mut buf = header.clone();
    assert_eq!(decode(&mut buf, &limits), Ok(None));
    assert_eq!(buf, header);
}

#[test]
fn decode_does_not_reserve_an_announced_size_it_has_not_received() {
    // A peer announcing a 4 GiB frame under frame_max 0 (no limit) must not make the receiver
    // allocate 4 GiB before a single payload octet arrives.
    let limits = Limits::with_frame_max(0);
    let mut buf = unhex("03 0001 fffffff0"); // body, channel 1, size 0xfffffff0
    assert_eq!(decode(&mut buf, &limits), Ok(None));
    assert!(
        buf.capacity() <= 2 << 20,
        "reserved {} octets for a frame that has not arrived",
        buf.capacity()
    );
}

#[test]
fn decode_refuses_every_field_type_letter_rabbitmq_does_not_define() {
    let known = b"tbBsuIilLfdDSxATFV";
    for letter in 0u8..=255 {
        if known.contains(&letter) {
            continue;
        }
        // table of 11: key "k", the letter, eight zero octets (enough for any value)
        let arguments = format!("0000000b 016b {letter:02x} 0000000000000000");
        let error = decode_error(
            &queue_declare_with_arguments(&arguments),
            &Limits::default(),
        );
        assert_eq!(error, DecodeError::UnknownFieldType(char::from(letter)));
        assert_eq!(error.reply_code(), ReplyCode::SYNTAX_ERROR);
    }
}

#[test]
fn decode_refuses_a_table_longer_than_its_frame() {
    // table announcing 255 octets, of which 3 are there: key "k", 'V'
    let error = decode_error(
        &queue_declare_with_arguments("000000ff 016b 56"),
        &Limits::default(),
    );
    assert_eq!(error, DecodeError::Truncated("queue.declare"));
    assert_eq!(error.reply_code(), ReplyCode::SYNTAX_ERROR);
}

#[test]
fn decode_refuses_a_value_cut_off_at_the_end_of_its_table() {
    // table of 4: key "k", 'I' and only one of the four octets of the integer
    let error = decode_error(
        &queue_declare_with_arguments("00000004 016b 49 00"),
        &Limits::default(),
    );
    assert_eq!(error, DecodeError::Truncated("queue.declare"));
    assert_eq!(error.reply_code(), ReplyCode::SYNTAX_ERROR);
}

#[test]
fn decode_accepts_tables_nested_up_to_the_limit_and_refuses_one_more() {
    let limits = Limits::default(); // 32 levels
    let within = QueueDeclare {
        arguments: nested_table(32),
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    let frame = Frame::Method(1, within.into());
    frame.encode(&mut buf, 0).unwrap();
    assert_eq!(decode(&mut buf, &limits).unwrap(), Some(frame));

    // 33 tables, written by hand (the encoder refuses them): each level is
    // size, key "n", 'F', with the innermost table empty.
    let mut table = String::from("00000000");
    for _ in 1..33 {
        let inner = unhex(&table);
        table = format!("{:08x} 016e 46 {}", inner.len() + 3, hex(&inner));
    }
    let error = decode_error(&queue_declare_with_arguments(&table), &limits);
    assert_eq!(error, DecodeError::TableTooDeep(32));
    assert_eq!(error.reply_code(), ReplyCode::SYNTAX_ERROR);
}

#[test]
fn decode_counts_arrays_as_nesting_levels() {
    let limits = Limits {
        max_table_depth: 2,
        ..Limits::default()
    };
    // table of 12: key "a", 'A', array of 5: 'A', empty array: three levels
    let error = decode_error(
        &queue_declare_with_arguments("0000000c 0161 41 00000005 41 00000000"),
        &limits,
    );
    assert_eq!(error, DecodeError::TableTooDeep(2));
    // table of 7: key "a", 'A', empty array: two levels
    let mut buf = unhex(&queue_declare_with_arguments("00000007 0161 41 00000000"));
    assert!(decode(&mut buf, &limits).unwrap().is_some());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn decode_reads_a_protocol_header_of_another_version_for_the_caller_to_refuse() {
    // "AMQP", then 1 1 0 9: the header of AMQP 0-9 (pre-0-9-1) clients.
    let mut buf = unhex("414d5150 01010009");
    let Some(Frame::ProtocolHeader(header)) = decode(&mut buf, &Limits::default()).unwrap() else {
        panic!("not a protocol header");
    };
    assert_eq!(header.version, [1, 1, 0, 9]);
    assert!(!header.is_0_9_1());
}

#[test]
fn decode_refuses_a_bad_protocol_header_before_all_eight_octets_arrive() {
    // "AMX": cannot become "AMQP" whatever follows.
    let mut buf = unhex("414d58");
    let error = decode(&mut buf, &Limits::default()).unwrap_err();
    assert_eq!(
        error,
        DecodeError::BadProtocolHeader {
            found: *b"AMX\0\0\0\0\0"
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::FRAME_ERROR);
}

#[test]
fn decode_refuses_an_http_request_as_an_unknown_frame_type() {
    // 'G' of "GET / HTTP/1.1" is no frame type: refused once seven octets are in.
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let error = decode(&mut buf, &Limits::default()).unwrap_err();
    assert_eq!(error, DecodeError::UnknownFrameType(b'G'));
    assert_eq!(error.reply_code(), ReplyCode::FRAME_ERROR);
}

#[test]
fn decode_returns_none_for_every_prefix_of_a_frame_and_leaves_the_buffer_intact() {
    let frames = [
        "414d5150 00000901",                                      // protocol header
        "01 0001 0000000d 003c 0050 0000000000000005 01 ce",      // basic.ack
        "02 0001 0000000f 003c 0000 000000000000000c 1000 02 ce", // content header
        "03 0001 00000002 6869 ce",                               // body "hi"
        "08 0000 00000000 ce",                                    // heartbeat
    ];
    for hex in frames {
        let whole = unhex(hex);
        for len in 0..whole.len() {
            let prefix = BytesMut::from(&whole[..len]);
            let mut buf = prefix.clone();
            assert_eq!(
                decode(&mut buf, &Limits::default()),
                Ok(None),
                "{hex} cut at {len}"
            );
            assert_eq!(buf, prefix, "{hex} cut at {len}");
        }
        let mut buf = whole.clone();
        assert!(
            decode(&mut buf, &Limits::default()).unwrap().is_some(),
            "{hex}"
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn decode_leaves_the_start_of_the_next_frame_in_the_buffer() {
    // basic.ack (tag 5, multiple), then the first four octets of a heartbeat
    let mut buf = unhex("01 0001 0000000d 003c 0050 0000000000000005 01 ce  08 0000 00");
    let frame = decode(&mut buf, &Limits::default()).unwrap();
    let ack = BasicAck {
        delivery_tag: 5,
        multiple: true,
    };
    assert_eq!(frame, Some(Frame::Method(1, Method::BasicAck(ack))));
    assert_eq!(buf, unhex("08 0000 00"));
    assert_eq!(decode(&mut buf, &Limits::default()), Ok(None));
    assert_eq!(buf, unhex("08 0000 00"));
    buf.extend_from_slice(&unhex("000000 ce"));
    assert_eq!(
        decode(&mut buf, &Limits::default()),
        Ok(Some(Frame::Heartbeat))
    );
}

#[test]
fn decode_accepts_a_continuation_flags_word_without_properties() {
    // header, channel 1, size 16, class 60, weight 0, body size 0,
    // flags 0x0001 (another word follows), flags 0x0000, end
    let mut buf = unhex("02 0001 00000010 003c 0000 0000000000000000 0001 0000 ce");
    let frame = decode(&mut buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Header(1, ContentHeader::basic(0, BasicProperties::default()))
    );
    // A continuation word that sets a property bit: basic has no 15th property.
    let error = decode_error(
        "02 0001 00000010 003c 0000 0000000000000000 0001 8000 ce",
        &Limits::default(),
    );
    assert_eq!(error, DecodeError::UnknownPropertyFlags(0x8000));
}

#[test]
fn decode_refuses_a_property_its_flags_announce_but_the_frame_lacks() {
    // header, channel 1, size 14, class 60, weight 0, body size 0, flags: content-type; end
    let error = decode_error(
        "02 0001 0000000e 003c 0000 0000000000000000 8000 ce",
        &Limits::default(),
    );
    assert_eq!(error, DecodeError::Truncated("content header"));
    assert_eq!(error.reply_code(), ReplyCode::SYNTAX_ERROR);
}

#[test]
fn encode_refuses_short_string_of_256_bytes_and_leaves_buffer_unchanged() {
    let mut buf = BytesMut::from(&b"already queued"[..]);
    let publish = BasicPublish {
        routing_key: "k".repeat(256).into(),
        ..Default::default()
    };
    let frame = Frame::Method(1, publish.into());
    assert_eq!(
        frame.encode(&mut buf, 0),
        Err(EncodeError::ShortStringTooLong(256))
    );
    assert_eq!(&buf[..], b"already queued");
}

#[test]
fn encode_accepts_short_string_of_255_bytes() {
    let publish = BasicPublish {
        routing_key: "k".repeat(255).into(),
        ..Default::default()
    };
    let frame = Frame::Method(1, publish.into());
    let mut buf = BytesMut::new();
    frame.encode(&mut buf, 0).unwrap();
    assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), Some(frame));
}

#[test]
fn encode_refuses_short_string_of_256_bytes_in_a_table_key() {
    let mut arguments = FieldTable::new();
    arguments.insert("k".repeat(256), true);
    let frame = Frame::Method(
        1,
        QueueDeclare {
            arguments,
            ..Default::default()
        }
        .into(),
    );
    let mut buf = BytesMut::from(&b"x"[..]);
    assert_eq!(
        frame.encode(&mut buf, 0),
        Err(EncodeError::ShortStringTooLong(256))
    );
    assert_eq!(&buf[..], b"x");
}

#[test]
fn encode_refuses_frame_over_frame_max_and_leaves_buffer_unchanged() {
    let mut buf = BytesMut::from(&b"earlier frames"[..]);
    let over = Frame::Body(1, Bytes::from(vec![0; 4089]));
    assert_eq!(
        over.encode(&mut buf, 4096),
        Err(EncodeError::FrameTooLarge {
            size: 4097,
            frame_max: 4096
        })
    );
    assert_eq!(&buf[..], b"earlier frames");

    let exact = Frame::Body(1, Bytes::from(vec![0; 4088]));
    exact.encode(&mut buf, 4096).unwrap();
    assert_eq!(buf.len(), b"earlier frames".len() + 4096);
}

#[test]
fn encode_refuses_tables_nested_deeper_than_the_decoder_accepts() {
    let frame = |depth| {
        Frame::Method(
            1,
            QueueDeclare {
                arguments: nested_table(depth),
                ..Default::default()
            }
            .into(),
        )
    };
    let mut buf = BytesMut::new();
    assert_eq!(
        frame(33).encode(&mut buf, 0),
        Err(EncodeError::TableTooDeep(32))
    );
    assert!(buf.is_empty());
    frame(32).encode(&mut buf, 0).unwrap();
    assert!(!buf.is_empty());
}

#[test]
fn encode_content_refuses_a_header_over_frame_max_and_leaves_buffer_unchanged() {
    let mut buf = BytesMut::from(&b"before"[..]);
    let properties = BasicProperties {
        headers: Some(FieldTable::from_iter([(
            "big",
            FieldValue::LongString("x".repeat(5000).into()),
        )])),
        ..Default::default()
    };
    let publish: Method = BasicPublish::default().into();
    let error = encode_content(&mut buf, 1, &publish, &properties, b"body", 4096).unwrap_err();
    assert!(
        matches!(
            error,
            EncodeError::FrameTooLarge {
                frame_max: 4096,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(&buf[..], b"before");
}

#[test]
fn encode_content_refuses_a_long_routing_key_and_leaves_buffer_unchanged() {
    let mut buf = BytesMut::from(&b"before"[..]);
    let publish: Method = BasicPublish {
        routing_key: "r".repeat(300).into(),
        ..Default::default()
    }
    .into();
    let error = encode_content(
        &mut buf,
        1,
        &publish,
        &BasicProperties::default(),
        b"body",
        131_072,
    )
    .unwrap_err();
    assert_eq!(error, EncodeError::ShortStringTooLong(300));
    assert_eq!(&buf[..], b"before");
}
