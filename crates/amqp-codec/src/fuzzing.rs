//! The bodies of the cargo-fuzz targets in `fuzz/`.
//!
//! They live in the library so that `cargo test` replays the checked-in corpus on stable Rust
//! (`tests/fuzz_corpus.rs`), and so that what the fuzzer checks is ordinary, reviewed code.
//! A fuzz target reports a broken property by panicking, so panics are allowed here alone.
//!
//! | target              | function                 | input                                    |
//! |---------------------|--------------------------|------------------------------------------|
//! | `decode_frame`      | [`decode_frames`]        | raw bytes, as a peer could send them     |
//! | `decode_roundtrip`  | [`decode_encode_decode`] | raw bytes, as a peer could send them     |
//! | `encode_structured` | `structured`             | bytes that `arbitrary` turns into frames |
//!
//! What every target checks, beyond "no panic, no overflow, no out-of-bounds":
//! - a stream decodes to the same frames and the same error whether it arrives whole or in
//!   small pieces; `Ok(None)` ("need more bytes") consumes nothing;
//! - a decoded frame is no larger than `frame_max`, and no larger than the bytes it came from;
//! - every error carries one of the reply codes a peer may close with (501, 502, 503, 505,
//!   406);
//! - a method or content header frame, which [`decode`] reads in place in the read buffer
//!   (splitting it off only if a field must be a slice of it), gives the same frame or the
//!   same error as its payload read from a `Bytes` of its own ([`decode_payload`]);
//! - a frame encodes to exactly [`Frame::encoded_len`] bytes, is refused (leaving the buffer
//!   as it was) exactly when that exceeds `frame_max`, and decodes back to an equal frame with
//!   nothing left over;
//! - the text and JSON renderings of [`crate::describe`] are one line each, and the JSON is
//!   well-formed.
#![allow(clippy::panic)]

use std::collections::HashMap;
use std::mem::discriminant;

use bytes::{Bytes, BytesMut};

use crate::constants::{ChannelId, FrameType, ReplyCode, FRAME_HEADER_SIZE, FRAME_OVERHEAD};
use crate::content::{Command, ContentAssembler};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{decode, decode_payload, Frame, Limits, DEFAULT_MAX_TABLE_DEPTH};

/// The reply codes a decode or content-assembly error may carry.
pub const ERROR_REPLY_CODES: [ReplyCode; 5] = [
    ReplyCode::FRAME_ERROR,
    ReplyCode::SYNTAX_ERROR,
    ReplyCode::COMMAND_INVALID,
    ReplyCode::UNEXPECTED_FRAME,
    ReplyCode::PRECONDITION_FAILED,
];

/// The limits of the raw-bytes targets: the spec's smallest frame_max and a shallow nesting
/// limit, so that the fuzzer reaches the frame_max and depth checks with small inputs.
pub fn fuzz_limits() -> Limits {
    Limits {
        frame_max: crate::constants::FRAME_MIN_SIZE,
        max_table_depth: 8,
    }
}

/// Bodies larger than this are refused by the assemblers of [`decode_frames`], so that a
/// small input reaches the 406 path.
const FUZZ_MAX_BODY_SIZE: u64 = 16 * 1024;

/// Target `decode_frame`: decodes arbitrary bytes as a stream of frames, whole and in small
/// pieces, renders every frame, and feeds the channel frames to one [`ContentAssembler`] per
/// channel. Panics only if a property of the module docs is broken.
pub fn decode_frames(data: &[u8]) {
    let limits = fuzz_limits();
    let whole = decode_stream(data, data.len(), &limits);
    let chunked = decode_stream(data, chunk_size(data), &limits);
    assert_same_outcome(&whole, &chunked);
    for frame in &whole.frames {
        check_describe(frame);
    }
    assemble(&whole.frames);
    check_in_place_reads_as_payload(data, &limits);
}

