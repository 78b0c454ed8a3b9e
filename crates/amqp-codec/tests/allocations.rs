//! The publish, deliver and ack path allocates nothing per frame.
//!
//! A counting global allocator (over [`System`]) counts, per thread, every allocation and
//! reallocation made while a closure runs. Only the frame buffer may allocate: decoding reads
//! method and header frames in place (short strings kept inline) and splits body frames off the
//! read buffer, encoding writes into a buffer the caller reserved. So, once the read buffer is
//! shared (the first body frame split off a fresh `BytesMut` turns its storage into shared
//! storage: one allocation, once per buffer), a thousand messages cost no more allocations than
//! ten; and frames read in place cost none at all.
//!
//! The counter is thread-local, so tests running in parallel on other threads do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use amqp_codec::methods::{BasicAck, BasicDeliver, BasicPublish};
use amqp_codec::{
    decode, encode_content, BasicProperties, ContentAssembler, ContentHeader, Frame, Limits,
    Method, ShortString,
};
use bytes::{Bytes, BytesMut};

/// [`System`], counting the allocations of each thread.
struct CountingAllocator;

thread_local! {
    /// Allocations and reallocations made by this thread. Const-initialised and without a
    /// destructor, so reading it from inside the allocator never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with` fails only while the thread is being torn down; nothing is measured then.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches no memory of the caller.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` and `layout` come from this allocator, which got them from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `f` and returns what it returned with the number of allocations it made on this thread.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let value = f();
    let after = ALLOCATIONS.with(Cell::get);
    (value, after - before)
}

const FRAME_MAX: u32 = 131_072;
const CHANNEL: u16 = 1;
const PUBLISH_BODY: &[u8] = b"0123456789abcdef";
const DELIVER_BODY: [u8; 4096] = [0x5a; 4096];

fn publish() -> Method {
    Method::BasicPublish(BasicPublish {
        exchange: ShortString::from_static("amq.direct"),
        routing_key: ShortString::from_static("task_queue"),
        mandatory: false,
        immediate: false,
    })
}

fn deliver(delivery_tag: u64) -> Method {
    Method::BasicDeliver(BasicDeliver {
        consumer_tag: ShortString::from_static("amq.ctag-n9B1zPq0dXk3mJ7hL5vW2g"),
        delivery_tag,
        redelivered: false,
        exchange: ShortString::from_static(""),
        routing_key: ShortString::from_static("task_queue"),
    })
}

fn ack(delivery_tag: u64) -> Method {
    Method::BasicAck(BasicAck {
        delivery_tag,
        multiple: false,
    })
}

/// A persistent JSON message's properties, as a publisher sets them.
fn properties() -> BasicProperties {
    BasicProperties {
        content_type: Some(ShortString::from_static("application/json")),
        delivery_mode: Some(2),
        ..BasicProperties::default()
    }
}

/// `messages` times: basic.publish + header + 16-octet body, basic.ack, basic.deliver + header
/// + 4 KiB body. Seven frames a message.
fn wire(messages: usize) -> Bytes {
    wire_with_bodies(messages, PUBLISH_BODY, &DELIVER_BODY)
}

/// As [`wire`], with these bodies: an empty body has no body frame.
fn wire_with_bodies(messages: usize, publish_body: &[u8], deliver_body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    for tag in 1..=messages as u64 {
        encode_content(
            &mut buf,
            CHANNEL,
            &publish(),
            &properties(),
            publish_body,
            FRAME_MAX,
        )
        .unwrap();
        Frame::Method(CHANNEL, ack(tag))
            .encode(&mut buf, FRAME_MAX)
            .unwrap();
        encode_content(
            &mut buf,
            CHANNEL,
            &deliver(tag),
            &properties(),
            deliver_body,
            FRAME_MAX,
        )
        .unwrap();
    }
    buf.freeze()
}

const FRAMES_PER_MESSAGE: usize = 7;

/// A read buffer holding `wire`, with room for nothing more: as a socket read leaves it.
fn read_buffer(wire: &Bytes) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.extend_from_slice(wire);
    buf
}

