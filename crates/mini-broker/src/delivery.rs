//! The path from a queue to a consumer's socket.
//!
//! A queue hands a message to a consumer by writing basic.deliver, its content header and its
//! body frames straight into the consumer connection's [`Outbox`], and by recording the
//! delivery in the channel's [`ChannelLink`] until it is acked. The connection's writer task
//! drains the outbox into the socket, many frames per write. A message's content header goes
//! out with the property octets its publisher sent ([`put_content`]): nothing is decoded or
//! re-encoded per delivery. Small bodies live in the message's own allocation, large ones are
//! the [`bytes::Bytes`] of the publisher's frame (see [`crate::message`]).
//!
//! Lock order, always: queue, then channel link, then outbox. Nobody takes a queue while
//! holding a link or an outbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use amqp_codec::content::{max_body_frame_payload, put_body_frame_header, Output};
use amqp_codec::methods::{BasicDeliver, BasicGetOk, BasicReturn};
use amqp_codec::{ChannelId, Frame, FrameType, Method, ShortString};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::broker::MessageStats;
use crate::message::{put_header_frame, MessageContent, QueuedMessage};
use crate::queue::Queue;

/// Above this many buffered bytes a connection gets no more deliveries until its writer
/// catches up: memory stays bounded for no-ack consumers too.
pub const OUTBOX_HIGH_WATER: usize = 4 * 1024 * 1024;

/// The largest drained buffer the outbox keeps for reuse; a larger one (after a burst) is
/// freed, so an idle connection does not hold megabytes.
const SPARE_MAX: usize = 1024 * 1024;

/// The least room the outbox makes for frames at a time. After each take it makes room for
/// as much as the writer took last, rounded up to a power of two (up to [`SPARE_MAX`]). A
/// drained buffer that held less than this is not kept: a quiet connection holds no frame
/// buffer between its frames.
const FRAMES_MIN: usize = 4096;

/// Room made for a frame the broker encodes (a larger one grows the buffer itself).
const FRAME_ROOM: usize = 1024;

/// The most pieces a drained list may hold room for and still be kept for reuse.
const SPARE_PIECES_MAX: usize = 1024;

/// Locks a mutex, recovering the data if another thread panicked while holding it: one
/// connection's bug must not take the broker down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bytes waiting to be written to one connection's socket.
pub struct Outbox {
    buf: Mutex<Buffers>,
    notify: Notify,
    frame_max: AtomicU32,
    closed: AtomicBool,
    /// Bytes the writer has written so far (heartbeats are only needed when this stalls).
    written: AtomicU64,
    /// Queues that skipped this connection's consumers because the outbox was full.
    paused: Mutex<Vec<Weak<Queue>>>,
}

/// What waits for the socket: pieces (runs of encoded frames, and the bodies of large
/// messages as they were received, never copied), then the frames encoded since the last
/// piece in `filling`. Drained ones are kept to swap in when the writer takes them, so the
/// steady state allocates nothing (`BytesMut::split` would leave no capacity behind).
///
/// Only while frames come fast: `filling` starts with no buffer, and a connection that sends
/// a frame now and then (a heartbeat, a confirm) gets a buffer for it that goes once written
/// ([`Outbox::recycle`]). An idle connection holds no frame buffer.
struct Buffers {
    pieces: Vec<Bytes>,
    pieces_len: usize,
    filling: BytesMut,
    /// Octets encoded into `filling` since the last take that were split off into `pieces`.
    encoded_in_pieces: usize,
    /// How much room to make for frames at a time ([`FRAMES_MIN`] ..= [`SPARE_MAX`]).
    chunk: usize,
    spare: BytesMut,
    spare_pieces: Vec<Bytes>,
}

impl Buffers {
    /// Bytes waiting.
    fn len(&self) -> usize {
        self.pieces_len + self.filling.len()
    }

    /// The buffer to encode frames into, with room for at least `needed` more octets.
    ///
    /// Room is made a chunk at a time: `BytesMut`, asked for a little more room while the
    /// writer still holds pieces split off the buffer, would otherwise allocate just that
    /// little, and the next frame would need another allocation.
    fn room(&mut self, needed: usize) -> &mut BytesMut {
        if self.filling.capacity() - self.filling.len() < needed {
            self.filling.reserve(needed.max(self.chunk));
        }
        &mut self.filling
    }

