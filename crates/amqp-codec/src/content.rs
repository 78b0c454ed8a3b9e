//! Content: a method that carries a message, its content header, and its body frames
//! (spec 4.2.6). Both the client and the broker use this module, so content is assembled and
//! split in exactly one place.
//!
//! ```text
//!   basic.publish ──► content header (body_size = 10) ──► body "hello" ──► body "world"
//!   └──────────────────────────── one Command ──────────────────────────────────────┘
//! ```
//!
//! Frames of one content travel in order on one channel; other channels' frames may be
//! interleaved, so a peer keeps one [`ContentAssembler`] per channel.
//!
//! A sender keeps large bodies out of its encoded bytes: an [`OutputBuffer`] holds the frames
//! encoded so far and, between them, the payloads of large body frames as slices of the body
//! itself; what it hands to the socket is an [`Output`], written with vectored writes.
//!
//! ```text
//!  ┌ method + header frames, body frame header ┐┌ body (the sender's Bytes) ┐┌ 0xCE, next frames… ┐
//!  └──────────── encoded piece ────────────────┘└────────── piece ──────────┘└────── tail ────────┘
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::constants::{ChannelId, FRAME_OVERHEAD};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{put_body_frame, put_header_frame, put_method_frame, ContentHeader, Frame};
use crate::generated::{BasicProperties, Method};

/// A method with its content, if it carries one: what a channel acts on. `H` is the content
/// header as the receiver keeps it (see [`HeaderOfContent`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Command<H = ContentHeader> {
    /// The method.
    pub method: Method,
    /// The content header and the whole body, for methods that carry content.
    pub content: Option<Content<H>>,
}

/// A message as it travels with basic.publish, basic.deliver, basic.get-ok and basic.return.
#[derive(Debug, Clone, PartialEq)]
pub struct Content<H = ContentHeader> {
    /// The content header: body size and properties.
    pub header: H,
    /// The body. When it came in one frame this is a slice of that frame, not a copy.
    pub body: Bytes,
}

/// What content assembly needs of a content header (spec 4.2.6.1): its class and the body
/// size it announces. [`ContentHeader`] is the decoded header; a receiver that keeps the
/// properties as they came (a broker passing them on) gives its own, smaller type, and does
/// not move a decoded header of some 460 octets from frame to command.
pub trait HeaderOfContent {
    /// The class of the content's method.
    fn class_id(&self) -> u16;
    /// The total size of the body frames that follow.
    fn body_size(&self) -> u64;
}

impl HeaderOfContent for ContentHeader {
    fn class_id(&self) -> u16 {
        self.class_id
    }

    fn body_size(&self) -> u64 {
        self.body_size
    }
}

/// What the assembler waits for next (state names say what is awaited).
#[allow(clippy::large_enum_variant, clippy::enum_variant_names)]
#[derive(Debug, Default)]
enum State<H> {
    /// A method frame.
    #[default]
    AwaitingMethod,
    /// The content header of a content-carrying method.
    AwaitingHeader(Method),
    /// More body frames.
    AwaitingBody {
        method: Method,
        header: H,
        /// The body frames received so far.
        body: PartialBody,
        received: u64,
    },
}

/// The body of a content being received.
#[derive(Debug)]
enum PartialBody {
    /// No octet yet.
    Empty,
    /// One body frame's octets, kept as the slice of that frame: a body that fits one frame
    /// (nearly every message) is neither copied nor allocated for.
    One(Bytes),
    /// Two or more frames' octets, copied together as they come. Holding the frames instead
    /// would keep every read buffer they were sliced from alive, and let a peer that sends
    /// many tiny or empty body frames make the receiver hold far more than the body size.
    Many(BytesMut),
}

impl PartialBody {
    /// Adds a body frame's octets; `received` counts them all, this frame's included, and
    /// is at most `body_size`.
    fn push(self, part: Bytes, received: u64, body_size: u64) -> PartialBody {
        match self {
            body if part.is_empty() => body,
            PartialBody::Empty => PartialBody::One(part),
            PartialBody::One(first) => {
                // Room for four times what has arrived: a few body frames in one allocation,
                // yet never much more than the peer has actually sent.
                let capacity = received.saturating_mul(4).min(body_size);
                let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
                let mut joined = BytesMut::with_capacity(capacity);
                joined.put_slice(&first);
                joined.put_slice(&part);
                PartialBody::Many(joined)
            }
            PartialBody::Many(mut joined) => {
                joined.put_slice(&part);
                PartialBody::Many(joined)
            }
        }
    }

    fn finish(self) -> Bytes {
        match self {
            PartialBody::Empty => Bytes::new(),
            PartialBody::One(body) => body,
            PartialBody::Many(joined) => joined.freeze(),
        }
    }
}

