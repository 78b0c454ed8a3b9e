//! Frames (spec 4.2.3): the unit everything on an AMQP connection travels in.
//!
//! ```text
//! 0      1         3             7                  size+7 size+8
//! +------+---------+-------------+  +------------+  +-----------+
//! | type | channel |    size     |  |  payload   |  | frame-end |
//! +------+---------+-------------+  +------------+  +-----------+
//!  octet   short       long          size octets      0xCE
//! ```
//!
//! [`decode`] peeks the 7-octet header, refuses a size the negotiated `frame_max` does not
//! allow *before* waiting for the payload, checks the end octet, then parses the payload with
//! complete parsers that must consume it all. A body frame is split off the read buffer (no
//! copy) and its payload handed over as [`Bytes`]. Method and content header frames are read
//! in place: their fixed fields are copied out and their short strings kept inline, and the
//! frame is split off as [`Bytes`] only if a field must be a slice of it (a long string, a
//! long short string, a table holding either). Taking a reference on the read buffer's shared
//! storage, and giving it back when the frame is dropped, costs more than reading a whole
//! basic.publish, so most method and header frames take none.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::constants::{
    ChannelId, FrameType, FRAME_END, FRAME_HEADER_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
use crate::error::{DecodeError, EncodeError};
use crate::generated::{BasicProperties, Method};
use crate::wire::Reader;

/// How deep field tables and arrays may nest unless [`Limits`] says otherwise.
pub const DEFAULT_MAX_TABLE_DEPTH: usize = 32;

/// The most [`decode`] reserves for the rest of a frame that has not yet arrived: a whole
/// frame of RabbitMQ's default frame_max. Larger frames grow the buffer as their octets come.
const MAX_RESERVE_AHEAD: usize = 131_072;

/// What the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The negotiated frame_max: the largest whole frame, header and end octet included.
    /// 0 means "no limit", as in connection.tune (spec 1.4.2.6.1).
    pub frame_max: u32,
    /// How deep field tables and arrays may nest inside one another.
    pub max_table_depth: usize,
}

impl Default for Limits {
    /// RabbitMQ's default frame_max offer (131072) and a nesting depth of 32.
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            max_table_depth: DEFAULT_MAX_TABLE_DEPTH,
        }
    }
}

impl Limits {
    /// Limits for a negotiated frame_max.
    pub fn with_frame_max(frame_max: u32) -> Self {
        Limits {
            frame_max,
            ..Limits::default()
        }
    }

    /// The largest payload a frame may carry: frame_max less the 8 octets of framing.
    pub fn max_payload(&self) -> u32 {
        if self.frame_max == 0 {
            u32::MAX
        } else {
            self.frame_max.saturating_sub(FRAME_OVERHEAD as u32)
        }
    }
}

/// The protocol header a peer opens the connection with (spec 4.2.2):
/// `AMQP`, then a protocol id and a version. 0-9-1 is `0 0 9 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolHeader {
    /// The octets after `AMQP`: protocol id, major, minor, revision.
    pub version: [u8; 4],
}

impl ProtocolHeader {
    /// The header of AMQP 0-9-1.
    pub const AMQP_0_9_1: ProtocolHeader = ProtocolHeader {
        version: [0, 0, 9, 1],
    };

    /// Whether this is AMQP 0-9-1. A server that receives another version answers with its
    /// own header and closes the socket (spec 4.2.2).
    pub fn is_0_9_1(&self) -> bool {
        *self == Self::AMQP_0_9_1
    }
}

/// A content header frame's payload (spec 4.2.6.1): the class, the body size, the properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentHeader {
    /// The class of the method the content belongs to; always basic (60) in 0-9-1.
    pub class_id: u16,
    /// The total size of the body frames that follow.
    pub body_size: u64,
    /// The basic properties.
    pub properties: BasicProperties,
}

impl ContentHeader {
    /// The basic class id, the only class with content.
    pub const BASIC_CLASS_ID: u16 = 60;

    /// A basic content header.
    pub fn basic(body_size: u64, properties: BasicProperties) -> Self {
        ContentHeader {
            class_id: Self::BASIC_CLASS_ID,
            body_size,
            properties,
        }
    }