    /// Adds a piece after what is encoded so far.
    fn push_piece(&mut self, piece: Bytes) {
        if !self.filling.is_empty() {
            let encoded = self.filling.split().freeze();
            self.pieces_len += encoded.len();
            self.encoded_in_pieces += encoded.len();
            self.pieces.push(encoded);
        }
        self.pieces_len += piece.len();
        self.pieces.push(piece);
    }
}

/// What the writer took from an outbox: to be written in order, with vectored writes
/// ([`bytes::Buf`]), then given back with [`Outbox::recycle`].
#[derive(Debug, Default)]
pub struct Segments {
    /// The pieces and the frames encoded after them, as the codec writes a client's output.
    output: Output,
    /// Octets the outbox encoded for these segments (what it copied, not the large bodies).
    encoded: usize,
}

impl Segments {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.output.is_empty()
    }

    /// The parts, in order (for tracing).
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.output.parts()
    }
}

#[cfg(test)]
impl Segments {
    /// Everything, in one buffer.
    pub(crate) fn contiguous(mut self) -> BytesMut {
        let mut all = BytesMut::new();
        while self.has_remaining() {
            let chunk = self.chunk();
            all.put_slice(chunk);
            let n = chunk.len();
            self.advance(n);
        }
        all
    }
}

/// The writer's view: [`Output`]'s, which offers every part to one vectored write.
impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.output.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.output.chunk()
    }

    fn advance(&mut self, n: usize) {
        self.output.advance(n)
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        self.output.chunks_vectored(dst)
    }
}

impl Outbox {
    /// An empty outbox; frames are split for `frame_max` (updated after tune).
    pub fn new(frame_max: u32) -> Outbox {
        Outbox {
            buf: Mutex::new(Buffers {
                pieces: Vec::new(),
                pieces_len: 0,
                filling: BytesMut::new(),
                encoded_in_pieces: 0,
                chunk: FRAMES_MIN,
                spare: BytesMut::new(),
                spare_pieces: Vec::new(),
            }),
            notify: Notify::new(),
            frame_max: AtomicU32::new(frame_max),
            closed: AtomicBool::new(false),
            written: AtomicU64::new(0),
            paused: Mutex::new(Vec::new()),
        }
    }