/// Decodes `data` frame by frame and checks that every method and content header frame that
/// [`decode`] reads in place gives the same outcome as its payload given to [`decode_payload`]
/// as `Bytes`: the reader's two sources, and its switch from one to the other in the middle
/// of a frame, agree.
fn check_in_place_reads_as_payload(data: &[u8], limits: &Limits) {
    let mut buf = BytesMut::from(data);
    loop {
        let in_place = whole_method_or_header_frame(&buf, limits);
        let outcome = decode(&mut buf, limits);
        if let Some((frame_type, channel, payload)) = in_place {
            let from_payload = decode_payload(frame_type, channel, payload, limits);
            match (&outcome, &from_payload) {
                (Ok(Some(a)), Ok(b)) => assert_eq!(a, b, "in place and from Bytes differ"),
                (Err(a), Err(b)) => assert_eq!(a, b, "in place and from Bytes fail otherwise"),
                (a, b) => panic!("in place: {a:?}, from Bytes: {b:?}"),
            }
        }
        if !matches!(outcome, Ok(Some(_))) {
            return;
        }
    }
}

/// The type, channel and a copy of the payload of the method or content header frame at the
/// front of `buf`, if one is there whole and none of decode's framing checks (frame_max under
/// `limits`, the end octet) refuses it before its payload is read.
fn whole_method_or_header_frame(
    buf: &[u8],
    limits: &Limits,
) -> Option<(FrameType, ChannelId, Bytes)> {
    let [frame_type, c0, c1, s0, s1, s2, s3] = *buf.first_chunk::<FRAME_HEADER_SIZE>()?;
    let frame_type = FrameType(frame_type);
    if !matches!(frame_type, FrameType::METHOD | FrameType::HEADER) {
        return None;
    }
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if size > limits.max_payload() {
        return None;
    }
    let payload_len = usize::try_from(size).ok()?;
    let frame = buf.get(..payload_len.checked_add(FRAME_OVERHEAD)?)?;
    if frame.last() != Some(&crate::constants::FRAME_END) {
        return None;
    }
    let payload = frame.get(FRAME_HEADER_SIZE..FRAME_HEADER_SIZE.checked_add(payload_len)?)?;
    Some((
        frame_type,
        u16::from_be_bytes([c0, c1]),
        Bytes::copy_from_slice(payload),
    ))
}

/// Target `decode_roundtrip`: every frame that decodes from arbitrary bytes encodes again
/// (within the same frame_max) and decodes back to an equal frame; see [`roundtrip`].
///
/// It decodes with RabbitMQ's smallest frame_max and the default nesting depth, the depth the
/// encoder also allows, so a decodable table that could not be re-encoded is found.
pub fn decode_encode_decode(data: &[u8]) {
    let limits = Limits {
        frame_max: crate::constants::RABBITMQ_FRAME_MIN_SIZE,
        max_table_depth: DEFAULT_MAX_TABLE_DEPTH,
    };
    let decoded = decode_stream(data, data.len(), &limits);
    for frame in &decoded.frames {
        let encoded = roundtrip(frame, &limits);
        assert!(
            encoded.is_some(),
            "a decoded frame does not encode within the frame_max it came in: {frame:?}"
        );
    }
}

