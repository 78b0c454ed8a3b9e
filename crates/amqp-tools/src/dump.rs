//! `amqp-dump`: an AMQP 0-9-1 byte stream in, one line per frame out.
//!
//! ## What it reads
//! One direction of an AMQP connection, as raw octets: what a client sent, or what a server
//! sent. A client's stream starts with the 8-octet protocol header `AMQP 0 0 9 1`, a server's
//! does not; either way what follows is frames (spec 4.2.3):
//!
//! ```text
//! type  channel  size           payload                                 frame-end
//! 01    00 01    00 00 00 0d    00 3c 00 50  00 00 00 00 00 00 00 2a 01  ce
//! │     ch=1     13 octets      class 60 (basic), method 80 (ack),      always 0xCE
//! │                             delivery-tag 42, multiple = true
//! └─ 1 = method, 2 = content header, 3 = content body, 8 = heartbeat
//! ```
//!
//! The stream may also start in the middle of a connection (a capture begun late), as long as
//! it starts at a frame boundary. With `--hex` the input is hex text instead (as printed in
//! docs and in this workspace's test fixtures): whitespace is ignored, `#` starts a comment
//! that runs to the end of the line.
//!
//! ## What it prints
//! One line per frame, through [`amqp_codec::describe`], so it reads like the workspace's frame
//! tracer:
//!
//! ```text
//! protocol-header AMQP 0-9-1
//! ch=1 basic.publish exchange="" routing_key="task_queue" mandatory=false immediate=false
//! ch=1 content-header class=60 body_size=12 delivery_mode=2
//! ch=1 content-body size=12 "Hello World!"
//! ```
//!
//! `ch=` is the channel (0 is the connection itself), then the method as `class.method` and
//! its fields by their spec names, or the content header's properties, or the body (at most
//! [`Options::body_limit`] octets of it, escaped, `...` when cut). With [`Options::json`] each
//! line is a JSON object instead, fields under their spec names (`"routing-key"`). With
//! [`Options::offsets`] each line starts with the offset of the frame's first octet in the
//! stream (in JSON, an `"offset"` member), so a frame can be found with `xxd -s`. Offsets
//! count octets of AMQP, also when they were read as hex.
//!
//! Everything is shown as it was sent, credentials included: with the PLAIN mechanism the
//! `response` of connection.start-ok is the user name and password (`"\x00guest\x00guest"`).
//!
//! ## How it reads
//! In chunks, as they come: each chunk is appended to a [`BytesMut`], every whole frame in it
//! is decoded by [`amqp_codec::decode`] and printed, and the output is flushed before the next
//! read. A large capture is never held in memory at once, and a pipe from a live capture is
//! printed as it arrives. A frame announced larger than [`Options::frame_max`] is refused as
//! soon as its 7-octet header is in; 0, the default, means no limit, since a capture may come
//! from a connection that negotiated any size.
//!
//! ## When the bytes are wrong
//! Frames that decode are printed; at the first that does not, [`run`] stops with a
//! [`DumpError`] that names where, and the AMQP reply code a peer would close the connection
//! with (spec 1.2):
//!
//! ```text
//! error at offset 1234: 501 FRAME_ERROR: frame end octet is 0x00, expected 0xce
//! ```
//!
//! The offset is of the octet at fault when one octet is (an unknown frame type, a frame-end
//! octet that is not 0xCE), and otherwise of the first octet of the frame that failed. A
//! stream that ends inside a frame is an error too (501, the frame is incomplete).
//!
//! ## Capturing a stream
//! One way to record both directions of a connection: a `socat` proxy in front of RabbitMQ
//! that writes what flows each way to its own file (`-r`: client to server, `-R`: back).
//!
//! ```sh
//! socat -r client.bin -R server.bin TCP-LISTEN:5673,reuseaddr TCP:127.0.0.1:5672
//! # point a client at port 5673, let it run, then:
//! amqp-dump client.bin        # starts with protocol-header AMQP 0-9-1
//! amqp-dump server.bin        # starts with ch=0 connection.start
//! ```

