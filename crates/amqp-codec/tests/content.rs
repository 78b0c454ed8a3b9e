//! Content (spec 4.2.6): a content-carrying method, its header, its body frames, split for a
//! frame_max and put back together by `ContentAssembler`, and the frames it refuses.

use std::collections::HashMap;
use std::ops::Range;

use amqp_codec::content::{encode_content_head, put_body_frame_header, Output, OutputBuffer};
use amqp_codec::methods::{BasicAck, BasicDeliver, BasicGetOk, BasicPublish, BasicReturn};
use amqp_codec::{
    body_frames, decode, encode_content, BasicProperties, Command, ContentAssembler, ContentHeader,
    DecodeError, Frame, Limits, Method, ProtocolHeader, ReplyCode,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A body of `len` octets that is not all one value, so a misplaced slice shows.
fn body_of(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn publish(routing_key: &str) -> Method {
    BasicPublish {
        exchange: "".into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }
    .into()
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        content_type: Some("application/octet-stream".into()),
        ..Default::default()
    }
}

/// Decodes every frame of `buf`, which must hold whole frames only.
fn decode_all(buf: &mut BytesMut, limits: &Limits) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decode(buf, limits).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} octets left over", buf.len());
    frames
}

/// Where a slice lives in memory.
fn address_range(bytes: &[u8]) -> Range<usize> {
    let range = bytes.as_ptr_range();
    range.start as usize..range.end as usize
}

#[test]
fn content_is_split_and_assembled_for_every_frame_max_and_body_size() {
    for frame_max in [4096u32, 8192, 131_072] {
        let max_payload = frame_max as usize - 8;
        for len in [0usize, 1, 4088, 4089, 100_000] {
            let case = format!("frame_max {frame_max}, body {len}");
            let body = body_of(len);
            let method = publish("task_queue");
            let mut buf = BytesMut::new();
            encode_content(&mut buf, 1, &method, &persistent(), &body, frame_max).unwrap();

            // The same bytes as the method, the header and body_frames encoded one by one.
            let mut by_hand = BytesMut::new();
            Frame::Method(1, method.clone())
                .encode(&mut by_hand, frame_max)
                .unwrap();
            let header = ContentHeader::basic(len as u64, persistent());
            Frame::Header(1, header.clone())
                .encode(&mut by_hand, frame_max)
                .unwrap();
            for frame in body_frames(1, &body, frame_max) {
                frame.encode(&mut by_hand, frame_max).unwrap();
            }
            assert_eq!(buf, by_hand, "{case}");

            let frames = decode_all(&mut buf, &Limits::with_frame_max(frame_max));
            let bodies: Vec<&Frame> = frames
                .iter()
                .filter(|f| matches!(f, Frame::Body(..)))
                .collect();
            assert_eq!(bodies.len(), len.div_ceil(max_payload), "{case}");
            assert_eq!(frames.len(), 2 + bodies.len(), "{case}");
            for frame in &frames {
                assert!(
                    frame.encoded_len() <= frame_max as usize,
                    "{case}: {frame:?}"
                );
                assert_eq!(frame.channel(), 1);
            }
            // Every body frame but the last is full.
            for frame in bodies.iter().rev().skip(1) {
                assert_eq!(frame.encoded_len(), frame_max as usize, "{case}");
            }

            let mut assembler = ContentAssembler::default();
            let mut commands = Vec::new();
            let count = frames.len();
            for (i, frame) in frames.into_iter().enumerate() {
                let done = assembler.feed(frame).unwrap();
                assert_eq!(done.is_some(), i == count - 1, "{case}: frame {i}");
                assert_eq!(assembler.is_idle(), i == count - 1, "{case}: frame {i}");
                commands.extend(done);
            }
            let expected = Command {
                method,
                content: Some(amqp_codec::Content { header, body }),
            };
            assert_eq!(commands, [expected], "{case}");
        }
    }
}

#[test]
fn single_body_frame_is_assembled_without_a_copy() {
    let body = body_of(1000);
    let mut buf = BytesMut::new();
    encode_content(&mut buf, 1, &publish("q"), &persistent(), &body, 131_072).unwrap();
    let read_buffer = address_range(&buf);
    let body_at = buf.len() - 1 - body.len(); // the body frame's payload, before the end octet

    let mut assembler = ContentAssembler::default();
    let mut command = None;
    for frame in decode_all(&mut buf, &Limits::default()) {
        command = assembler.feed(frame).unwrap().or(command);
    }
    let content = command.unwrap().content.unwrap();
    assert_eq!(content.body, body);
    let body_range = address_range(&content.body);
    assert_eq!(
        body_range.start,
        read_buffer.start + body_at,
        "the body is not the frame's own octets"
    );
    assert_eq!(body_range.end, read_buffer.end - 1);
}