/// Decodes every frame of `buf`, dropping each, and returns how many there were and whether
/// each was of the kind expected at its place in [`wire`].
fn decode_all(buf: &mut BytesMut) -> (usize, bool) {
    let limits = Limits::with_frame_max(FRAME_MAX);
    let mut frames = 0;
    let mut in_order = true;
    while let Some(frame) = decode(buf, &limits).unwrap() {
        in_order &= matches!(
            (frames % FRAMES_PER_MESSAGE, &frame),
            (0, Frame::Method(_, Method::BasicPublish(_)))
                | (1 | 5, Frame::Header(..))
                | (2 | 6, Frame::Body(..))
                | (3, Frame::Method(_, Method::BasicAck(_)))
                | (4, Frame::Method(_, Method::BasicDeliver(_)))
        );
        frames += 1;
    }
    (frames, in_order)
}

#[test]
fn decode_of_publish_ack_deliver_allocates_the_same_for_ten_and_a_thousand_messages() {
    let mut counts = Vec::new();
    for messages in [10, 1000] {
        let wire = wire(messages);
        let mut buf = read_buffer(&wire);
        let ((frames, in_order), allocations) = allocations_during(|| decode_all(&mut buf));
        assert_eq!(frames, messages * FRAMES_PER_MESSAGE);
        assert!(in_order, "frames decoded in the order they were encoded");
        counts.push(allocations);
    }
    assert_eq!(
        counts[0], counts[1],
        "allocations for 10 and for 1000 messages"
    );
    // The one allowed: the first body frame split off a fresh buffer makes its storage shared.
    assert!(counts[1] <= 1, "decode allocated {} times", counts[1]);
}

#[test]
fn decode_of_publish_ack_deliver_allocates_nothing_after_the_first_body_frame() {
    let wire = wire(1000);
    let mut buf = read_buffer(&wire);
    let limits = Limits::with_frame_max(FRAME_MAX);
    // basic.publish and its header are read in place; the body frame is split off the buffer,
    // which turns its storage into shared storage: the one allocation per buffer.
    let publish = decode(&mut buf, &limits).unwrap();
    assert!(matches!(
        publish,
        Some(Frame::Method(_, Method::BasicPublish(_)))
    ));
    let header = decode(&mut buf, &limits).unwrap();
    assert!(matches!(header, Some(Frame::Header(..))));
    let body = decode(&mut buf, &limits).unwrap();
    assert!(matches!(body, Some(Frame::Body(..))));

    let ((frames, _), allocations) = allocations_during(|| decode_all(&mut buf));

    assert_eq!(frames, 1000 * FRAMES_PER_MESSAGE - 3);
    assert_eq!(allocations, 0, "decode allocated after warm-up");
}

#[test]
fn decode_of_method_and_header_frames_allocates_nothing_at_all() {
    // Empty-bodied publishes and deliveries (a method and a header frame each) and acks: every
    // frame is read in place, so even a fresh read buffer is never made shared.
    let wire = wire_with_bodies(1000, b"", b"");
    let mut buf = read_buffer(&wire);
    let limits = Limits::with_frame_max(FRAME_MAX);

    let (frames, allocations) = allocations_during(|| {
        let mut frames = 0;
        while let Some(frame) = decode(&mut buf, &limits).unwrap() {
            assert!(matches!(frame, Frame::Method(..) | Frame::Header(..)));
            frames += 1;
        }
        frames
    });

    assert_eq!(frames, 1000 * 5);
    assert!(buf.is_empty());
    assert_eq!(allocations, 0, "decode allocated");
}