/// Puts one channel's method, header and body frames back together into [`Command`]s.
#[derive(Debug)]
pub struct ContentAssembler<H = ContentHeader> {
    state: State<H>,
    max_body_size: u64,
}

impl Default for ContentAssembler {
    fn default() -> Self {
        ContentAssembler::new(DEFAULT_MAX_BODY_SIZE)
    }
}

/// RabbitMQ's default `max_message_size`: 128 MiB (since RabbitMQ 3.8).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 128 * 1024 * 1024;

impl<H: HeaderOfContent> ContentAssembler<H> {
    /// An assembler that refuses bodies larger than `max_body_size` as soon as their header
    /// announces them, before buffering anything.
    pub fn new(max_body_size: u64) -> Self {
        ContentAssembler {
            state: State::AwaitingMethod,
            max_body_size,
        }
    }

    /// Whether a content is half received.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::AwaitingMethod)
    }

    /// Feeds a method frame.
    pub fn feed_method(&mut self, method: Method) -> Result<Option<Command<H>>, DecodeError> {
        match self.state {
            State::AwaitingMethod if method.has_content() => {
                self.state = State::AwaitingHeader(method);
                Ok(None)
            }
            State::AwaitingMethod => Ok(Some(Command {
                method,
                content: None,
            })),
            State::AwaitingHeader(_) => Err(DecodeError::UnexpectedFrame(
                "expected a content header, got a method frame",
            )),
            State::AwaitingBody { .. } => Err(DecodeError::UnexpectedFrame(
                "expected a content body, got a method frame",
            )),
        }
    }

    /// Feeds a content header frame.
    pub fn feed_header(&mut self, header: H) -> Result<Option<Command<H>>, DecodeError> {
        let State::AwaitingHeader(method) = std::mem::take(&mut self.state) else {
            return Err(DecodeError::UnexpectedFrame(
                "content header without a content-carrying method",
            ));
        };
        if header.class_id() != method.class_id() {
            return Err(DecodeError::UnexpectedFrame(
                "content header of another class",
            ));
        }
        if header.body_size() > self.max_body_size {
            return Err(DecodeError::ContentTooLarge {
                size: header.body_size(),
                max: self.max_body_size,
            });
        }
        if header.body_size() == 0 {
            return Ok(Some(Command {
                method,
                content: Some(Content {
                    header,
                    body: Bytes::new(),
                }),
            }));
        }
        self.state = State::AwaitingBody {
            method,
            header,
            body: PartialBody::Empty,
            received: 0,
        };
        Ok(None)
    }

    /// Feeds a content body frame.
    pub fn feed_body(&mut self, part: Bytes) -> Result<Option<Command<H>>, DecodeError> {
        let State::AwaitingBody {
            method,
            header,
            body,
            received,
        } = std::mem::take(&mut self.state)
        else {
            return Err(DecodeError::UnexpectedFrame(
                "content body without a content header",
            ));
        };
        let received = received.saturating_add(part.len() as u64);
        if received > header.body_size() {
            return Err(DecodeError::BodyTooLarge {
                expected: header.body_size(),
                received,
            });
        }
        let body = body.push(part, received, header.body_size());
        if received < header.body_size() {
            self.state = State::AwaitingBody {
                method,
                header,
                body,
                received,
            };
            return Ok(None);
        }
        let body = body.finish();
        Ok(Some(Command {
            method,
            content: Some(Content { header, body }),
        }))
    }
}

impl ContentAssembler {
    /// Feeds one frame of this channel. Returns the command it completes, if any.
    ///
    /// Frames out of order are a 505 UNEXPECTED_FRAME; body frames beyond the announced size
    /// a 501 FRAME_ERROR; a body over the maximum a 406 PRECONDITION_FAILED (a channel error,
    /// as in RabbitMQ). Protocol headers and heartbeats are not channel frames and are refused.
    pub fn feed(&mut self, frame: Frame) -> Result<Option<Command>, DecodeError> {
        match frame {
            Frame::Method(_, method) => self.feed_method(method),
            Frame::Header(_, header) => self.feed_header(header),
            Frame::Body(_, body) => self.feed_body(body),
            Frame::Heartbeat | Frame::ProtocolHeader(_) => {
                Err(DecodeError::UnexpectedFrame("not a channel frame"))
            }
        }
    }
}

/// The largest body slice one body frame can carry under `frame_max` (0: no limit).
pub fn max_body_frame_payload(frame_max: u32) -> usize {
    let max = if frame_max == 0 { u32::MAX } else { frame_max };
    usize::try_from(max.saturating_sub(FRAME_OVERHEAD as u32))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Splits `body` into body frames for `frame_max`: slices of `body`, never copies.
pub fn body_frames(
    channel: ChannelId,
    body: &Bytes,
    frame_max: u32,
) -> impl Iterator<Item = Frame> + '_ {
    let chunk = max_body_frame_payload(frame_max);
    let count = body.len().div_ceil(chunk);
    (0..count).map(move |i| {
        let start = i.saturating_mul(chunk);
        let end = start.saturating_add(chunk).min(body.len());
        Frame::Body(channel, body.slice(start..end))
    })
}