#[test]
fn multi_frame_body_does_not_hold_on_to_its_frames() {
    // Two frames as a read buffer would hand them over: small slices of large buffers.
    let first_read = Bytes::from(vec![1u8; 65_536]);
    let second_read = Bytes::from(vec![2u8; 65_536]);
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(3)).unwrap();
    assert_eq!(assembler.feed_body(first_read.slice(0..1)).unwrap(), None);
    assert_eq!(assembler.feed_body(second_read.slice(0..1)).unwrap(), None);
    // The octets were copied out: the 64 KiB read buffers are not kept alive for 2 octets.
    assert!(
        first_read.is_unique(),
        "the first frame's buffer is still held"
    );
    assert!(
        second_read.is_unique(),
        "the second frame's buffer is still held"
    );
    let command = assembler
        .feed_body(first_read.slice(1..2))
        .unwrap()
        .unwrap();
    assert_eq!(&command.content.unwrap().body[..], &[1, 2, 1]);
}

#[test]
fn empty_body_frames_add_nothing_and_keep_a_lone_frame_uncopied() {
    let frame = Bytes::from_static(b"abcd");
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(4)).unwrap();
    for _ in 0..1000 {
        assert_eq!(assembler.feed_body(Bytes::new()).unwrap(), None);
    }
    let command = assembler.feed_body(frame.clone()).unwrap().unwrap();
    let body = command.content.unwrap().body;
    assert_eq!(&body[..], b"abcd");
    assert_eq!(
        body.as_ptr(),
        frame.as_ptr(),
        "the lone non-empty frame was copied"
    );

    // Empty frames between two halves.
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(4)).unwrap();
    assembler.feed_body(frame.slice(0..2)).unwrap();
    assembler.feed_body(Bytes::new()).unwrap();
    let command = assembler.feed_body(frame.slice(2..4)).unwrap().unwrap();
    assert_eq!(&command.content.unwrap().body[..], b"abcd");
}

#[test]
fn body_frames_are_slices_of_the_body() {
    let body = body_of(10_000);
    let source = address_range(&body);
    let mut next = source.start;
    for frame in body_frames(7, &body, 4096) {
        let Frame::Body(7, slice) = frame else {
            panic!("not a body frame on channel 7: {frame:?}");
        };
        let range = address_range(&slice);
        assert_eq!(
            range.start, next,
            "slices are not contiguous views of the body"
        );
        next = range.end;
    }
    assert_eq!(next, source.end);
}

#[test]
fn body_frames_of_an_empty_body_are_none() {
    assert_eq!(body_frames(1, &Bytes::new(), 4096).count(), 0);
}