    /// Sets the negotiated frame_max.
    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// Appends one frame and wakes the writer.
    pub fn send(&self, frame: &Frame) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = lock(&self.buf);
        let was_empty = buf.len() == 0;
        // A method the broker itself builds always encodes; a failure here is a bug, logged.
        if let Err(err) = frame.encode(buf.room(FRAME_ROOM), 0) {
            tracing::error!("cannot encode {frame:?}: {err}");
        }
        drop(buf);
        self.wake_if(was_empty);
    }

    /// Wakes the writer if this append made the outbox non-empty. The writer only waits after
    /// taking an empty outbox, so the append that follows finds it empty and wakes it (a
    /// `Notify` permit is kept if the writer is not waiting yet); later appends need not.
    fn wake_if(&self, was_empty: bool) {
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Appends a method frame.
    pub fn send_method(&self, channel: ChannelId, method: impl Into<Method>) {
        self.send(&Frame::Method(channel, method.into()));
    }

    /// Appends a method with content (deliver, get-ok, return) and wakes the writer.
    pub fn send_content(
        &self,
        channel: ChannelId,
        method: &ContentMethod<'_>,
        content: &MessageContent,
    ) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = lock(&self.buf);
        let was_empty = buf.len() == 0;
        self.encode_content(&mut buf, channel, method, content);
        drop(buf);
        self.wake_if(was_empty);
    }

    /// Like [`Outbox::send_content`], but only below the high-water mark, checked under the
    /// same lock; false (nothing appended) when the outbox is full.
    fn send_content_unless_full(
        &self,
        channel: ChannelId,
        method: &ContentMethod<'_>,
        content: &MessageContent,
    ) -> bool {
        let mut buf = lock(&self.buf);
        if buf.len() >= OUTBOX_HIGH_WATER {
            return false;
        }
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        let was_empty = buf.len() == 0;
        self.encode_content(&mut buf, channel, method, content);
        drop(buf);
        self.wake_if(was_empty);
        true
    }

    /// Encodes a delivery: a small body is copied in with its frames; a large one goes in
    /// as the pieces of its body frames, between their 7-octet headers and end octets.
    fn encode_content(
        &self,
        buf: &mut Buffers,
        channel: ChannelId,
        method: &ContentMethod<'_>,
        content: &MessageContent,
    ) {
        let frame_max = self.frame_max();
        let room = FRAME_ROOM + content.properties_wire().len();
        let Some(body) = content.shared_body() else {
            let filling = buf.room(room + content.size());
            if let Err(err) = put_content(filling, channel, method, content, frame_max) {
                tracing::error!("cannot encode a {}: {err}", method.name());
            }
            return;
        };
        if let Err(err) = put_method_and_header(buf.room(room), channel, method, content, frame_max)
        {
            tracing::error!("cannot encode a {}: {err}", method.name());
            return;
        }
        let chunk = max_body_frame_payload(frame_max);
        let mut from = 0;
        while from < body.len() {
            let to = body.len().min(from + chunk);
            // Frame header (7) now, frame end (1) after the piece: room for both.
            put_body_frame_header(buf.room(8), channel, frame_payload_len(to - from));
            buf.push_piece(body.slice(from..to));
            buf.room(1).put_u8(amqp_codec::FRAME_END);
            from = to;
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        lock(&self.buf).len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the outbox is over its high-water mark.
    pub fn is_full(&self) -> bool {
        self.len() >= OUTBOX_HIGH_WATER
    }

    /// Records that the writer wrote `n` bytes.
    pub fn record_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Takes everything waiting (for the writer), swapping in the spare buffer. Hand the
    /// buffer back with [`Outbox::recycle`] once written.
    pub fn take(&self) -> Segments {
        let mut buf = lock(&self.buf);
        if buf.len() == 0 {
            return Segments::default();
        }
        let encoded = std::mem::take(&mut buf.encoded_in_pieces) + buf.filling.len();
        buf.chunk = encoded.next_power_of_two().clamp(FRAMES_MIN, SPARE_MAX);
        let spare = std::mem::take(&mut buf.spare);
        let tail = std::mem::replace(&mut buf.filling, spare);
        let spare_pieces = std::mem::take(&mut buf.spare_pieces);
        let pieces = std::mem::replace(&mut buf.pieces, spare_pieces);
        buf.pieces_len = 0;
        Segments {
            output: Output::from_parts(pieces, tail),
            encoded,
        }
    }

    /// Gives written segments back for the next [`Outbox::take`] to swap in, keeping their
    /// capacity while frames come fast enough to be worth it.
    ///
    /// The frame buffer is kept if the outbox encoded at least [`FRAMES_MIN`] octets into it
    /// (a quiet connection keeps none, not even an earlier spare), it has room for a chunk
    /// again, and it is no more than four chunks (a connection gone quiet after a burst does
    /// not keep the burst's buffer: after two takes it has let it go). The list of pieces
    /// likewise, if it is no more than four times the pieces it held (at least 16).
    pub fn recycle(&self, written: Segments) {
        let Segments { output, encoded } = written;
        let (mut pieces, mut tail) = output.into_parts();
        let pieces_held = pieces.len();
        // The pieces go first: the tail may share their buffer, and is reclaimed whole only
        // once it is the last to hold it.
        pieces.clear();
        tail.clear();
        let mut buf = lock(&self.buf);
        let pieces_max = (4 * pieces_held).clamp(16, SPARE_PIECES_MAX);
        if pieces_held > 0
            && pieces.capacity() <= pieces_max
            && pieces.capacity() > buf.spare_pieces.capacity()
        {
            buf.spare_pieces = pieces;
        } else if buf.spare_pieces.capacity() > pieces_max {
            buf.spare_pieces = Vec::new();
        }
        let kept_max = (4 * buf.chunk).min(SPARE_MAX);
        if encoded < FRAMES_MIN {
            buf.spare = BytesMut::new();
        } else if tail.try_reclaim(buf.chunk)
            && tail.capacity() <= kept_max
            && tail.capacity() > buf.spare.capacity()
        {
            buf.spare = tail;
        } else if buf.spare.capacity() > kept_max {
            buf.spare = BytesMut::new();
        }
    }

    /// Waits until something is appended (or the outbox is closed).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops accepting frames and wakes the writer so it can finish.
    pub fn close(&self) {
        // Release, with is_closed's Acquire: a writer that sees the close also sees every
        // frame put in before it.
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Remembers a queue to kick once the writer drained the outbox.
    pub fn pause(&self, queue: &Arc<Queue>) {
        let mut paused = lock(&self.paused);
        if !paused.iter().any(|q| q.as_ptr() == Arc::as_ptr(queue)) {
            paused.push(Arc::downgrade(queue));
        }
    }

    /// The queues paused on this outbox, forgetting them.
    pub fn take_paused(&self) -> Vec<Arc<Queue>> {
        std::mem::take(&mut *lock(&self.paused))
            .into_iter()
            .filter_map(|q| q.upgrade())
            .collect()
    }
}

/// A method that carries content, as the broker sends it; the exchange and routing key are
/// the message's own.
#[derive(Debug, Clone, Copy)]
pub enum ContentMethod<'a> {
    /// basic.deliver (spec 1.8.3.9) to a consumer.
    Deliver {
        /// The consumer's tag.
        consumer_tag: &'a [u8],
        /// The channel's delivery tag.
        delivery_tag: u64,
        /// Whether it was delivered before.
        redelivered: bool,
    },
    /// basic.get-ok (spec 1.8.3.11).
    GetOk {
        /// The channel's delivery tag.
        delivery_tag: u64,
        /// Whether it was delivered before.
        redelivered: bool,
        /// Messages left in the queue.
        message_count: u32,
    },
    /// basic.return (spec 1.8.3.8) of an unroutable mandatory message.
    Return {
        /// Why (312 NO_ROUTE).
        reply_code: u16,
        /// The reply text.
        reply_text: &'a [u8],
    },
}

impl ContentMethod<'_> {
    /// The method id in class basic.
    fn method_id(&self) -> u16 {
        match self {
            ContentMethod::Deliver { .. } => BasicDeliver::METHOD_ID,
            ContentMethod::GetOk { .. } => BasicGetOk::METHOD_ID,
            ContentMethod::Return { .. } => BasicReturn::METHOD_ID,
        }
    }

    /// The method's name, for log lines.
    fn name(&self) -> &'static str {
        match self {
            ContentMethod::Deliver { .. } => "basic.deliver",
            ContentMethod::GetOk { .. } => "basic.get-ok",
            ContentMethod::Return { .. } => "basic.return",
        }
    }
}

