//! Frame tracing: every frame a program sends and receives, decoded, one line each.
//!
//! Set `AMQP_TRACE=1` (text) or `AMQP_TRACE=json` before starting a program built on this
//! workspace (the client, the broker, the tutorials) and each frame it sends or receives is
//! printed on stderr, in the format of `amqp-dump` ([`crate::describe`]), after a time, the
//! connection and the direction:
//!
//! ```text
//!    0.000000 client#1 connection with 127.0.0.1:5672
//!    0.000210 client#1 -> 8B protocol-header AMQP 0-9-1
//!    0.003114 client#1 <- 495B ch=0 connection.start version_major=0 version_minor=9 ...
//!    0.004372 client#1 -> 20B ch=1 content-body size=12 "Hello World!"
//! ```
//!
//! - The time is seconds since tracing started in this process, to the microsecond.
//! - `client#1` is the role (`client`, `broker`; nothing in `amqp-sniff`) and a connection
//!   number; the first line of a connection names its peer.
//! - `->` is a frame this program sent, `<-` one it received. Then the frame's size in octets,
//!   framing included (`B`), and the frame as [`describe::text`](crate::describe::text)
//!   renders it: bodies cut at 64 octets, strings escaped.
//!
//! With `AMQP_TRACE=json` each line is one JSON object: `"time"` (seconds), `"role"`,
//! `"conn"`, `"dir"` (`"send"` or `"recv"`), `"octets"` (the frame's size), then the members of
//! [`describe::json`](crate::describe::json).
//!
//! ## Costs nothing when off
//! The variable is read once, when the first connection is made (or [`format`] is first
//! called). A [`Tracer`] made while tracing is off holds nothing, and tracing a read or a write
//! is one branch on an empty `Option`. Programs with a `--trace` flag call [`enable`] before
//! they connect.
//!
//! ## How it decodes
//! The client and the broker encode frames straight into their output buffers and decode
//! straight out of their input buffers, so the tracer sees octets, not frames: it decodes a
//! copy of what was read or written, keeping its own buffer per direction for a frame that
//! arrived in parts ([`StreamDecoder`]). Octets that do not decode are shown in hex with their
//! offset, and that direction is not decoded any further: its later octets are shown in hex.
//! `amqp-sniff` prints through the same [`StreamDecoder`] and [`Line`].
//!
//! Each line goes to stderr in one write, under stderr's lock, so lines of different
//! connections and threads never mix. Tracing is for looking, not for production: it shows
//! everything, credentials included (connection.start-ok's `response`).
//!
//! This module is the codec's one contact with the world outside bytes: it reads the
//! environment, the clock and writes to stderr. The codec proper stays pure.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::describe::{Json, Text, DEFAULT_BODY_LIMIT};
use crate::error::DecodeError;
use crate::frame::{decode, Frame, Limits};

/// The environment variable that turns tracing on: `1` (or `text`) for text, `json` for JSON.
pub const ENV_VAR: &str = "AMQP_TRACE";

/// At most this many octets are shown in hex on one line; the rest are counted.
pub const HEX_LIMIT: usize = 64;

/// How traced frames are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line of text per frame ([`crate::describe::text`]).
    Text,
    /// One JSON object per frame ([`crate::describe::json`]).
    Json,
}

impl Format {
    /// The format a value of `AMQP_TRACE` asks for: None for off (empty, `0`, `off`,
    /// `false`), JSON for `json`, text for anything else (`1`, `text`, `yes`).
    pub fn from_env_value(value: &str) -> Option<Format> {
        let value = value.trim();
        if value.is_empty()
            || value == "0"
            || value.eq_ignore_ascii_case("off")
            || value.eq_ignore_ascii_case("false")
        {
            None
        } else if value.eq_ignore_ascii_case("json") {
            Some(Format::Json)
        } else {
            Some(Format::Text)
        }
    }
}