#[test]
fn empty_body_completes_at_the_content_header() {
    let mut assembler = ContentAssembler::default();
    assert_eq!(assembler.feed_method(publish("q")).unwrap(), None);
    let header = ContentHeader::basic(0, BasicProperties::default());
    let command = assembler.feed_header(header.clone()).unwrap().unwrap();
    assert_eq!(command.content.unwrap().header, header);
    assert!(assembler.is_idle());
    // A body frame now belongs to no content.
    let error = assembler.feed_body(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(error.reply_code(), ReplyCode::UNEXPECTED_FRAME);
}

#[test]
fn method_without_content_is_a_command_at_once() {
    let mut assembler = ContentAssembler::default();
    let ack: Method = BasicAck {
        delivery_tag: 3,
        multiple: false,
    }
    .into();
    let command = assembler.feed(Frame::Method(1, ack.clone())).unwrap();
    assert_eq!(
        command,
        Some(Command {
            method: ack,
            content: None
        })
    );
    assert!(assembler.is_idle());
}

#[test]
fn every_content_method_waits_for_its_header_and_body() {
    let methods: [Method; 4] = [
        BasicPublish::default().into(),
        BasicReturn::default().into(),
        BasicDeliver::default().into(),
        BasicGetOk::default().into(),
    ];
    for method in methods {
        assert!(method.has_content(), "{}", method.name());
        let mut assembler = ContentAssembler::default();
        assert_eq!(assembler.feed_method(method.clone()).unwrap(), None);
        assert!(!assembler.is_idle());
        let header = ContentHeader::basic(2, BasicProperties::default());
        assert_eq!(assembler.feed_header(header).unwrap(), None);
        let command = assembler
            .feed_body(Bytes::from_static(b"ok"))
            .unwrap()
            .unwrap();
        assert_eq!(command.method, method);
        assert_eq!(&command.content.unwrap().body[..], b"ok");
    }
}

#[test]
fn assembler_takes_message_after_message() {
    let mut assembler = ContentAssembler::default();
    for text in ["first", "second", ""] {
        assert_eq!(assembler.feed_method(publish(text)).unwrap(), None);
        let header = ContentHeader::basic(text.len() as u64, BasicProperties::default());
        let mut done = assembler.feed_header(header).unwrap();
        if !text.is_empty() {
            done = assembler
                .feed_body(Bytes::copy_from_slice(text.as_bytes()))
                .unwrap();
        }
        let command = done.unwrap();
        assert_eq!(command.method, publish(text));
        assert_eq!(&command.content.unwrap().body[..], text.as_bytes());
    }
}

fn assert_unexpected(result: Result<Option<Command>, DecodeError>) {
    match result {
        Err(error @ DecodeError::UnexpectedFrame(_)) => {
            assert_eq!(error.reply_code(), ReplyCode::UNEXPECTED_FRAME);
            assert_eq!(error.reply_code().0, 505);
        }
        other => panic!("expected an unexpected-frame error, got {other:?}"),
    }
}

fn header(body_size: u64) -> ContentHeader {
    ContentHeader::basic(body_size, BasicProperties::default())
}

#[test]
fn frames_out_of_order_are_unexpected() {
    // A header with no method before it.
    assert_unexpected(ContentAssembler::default().feed(Frame::Header(1, header(1))));
    // A body with no method before it.
    assert_unexpected(ContentAssembler::default().feed(Frame::Body(1, Bytes::from_static(b"x"))));

    // A method where the header should be.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assert_unexpected(assembler.feed_method(BasicAck::default().into()));

    // A body where the header should be.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assert_unexpected(assembler.feed_body(Bytes::from_static(b"x")));

    // A method between body frames.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(2)).unwrap();
    assembler.feed_body(Bytes::from_static(b"x")).unwrap();
    assert_unexpected(assembler.feed_method(publish("again")));

    // A second header between body frames.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(2)).unwrap();
    assembler.feed_body(Bytes::from_static(b"x")).unwrap();
    assert_unexpected(assembler.feed_header(header(2)));

    // A header after a method that carries no content.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(BasicAck::default().into()).unwrap();
    assert_unexpected(assembler.feed_header(header(1)));

    // A header of another class than its method's.
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    let other_class = ContentHeader {
        class_id: 50,
        ..header(1)
    };
    assert_unexpected(assembler.feed_header(other_class));

    // Frames that belong to no channel.
    assert_unexpected(ContentAssembler::default().feed(Frame::Heartbeat));
    assert_unexpected(
        ContentAssembler::default().feed(Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1)),
    );
}