/// Target `encode_structured`: `data` is turned into frames by `arbitrary` (feature
/// `arbitrary`); each one must round-trip ([`roundtrip`]), their concatenation must decode to
/// the same frames whole and in pieces, and a message built from the same input must go
/// through [`crate::encode_content`], the decoder and a [`ContentAssembler`] unchanged.
#[cfg(feature = "arbitrary")]
pub fn structured(data: &[u8]) {
    use arbitrary::{Arbitrary, Unstructured};

    let mut u = Unstructured::new(data);
    content_roundtrip(&mut u);

    let limits = Limits {
        frame_max: 0,
        max_table_depth: DEFAULT_MAX_TABLE_DEPTH,
    };
    let mut frames = Vec::new();
    let mut stream = BytesMut::new();
    while !u.is_empty() && frames.len() < 32 {
        let Ok(frame) = Frame::arbitrary(&mut u) else {
            break;
        };
        // Everything `arbitrary` builds is encodable, and frame_max 0 sets no size limit.
        let Some(encoded) = roundtrip(&frame, &limits) else {
            panic!("an arbitrary frame did not encode: {frame:?}");
        };
        check_describe(&frame);
        stream.extend_from_slice(&encoded);
        frames.push(frame);
    }
    for chunk in [stream.len(), chunk_size(data)] {
        let decoded = decode_stream(&stream, chunk, &limits);
        assert_eq!(
            decoded.error, None,
            "a stream of encoded frames failed to decode"
        );
        assert_eq!(
            decoded.frames, frames,
            "a stream of encoded frames decoded to other frames"
        );
        assert_eq!(
            decoded.left, 0,
            "bytes left over after decoding a stream of encoded frames"
        );
    }
}

/// Encodes `frame` under `limits.frame_max` and decodes it back under `limits`.
///
/// Returns the encoded bytes, or `None` when the frame is larger than `frame_max` and was
/// rightly refused. Panics when: the encoder refuses a frame that fits, or accepts one that
/// does not, or leaves bytes behind on refusal; the size differs from
/// [`Frame::encoded_len`]; decoding does not give back an equal frame, or leaves bytes over;
/// encoding the decoded frame gives other bytes.
pub fn roundtrip(frame: &Frame, limits: &Limits) -> Option<BytesMut> {
    let predicted = frame.encoded_len();
    let fits = limits.frame_max == 0 || predicted <= limits.frame_max as usize;
    let mut out = BytesMut::new();
    match frame.encode(&mut out, limits.frame_max) {
        Ok(()) => assert!(
            fits,
            "a frame of {predicted} bytes was encoded under frame_max {}",
            limits.frame_max
        ),
        Err(EncodeError::FrameTooLarge { size, frame_max }) => {
            assert!(out.is_empty(), "a refused encode left bytes behind");
            assert!(
                !fits,
                "a frame of {predicted} bytes was refused under frame_max {frame_max}"
            );
            assert_eq!(
                size, predicted,
                "the refusal names another size than encoded_len"
            );
            return None;
        }
        Err(other) => panic!("encoding {frame:?} failed: {other}"),
    }
    assert_eq!(
        out.len(),
        predicted,
        "encoded size differs from encoded_len for {frame:?}"
    );
    let encoded = out.clone();
    match decode(&mut out, limits) {
        Ok(Some(decoded)) => {
            assert_eq!(&decoded, frame, "decode(encode(frame)) != frame");
            let mut again = BytesMut::new();
            match decoded.encode(&mut again, 0) {
                Ok(()) => assert_eq!(again, encoded, "an equal frame encoded to other bytes"),
                Err(error) => panic!("re-encoding a decoded frame failed: {error}"),
            }
        }
        other => panic!("re-decoding an encoded frame failed: {other:?} for {frame:?}"),
    }
    assert!(
        out.is_empty(),
        "{} bytes left over after re-decoding",
        out.len()
    );
    Some(encoded)
}

/// What decoding a byte stream gave.
#[derive(Debug)]
struct Decoded {
    frames: Vec<Frame>,
    /// The error that stopped the stream, if one did.
    error: Option<DecodeError>,
    /// Bytes left undecoded in the buffer at the end.
    left: usize,
}

/// How many bytes to hand the decoder at a time for the "in pieces" pass: 1 to 17, chosen by
/// the input's length, so that the fuzzer varies it along with the input.
fn chunk_size(data: &[u8]) -> usize {
    data.len().checked_rem(17).unwrap_or(0).saturating_add(1)
}