use std::io::{self, Read, Write};

use amqp_codec::constants::{FRAME_HEADER_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER};
use amqp_codec::describe::{Json, Text, DEFAULT_BODY_LIMIT};
use amqp_codec::{decode, DecodeError, Frame, Limits, ReplyCode};
use bytes::{BufMut, BytesMut};

/// How many octets (or hex characters) one read asks for.
const READ_CHUNK: usize = 64 * 1024;

/// What to print and how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Octets of each body (and, in text, each long string) to show before cutting it.
    pub body_limit: usize,
    /// The largest frame accepted, header and end octet included; 0 means no limit.
    pub frame_max: u32,
    /// Start each line with the offset of the frame's first octet.
    pub offsets: bool,
    /// The input is hex text, not raw octets.
    pub hex: bool,
}

impl Default for Options {
    /// Text, bodies cut at 64 octets, no frame size limit, no offsets, raw input.
    fn default() -> Self {
        Options {
            json: false,
            body_limit: DEFAULT_BODY_LIMIT,
            frame_max: 0,
            offsets: false,
            hex: false,
        }
    }
}

/// What a successful [`run`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames printed (the protocol header counts as one).
    pub frames: u64,
    /// Octets of the frames printed: the length of the stream, when it was all frames.
    pub octets: u64,
}

/// Why a dump stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The octets at `offset` are not AMQP 0-9-1.
    #[error("error at offset {offset}: {}: {error}", error.reply_code())]
    Decode {
        /// Offset in the stream of the octet at fault, or of the frame that failed.
        offset: u64,
        /// What the decoder found wrong.
        error: DecodeError,
    },
    /// The input ended inside a frame (or inside the protocol header).
    #[error(
        "error at offset {offset}: {}: input ends inside {what}: {have} of its {need} octets arrived",
        ReplyCode::FRAME_ERROR
    )]
    Truncated {
        /// Offset of the incomplete frame.
        offset: u64,
        /// "a frame", "a frame header" or "the protocol header".
        what: &'static str,
        /// Octets of it that arrived.
        have: usize,
        /// Octets it takes whole.
        need: u64,
    },
    /// The input is not hex text ([`Options::hex`]).
    #[error("hex input, {0}")]
    Hex(#[from] HexError),
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(#[source] io::Error),
    /// Writing the output failed (a closed pipe, say).
    #[error("writing the output: {0}")]
    Write(#[source] io::Error),
}

impl DumpError {
    /// The AMQP reply code of an error in the stream itself (not in hex text or IO).
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            DumpError::Decode { error, .. } => Some(error.reply_code()),
            DumpError::Truncated { .. } => Some(ReplyCode::FRAME_ERROR),
            DumpError::Hex(_) | DumpError::Read(_) | DumpError::Write(_) => None,
        }
    }
}

/// Why hex text could not be read as octets. Lines and columns count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexError {
    /// A character that is neither a hex digit, whitespace nor in a `#` comment.
    #[error("line {line}, column {column}: {} is not a hex digit", show_octet(*.octet))]
    NotHexDigit {
        /// Line of the character.
        line: u64,
        /// Column of the character, in octets.
        column: u64,
        /// The (first octet of the) character.
        octet: u8,
    },
    /// The text ended after half an octet.
    #[error("line {line}: the text ends after an odd number of hex digits")]
    OddDigitCount {
        /// The last line.
        line: u64,
    },
}

/// `'g'` for printable ASCII, `0xc3` for anything else.
fn show_octet(octet: u8) -> String {
    if octet.is_ascii_graphic() {
        format!("'{}'", char::from(octet))
    } else {
        format!("0x{octet:02x}")
    }
}