// The process-wide switch: not read yet, off, text, JSON.
const UNSET: u8 = 0;
const OFF: u8 = 1;
const TEXT: u8 = 2;
const JSON: u8 = 3;
static MODE: AtomicU8 = AtomicU8::new(UNSET);
/// When tracing started: line times count from here.
static START: OnceLock<Instant> = OnceLock::new();
/// The number of the next traced connection.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn mode_of(format: Option<Format>) -> u8 {
    match format {
        None => OFF,
        Some(Format::Text) => TEXT,
        Some(Format::Json) => JSON,
    }
}

/// Turns tracing on for connections made from now on, whatever `AMQP_TRACE` says (for a
/// program's `--trace` flag).
pub fn enable(format: Format) {
    START.get_or_init(Instant::now);
    MODE.store(mode_of(Some(format)), Ordering::Relaxed);
}

/// Turns tracing off for connections made from now on.
pub fn disable() {
    MODE.store(OFF, Ordering::Relaxed);
}

/// The trace format in force, or None when tracing is off. The first call reads `AMQP_TRACE`
/// (unless [`enable`] or [`disable`] came first); later calls only load an atomic.
pub fn format() -> Option<Format> {
    let mut mode = MODE.load(Ordering::Relaxed);
    if mode == UNSET {
        let from_env = std::env::var(ENV_VAR)
            .ok()
            .and_then(|value| Format::from_env_value(&value));
        if from_env.is_some() {
            START.get_or_init(Instant::now);
        }
        // A concurrent enable() or disable() wins over the environment.
        mode = match MODE.compare_exchange(
            UNSET,
            mode_of(from_env),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => mode_of(from_env),
            Err(current) => current,
        };
    }
    match mode {
        TEXT => Some(Format::Text),
        JSON => Some(Format::Json),
        _ => None,
    }
}

/// Time since tracing started in this process.
pub fn elapsed() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Which way a frame went, seen from the traced program (in `amqp-sniff`: from the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written by the program: `->`, `"send"`.
    Sent,
    /// Read by the program: `<-`, `"recv"`.
    Received,
}

impl Direction {
    /// `->` or `<-`.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Sent => "->",
            Direction::Received => "<-",
        }
    }

    /// `send` or `recv`, as in JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Sent => "send",
            Direction::Received => "recv",
        }
    }
}

/// Whose line it is: a role (`client`, `broker`, or empty) and a connection number.
/// Shown as `client#1`, or `#1` without a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// `client`, `broker`; empty in `amqp-sniff`, where a connection is both.
    pub role: &'static str,
    /// The connection's number.
    pub connection: u64,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.role, self.connection)
    }
}

/// What one direction of a connection carried, as [`StreamDecoder`] found it.
// Events are made, printed and dropped one at a time, never stored: a boxed frame would only
// cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A whole frame.
    Frame {
        /// Offset of its first octet in the direction's stream.
        offset: u64,
        /// Its octets, framing included.
        size: usize,
        /// The frame.
        frame: Frame,
    },
    /// Octets that do not decode: everything buffered from `offset` on. The direction is not
    /// decoded any further.
    Undecodable {
        /// Offset of the first octet not decoded.
        offset: u64,
        /// Why they do not decode.
        error: DecodeError,
        /// The octets, from `offset` to what has arrived.
        octets: Bytes,
    },
    /// Octets of a direction that is no longer decoded.
    Raw {
        /// Offset of the first of them.
        offset: u64,
        /// The octets.
        octets: Bytes,
    },
}

/// Decodes a copy of one direction of a connection, in whatever pieces it arrives.
///
/// Whole frames come out as [`Event::Frame`]; a frame that arrived in part waits in the
/// decoder's own buffer for its rest. At the first octets that do not decode it reports
/// [`Event::Undecodable`] and from then on passes octets on as [`Event::Raw`]: a stream out
/// of step cannot be found in step again.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: BytesMut,
    /// Offset in the stream of the first octet of `buf`.
    offset: u64,
    failed: bool,
}