/// Why a delivery could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {size}-octet frame is larger than frame_max {frame_max}")]
pub struct FrameTooLarge {
    /// The frame's size, its 8 octets of framing included.
    pub size: usize,
    /// The negotiated frame_max.
    pub frame_max: u32,
}

/// Writes a content-carrying method, its content header and its body frames (spec 4.2.6),
/// the header's properties as the publisher encoded them. The same octets as
/// `amqp_codec::encode_content` of the method and the decoded properties, without building
/// either. On error (a frame larger than `frame_max`) nothing is left in `buf`.
pub fn put_content(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &ContentMethod<'_>,
    content: &MessageContent,
    frame_max: u32,
) -> Result<(), FrameTooLarge> {
    let body = content.body();
    let chunk = max_body_frame_payload(frame_max);
    buf.reserve(body.len() + body.len().div_ceil(chunk) * 8);
    put_method_and_header(buf, channel, method, content, frame_max)?;
    for part in body.chunks(chunk) {
        put_body_frame_header(buf, channel, frame_payload_len(part.len()));
        buf.put_slice(part);
        buf.put_u8(amqp_codec::FRAME_END);
    }
    Ok(())
}

/// The method frame and the content header frame of a delivery; on error, nothing.
fn put_method_and_header(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &ContentMethod<'_>,
    content: &MessageContent,
    frame_max: u32,
) -> Result<(), FrameTooLarge> {
    let start = buf.len();
    let result = put_method_and_header_unchecked(buf, channel, method, content, frame_max);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn put_method_and_header_unchecked(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &ContentMethod<'_>,
    content: &MessageContent,
    frame_max: u32,
) -> Result<(), FrameTooLarge> {
    let (exchange, routing_key) = (content.exchange(), content.routing_key());
    let properties = content.properties_wire();
    buf.reserve(2 * 8 + 32 + 3 * 256 + properties.len());
    let method_start = buf.len();
    buf.put_u8(FrameType::METHOD.0);
    buf.put_u16(channel);
    buf.put_u32(0); // size, set below
    buf.put_u16(BasicDeliver::CLASS_ID);
    buf.put_u16(method.method_id());
    match *method {
        ContentMethod::Deliver {
            consumer_tag,
            delivery_tag,
            redelivered,
        } => {
            put_short_string(buf, consumer_tag);
            buf.put_u64(delivery_tag);
            buf.put_u8(u8::from(redelivered));
            put_short_string(buf, exchange);
            put_short_string(buf, routing_key);
        }
        ContentMethod::GetOk {
            delivery_tag,
            redelivered,
            message_count,
        } => {
            buf.put_u64(delivery_tag);
            buf.put_u8(u8::from(redelivered));
            put_short_string(buf, exchange);
            put_short_string(buf, routing_key);
            buf.put_u32(message_count);
        }
        ContentMethod::Return {
            reply_code,
            reply_text,
        } => {
            buf.put_u16(reply_code);
            put_short_string(buf, reply_text);
            put_short_string(buf, exchange);
            put_short_string(buf, routing_key);
        }
    }
    let payload = buf.len() - method_start - 7;
    buf[method_start + 3..method_start + 7].copy_from_slice(&(payload as u32).to_be_bytes());
    buf.put_u8(amqp_codec::FRAME_END);
    check_frame_max(buf.len() - method_start, frame_max)?;
    let header_start = buf.len();
    put_header_frame(buf, channel, content.size() as u64, properties);
    check_frame_max(buf.len() - header_start, frame_max)?;
    Ok(())
}

/// A body frame's payload size: at most frame_max - 8 octets (the parts are cut so), which
/// fits the frame header's u32.
fn frame_payload_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A short string: its length octet, then its octets (at most 255: what the broker holds
/// came from short strings).
fn put_short_string(buf: &mut BytesMut, value: &[u8]) {
    let value = value.get(..255).unwrap_or(value);
    buf.put_u8(value.len() as u8);
    buf.put_slice(value);
}

fn check_frame_max(size: usize, frame_max: u32) -> Result<(), FrameTooLarge> {
    if frame_max != 0 && size > frame_max as usize {
        Err(FrameTooLarge { size, frame_max })
    } else {
        Ok(())
    }
}

/// A delivery awaiting its ack.
pub struct Unacked {
    /// The queue it came from (requeued there on reject or channel close).
    pub queue: Arc<Queue>,
    /// The consumer it went to; None for basic.get.
    pub consumer_tag: Option<ShortString>,
    /// The message.
    pub message: QueuedMessage,
}

/// What a channel shares with the queues that deliver to it.
pub struct ChannelLink {
    /// The channel number.
    pub id: ChannelId,
    /// The connection's id.
    pub connection_id: u64,
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The client wants basic.cancel when a queue goes away under its consumer.
    pub cancel_notify: bool,
    /// The broker's message counters, if this channel's deliveries are counted.
    stats: Option<Arc<MessageStats>>,
    /// Delivery tags and unacked messages.
    pub state: Mutex<LinkState>,
}

/// The part of a channel the queues change.
pub struct LinkState {
    /// The next delivery tag (they start at 1, per channel).
    pub next_tag: u64,
    /// Deliveries not yet acked, by tag.
    pub unacked: BTreeMap<u64, Unacked>,
    /// basic.qos global: unacked limit across the channel's consumers (0: none).
    pub global_prefetch: u16,
    /// Whether the channel is closed (no more deliveries).
    pub closed: bool,
    /// channel.flow: whether the client accepts deliveries.
    pub flow_active: bool,
}

impl ChannelLink {
    /// A link for channel `id` of a connection.
    pub fn new(
        id: ChannelId,
        connection_id: u64,
        outbox: Arc<Outbox>,
        cancel_notify: bool,
    ) -> ChannelLink {
        ChannelLink {
            id,
            connection_id,
            outbox,
            cancel_notify,
            stats: None,
            state: Mutex::new(LinkState {
                next_tag: 1,
                unacked: BTreeMap::new(),
                global_prefetch: 0,
                closed: false,
                flow_active: true,
            }),
        }
    }

    /// Counts this channel's deliveries in the broker's message counters.
    pub fn with_stats(mut self, stats: Arc<MessageStats>) -> ChannelLink {
        self.stats = Some(stats);
        self
    }

    /// Tries to deliver `message` from `queue` to the consumer `consumer_tag`. Returns the
    /// message back when the channel cannot take it now.
    pub fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &ShortString,
        no_ack: bool,
        message: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut state = lock(&self.state);
        if state.closed || !state.flow_active {
            return Err(message);
        }
        if !no_ack
            && state.global_prefetch > 0
            && state.unacked.len() >= usize::from(state.global_prefetch)
        {
            return Err(message);
        }
        let tag = state.next_tag;
        let deliver = ContentMethod::Deliver {
            consumer_tag: consumer_tag.as_bytes(),
            delivery_tag: tag,
            redelivered: message.redelivered,
        };
        if !self
            .outbox
            .send_content_unless_full(self.id, &deliver, &message.content)
        {
            self.outbox.pause(queue);
            return Err(message);
        }
        state.next_tag += 1;
        if let Some(stats) = &self.stats {
            MessageStats::add(&stats.delivered, 1);
            if message.redelivered {
                MessageStats::add(&stats.redelivered, 1);
            }
        }
        if !no_ack {
            state.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    consumer_tag: Some(consumer_tag.clone()),
                    message,
                },
            );
        }
        Ok(())
    }

    /// Records a basic.get delivery and returns its tag.
    pub fn record_get(&self, queue: &Arc<Queue>, message: &QueuedMessage, no_ack: bool) -> u64 {
        let mut state = lock(&self.state);
        let tag = state.next_tag;
        state.next_tag += 1;
        if !no_ack {
            state.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    consumer_tag: None,
                    message: message.clone(),
                },
            );
        }
        tag
    }

    /// Takes the unacked deliveries an ack, nack or reject names: `tag` alone, or every tag up
    /// to it with `multiple` (tag 0 with multiple: all). None if `tag` is unknown.
    pub fn take_unacked(&self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        let mut state = lock(&self.state);
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            if tag != 0 && !state.unacked.contains_key(&tag) {
                return None;
            }
            let rest = state.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut state.unacked, rest);
            Some(taken.into_values().collect())
        } else {
            state.unacked.remove(&tag).map(|u| vec![u])
        }
    }

    /// Closes the link and takes every unacked delivery (to requeue them).
    pub fn close(&self) -> Vec<Unacked> {
        let mut state = lock(&self.state);
        state.closed = true;
        std::mem::take(&mut state.unacked).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` heartbeats (8 octets each).
    fn heartbeats(outbox: &Outbox, n: usize) {
        for _ in 0..n {
            outbox.send(&Frame::Heartbeat);
        }
    }

    /// Takes everything, writes it (all of it, as a vectored write would) and hands it back.
    fn write_round(outbox: &Outbox) -> Bytes {
        let mut segments = outbox.take();
        let written = segments.copy_to_bytes(segments.remaining());
        outbox.recycle(segments);
        written
    }

    #[test]
    fn outbox_take_swaps_in_recycled_buffer_keeping_its_capacity() {
        let outbox = Outbox::new(131_072);
        heartbeats(&outbox, FRAMES_MIN / 8);
        let Segments { output, encoded } = outbox.take();
        let (pieces, tail) = output.into_parts();
        let (capacity, start) = (tail.capacity(), tail.as_ptr());
        // Heartbeat: type 8, channel 0 (2 octets), size 0 (4 octets), frame end 0xCE.
        assert!(pieces.is_empty());
        assert_eq!(
            &tail[..],
            &b"\x08\x00\x00\x00\x00\x00\x00\xce".repeat(FRAMES_MIN / 8)[..]
        );
        let first = Segments {
            output: Output::from_parts(pieces, tail),
            encoded,
        };
        outbox.recycle(first);
        heartbeats(&outbox, FRAMES_MIN / 8);
        // The buffer filled since is taken; the recycled one becomes the one being filled.
        let second = outbox.take();
        assert_eq!(second.remaining(), FRAMES_MIN);
        let tail = second.parts().last().map(<[u8]>::as_ptr);
        assert_ne!(tail, Some(start));
        outbox.send(&Frame::Heartbeat);
        let filling = &lock(&outbox.buf).filling;
        assert_eq!((filling.as_ptr(), filling.capacity()), (start, capacity));
    }

    #[test]
    fn a_new_outbox_holds_no_buffer_and_a_quiet_one_none_once_written() {
        let outbox = Outbox::new(131_072);
        assert_eq!(lock(&outbox.buf).filling.capacity(), 0);
        heartbeats(&outbox, 1);
        assert_eq!(write_round(&outbox).len(), 8);
        let buf = lock(&outbox.buf);
        assert_eq!((buf.filling.capacity(), buf.spare.capacity()), (0, 0));
    }

    #[test]
    fn an_outbox_gone_quiet_after_a_burst_lets_the_burst_buffers_go() {
        let outbox = Outbox::new(131_072);
        heartbeats(&outbox, 25_000);
        assert_eq!(write_round(&outbox).len(), 200_000);
        assert!(
            lock(&outbox.buf).spare.capacity() >= 200_000,
            "kept while busy"
        );
        // Two quiet rounds: the first fills the burst's buffer, the second lets it go.
        for _ in 0..2 {
            heartbeats(&outbox, 1);
            assert_eq!(write_round(&outbox).len(), 8);
        }
        let buf = lock(&outbox.buf);
        assert_eq!((buf.filling.capacity(), buf.spare.capacity()), (0, 0));
    }

    #[test]
    fn an_outbox_gone_quiet_after_large_bodies_lets_the_list_of_pieces_go() {
        let outbox = Outbox::new(131_072);
        let body = Bytes::from(vec![7; 2 * crate::message::INLINE_BODY_MAX]);
        let large = MessageContent::with_properties(b"", b"q", &BasicProperties::default(), body);
        for tag in 1..=200 {
            let deliver = ContentMethod::Deliver {
                consumer_tag: b"c",
                delivery_tag: tag,
                redelivered: false,
            };
            outbox.send_content(1, &deliver, &large);
        }
        write_round(&outbox);
        assert!(
            lock(&outbox.buf).spare_pieces.capacity() >= 400,
            "kept while busy"
        );
        for _ in 0..2 {
            heartbeats(&outbox, 1);
            write_round(&outbox);
        }
        let buf = lock(&outbox.buf);
        assert!(buf.pieces.capacity() <= 16 && buf.spare_pieces.capacity() <= 16);
    }

    #[test]
    fn outbox_passes_a_large_body_on_uncopied_between_the_frames_around_it() {
        let outbox = Outbox::new(4096);
        let body = Bytes::from((0..10_000).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let large =
            MessageContent::with_properties(b"", b"q", &BasicProperties::default(), body.clone());
        let small = MessageContent::with_properties(
            b"",
            b"q",
            &BasicProperties::default(),
            Bytes::from_static(b"small"),
        );
        let deliver = |tag| ContentMethod::Deliver {
            consumer_tag: b"c",
            delivery_tag: tag,
            redelivered: false,
        };
        outbox.send_content(1, &deliver(1), &small);
        outbox.send_content(1, &deliver(2), &large);
        outbox.send(&Frame::Heartbeat);
        let mut expected = BytesMut::new();
        put_content(&mut expected, 1, &deliver(1), &small, 4096).unwrap();
        put_content(&mut expected, 1, &deliver(2), &large, 4096).unwrap();
        Frame::Heartbeat.encode(&mut expected, 0).unwrap();
        assert_eq!(outbox.len(), expected.len());
        let segments = outbox.take();
        // Three body frames of at most 4088 octets: each payload is a slice of the body.
        let body_range = body.as_ptr_range();
        let shared = segments
            .parts()
            .filter(|piece| body_range.contains(&piece.as_ptr()))
            .map(|piece| piece.len())
            .collect::<Vec<_>>();
        assert_eq!(shared, vec![4088, 4088, 1824]);
        assert_eq!(segments.contiguous(), expected);
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn segments_advance_across_pieces_and_offer_them_for_one_vectored_write() {
        let mut segments = Segments {
            output: Output::from_parts(
                vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")],
                BytesMut::from(&b"hi"[..]),
            ),
            encoded: 2,
        };
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(segments.chunks_vectored(&mut slices), 3);
        assert_eq!(&*slices[1], b"defg");
        segments.advance(4);
        assert_eq!((segments.remaining(), segments.chunk()), (5, &b"efg"[..]));
        segments.advance(4);
        assert_eq!(segments.chunk(), b"i");
        segments.advance(1);
        assert!(segments.is_empty());
    }

    use amqp_codec::{encode_content, BasicProperties, FieldTable, FieldValue};
    use bytes::Bytes;

    fn sample_properties() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert("x-trace", "abc");
        headers.insert("count", FieldValue::I64(7));
        BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c-1".into()),
            expiration: Some("60000".into()),
            timestamp: Some(1_700_000_000),
            ..BasicProperties::default()
        }
    }

    /// The codec's encoding of the same delivery, for comparison.
    fn codec_encoding(
        method: Method,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> BytesMut {
        let mut expected = BytesMut::new();
        encode_content(&mut expected, 3, &method, properties, body, frame_max).unwrap();
        expected
    }

    #[test]
    fn put_content_writes_what_the_codec_writes_for_deliver_get_ok_and_return() {
        for properties in [BasicProperties::default(), sample_properties()] {
            for body_len in [0, 1, 16, 4096, 5000, 70_000] {
                let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
                let content = MessageContent::with_properties(
                    b"amq.direct",
                    b"some.key",
                    &properties,
                    Bytes::from(body.clone()),
                );
                for frame_max in [4096, 131_072] {
                    let cases = [
                        (
                            ContentMethod::Deliver {
                                consumer_tag: b"amq.ctag-1",
                                delivery_tag: 42,
                                redelivered: true,
                            },
                            Method::BasicDeliver(BasicDeliver {
                                consumer_tag: "amq.ctag-1".into(),
                                delivery_tag: 42,
                                redelivered: true,
                                exchange: "amq.direct".into(),
                                routing_key: "some.key".into(),
                            }),
                        ),
                        (
                            ContentMethod::GetOk {
                                delivery_tag: 7,
                                redelivered: false,
                                message_count: 99,
                            },
                            Method::BasicGetOk(BasicGetOk {
                                delivery_tag: 7,
                                redelivered: false,
                                exchange: "amq.direct".into(),
                                routing_key: "some.key".into(),
                                message_count: 99,
                            }),
                        ),
                        (
                            ContentMethod::Return {
                                reply_code: 312,
                                reply_text: b"NO_ROUTE",
                            },
                            Method::BasicReturn(BasicReturn {
                                reply_code: 312,
                                reply_text: "NO_ROUTE".into(),
                                exchange: "amq.direct".into(),
                                routing_key: "some.key".into(),
                            }),
                        ),
                    ];
                    for (ours, theirs) in cases {
                        let mut buf = BytesMut::new();
                        put_content(&mut buf, 3, &ours, &content, frame_max).unwrap();
                        assert_eq!(
                            buf,
                            codec_encoding(theirs, &properties, &body, frame_max),
                            "{ours:?}, {body_len} octets, frame_max {frame_max}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn put_content_refuses_a_header_larger_than_frame_max_and_leaves_nothing() {
        let mut headers = FieldTable::new();
        headers.insert("big", "x".repeat(5000).as_str());
        let properties = BasicProperties {
            headers: Some(headers),
            ..BasicProperties::default()
        };
        let content =
            MessageContent::with_properties(b"", b"q", &properties, Bytes::from_static(b"hi"));
        let mut buf = BytesMut::from(&b"before"[..]);
        let method = ContentMethod::GetOk {
            delivery_tag: 1,
            redelivered: false,
            message_count: 0,
        };
        let error = put_content(&mut buf, 1, &method, &content, 4096).unwrap_err();
        assert_eq!(error.frame_max, 4096);
        assert!(error.size > 5000);
        assert_eq!(&buf[..], b"before");
    }

    #[test]
    fn outbox_take_of_empty_outbox_returns_empty_buffer() {
        let outbox = Outbox::new(131_072);
        assert!(outbox.take().is_empty());
        assert!(outbox.is_empty());
    }
}