/// Decodes `data`, appending it to the read buffer `chunk` bytes at a time and decoding
/// whatever frames are complete after each append, as a reader of a socket would.
fn decode_stream(data: &[u8], chunk: usize, limits: &Limits) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, limits) {
                Ok(Some(frame)) => {
                    let consumed = before.saturating_sub(buf.len());
                    check_decoded_size(&frame, consumed, limits);
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(error) => {
                    check_reply_code(&error);
                    return Decoded {
                        frames,
                        error: Some(error),
                        left: buf.len(),
                    };
                }
            }
        }
    }
    Decoded {
        frames,
        error: None,
        left: buf.len(),
    }
}

/// A decoded frame took exactly its framed size from the buffer, no more than frame_max, and
/// re-encodes to at most that many bytes (re-encoding only drops what the decoder ignored:
/// surplus property-flag words).
fn check_decoded_size(frame: &Frame, consumed: usize, limits: &Limits) {
    assert!(consumed > 0, "a frame was decoded from no bytes");
    if !matches!(frame, Frame::ProtocolHeader(_)) && limits.frame_max != 0 {
        assert!(
            consumed <= limits.frame_max as usize,
            "a {consumed}-byte frame was accepted under frame_max {}",
            limits.frame_max
        );
    }
    assert!(
        frame.encoded_len() <= consumed,
        "{frame:?} came from {consumed} bytes but encodes to {}",
        frame.encoded_len()
    );
}

fn check_reply_code(error: &DecodeError) {
    assert!(
        ERROR_REPLY_CODES.contains(&error.reply_code()),
        "{error:?} has reply code {}",
        error.reply_code()
    );
}

/// Whole and in pieces, a stream gives the same frames and stops at the same error. The bytes
/// a bad protocol header reports may differ (in pieces it is reported as soon as its first
/// octets cannot be "AMQP"), so errors compare by kind and reply code.
fn assert_same_outcome(whole: &Decoded, chunked: &Decoded) {
    assert_eq!(
        whole.frames, chunked.frames,
        "chunked decoding gave other frames"
    );
    match (&whole.error, &chunked.error) {
        (None, None) => assert_eq!(
            whole.left, chunked.left,
            "chunked decoding left other bytes"
        ),
        (Some(a), Some(b)) => {
            assert_eq!(
                discriminant(a),
                discriminant(b),
                "chunked decoding failed otherwise: {a:?} / {b:?}"
            );
            assert_eq!(a.reply_code(), b.reply_code());
        }
        (a, b) => panic!("whole decoding ended with {a:?}, chunked decoding with {b:?}"),
    }
}

/// Feeds channel frames to one assembler per channel, as a client or broker would; an
/// assembler that fails is dropped (its channel or connection would be closed).
fn assemble(frames: &[Frame]) {
    let mut channels: HashMap<ChannelId, ContentAssembler> = HashMap::new();
    for frame in frames {
        if matches!(frame, Frame::Heartbeat | Frame::ProtocolHeader(_)) {
            continue;
        }
        let channel = frame.channel();
        let assembler = channels
            .entry(channel)
            .or_insert_with(|| ContentAssembler::new(FUZZ_MAX_BODY_SIZE));
        match assembler.feed(frame.clone()) {
            Ok(Some(command)) => check_command(&command),
            Ok(None) => assert!(
                !assembler.is_idle(),
                "a frame was swallowed by an idle assembler"
            ),
            Err(error) => {
                check_reply_code(&error);
                channels.remove(&channel);
            }
        }
    }
}

fn check_command(command: &Command) {
    assert_eq!(
        command.method.has_content(),
        command.content.is_some(),
        "{command:?}"
    );
    if let Some(content) = &command.content {
        assert_eq!(
            content.body.len() as u64,
            content.header.body_size,
            "body size differs from the header's"
        );
        assert!(
            content.header.body_size <= FUZZ_MAX_BODY_SIZE,
            "a body over the maximum was assembled"
        );
    }
}