    /// Encoded payload size: class, weight, body size, flags, properties.
    pub fn encoded_len(&self) -> usize {
        14usize.saturating_add(self.properties.encoded_len())
    }
}

/// One frame, decoded.
// A content header is large (fourteen optional properties); boxing it would cost an
// allocation per message on the publish and deliver path, so the size difference is kept.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The 8-octet protocol header that opens a connection (not a frame in the spec's
    /// sense, but the first thing on the wire, so the decoder reads it too).
    ProtocolHeader(ProtocolHeader),
    /// A method frame.
    Method(ChannelId, Method),
    /// A content header frame.
    Header(ChannelId, ContentHeader),
    /// A content body frame: a slice of the message body.
    Body(ChannelId, Bytes),
    /// A heartbeat frame, always on channel 0.
    Heartbeat,
}

impl Frame {
    /// The channel the frame travels on (0 for the protocol header and heartbeats).
    pub fn channel(&self) -> ChannelId {
        match self {
            Frame::Method(channel, _) | Frame::Header(channel, _) | Frame::Body(channel, _) => {
                *channel
            }
            Frame::ProtocolHeader(_) | Frame::Heartbeat => 0,
        }
    }

    /// The whole encoded size, framing included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::ProtocolHeader(_) => PROTOCOL_HEADER.len(),
            Frame::Method(_, method) => FRAME_OVERHEAD
                .saturating_add(4)
                .saturating_add(method.arguments_len()),
            Frame::Header(_, header) => FRAME_OVERHEAD.saturating_add(header.encoded_len()),
            Frame::Body(_, body) => FRAME_OVERHEAD.saturating_add(body.len()),
            Frame::Heartbeat => FRAME_OVERHEAD,
        }
    }

    /// Appends the frame to `buf`. A frame larger than `frame_max` (0: no limit) is refused and
    /// `buf` is left as it was.
    pub fn encode(&self, buf: &mut BytesMut, frame_max: u32) -> Result<(), EncodeError> {
        let start = buf.len();
        let result = self.encode_unchecked(buf).and_then(|()| {
            let size = buf.len().saturating_sub(start);
            if frame_max != 0 && size > frame_max as usize {
                Err(EncodeError::FrameTooLarge { size, frame_max })
            } else {
                Ok(())
            }
        });
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn encode_unchecked(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Frame::ProtocolHeader(header) => {
                buf.put_slice(b"AMQP");
                buf.put_slice(&header.version);
                Ok(())
            }
            Frame::Method(channel, method) => put_method_frame(buf, *channel, method),
            Frame::Header(channel, header) => put_header_frame(
                buf,
                *channel,
                header.class_id,
                header.body_size,
                &header.properties,
            ),
            Frame::Body(channel, body) => put_body_frame(buf, *channel, body),
            Frame::Heartbeat => put_frame(buf, FrameType::HEARTBEAT, 0, |_| Ok(())),
        }
    }
}

/// Writes a method frame: class id, method id, arguments.
pub(crate) fn put_method_frame(
    buf: &mut BytesMut,
    channel: ChannelId,
    method: &Method,
) -> Result<(), EncodeError> {
    put_frame(buf, FrameType::METHOD, channel, |buf| {
        buf.put_u16(method.class_id());
        buf.put_u16(method.method_id());
        method.encode_arguments(buf)
    })
}

/// Writes a content header frame (spec 4.2.6.1).
pub(crate) fn put_header_frame(
    buf: &mut BytesMut,
    channel: ChannelId,
    class_id: u16,
    body_size: u64,
    properties: &BasicProperties,
) -> Result<(), EncodeError> {
    put_frame(buf, FrameType::HEADER, channel, |buf| {
        buf.put_u16(class_id);
        buf.put_u16(0); // weight, unused: must be 0
        buf.put_u64(body_size);
        buf.put_u16(properties.flags());
        properties.encode(buf)
    })
}