/// Reads an AMQP stream from `input` and prints one line per frame to `out`.
///
/// Returns how many frames and octets went by, or the first thing that went wrong; the frames
/// before it have been printed and `out` flushed either way. `input` needs no buffer around
/// it (it is read in large chunks); `out` wants one (a `BufWriter`), which `run` flushes each
/// time it has printed every whole frame it holds, before it waits for more input.
pub fn run(input: impl Read, mut out: impl Write, options: &Options) -> Result<Summary, DumpError> {
    let mut source = if options.hex {
        Source::Hex(HexText::new(input))
    } else {
        Source::Raw(input)
    };
    let result = dump(&mut source, &mut out, options);
    let flushed = out.flush().map_err(DumpError::Write);
    let summary = result?;
    flushed.map(|()| summary)
}

fn dump<R: Read>(
    source: &mut Source<R>,
    out: &mut impl Write,
    options: &Options,
) -> Result<Summary, DumpError> {
    let limits = Limits::with_frame_max(options.frame_max);
    let mut buf = BytesMut::new();
    let mut summary = Summary::default();
    loop {
        while let Some((frame, len)) = next_frame(&mut buf, &limits, summary.octets)? {
            write_frame(out, &frame, summary.octets, options).map_err(DumpError::Write)?;
            summary.frames = summary.frames.saturating_add(1);
            summary.octets = summary.octets.saturating_add(len as u64);
        }
        // Everything whole has been printed: show it before waiting for more input, so a
        // dump of a live capture keeps up with it.
        out.flush().map_err(DumpError::Write)?;
        if source.fill(&mut buf)? == 0 {
            return match incomplete(&buf, summary.octets) {
                Some(error) => Err(error),
                None => Ok(summary),
            };
        }
    }
}

/// The frame at the front of `buf` (which is at `offset` in the stream) and its length, or
/// `None` if it has not all arrived.
fn next_frame(
    buf: &mut BytesMut,
    limits: &Limits,
    offset: u64,
) -> Result<Option<(Frame, usize)>, DumpError> {
    // Peeked before decoding, to place an error: `decode` does not say where it found one.
    let len = frame_len(buf);
    let before = buf.len();
    match decode(buf, limits) {
        Ok(Some(frame)) => Ok(Some((frame, before.saturating_sub(buf.len())))),
        Ok(None) => Ok(None),
        Err(error) => {
            let at = match (&error, len) {
                // The end octet is the frame's last.
                (DecodeError::BadFrameEnd(_), Some(len)) => len.saturating_sub(1),
                _ => 0,
            };
            Err(DumpError::Decode {
                offset: offset.saturating_add(at),
                error,
            })
        }
    }
}

/// The whole length (header, payload, end octet) of the frame whose 7-octet header (type,
/// channel, size; spec 4.2.3) is at the front of `buf`, if all of the header is there.
fn frame_len(buf: &[u8]) -> Option<u64> {
    let [_type, _channel @ .., s0, s1, s2, s3] = *buf.first_chunk::<FRAME_HEADER_SIZE>()?;
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    Some(u64::from(size).saturating_add(FRAME_OVERHEAD as u64))
}

/// At the end of the input: the error for what is left in `buf`, if anything is.
fn incomplete(buf: &[u8], offset: u64) -> Option<DumpError> {
    if buf.is_empty() {
        return None;
    }
    let (what, need) = if buf.first() == PROTOCOL_HEADER.first() {
        ("the protocol header", PROTOCOL_HEADER.len() as u64)
    } else if let Some(len) = frame_len(buf) {
        ("a frame", len)
    } else {
        ("a frame header", FRAME_HEADER_SIZE as u64)
    };
    Some(DumpError::Truncated {
        offset,
        what,
        have: buf.len(),
        need,
    })
}

/// Prints one frame as a line of text or JSON.
fn write_frame(
    out: &mut impl Write,
    frame: &Frame,
    offset: u64,
    options: &Options,
) -> io::Result<()> {
    let body_limit = options.body_limit;
    match (options.json, options.offsets) {
        (false, false) => writeln!(out, "{}", Text { frame, body_limit }),
        (false, true) => writeln!(out, "{offset:>8} {}", Text { frame, body_limit }),
        (true, false) => writeln!(out, "{}", Json { frame, body_limit }),
        (true, true) => {
            // The offset goes inside the object, so that each line stays one JSON value.
            let object = Json { frame, body_limit }.to_string();
            let members = object.strip_prefix('{').unwrap_or(&object);
            writeln!(out, "{{\"offset\":{offset},{members}")
        }
    }
}