#[test]
fn body_frames_beyond_the_announced_size_are_a_frame_error() {
    let mut assembler = ContentAssembler::default();
    assembler.feed_method(publish("q")).unwrap();
    assembler.feed_header(header(5)).unwrap();
    assert_eq!(
        assembler.feed_body(Bytes::from_static(b"abc")).unwrap(),
        None
    );
    let error = assembler.feed_body(Bytes::from_static(b"def")).unwrap_err();
    assert_eq!(
        error,
        DecodeError::BodyTooLarge {
            expected: 5,
            received: 6
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::FRAME_ERROR);
    assert_eq!(error.reply_code().0, 501);
}

#[test]
fn body_over_the_maximum_is_refused_at_its_header() {
    let mut assembler = ContentAssembler::new(100);
    assembler.feed_method(publish("q")).unwrap();
    // Refused as soon as the header announces it, before any body octet.
    let error = assembler.feed_header(header(101)).unwrap_err();
    assert_eq!(
        error,
        DecodeError::ContentTooLarge {
            size: 101,
            max: 100
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::PRECONDITION_FAILED);
    assert_eq!(error.reply_code().0, 406);
    assert!(
        !error.reply_code().is_hard_error(),
        "406 closes the channel only"
    );

    let mut assembler = ContentAssembler::new(100);
    assembler.feed_method(publish("q")).unwrap();
    assert_eq!(assembler.feed_header(header(100)).unwrap(), None);
    let command = assembler.feed_body(body_of(100)).unwrap().unwrap();
    assert_eq!(command.content.unwrap().body, body_of(100));
}

#[test]
fn interleaved_channels_assemble_separately() {
    let frame_max = 4096;
    let one = body_of(10_000);
    let two: Bytes = body_of(5_000)
        .iter()
        .map(|b| b ^ 0xff)
        .collect::<Vec<u8>>()
        .into();
    let frames_on = |channel, method: &Method, body: &Bytes| {
        let mut buf = BytesMut::new();
        encode_content(&mut buf, channel, method, &persistent(), body, frame_max).unwrap();
        decode_all(&mut buf, &Limits::with_frame_max(frame_max))
    };
    let mut first = frames_on(1, &publish("one"), &one).into_iter();
    let mut second = frames_on(2, &publish("two"), &two).into_iter();
    let ack = Frame::Method(3, BasicAck::default().into());

    // Round robin: 1, 2, 1, 2, ... with an ack on channel 3 in the middle, all in one stream.
    let mut stream = BytesMut::new();
    let mut turn = 0;
    loop {
        let next = if turn % 2 == 0 {
            first.next().or_else(|| second.next())
        } else {
            second.next().or_else(|| first.next())
        };
        let Some(frame) = next else { break };
        frame.encode(&mut stream, frame_max).unwrap();
        if turn == 3 {
            ack.encode(&mut stream, frame_max).unwrap();
        }
        turn += 1;
    }

    let mut assemblers: HashMap<u16, ContentAssembler> = HashMap::new();
    let mut commands: Vec<(u16, Command)> = Vec::new();
    for frame in decode_all(&mut stream, &Limits::with_frame_max(frame_max)) {
        let channel = frame.channel();
        let assembler = assemblers.entry(channel).or_default();
        if let Some(command) = assembler.feed(frame).unwrap() {
            commands.push((channel, command));
        }
    }
    assert_eq!(commands.len(), 3);
    let by_channel: HashMap<u16, Command> = commands.into_iter().collect();
    assert_eq!(by_channel[&3].method, ack_method());
    assert_eq!(by_channel[&1].method, publish("one"));
    assert_eq!(by_channel[&1].content.as_ref().unwrap().body, one);
    assert_eq!(by_channel[&2].method, publish("two"));
    assert_eq!(by_channel[&2].content.as_ref().unwrap().body, two);
    assert!(assemblers.values().all(ContentAssembler::is_idle));
}

fn ack_method() -> Method {
    BasicAck::default().into()
}

#[test]
fn content_head_and_body_frame_headers_make_the_same_octets_as_encode_content() {
    // A sender that keeps large bodies out of its buffer writes the head, then for each body
    // frame its header, the payload (sent from the body itself) and the end octet.
    for frame_max in [4096u32, 131_072] {
        let max_payload = frame_max as usize - 8;
        for len in [
            0usize,
            1,
            max_payload,
            max_payload + 1,
            20 * max_payload + 3,
        ] {
            let case = format!("frame_max {frame_max}, body {len}");
            let body = body_of(len);
            let method = publish("q");
            let mut whole = BytesMut::new();
            encode_content(&mut whole, 3, &method, &persistent(), &body, frame_max).unwrap();

            let mut pieces = BytesMut::new();
            encode_content_head(
                &mut pieces,
                3,
                &method,
                &persistent(),
                len as u64,
                frame_max,
            )
            .unwrap();
            for part in body.chunks(max_payload) {
                put_body_frame_header(&mut pieces, 3, part.len() as u32);
                pieces.extend_from_slice(part);
                pieces.extend_from_slice(&[amqp_codec::FRAME_END]);
            }
            assert_eq!(pieces, whole, "{case}");
        }
    }
}

#[test]
fn content_head_of_a_method_without_content_is_refused_and_writes_nothing() {
    let mut buf = BytesMut::from(&b"before"[..]);
    let result = encode_content_head(&mut buf, 1, &ack_method(), &persistent(), 5, 131_072);
    assert!(matches!(
        result,
        Err(amqp_codec::EncodeError::MethodCarriesNoContent(_))
    ));
    assert_eq!(&buf[..], b"before");
}

#[test]
fn content_head_too_large_for_frame_max_writes_nothing() {
    let mut buf = BytesMut::from(&b"before"[..]);
    let long_key = "k".repeat(255);
    let result = encode_content_head(
        &mut buf,
        1,
        &publish(&long_key),
        &persistent(),
        5,
        64, // the method frame alone is over 255 octets
    );
    assert!(result.is_err(), "{result:?}");
    assert_eq!(&buf[..], b"before");
}

fn output_of(parts: &[&'static [u8]]) -> Output {
    // Even parts are encoded, odd ones added as pieces.
    let mut out = OutputBuffer::with_capacity(16);
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 0 {
            out.encoded_mut().extend_from_slice(part);
        } else {
            out.push_piece(Bytes::from_static(part));
        }
    }
    out.take()
}

#[test]
fn output_pieces_keep_their_order_and_are_not_copied() {
    let body = body_of(1000);
    let mut out = OutputBuffer::with_capacity(16);
    out.encoded_mut().extend_from_slice(b"head");
    out.push_piece(body.clone());
    out.encoded_mut().extend_from_slice(b"end");
    assert_eq!(out.len(), 1007);
    let output = out.take();
    assert!(out.is_empty());
    let parts: Vec<&[u8]> = output.parts().collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], b"head");
    assert_eq!(parts[1].as_ptr(), body.as_ptr(), "the piece is a copy");
    assert_eq!(parts[2], b"end");
    assert_eq!(output.len(), 1007);
}

