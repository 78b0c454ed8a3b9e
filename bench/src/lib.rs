//! The workloads of the codec benchmark: the same frames for amqp-codec and for amq-protocol
//! (the codec lapin stands on), and the decode and encode loops that `benches/codec.rs` times
//! and `examples/profile.rs` runs under a profiler.
//!
//! Four messages, each built once for both libraries, with the same wire bytes:
//! - `publish`: basic.publish, a content header (delivery_mode 2, content_type) and a 16-byte body;
//! - `deliver`: basic.deliver, a content header and a 4 KiB body;
//! - `ack`: basic.ack;
//! - `start_ok`: connection.start-ok with a client-properties table (product, version, platform,
//!   a capabilities table of six booleans, connection_name);
//! - `mix`: one of each, in that order.
//!
//! Each benchmark works on a buffer holding its message [`REPEAT`] times; throughput is counted
//! in frames. Decoding: ours refills a `BytesMut` from a prebuilt `Bytes` (the copy a socket
//! read would make, counted in our time) and calls `amqp_codec::decode` until it says "need
//! more"; amq-protocol runs `parse_frame` over the byte slice. Encoding: every frame of the
//! buffer is written into a buffer reused from one iteration to the next. `decode/refill_only`
//! times the refill alone, to show how much of ours' decode time it is.
//!
//! Before timing anything, [`check_same_frames`] makes sure both libraries encode the frames to
//! the same bytes and decode those bytes into the same number of frames of the same kinds, which
//! re-encode to the same bytes again.

use std::collections::BTreeMap;
use std::hint::black_box;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic as amq_basic, connection as amq_connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as AmqTable, LongString as AmqLongString};
use amqp_codec::methods::{BasicAck, BasicDeliver, BasicPublish, ConnectionStartOk};
use amqp_codec::{decode, BasicProperties, ContentHeader, FieldTable, Frame, Limits, LongString};
use bytes::{Bytes, BytesMut};

/// How many times a buffer holds its message.
pub const REPEAT: usize = 64;

/// RabbitMQ's default frame_max.
pub const FRAME_MAX: u32 = 131_072;

pub const PUBLISH_BODY_LEN: usize = 16;
pub const DELIVER_BODY_LEN: usize = 4096;
pub const CONTENT_TYPE: &str = "application/json";
pub const ROUTING_KEY: &str = "task_queue";
pub const CONSUMER_TAG: &str = "amq.ctag-n9B1zPq0dXk3mJ7hL5vW2g";
pub const DELIVERY_TAG: u64 = 1_234_567;

/// connection.start-ok's capabilities, in byte order: amq-protocol keeps tables in a BTreeMap,
/// so ours are built in the same order to give the same bytes.
pub const CAPABILITIES: [&str; 6] = [
    "authentication_failure_close",
    "basic.nack",
    "connection.blocked",
    "consumer_cancel_notify",
    "exchange_exchange_bindings",
    "publisher_confirms",
];

/// The client properties other than capabilities, in byte order (capabilities comes first).
pub const CLIENT_PROPERTIES: [(&str, &str); 4] = [
    ("connection_name", "orders-worker-7"),
    ("platform", "Rust"),
    ("product", "amqp-rs"),
    ("version", "0.1.0"),
];

/// One message as both libraries' frames.
pub struct Message {
    pub name: &'static str,
    pub ours: Vec<Frame>,
    pub theirs: Vec<AMQPFrame>,
}

pub fn messages() -> Vec<Message> {
    vec![publish(), deliver(), ack(), start_ok()]
}