/// Writes a content body frame.
pub(crate) fn put_body_frame(
    buf: &mut BytesMut,
    channel: ChannelId,
    body: &[u8],
) -> Result<(), EncodeError> {
    put_frame(buf, FrameType::BODY, channel, |buf| {
        buf.put_slice(body);
        Ok(())
    })
}

/// Writes a frame header with a placeholder size, the payload, the end octet, and then the
/// real size into the placeholder.
fn put_frame(
    buf: &mut BytesMut,
    frame_type: FrameType,
    channel: ChannelId,
    payload: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    buf.put_u8(frame_type.0);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    payload(buf)?;
    let len = buf.len().saturating_sub(size_at).saturating_sub(4);
    let size = u32::try_from(len).map_err(|_| EncodeError::TooLong {
        what: "frame payload",
        len,
    })?;
    if let Some(slot) = buf.get_mut(size_at..size_at.saturating_add(4)) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    buf.put_u8(FRAME_END);
    Ok(())
}

/// The 7-octet header at the front of `buf`, if that many octets are there.
fn peek_header(buf: &[u8]) -> Option<(u8, ChannelId, u32)> {
    let header: &[u8; FRAME_HEADER_SIZE] = buf.first_chunk()?;
    let [frame_type, c0, c1, s0, s1, s2, s3] = *header;
    Some((
        frame_type,
        u16::from_be_bytes([c0, c1]),
        u32::from_be_bytes([s0, s1, s2, s3]),
    ))
}

/// Decodes one frame from the front of `buf`, removing its bytes.
///
/// `Ok(None)` means the buffer does not yet hold a whole frame: read more and call again. It is
/// never an error. A frame larger than `limits.frame_max` is refused as soon as its header is
/// in, so a peer cannot make the receiver buffer more than frame_max octets. After an error
/// the connection must be closed with [`DecodeError::reply_code`]: the stream is no longer in
/// step.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    if buf.first() == Some(&b'A') {
        return decode_protocol_header(buf);
    }
    let Some((frame_type, channel, size)) = peek_header(buf) else {
        return Ok(None);
    };
    let frame_type = FrameType(frame_type);
    if !matches!(
        frame_type,
        FrameType::METHOD | FrameType::HEADER | FrameType::BODY | FrameType::HEARTBEAT
    ) {
        return Err(DecodeError::UnknownFrameType(frame_type.0));
    }
    if size > limits.max_payload() {
        return Err(DecodeError::FrameTooLarge {
            size,
            frame_max: limits.frame_max,
        });
    }
    // size <= u32::MAX - 8 here (max_payload), so the sum cannot overflow on any platform
    // where usize is at least 32 bits; checked anyway.
    let payload_len = usize::try_from(size).map_err(|_| DecodeError::FrameTooLarge {
        size,
        frame_max: limits.frame_max,
    })?;
    let Some(frame_len) = payload_len.checked_add(FRAME_OVERHEAD) else {
        return Err(DecodeError::FrameTooLarge {
            size,
            frame_max: limits.frame_max,
        });
    };
    if buf.len() < frame_len {
        // Room for the rest of the frame, but at most MAX_RESERVE_AHEAD: `size` is the peer's
        // word, and under frame_max 0 (no limit) it could announce 4 GiB and never send it.
        buf.reserve(frame_len.saturating_sub(buf.len()).min(MAX_RESERVE_AHEAD));
        return Ok(None);
    }
    let end = buf.get(frame_len.saturating_sub(1)).copied().unwrap_or(0);
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    match frame_type {
        FrameType::METHOD | FrameType::HEADER => {
            // Read in place (see `Reader`): the frame leaves the buffer when `r` is dropped,
            // after the frame is built where the caller receives it.
            let mut r = Reader::in_read_buffer(buf, payload_len, limits.max_table_depth);
            read_method_or_header(frame_type, channel, &mut r)
        }
        FrameType::BODY => Ok(Some(Frame::Body(channel, split_payload(buf, payload_len)))),
        _ => {
            let payload = split_payload(buf, payload_len);
            decode_payload(frame_type, channel, payload, limits).map(Some)
        }
    }
}