#[test]
fn decode_with_a_refilled_read_buffer_allocates_nothing_once_warm() {
    let wire = wire(100);
    let mut buf = read_buffer(&wire);
    let (warm_up_frames, _) = decode_all(&mut buf);
    assert_eq!(warm_up_frames, 100 * FRAMES_PER_MESSAGE);

    // Every frame of the first fill is dropped, so the buffer's storage is unique again and the
    // next fill reuses it in place, as a connection's read loop would.
    let (frames, allocations) = allocations_during(|| {
        buf.clear();
        buf.extend_from_slice(&wire);
        decode_all(&mut buf)
    });

    assert_eq!(frames, (100 * FRAMES_PER_MESSAGE, true));
    assert_eq!(allocations, 0, "refill and decode allocated");
}

#[test]
fn encode_of_publish_ack_deliver_into_a_reserved_buffer_allocates_nothing() {
    let messages: u64 = 1000;
    let publish = publish();
    let properties = properties();
    let acks: Vec<Frame> = (1..=messages)
        .map(|tag| Frame::Method(CHANNEL, ack(tag)))
        .collect();
    let delivers: Vec<Method> = (1..=messages).map(deliver).collect();
    let deliver_frames: Vec<Frame> = delivers
        .iter()
        .map(|method| Frame::Method(CHANNEL, method.clone()))
        .collect();
    let deliver_header = Frame::Header(
        CHANNEL,
        ContentHeader::basic(DELIVER_BODY.len() as u64, properties.clone()),
    );
    let deliver_body = Frame::Body(CHANNEL, Bytes::from_static(&DELIVER_BODY));
    let mut buf = BytesMut::with_capacity(wire(messages as usize).len() * 2);
    let capacity = buf.capacity();

    let (written, allocations) = allocations_during(|| {
        for ((ack, deliver), deliver_frame) in acks.iter().zip(&delivers).zip(&deliver_frames) {
            encode_content(
                &mut buf,
                CHANNEL,
                &publish,
                &properties,
                PUBLISH_BODY,
                FRAME_MAX,
            )
            .unwrap();
            ack.encode(&mut buf, FRAME_MAX).unwrap();
            encode_content(
                &mut buf,
                CHANNEL,
                deliver,
                &properties,
                &DELIVER_BODY,
                FRAME_MAX,
            )
            .unwrap();
            // The same delivery again, frame by frame, as a broker relaying it would.
            deliver_frame.encode(&mut buf, FRAME_MAX).unwrap();
            deliver_header.encode(&mut buf, FRAME_MAX).unwrap();
            deliver_body.encode(&mut buf, FRAME_MAX).unwrap();
        }
        buf.len()
    });

    assert_eq!(allocations, 0, "encode allocated");
    assert_eq!(
        buf.capacity(),
        capacity,
        "the reserved buffer was not grown"
    );
    let one_message = wire(1).len()
        + deliver_frames[0].encoded_len()
        + deliver_header.encoded_len()
        + deliver_body.encoded_len();
    assert_eq!(written, one_message * messages as usize);
}

/// Feeds decoded frames to one channel's assembler, returning how many commands came out.
fn assemble_all(buf: &mut BytesMut, assembler: &mut ContentAssembler) -> usize {
    let limits = Limits::with_frame_max(FRAME_MAX);
    let mut commands = 0;
    while let Some(frame) = decode(buf, &limits).unwrap() {
        if assembler.feed(frame).unwrap().is_some() {
            commands += 1;
        }
    }
    commands
}

/// A body that fits one frame (nearly every message) is handed on as the slice of that frame:
/// assembling it needs no allocation.
#[test]
fn content_assembler_of_single_frame_bodies_allocates_the_same_for_ten_and_a_thousand_messages() {
    let mut counts = Vec::new();
    for messages in [10, 1000] {
        let wire = wire(messages);
        let mut buf = read_buffer(&wire);
        let mut assembler = ContentAssembler::default();
        let (commands, allocations) = allocations_during(|| assemble_all(&mut buf, &mut assembler));
        assert_eq!(commands, messages * 3, "publish, ack and deliver commands");
        counts.push(allocations);
    }
    assert_eq!(
        counts[0], counts[1],
        "allocations for 10 and for 1000 messages"
    );
    assert!(
        counts[1] <= 1,
        "decode and assembly allocated {} times",
        counts[1]
    );
}