pub fn publish() -> Message {
    let body = pattern(PUBLISH_BODY_LEN);
    let ours = vec![
        Frame::Method(
            1,
            BasicPublish {
                exchange: "".into(),
                routing_key: ROUTING_KEY.into(),
                mandatory: false,
                immediate: false,
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(body.len() as u64, our_properties())),
        Frame::Body(1, Bytes::from(body.clone())),
    ];
    let theirs = vec![
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(amq_basic::AMQPMethod::Publish(amq_basic::Publish {
                exchange: "".into(),
                routing_key: ROUTING_KEY.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(1, their_header(body.len() as u64)),
        AMQPFrame::Body(1, body),
    ];
    Message {
        name: "publish",
        ours,
        theirs,
    }
}

pub fn deliver() -> Message {
    let body = pattern(DELIVER_BODY_LEN);
    let ours = vec![
        Frame::Method(
            1,
            BasicDeliver {
                consumer_tag: CONSUMER_TAG.into(),
                delivery_tag: DELIVERY_TAG,
                redelivered: false,
                exchange: "".into(),
                routing_key: ROUTING_KEY.into(),
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(body.len() as u64, our_properties())),
        Frame::Body(1, Bytes::from(body.clone())),
    ];
    let theirs = vec![
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(amq_basic::AMQPMethod::Deliver(amq_basic::Deliver {
                consumer_tag: CONSUMER_TAG.into(),
                delivery_tag: DELIVERY_TAG,
                redelivered: false,
                exchange: "".into(),
                routing_key: ROUTING_KEY.into(),
            })),
        ),
        AMQPFrame::Header(1, their_header(body.len() as u64)),
        AMQPFrame::Body(1, body),
    ];
    Message {
        name: "deliver",
        ours,
        theirs,
    }
}

pub fn ack() -> Message {
    let ours = vec![Frame::Method(
        1,
        BasicAck {
            delivery_tag: DELIVERY_TAG,
            multiple: false,
        }
        .into(),
    )];
    let theirs = vec![AMQPFrame::Method(
        1,
        AMQPClass::Basic(amq_basic::AMQPMethod::Ack(amq_basic::Ack {
            delivery_tag: DELIVERY_TAG,
            multiple: false,
        })),
    )];
    Message {
        name: "ack",
        ours,
        theirs,
    }
}

pub fn start_ok() -> Message {
    let mut capabilities = FieldTable::new();
    let mut their_capabilities = BTreeMap::new();
    for name in CAPABILITIES {
        capabilities.insert(name, true);
        their_capabilities.insert(name.into(), AMQPValue::Boolean(true));
    }
    let mut client_properties = FieldTable::new();
    client_properties.insert("capabilities", capabilities);
    let mut their_properties = BTreeMap::new();
    their_properties.insert(
        "capabilities".into(),
        AMQPValue::FieldTable(AmqTable::from(their_capabilities)),
    );
    for (key, value) in CLIENT_PROPERTIES {
        client_properties.insert(key, value);
        their_properties.insert(
            key.into(),
            AMQPValue::LongString(AmqLongString::from(value)),
        );
    }
    let response = "\0guest\0guest";
    let ours = vec![Frame::Method(
        0,
        ConnectionStartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: LongString::from(response),
            locale: "en_US".into(),
        }
        .into(),
    )];
    let theirs = vec![AMQPFrame::Method(
        0,
        AMQPClass::Connection(amq_connection::AMQPMethod::StartOk(
            amq_connection::StartOk {
                client_properties: AmqTable::from(their_properties),
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            },
        )),
    )];
    Message {
        name: "start_ok",
        ours,
        theirs,
    }
}

pub fn our_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some(CONTENT_TYPE.into()),
        delivery_mode: Some(2),
        ..BasicProperties::default()
    }
}

pub fn their_header(body_size: u64) -> AMQPContentHeader {
    AMQPContentHeader {
        class_id: 60,
        body_size,
        properties: amq_basic::AMQPProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2),
    }
}

/// A body of `len` octets that is not all zeroes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A workload: the frames of one message (or of the mix), [`REPEAT`] times over, and their bytes.
pub struct Workload {
    pub name: &'static str,
    pub ours: Vec<Frame>,
    pub theirs: Vec<AMQPFrame>,
    pub wire: Bytes,
}

pub fn workloads() -> Vec<Workload> {
    let messages = messages();
    let all: Vec<&Message> = messages.iter().collect();
    let mut workloads: Vec<Workload> = all.iter().map(|m| workload(m.name, &[m])).collect();
    workloads.push(workload("mix", &all));
    workloads
}

pub fn workload(name: &'static str, messages: &[&Message]) -> Workload {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..REPEAT {
        for message in messages {
            ours.extend(message.ours.iter().cloned());
            theirs.extend(message.theirs.iter().cloned());
        }
    }
    let mut wire = BytesMut::new();
    encode_ours(&ours, &mut wire);
    Workload {
        name,
        ours,
        theirs,
        wire: wire.freeze(),
    }
}

pub fn encode_ours(frames: &[Frame], buf: &mut BytesMut) {
    for frame in frames {
        frame.encode(buf, FRAME_MAX).expect("our frame encodes");
    }
}

pub fn encode_theirs(frames: &[AMQPFrame], mut buf: Vec<u8>) -> Vec<u8> {
    for frame in frames {
        buf = cookie_gen(frame, buf);
    }
    buf
}

/// amq-protocol's serializer over a `Vec`, moved in and handed back: no copy.
pub fn cookie_gen(frame: &AMQPFrame, buf: Vec<u8>) -> Vec<u8> {
    let context =
        gen_frame(frame)(WriteContext::from(buf)).expect("amq-protocol encodes the frame");
    context.into_inner().0
}

/// Refills `buf` with `wire`, as a socket read would, and decodes it all with our decoder.
pub fn refill_and_decode_ours(buf: &mut BytesMut, wire: &[u8], limits: &Limits) -> usize {
    buf.clear();
    buf.extend_from_slice(wire);
    decode_ours(buf, limits)
}

/// Decodes all of `buf` with our decoder, counting frames. Each frame is looked at in place,
/// as a connection dispatching on it would, not moved out.
pub fn decode_ours(buf: &mut BytesMut, limits: &Limits) -> usize {
    let mut count = 0;
    loop {
        let result = decode(buf, limits);
        match &result {
            Ok(Some(frame)) => {
                black_box(frame);
                count += 1;
            }
            Ok(None) => return count,
            Err(error) => panic!("our decoder refused the workload: {error}"),
        }
    }
}