/// Splits the whole frame with `payload_len` octets of payload off the front of `buf`, which
/// holds it, and returns the payload (without a copy).
pub(crate) fn split_payload(buf: &mut BytesMut, payload_len: usize) -> Bytes {
    let mut frame = buf.split_to(payload_len.saturating_add(FRAME_OVERHEAD));
    frame.advance(FRAME_HEADER_SIZE);
    frame.truncate(payload_len);
    frame.freeze()
}

fn decode_protocol_header(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(header) = buf.first_chunk::<8>().copied() else {
        // Refuse early if what has arrived already cannot be "AMQP".
        let seen = buf.len().min(4);
        if buf.get(..seen) != PROTOCOL_HEADER.get(..seen) {
            let mut found = [0u8; 8];
            if let Some(dst) = found.get_mut(..buf.len()) {
                dst.copy_from_slice(buf);
            }
            return Err(DecodeError::BadProtocolHeader { found });
        }
        return Ok(None);
    };
    let [a, m, q, p, id, major, minor, revision] = header;
    if [a, m, q, p] != *b"AMQP" {
        return Err(DecodeError::BadProtocolHeader { found: header });
    }
    buf.advance(8);
    Ok(Some(Frame::ProtocolHeader(ProtocolHeader {
        version: [id, major, minor, revision],
    })))
}

/// Parses the payload of a frame whose framing has been checked.
pub fn decode_payload(
    frame_type: FrameType,
    channel: ChannelId,
    payload: Bytes,
    limits: &Limits,
) -> Result<Frame, DecodeError> {
    match frame_type {
        FrameType::METHOD | FrameType::HEADER => {
            let mut r = Reader::new(payload, "frame", limits.max_table_depth);
            match read_method_or_header(frame_type, channel, &mut r)? {
                Some(frame) => Ok(frame),
                // Not reached: the readers give a frame or an error.
                None => Err(DecodeError::Truncated("frame")),
            }
        }
        FrameType::BODY => Ok(Frame::Body(channel, payload)),
        FrameType::HEARTBEAT => {
            if channel != 0 {
                return Err(DecodeError::HeartbeatOnChannel(channel));
            }
            if !payload.is_empty() {
                return Err(DecodeError::HeartbeatWithPayload(
                    u32::try_from(payload.len()).unwrap_or(u32::MAX),
                ));
            }
            Ok(Frame::Heartbeat)
        }
        FrameType(other) => Err(DecodeError::UnknownFrameType(other)),
    }
}

/// What [`decode`] returns. The readers of method and content header frames return it too, so
/// that a frame is built once, in the place where `decode`'s caller receives it, and never
/// moved: a content header frame is some 470 octets.
pub(crate) type Decoded = Result<Option<Frame>, DecodeError>;

/// Reads a method or content header frame's payload (the caller has checked which it is).
fn read_method_or_header(frame_type: FrameType, channel: ChannelId, r: &mut Reader<'_>) -> Decoded {
    if frame_type == FrameType::METHOD {
        r.set_context("method frame");
        let class_id = r.short()?;
        let method_id = r.short()?;
        Method::read_frame(channel, class_id, method_id, r)
    } else {
        r.set_context("content header");
        let class_id = r.short()?;
        if class_id != ContentHeader::BASIC_CLASS_ID {
            return Err(DecodeError::UnknownContentClass(class_id));
        }
        let weight = r.short()?;
        if weight != 0 {
            return Err(DecodeError::NonZeroWeight(weight));
        }
        let body_size = r.longlong()?;
        let flags = r.short()?;
        // Bit 0 says another flags word follows (spec 4.2.6.1). Basic has 14 properties,
        // so further words may only carry their own continuation bits.
        let mut more = flags & 1 == 1;
        while more {
            let next = r.short()?;
            if next & !1 != 0 {
                return Err(DecodeError::UnknownPropertyFlags(next));
            }
            more = next & 1 == 1;
        }
        let unknown = flags & !BasicProperties::KNOWN_FLAGS & !1;
        if unknown != 0 {
            return Err(DecodeError::UnknownPropertyFlags(unknown));
        }
        BasicProperties::read_header_frame(channel, class_id, body_size, flags, r)
    }
}