impl StreamDecoder {
    /// A decoder at the start of a stream. It accepts frames of any size (frame_max 0): it
    /// only looks, and a capture may come from a connection that negotiated any frame_max.
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// Takes the next octets of the stream and calls `each` with what they complete.
    pub fn feed(&mut self, octets: &[u8], mut each: impl FnMut(Event)) {
        if octets.is_empty() {
            return;
        }
        if self.failed {
            let offset = self.offset;
            self.offset = self.offset.saturating_add(octets.len() as u64);
            each(Event::Raw {
                offset,
                octets: Bytes::copy_from_slice(octets),
            });
            return;
        }
        self.buf.extend_from_slice(octets);
        let limits = Limits::with_frame_max(0);
        loop {
            let before = self.buf.len();
            match decode(&mut self.buf, &limits) {
                Ok(Some(frame)) => {
                    let size = before.saturating_sub(self.buf.len());
                    let offset = self.offset;
                    self.offset = self.offset.saturating_add(size as u64);
                    each(Event::Frame {
                        offset,
                        size,
                        frame,
                    });
                }
                Ok(None) => return,
                Err(error) => {
                    let octets = self.buf.split().freeze();
                    let offset = self.offset;
                    self.offset = self.offset.saturating_add(octets.len() as u64);
                    self.failed = true;
                    each(Event::Undecodable {
                        offset,
                        error,
                        octets,
                    });
                    return;
                }
            }
        }
    }

    /// Octets of a frame that has not all arrived.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Octets taken so far.
    pub fn octets(&self) -> u64 {
        self.offset.saturating_add(self.buf.len() as u64)
    }

    /// Whether the stream was found undecodable.
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

/// One trace line for an [`Event`] (no newline).
///
/// Text: `{time} {who} {arrow} {size}B {frame}`, undecodable octets as
/// `{time} {who} {arrow} undecodable at offset {n} (501 FRAME_ERROR: ...): {octets} octets: 47 45 54 |GET|`.
/// JSON: one object, `"time"`, `"role"`, `"conn"`, `"dir"`, `"octets"`, then the frame's members
/// (or `"type":"undecodable"` / `"raw"` with `"offset"`, `"hex"`).
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// Text or JSON.
    pub format: Format,
    /// Time since tracing started.
    pub time: Duration,
    /// The connection.
    pub who: &'a Who,
    /// Which way the octets went.
    pub direction: Direction,
    /// What they were.
    pub event: &'a Event,
    /// Octets of a body shown before the rest is cut.
    pub body_limit: usize,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body_limit = self.body_limit;
        match self.format {
            Format::Text => {
                write_text_time(f, self.time)?;
                write!(f, " {} {} ", self.who, self.direction.arrow())?;
                match self.event {
                    Event::Frame { size, frame, .. } => {
                        write!(f, "{size}B {}", Text { frame, body_limit })
                    }
                    Event::Undecodable {
                        offset,
                        error,
                        octets,
                    } => {
                        write!(
                            f,
                            "undecodable at offset {offset} ({}: {error}), not decoded from here on: {} octets: ",
                            error.reply_code(),
                            octets.len()
                        )?;
                        write_hex_text(f, octets)
                    }
                    Event::Raw { offset, octets } => {
                        write!(
                            f,
                            "not decoded at offset {offset}: {} octets: ",
                            octets.len()
                        )?;
                        write_hex_text(f, octets)
                    }
                }
            }
            Format::Json => {
                f.write_char('{')?;
                write_json_prefix(f, self.time, self.who)?;
                write!(f, r#","dir":"{}","#, self.direction.name())?;
                match self.event {
                    Event::Frame { size, frame, .. } => {
                        // The frame's own object, its braces opened above.
                        let object = Json { frame, body_limit }.to_string();
                        let members = object.strip_prefix('{').unwrap_or(&object);
                        write!(f, r#""octets":{size},{members}"#)
                    }
                    Event::Undecodable {
                        offset,
                        error,
                        octets,
                    } => {
                        write!(
                            f,
                            r#""type":"undecodable","offset":{offset},"octets":{},"reply_code":{},"error":"#,
                            octets.len(),
                            error.reply_code().0
                        )?;
                        write_json_text(f, &error.to_string())?;
                        write_hex_json(f, octets)?;
                        f.write_char('}')
                    }
                    Event::Raw { offset, octets } => {
                        write!(
                            f,
                            r#""type":"raw","offset":{offset},"octets":{}"#,
                            octets.len()
                        )?;
                        write_hex_json(f, octets)?;
                        f.write_char('}')
                    }
                }
            }
        }
    }
}

/// A line about a connection rather than a frame: that it opened (and with whom), closed,
/// failed. Text: `{time} {who} {text}`; JSON: `{"time":..,"role":..,"conn":..,"type":kind,"text":text}`.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    /// Text or JSON.
    pub format: Format,
    /// Time since tracing started.
    pub time: Duration,
    /// The connection.
    pub who: &'a Who,
    /// One word for JSON's `"type"`: `open`, `close`, `error`.
    pub kind: &'a str,
    /// What happened, in words.
    pub text: &'a str,
}