/// Appends a whole message to `buf`: the method frame, the content header frame, and as many
/// body frames as `frame_max` requires. On error `buf` is left as it was.
///
/// This is the publish (and deliver) fast path: the frames are written straight into `buf`,
/// nothing is allocated when `buf` has room.
pub fn encode_content(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &Method,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) -> Result<(), EncodeError> {
    all_or_nothing(buf, method, |buf| {
        encode_content_unchecked(buf, channel, method, properties, body, frame_max)
    })
}

/// Runs `encode` for a content-carrying `method`, leaving `buf` as it was if it fails.
fn all_or_nothing(
    buf: &mut BytesMut,
    method: &Method,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    if !method.has_content() {
        return Err(EncodeError::MethodCarriesNoContent(method.name()));
    }
    let start = buf.len();
    let result = encode(buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_content_unchecked(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &Method,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) -> Result<(), EncodeError> {
    let chunk = max_body_frame_payload(frame_max);
    let body_frames = body.len().div_ceil(chunk);
    buf.reserve(
        body.len()
            .saturating_add(body_frames.saturating_mul(FRAME_OVERHEAD))
            .saturating_add(FRAME_OVERHEAD.saturating_mul(2))
            .saturating_add(18)
            .saturating_add(method.arguments_len())
            .saturating_add(properties.encoded_len()),
    );
    put_method_and_header(
        buf,
        channel,
        method,
        properties,
        body.len() as u64,
        frame_max,
    )?;
    for slice in body.chunks(chunk) {
        put_body_frame(buf, channel, slice)?;
    }
    Ok(())
}

/// Appends the first two frames of a message, the method frame and the content header frame
/// announcing `body_size` octets, for a caller that writes the body frames itself: one that
/// sends large bodies as they are, without copying them (see [`put_body_frame_header`]).
/// On error `buf` is left as it was.
pub fn encode_content_head(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &Method,
    properties: &BasicProperties,
    body_size: u64,
    frame_max: u32,
) -> Result<(), EncodeError> {
    all_or_nothing(buf, method, |buf| {
        put_method_and_header(buf, channel, method, properties, body_size, frame_max)
    })
}

fn put_method_and_header(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &Method,
    properties: &BasicProperties,
    body_size: u64,
    frame_max: u32,
) -> Result<(), EncodeError> {
    let method_start = buf.len();
    put_method_frame(buf, channel, method)?;
    check_frame_max(buf.len().saturating_sub(method_start), frame_max)?;
    let header_start = buf.len();
    put_header_frame(
        buf,
        channel,
        ContentHeader::BASIC_CLASS_ID,
        body_size,
        properties,
    )?;
    check_frame_max(buf.len().saturating_sub(header_start), frame_max)
}

/// Appends the seven octets that open a body frame with `payload_len` octets of body: frame
/// type 3, channel, size (spec 4.2.3). The payload and [`FRAME_END`](crate::FRAME_END) are
/// the caller's to send after it, so the payload can go out as a slice of the body instead of
/// a copy. `payload_len` is at most [`max_body_frame_payload`] of the negotiated frame_max.
pub fn put_body_frame_header(buf: &mut BytesMut, channel: ChannelId, payload_len: u32) {
    buf.put_u8(crate::constants::FrameType::BODY.0);
    buf.put_u16(channel);
    buf.put_u32(payload_len);
}

fn check_frame_max(size: usize, frame_max: u32) -> Result<(), EncodeError> {
    if frame_max != 0 && size > frame_max as usize {
        Err(EncodeError::FrameTooLarge { size, frame_max })
    } else {
        Ok(())
    }
}

/// Bytes on their way to a socket: frames encoded into one buffer, with pieces added between
/// them as they are (the payloads of large body frames: slices of the body, not copies).
#[derive(Debug, Default)]
pub struct OutputBuffer {
    /// Pieces before `encoded`, in order; none unless a piece was added.
    pieces: Vec<Bytes>,
    /// Octets in `pieces`.
    pieces_len: usize,
    /// Where frames are encoded, after the pieces.
    encoded: BytesMut,
}

impl OutputBuffer {
    /// An empty output with room for `capacity` encoded octets.
    pub fn with_capacity(capacity: usize) -> OutputBuffer {
        OutputBuffer {
            pieces: Vec::new(),
            pieces_len: 0,
            encoded: BytesMut::with_capacity(capacity),
        }
    }

    /// Where to encode frames: they go after everything already in the output.
    pub fn encoded_mut(&mut self) -> &mut BytesMut {
        &mut self.encoded
    }

    /// Octets waiting.
    pub fn len(&self) -> usize {
        self.pieces_len.saturating_add(self.encoded.len())
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `piece` after everything so far, as it is: its octets are not copied.
    pub fn push_piece(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        if !self.encoded.is_empty() {
            let encoded = self.encoded.split().freeze();
            self.pieces_len = self.pieces_len.saturating_add(encoded.len());
            self.pieces.push(encoded);
        }
        self.pieces_len = self.pieces_len.saturating_add(piece.len());
        self.pieces.push(piece);
    }

    /// Adds `body`'s body frames for `frame_max`, their payloads as slices of `body`: each
    /// frame's header and end octet are encoded, its payload is a piece. Goes after
    /// [`encode_content_head`].
    pub fn put_body_frames(&mut self, channel: ChannelId, body: &Bytes, frame_max: u32) {
        let chunk = max_body_frame_payload(frame_max);
        let mut from = 0;
        while from < body.len() {
            let to = body.len().min(from.saturating_add(chunk));
            // At most frame_max - 8 octets: the size fits the header's u32.
            let payload_len = u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX);
            put_body_frame_header(&mut self.encoded, channel, payload_len);
            self.push_piece(body.slice(from..to));
            self.encoded.put_u8(crate::FRAME_END);
            from = to;
        }
    }

    /// Takes everything, leaving the output empty (the encoding buffer keeps its spare
    /// capacity for the frames to come).
    pub fn take(&mut self) -> Output {
        Output {
            pieces: std::mem::take(&mut self.pieces),
            at: 0,
            pieces_len: std::mem::take(&mut self.pieces_len),
            tail: self.encoded.split(),
        }
    }
}

/// What was taken from an [`OutputBuffer`] to write: a [`Buf`] of one or more parts, to be
/// written in order, with vectored writes ([`Buf::chunks_vectored`]) where the socket has
/// them. A write may take fewer octets than offered: [`Buf::advance`] past what it took.
#[derive(Debug, Default)]
pub struct Output {
    pieces: Vec<Bytes>,
    /// The first piece not yet written.
    at: usize,
    /// Octets left in `pieces[at..]`.
    pieces_len: usize,
    /// The frames encoded after the last piece.
    tail: BytesMut,
}

impl Output {
    /// `pieces`, then `tail`, to be written in that order (for a writer that gathers its
    /// frames itself, as the broker's outbox does).
    pub fn from_parts(mut pieces: Vec<Bytes>, tail: BytesMut) -> Output {
        // An empty piece would be a chunk of nothing with octets still to come.
        pieces.retain(|piece| !piece.is_empty());
        let pieces_len = pieces
            .iter()
            .fold(0usize, |sum, piece| sum.saturating_add(piece.len()));
        Output {
            pieces,
            at: 0,
            pieces_len,
            tail,
        }
    }

    /// The list of pieces and the tail buffer, for their allocations to be used again once
    /// written (the pieces are still in the list, written or not).
    pub fn into_parts(self) -> (Vec<Bytes>, BytesMut) {
        (self.pieces, self.tail)
    }

    /// Octets left to write.
    pub fn len(&self) -> usize {
        self.remaining()
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The parts left to write, in order, empty ones left out.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let pieces = self.pieces.get(self.at..).unwrap_or_default();
        pieces
            .iter()
            .map(|piece| &piece[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|part| !part.is_empty())
    }

    /// Calls `each` with the first `n` octets left to write, part by part: what a write of
    /// `n` octets took (for tracing, before [`Buf::advance`]).
    pub fn for_each_prefix(&self, mut n: usize, mut each: impl FnMut(&[u8])) {
        for part in self.parts() {
            if n == 0 {
                break;
            }
            let take = n.min(part.len());
            each(part.get(..take).unwrap_or_default());
            n = n.saturating_sub(take);
        }
    }
}

impl Buf for Output {
    fn remaining(&self) -> usize {
        self.pieces_len.saturating_add(self.tail.len())
    }

    fn chunk(&self) -> &[u8] {
        match self.pieces.get(self.at) {
            Some(piece) => piece,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(piece) = self.pieces.get_mut(self.at) else {
                self.tail.advance(n.min(self.tail.len()));
                return;
            };
            let step = n.min(piece.len());
            piece.advance(step);
            self.pieces_len = self.pieces_len.saturating_sub(step);
            n = n.saturating_sub(step);
            if piece.is_empty() {
                self.at = self.at.saturating_add(1);
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut filled: usize = 0;
        for (slot, part) in dst.iter_mut().zip(self.parts()) {
            *slot = std::io::IoSlice::new(part);
            filled = filled.saturating_add(1);
        }
        filled
    }
}