/// A message from `u`: encode_content, decode, assemble, and the same message must come out.
#[cfg(feature = "arbitrary")]
fn content_roundtrip(u: &mut arbitrary::Unstructured<'_>) {
    use crate::content::{body_frames, encode_content, max_body_frame_payload, Content};
    use crate::frame::ContentHeader;
    use crate::generated::{
        BasicDeliver, BasicGetOk, BasicProperties, BasicPublish, BasicReturn, Method,
    };
    use arbitrary::{Arbitrary, Unstructured};

    fn message(
        u: &mut Unstructured<'_>,
    ) -> arbitrary::Result<(ChannelId, Method, BasicProperties, u32)> {
        let method = match u.int_in_range(0..=3u8)? {
            0 => Method::BasicPublish(BasicPublish::arbitrary(u)?),
            1 => Method::BasicDeliver(BasicDeliver::arbitrary(u)?),
            2 => Method::BasicReturn(BasicReturn::arbitrary(u)?),
            _ => Method::BasicGetOk(BasicGetOk::arbitrary(u)?),
        };
        let properties = BasicProperties::arbitrary(u)?;
        // 0 (no limit) or anything from below the method frame's size to a few body frames.
        let frame_max = if u.arbitrary()? {
            0
        } else {
            u.int_in_range(1..=9000u32)?
        };
        Ok((u.arbitrary()?, method, properties, frame_max))
    }

    let Ok((channel, method, properties, frame_max)) = message(u) else {
        return;
    };
    let Ok(len) = u.int_in_range(0..=u.len().min(20_000)) else {
        return;
    };
    let Ok(body) = u.bytes(len) else { return };
    let body = bytes::Bytes::copy_from_slice(body);

    let mut buf = BytesMut::new();
    if let Err(error) = encode_content(&mut buf, channel, &method, &properties, &body, frame_max) {
        assert!(buf.is_empty(), "a refused encode_content left bytes behind");
        let header = Frame::Header(channel, ContentHeader::basic(body.len() as u64, properties));
        let method_len = Frame::Method(channel, method).encoded_len();
        let too_large = frame_max != 0 && method_len.max(header.encoded_len()) > frame_max as usize;
        assert!(
            too_large,
            "encode_content refused a message that fits frame_max {frame_max}: {error}"
        );
        return;
    }
    let limits = Limits {
        frame_max,
        max_table_depth: DEFAULT_MAX_TABLE_DEPTH,
    };
    let decoded = decode_stream(&buf, chunk_size(&body), &limits);
    assert_eq!(
        decoded.error, None,
        "encode_content wrote frames that do not decode"
    );
    assert_eq!(decoded.left, 0, "encode_content wrote a partial frame");
    let bodies: Vec<Frame> = decoded.frames.iter().skip(2).cloned().collect();
    assert_eq!(
        bodies,
        body_frames(channel, &body, frame_max).collect::<Vec<_>>()
    );
    let expected_bodies = body.len().div_ceil(max_body_frame_payload(frame_max));
    assert_eq!(
        bodies.len(),
        expected_bodies,
        "body split into an unexpected number of frames"
    );

    let mut assembler = ContentAssembler::new(u64::MAX);
    let mut commands = Vec::new();
    for frame in decoded.frames {
        assert_eq!(
            frame.channel(),
            channel,
            "a frame of the message is on another channel"
        );
        match assembler.feed(frame) {
            Ok(Some(command)) => commands.push(command),
            Ok(None) => {}
            Err(error) => panic!("assembling an encoded message failed: {error}"),
        }
    }
    let expected = Command {
        method,
        content: Some(Content {
            header: ContentHeader::basic(body.len() as u64, properties),
            body,
        }),
    };
    assert_eq!(commands, vec![expected], "the message came out changed");
    assert!(assembler.is_idle());
}

/// The text and JSON renderings are one line each, and the JSON parses.
fn check_describe(frame: &Frame) {
    let text = crate::describe::text(frame).to_string();
    assert!(
        !text.contains(['\n', '\r']),
        "text rendering spans lines: {text}"
    );
    let json = crate::describe::json(frame).to_string();
    assert!(
        !json.contains(['\n', '\r']),
        "JSON rendering spans lines: {json}"
    );
    if let Err(at) = json::validate(json.as_bytes()) {
        panic!("malformed JSON at byte {at}: {json}");
    }
}