impl fmt::Display for Note<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            Format::Text => {
                write_text_time(f, self.time)?;
                write!(f, " {} {}", self.who, self.text)
            }
            Format::Json => {
                f.write_char('{')?;
                write_json_prefix(f, self.time, self.who)?;
                f.write_str(r#","type":"#)?;
                write_json_text(f, self.kind)?;
                f.write_str(r#","text":"#)?;
                write_json_text(f, self.text)?;
                f.write_char('}')
            }
        }
    }
}

/// `   12.345678`: seconds, to the microsecond, right-aligned so that short runs line up.
fn write_text_time(f: &mut fmt::Formatter<'_>, time: Duration) -> fmt::Result {
    write!(f, "{:>4}.{:06}", time.as_secs(), time.subsec_micros())
}

/// `"time":12.345678,"role":"client","conn":1` (no role when it is empty).
fn write_json_prefix(f: &mut fmt::Formatter<'_>, time: Duration, who: &Who) -> fmt::Result {
    write!(
        f,
        r#""time":{}.{:06}"#,
        time.as_secs(),
        time.subsec_micros()
    )?;
    if !who.role.is_empty() {
        f.write_str(r#","role":"#)?;
        write_json_text(f, who.role)?;
    }
    write!(f, r#","conn":{}"#, who.connection)
}

/// `47 45 54 |GET|`: up to [`HEX_LIMIT`] octets in hex, then as ASCII (`.` for anything not
/// printable), then `... N more` when some were left out.
fn write_hex_text(f: &mut fmt::Formatter<'_>, octets: &[u8]) -> fmt::Result {
    let shown = octets.get(..HEX_LIMIT).unwrap_or(octets);
    for (i, octet) in shown.iter().enumerate() {
        if i > 0 {
            f.write_char(' ')?;
        }
        write!(f, "{octet:02x}")?;
    }
    f.write_str(" |")?;
    for &octet in shown {
        let c = if octet.is_ascii_graphic() || octet == b' ' {
            char::from(octet)
        } else {
            '.'
        };
        f.write_char(c)?;
    }
    f.write_char('|')?;
    let more = octets.len().saturating_sub(shown.len());
    if more > 0 {
        write!(f, " ... {more} more")?;
    }
    Ok(())
}

/// `,"hex":"474554"` (up to [`HEX_LIMIT`] octets) and `,"hex_truncated":true` when cut.
fn write_hex_json(f: &mut fmt::Formatter<'_>, octets: &[u8]) -> fmt::Result {
    let shown = octets.get(..HEX_LIMIT).unwrap_or(octets);
    f.write_str(r#","hex":""#)?;
    for octet in shown {
        write!(f, "{octet:02x}")?;
    }
    f.write_char('"')?;
    if shown.len() < octets.len() {
        f.write_str(r#","hex_truncated":true"#)?;
    }
    Ok(())
}

/// Text as a JSON string (RFC 8259 section 7).
fn write_json_text(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in text.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// Traces both directions of one connection to stderr. See the [module docs](self).
///
/// Made with tracing off, it holds nothing and each call is one branch.
#[derive(Debug, Default)]
pub struct Tracer {
    received: HalfTracer,
    sent: HalfTracer,
}

impl Tracer {
    /// A tracer for a new connection of `role` (`client`, `broker`) with `peer`, numbered in
    /// the order connections are traced; with tracing on, it prints a first line naming the
    /// peer.
    pub fn new(role: &'static str, peer: impl fmt::Display) -> Tracer {
        if format().is_none() {
            return Tracer::default();
        }
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        Tracer::with_id(role, id, peer)
    }

    /// A tracer for connection number `id` (one the program numbers itself, as the broker
    /// does), with `peer`.
    pub fn with_id(role: &'static str, id: u64, peer: impl fmt::Display) -> Tracer {
        let Some(format) = format() else {
            return Tracer::default();
        };
        let who = Arc::new(Who {
            role,
            connection: id,
        });
        let text = format!("connection with {peer}");
        let mut line = String::new();
        let note = Note {
            format,
            time: elapsed(),
            who: &who,
            kind: "open",
            text: &text,
        };
        if writeln!(line, "{note}").is_ok() {
            write_stderr(&line);
        }
        let half = |direction| HalfTracer {
            state: Some(Box::new(HalfState {
                format,
                who: who.clone(),
                direction,
                decoder: StreamDecoder::new(),
                line: String::new(),
            })),
        };
        Tracer {
            received: half(Direction::Received),
            sent: half(Direction::Sent),
        }
    }

    /// Whether this tracer prints anything.
    pub fn is_enabled(&self) -> bool {
        self.sent.is_enabled()
    }

    /// Traces octets the program read from the connection.
    #[inline]
    pub fn received(&mut self, octets: &[u8]) {
        self.received.trace(octets);
    }

    /// Traces octets the program wrote to the connection.
    #[inline]
    pub fn sent(&mut self, octets: &[u8]) {
        self.sent.trace(octets);
    }

    /// The two directions apart, `(received, sent)`, for a program that reads and writes in
    /// different tasks (the broker).
    pub fn split(self) -> (HalfTracer, HalfTracer) {
        (self.received, self.sent)
    }
}

/// Traces one direction of a connection: what [`Tracer::split`] gives.
#[derive(Debug, Default)]
pub struct HalfTracer {
    state: Option<Box<HalfState>>,
}

#[derive(Debug)]
struct HalfState {
    format: Format,
    who: Arc<Who>,
    direction: Direction,
    decoder: StreamDecoder,
    /// The line being printed, kept to save an allocation per frame.
    line: String,
}

impl HalfTracer {
    /// Whether this tracer prints anything.
    pub fn is_enabled(&self) -> bool {
        self.state.is_some()
    }

    /// Traces the next octets of this direction.
    #[inline]
    pub fn trace(&mut self, octets: &[u8]) {
        if let Some(state) = &mut self.state {
            state.trace(octets);
        }
    }

    /// Traces the last `n` octets of `buf`: those a `read_buf(&mut buf)` that returned `n`
    /// just appended.
    #[inline]
    pub fn trace_tail(&mut self, buf: &[u8], n: usize) {
        if let Some(state) = &mut self.state {
            let start = buf.len().saturating_sub(n);
            state.trace(buf.get(start..).unwrap_or_default());
        }
    }
}

impl HalfState {
    fn trace(&mut self, octets: &[u8]) {
        let HalfState {
            format,
            who,
            direction,
            decoder,
            line,
        } = self;
        let time = elapsed();
        decoder.feed(octets, |event| {
            line.clear();
            let rendered = Line {
                format: *format,
                time,
                who,
                direction: *direction,
                event: &event,
                body_limit: DEFAULT_BODY_LIMIT,
            };
            if writeln!(line, "{rendered}").is_ok() {
                write_stderr(line);
            }
        });
    }
}

/// One line to stderr in one write, under its lock; errors are dropped (nowhere to report).
fn write_stderr(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{BasicPublish, ConnectionTuneOk};
    use crate::{ContentHeader, ProtocolHeader};

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for frame in frames {
            frame.encode(&mut buf, 0).unwrap();
        }
        buf.to_vec()
    }

    fn publish_frames() -> Vec<Frame> {
        vec![
            Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
            Frame::Method(
                1,
                BasicPublish {
                    exchange: "".into(),
                    routing_key: "hello".into(),
                    ..Default::default()
                }
                .into(),
            ),
            Frame::Header(
                1,
                ContentHeader {
                    class_id: 60,
                    body_size: 5,
                    properties: Default::default(),
                },
            ),
            Frame::Body(1, Bytes::from_static(b"hello")),
        ]
    }

    fn events(decoder: &mut StreamDecoder, octets: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        decoder.feed(octets, |event| out.push(event));
        out
    }

    #[test]
    fn format_from_env_value_reads_text_json_and_off() {
        assert_eq!(Format::from_env_value("1"), Some(Format::Text));
        assert_eq!(Format::from_env_value("text"), Some(Format::Text));
        assert_eq!(Format::from_env_value("json"), Some(Format::Json));
        assert_eq!(Format::from_env_value("JSON"), Some(Format::Json));
        assert_eq!(Format::from_env_value("0"), None);
        assert_eq!(Format::from_env_value(""), None);
        assert_eq!(Format::from_env_value("off"), None);
    }

    #[test]
    fn stream_decoder_fed_one_octet_at_a_time_yields_every_frame_with_offsets() {
        let frames = publish_frames();
        let stream = encoded(&frames);
        let mut decoder = StreamDecoder::new();
        let mut got = Vec::new();
        for octet in &stream {
            got.extend(events(&mut decoder, std::slice::from_ref(octet)));
        }
        let mut offset = 0u64;
        assert_eq!(got.len(), frames.len());
        for (event, frame) in got.iter().zip(&frames) {
            let Event::Frame {
                offset: at,
                size,
                frame: decoded,
            } = event
            else {
                panic!("not a frame: {event:?}");
            };
            assert_eq!(decoded, frame);
            assert_eq!(*at, offset);
            assert_eq!(*size, frame.encoded_len());
            offset += *size as u64;
        }
        assert_eq!(decoder.pending(), 0);
        assert_eq!(decoder.octets(), stream.len() as u64);
    }

    #[test]
    fn stream_decoder_keeps_a_partial_frame_until_its_rest_arrives() {
        let stream = encoded(&publish_frames());
        let mut decoder = StreamDecoder::new();
        // The protocol header (8) and 3 octets of the method frame's header.
        assert_eq!(events(&mut decoder, &stream[..11]).len(), 1);
        assert_eq!(decoder.pending(), 3);
        assert_eq!(events(&mut decoder, &stream[11..]).len(), 3);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn stream_decoder_reports_undecodable_octets_then_passes_the_rest_raw() {
        let mut decoder = StreamDecoder::new();
        let mut stream = encoded(&[Frame::Heartbeat]);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let got = events(&mut decoder, &stream);
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            Event::Frame {
                offset: 0,
                size: 8,
                ..
            }
        ));
        let Event::Undecodable {
            offset,
            error,
            octets,
        } = &got[1]
        else {
            panic!("not undecodable: {:?}", got[1]);
        };
        assert_eq!(*offset, 8);
        // 'G' is 0x47, not a frame type.
        assert_eq!(*error, DecodeError::UnknownFrameType(0x47));
        assert_eq!(&octets[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(decoder.is_failed());
        // A heartbeat, which would decode, is now passed on as it is.
        let later = events(&mut decoder, &encoded(&[Frame::Heartbeat]));
        assert_eq!(
            later,
            vec![Event::Raw {
                offset: 26,
                octets: Bytes::from(encoded(&[Frame::Heartbeat]))
            }]
        );
    }

    fn line(format: Format, direction: Direction, event: &Event) -> String {
        let who = Who {
            role: "client",
            connection: 3,
        };
        Line {
            format,
            time: Duration::from_micros(1_002_003),
            who: &who,
            direction,
            event,
            body_limit: DEFAULT_BODY_LIMIT,
        }
        .to_string()
    }

    #[test]
    fn text_line_shows_time_connection_arrow_size_and_frame() {
        let event = Event::Frame {
            offset: 8,
            size: 20,
            frame: Frame::Method(
                0,
                ConnectionTuneOk {
                    channel_max: 2047,
                    frame_max: 131_072,
                    heartbeat: 60,
                }
                .into(),
            ),
        };
        assert_eq!(
            line(Format::Text, Direction::Sent, &event),
            "   1.002003 client#3 -> 20B ch=0 connection.tune-ok channel_max=2047 frame_max=131072 heartbeat=60"
        );
    }

    #[test]
    fn text_line_of_undecodable_octets_shows_offset_error_hex_and_ascii() {
        let event = Event::Undecodable {
            offset: 0,
            error: DecodeError::UnknownFrameType(0x47),
            octets: Bytes::from_static(b"GET /\r\n"),
        };
        assert_eq!(
            line(Format::Text, Direction::Received, &event),
            "   1.002003 client#3 <- undecodable at offset 0 (501 FRAME_ERROR: unknown frame type 71), \
             not decoded from here on: 7 octets: 47 45 54 20 2f 0d 0a |GET /..|"
        );
    }

    #[test]
    fn text_line_of_many_raw_octets_shows_the_first_64_and_counts_the_rest() {
        let event = Event::Raw {
            offset: 100,
            octets: Bytes::from(vec![b'a'; 70]),
        };
        let text = line(Format::Text, Direction::Sent, &event);
        assert!(
            text.starts_with("   1.002003 client#3 -> not decoded at offset 100: 70 octets: 61 61")
        );
        assert_eq!(text.matches("61").count(), 64);
        assert!(text.ends_with(&format!("|{}| ... 6 more", "a".repeat(64))));
    }

    #[test]
    fn json_line_is_the_frame_object_with_time_connection_direction_and_size() {
        let event = Event::Frame {
            offset: 0,
            size: 8,
            frame: Frame::Heartbeat,
        };
        assert_eq!(
            line(Format::Json, Direction::Received, &event),
            r#"{"time":1.002003,"role":"client","conn":3,"dir":"recv","octets":8,"channel":0,"type":"heartbeat"}"#
        );
    }

    #[test]
    fn json_line_of_body_frame_keeps_frame_octets_apart_from_body_size() {
        let event = Event::Frame {
            offset: 0,
            size: 13,
            frame: Frame::Body(1, Bytes::from_static(b"hello")),
        };
        assert_eq!(
            line(Format::Json, Direction::Sent, &event),
            r#"{"time":1.002003,"role":"client","conn":3,"dir":"send","octets":13,"channel":1,"type":"body","size":5,"body":"hello"}"#
        );
    }

    #[test]
    fn json_line_of_undecodable_octets_has_offset_code_error_and_hex() {
        let event = Event::Undecodable {
            offset: 8,
            error: DecodeError::BadFrameEnd(0),
            octets: Bytes::from_static(&[0x01, 0xff]),
        };
        assert_eq!(
            line(Format::Json, Direction::Sent, &event),
            r#"{"time":1.002003,"role":"client","conn":3,"dir":"send","type":"undecodable","offset":8,"octets":2,"reply_code":501,"error":"frame end octet is 0x00, expected 0xce","hex":"01ff"}"#
        );
    }

    #[test]
    fn note_without_role_shows_the_bare_connection_number() {
        let who = Who {
            role: "",
            connection: 12,
        };
        let note = |format| {
            Note {
                format,
                time: Duration::from_millis(1500),
                who: &who,
                kind: "open",
                text: "connection from \"x\"",
            }
            .to_string()
        };
        assert_eq!(note(Format::Text), r#"   1.500000 #12 connection from "x""#);
        assert_eq!(
            note(Format::Json),
            r#"{"time":1.500000,"conn":12,"type":"open","text":"connection from \"x\""}"#
        );
    }

    #[test]
    fn disabled_tracer_holds_nothing() {
        let mut tracer = Tracer::default();
        assert!(!tracer.is_enabled());
        tracer.sent(b"anything");
        let (received, sent) = tracer.split();
        assert!(!received.is_enabled() && !sent.is_enabled());
    }
}