#[test]
fn output_written_two_octets_at_a_time_yields_every_octet_once_in_order() {
    let mut output = output_of(&[b"abc", b"defgh", b"ij", b"k", b""]);
    let mut seen = Vec::new();
    while output.has_remaining() {
        let mut slices = [std::io::IoSlice::new(&[]); 2];
        let n = output.chunks_vectored(&mut slices);
        assert!(n > 0);
        // A writer that takes at most 2 octets of the slices it is given.
        let mut took = 0;
        for slice in &slices[..n] {
            let step = slice.len().min(2 - took);
            seen.extend_from_slice(&slice[..step]);
            took += step;
            if took == 2 {
                break;
            }
        }
        output.advance(took);
    }
    assert_eq!(seen, b"abcdefghijk");
    assert!(output.is_empty());
}

#[test]
fn output_for_each_prefix_gives_exactly_the_octets_a_write_took() {
    let output = output_of(&[b"abc", b"defgh", b"ij"]);
    let mut seen = Vec::new();
    output.for_each_prefix(6, |part| seen.extend_from_slice(part));
    assert_eq!(seen, b"abcdef");
}

#[test]
fn body_frames_put_as_pieces_decode_to_the_body_for_every_size() {
    for frame_max in [4096u32, 131_072] {
        let max_payload = frame_max as usize - 8;
        for len in [1usize, max_payload, max_payload + 1, 20 * max_payload + 3] {
            let case = format!("frame_max {frame_max}, body {len}");
            let body = body_of(len);
            let mut out = OutputBuffer::with_capacity(64);
            encode_content_head(
                out.encoded_mut(),
                1,
                &publish("q"),
                &persistent(),
                len as u64,
                frame_max,
            )
            .unwrap();
            out.put_body_frames(1, &body, frame_max);
            let output = out.take();
            let frames_count = len.div_ceil(max_payload);
            // Head and first frame header, then per frame its payload and what follows it.
            assert_eq!(output.parts().count(), 2 * frames_count + 1, "{case}");
            let mut wire = BytesMut::new();
            wire.put(output);
            let frames = decode_all(&mut wire, &Limits::with_frame_max(frame_max));
            assert_eq!(frames.len(), 2 + frames_count, "{case}");
            let mut assembler = ContentAssembler::default();
            let commands: Vec<Command> = frames
                .into_iter()
                .filter_map(|frame| assembler.feed(frame).unwrap())
                .collect();
            assert_eq!(commands.len(), 1, "{case}");
            assert_eq!(commands[0].content.as_ref().unwrap().body, body, "{case}");
        }
    }
}

#[test]
fn output_from_parts_skips_empty_pieces_so_every_chunk_has_octets() {
    let pieces = vec![
        Bytes::new(),
        Bytes::from_static(b"ab"),
        Bytes::new(),
        Bytes::from_static(b"c"),
    ];
    let mut out = Output::from_parts(pieces, BytesMut::from(&b"de"[..]));
    let mut written = Vec::new();
    while out.has_remaining() {
        let chunk = out.chunk();
        assert!(!chunk.is_empty(), "a chunk of nothing with octets left");
        written.extend_from_slice(chunk);
        let n = chunk.len();
        out.advance(n);
    }
    assert_eq!(written, b"abcde");
    let (pieces, _) = out.into_parts();
    assert_eq!(pieces.len(), 2);
}