/// Where the stream's octets come from.
enum Source<R> {
    /// The input is the stream.
    Raw(R),
    /// The input is the stream in hex.
    Hex(HexText<R>),
}

impl<R: Read> Source<R> {
    /// Appends the next octets of the stream to `buf`; 0 when the input is at its end.
    fn fill(&mut self, buf: &mut BytesMut) -> Result<usize, DumpError> {
        match self {
            Source::Raw(input) => {
                // Read straight into the buffer's tail: no copy.
                let start = buf.len();
                buf.resize(start.saturating_add(READ_CHUNK), 0);
                let read = buf
                    .get_mut(start..)
                    .map_or(Ok(0), |tail| read_some(input, tail));
                let n = read.as_ref().map_or(0, |n| *n);
                buf.truncate(start.saturating_add(n));
                read.map_err(DumpError::Read)
            }
            Source::Hex(text) => text.fill(buf),
        }
    }
}

/// One `read`, retried when a signal interrupted it.
fn read_some(input: &mut impl Read, into: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(into) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Hex text, turned into octets as it is read.
struct HexText<R> {
    input: R,
    /// The text as read, before it is turned into octets.
    text: Vec<u8>,
    /// The first digit of an octet whose second digit has not been read yet.
    high: Option<u8>,
    /// Inside a `#` comment, which ends with the line.
    in_comment: bool,
    line: u64,
    column: u64,
    /// A fault found in text read already, reported once the octets before it are printed.
    fault: Option<HexError>,
}

impl<R: Read> HexText<R> {
    fn new(input: R) -> Self {
        HexText {
            input,
            text: vec![0; READ_CHUNK],
            high: None,
            in_comment: false,
            line: 1,
            column: 0,
            fault: None,
        }
    }

    /// Appends the octets of the next chunk of text that holds any to `buf`; 0 at the end.
    fn fill(&mut self, buf: &mut BytesMut) -> Result<usize, DumpError> {
        loop {
            if let Some(fault) = self.fault.take() {
                return Err(fault.into());
            }
            let n = read_some(&mut self.input, &mut self.text).map_err(DumpError::Read)?;
            if n == 0 {
                return match self.high {
                    Some(_) => Err(HexError::OddDigitCount { line: self.line }.into()),
                    None => Ok(0),
                };
            }
            let before = buf.len();
            let text = std::mem::take(&mut self.text);
            let result = text
                .get(..n)
                .unwrap_or_default()
                .iter()
                .try_for_each(|&c| self.push(c, buf));
            self.text = text;
            let added = buf.len().saturating_sub(before);
            if let Err(fault) = result {
                // The frames before the fault are printed first, then it is reported.
                self.fault = Some(fault);
            }
            if added > 0 {
                return Ok(added);
            }
            // Only whitespace and comments so far: read on.
        }
    }

    /// Takes one character of text.
    fn push(&mut self, c: u8, buf: &mut BytesMut) -> Result<(), HexError> {
        self.column = self.column.saturating_add(1);
        if c == b'\n' {
            self.line = self.line.saturating_add(1);
            self.column = 0;
            self.in_comment = false;
            return Ok(());
        }
        if self.in_comment || c.is_ascii_whitespace() {
            return Ok(());
        }
        if c == b'#' {
            self.in_comment = true;
            return Ok(());
        }
        let Some(digit) = char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
        else {
            return Err(HexError::NotHexDigit {
                line: self.line,
                column: self.column,
                octet: c,
            });
        };
        match self.high.take() {
            Some(high) => buf.put_u8(high << 4 | digit),
            None => self.high = Some(digit),
        }
        Ok(())
    }
}