/// A small JSON checker (RFC 8259 grammar, no values built), enough to tell that the
/// renderer's output parses.
mod json {
    /// Ok if `input` is exactly one JSON value (surrounded by optional whitespace); else the
    /// offset of the first byte that does not fit the grammar.
    pub(super) fn validate(input: &[u8]) -> Result<(), usize> {
        let mut p = Parser { input, at: 0 };
        p.value(0)?;
        p.space();
        if p.at == input.len() {
            Ok(())
        } else {
            Err(p.at)
        }
    }

    struct Parser<'a> {
        input: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.input.get(self.at).copied()
        }

        fn bump(&mut self) -> Option<u8> {
            let c = self.peek()?;
            self.at = self.at.saturating_add(1);
            Some(c)
        }

        fn eat(&mut self, c: u8) -> Result<(), usize> {
            if self.bump() == Some(c) {
                Ok(())
            } else {
                Err(self.at)
            }
        }

        fn space(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.bump();
            }
        }

        fn value(&mut self, depth: usize) -> Result<(), usize> {
            if depth > 256 {
                return Err(self.at);
            }
            self.space();
            match self.peek() {
                Some(b'{') => self.sequence(b'}', depth, true),
                Some(b'[') => self.sequence(b']', depth, false),
                Some(b'"') => self.string(),
                Some(b't') => self.word(b"true"),
                Some(b'f') => self.word(b"false"),
                Some(b'n') => self.word(b"null"),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => Err(self.at),
            }
        }

        /// An object (`keyed`) or an array, its opening bracket not yet eaten.
        fn sequence(&mut self, close: u8, depth: usize, keyed: bool) -> Result<(), usize> {
            self.bump();
            self.space();
            if self.peek() == Some(close) {
                self.bump();
                return Ok(());
            }
            loop {
                if keyed {
                    self.space();
                    self.string()?;
                    self.space();
                    self.eat(b':')?;
                }
                self.value(depth.saturating_add(1))?;
                self.space();
                match self.bump() {
                    Some(b',') => {}
                    Some(c) if c == close => return Ok(()),
                    _ => return Err(self.at),
                }
            }
        }

        fn string(&mut self) -> Result<(), usize> {
            self.eat(b'"')?;
            loop {
                match self.bump() {
                    Some(b'"') => return Ok(()),
                    Some(b'\\') => match self.bump() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            for _ in 0..4 {
                                if !self.bump().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return Err(self.at);
                                }
                            }
                        }
                        _ => return Err(self.at),
                    },
                    Some(0x20..) => {}
                    _ => return Err(self.at),
                }
            }
        }

        fn word(&mut self, word: &[u8]) -> Result<(), usize> {
            for &c in word {
                self.eat(c)?;
            }
            Ok(())
        }

        fn digits(&mut self) -> Result<(), usize> {
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.at);
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
            }
            Ok(())
        }

        fn number(&mut self) -> Result<(), usize> {
            if self.peek() == Some(b'-') {
                self.bump();
            }
            if self.peek() == Some(b'0') {
                self.bump();
            } else {
                self.digits()?;
            }
            if self.peek() == Some(b'.') {
                self.bump();
                self.digits()?;
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.bump();
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.bump();
                }
                self.digits()?;
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::validate;

        #[test]
        fn validate_accepts_nested_objects_arrays_and_numbers() {
            assert_eq!(
                validate(br#"{"a":[1,-0.5e+3,true,null,"x\u00e9\n"],"b":{}}"#),
                Ok(())
            );
        }

        #[test]
        fn validate_rejects_trailing_comma_raw_control_and_leading_zero() {
            assert!(validate(br#"[1,]"#).is_err());
            assert!(validate(b"\"a\nb\"").is_err());
            assert!(validate(b"01").is_err());
            assert!(validate(br#"{"a" 1}"#).is_err());
        }
    }
}