/// Decodes all of `wire` with amq-protocol's parser, counting frames, looking at each frame in
/// place as [`decode_ours`] does.
pub fn decode_theirs(mut wire: &[u8]) -> usize {
    let mut count = 0;
    while !wire.is_empty() {
        let result = parse_frame(wire);
        match &result {
            Ok((rest, frame)) => {
                black_box(frame);
                wire = rest;
                count += 1;
            }
            Err(error) => panic!("amq-protocol refused the workload: {error:?}"),
        }
    }
    count
}

/// Both encoders give the same bytes, and both decoders read them back into the same number
/// of frames of the same kinds, which re-encode to the same bytes.
pub fn check_same_frames(workload: &Workload) {
    let theirs_wire = encode_theirs(&workload.theirs, Vec::new());
    assert_eq!(
        workload.wire[..],
        theirs_wire[..],
        "{}: both encoders give the same bytes",
        workload.name
    );

    let mut buf = BytesMut::from(&workload.wire[..]);
    let mut ours = Vec::new();
    while let Some(frame) =
        decode(&mut buf, &Limits::default()).expect("our decoder accepts the workload")
    {
        ours.push(frame);
    }
    let mut rest = &workload.wire[..];
    let mut theirs = Vec::new();
    while !rest.is_empty() {
        let (next, frame) = parse_frame(rest).expect("amq-protocol accepts the workload");
        theirs.push(frame);
        rest = next;
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{}: both decoders read as many frames",
        workload.name
    );
    assert_eq!(
        ours.len(),
        workload.ours.len(),
        "{}: frame count",
        workload.name
    );
    assert_eq!(
        ours, workload.ours,
        "{}: our decoder gives back our frames",
        workload.name
    );
    assert_eq!(
        theirs, workload.theirs,
        "{}: amq-protocol gives back its frames",
        workload.name
    );
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let same_kind = matches!(
            (a, b),
            (Frame::Method(..), AMQPFrame::Method(..))
                | (Frame::Header(..), AMQPFrame::Header(..))
                | (Frame::Body(..), AMQPFrame::Body(..))
        );
        assert!(
            same_kind,
            "{}: frame {index} is of the same kind",
            workload.name
        );
        assert_eq!(
            a.channel(),
            b.channel_id(),
            "{}: frame {index} channel",
            workload.name
        );
    }
    let mut ours_again = BytesMut::new();
    encode_ours(&ours, &mut ours_again);
    assert_eq!(
        ours_again[..],
        workload.wire[..],
        "{}: our decode re-encodes",
        workload.name
    );
    assert_eq!(
        encode_theirs(&theirs, Vec::new())[..],
        workload.wire[..],
        "{}: amq-protocol's decode re-encodes",
        workload.name
    );
}

/// What a benchmark loop does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Bytes to frames.
    Decode,
    /// Frames to bytes.
    Encode,
}

/// Whose codec a benchmark loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// amqp-codec.
    Ours,
    /// amq-protocol.
    AmqProtocol,
}

/// One workload's loops with their reused buffers, for the harness-free examples.
pub struct Runner<'a> {
    workload: &'a Workload,
    limits: Limits,
    buf: BytesMut,
    vec: Vec<u8>,
}

impl<'a> Runner<'a> {
    /// Loops over `workload`, with buffers big enough for it.
    pub fn new(workload: &'a Workload) -> Self {
        Runner {
            workload,
            limits: Limits::with_frame_max(FRAME_MAX),
            buf: BytesMut::with_capacity(workload.wire.len()),
            vec: Vec::with_capacity(workload.wire.len()),
        }
    }

    /// Only refills the read buffer, as [`Self::run`] does before decoding with ours: the copy a
    /// socket read makes anyway. Returns the frames that would then be decoded.
    pub fn refill_only(&mut self) -> usize {
        self.buf.clear();
        self.buf.extend_from_slice(&self.workload.wire);
        black_box(&mut self.buf);
        self.workload.ours.len()
    }

    /// Goes over the workload's buffer once, as the criterion benchmark of the same name does,
    /// and returns how many frames that was.
    pub fn run(&mut self, operation: Operation, codec: Codec) -> usize {
        let workload = self.workload;
        match (operation, codec) {
            (Operation::Decode, Codec::Ours) => {
                refill_and_decode_ours(&mut self.buf, &workload.wire, &self.limits)
            }
            (Operation::Decode, Codec::AmqProtocol) => decode_theirs(black_box(&workload.wire[..])),
            (Operation::Encode, Codec::Ours) => {
                self.buf.clear();
                encode_ours(black_box(&workload.ours), &mut self.buf);
                workload.ours.len()
            }
            (Operation::Encode, Codec::AmqProtocol) => {
                self.vec.clear();
                self.vec =
                    encode_theirs(black_box(&workload.theirs), std::mem::take(&mut self.vec));
                workload.theirs.len()
            }
        }
    }
}
