//! Wire constants of AMQP 0-9-1 (spec section 1.2, the `<constant>` elements of the XML).

use std::fmt;

/// The eight bytes a client sends before anything else: `AMQP` 0 0 9 1 (spec 4.2.2).
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Every frame ends with this octet (spec 4.2.3, `frame-end`).
pub const FRAME_END: u8 = 0xCE;

/// Type octet, channel (2 octets) and payload size (4 octets) (spec 4.2.3).
pub const FRAME_HEADER_SIZE: usize = 7;

/// Header plus end octet: what a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;

/// The smallest frame_max a peer may negotiate (spec `frame-min-size`).
///
/// RabbitMQ departs from the spec here: since 4.1 it refuses a frame_max below 8192
/// (see RabbitMQ's "AMQP 0-9-1 errata" page and the 4.1 release notes). A client that wants to
/// talk to every RabbitMQ asks for at least [`RABBITMQ_FRAME_MIN_SIZE`].
pub const FRAME_MIN_SIZE: u32 = 4096;

/// The smallest frame_max RabbitMQ 4.1 and later accept.
pub const RABBITMQ_FRAME_MIN_SIZE: u32 = 8192;

/// A channel number; channel 0 is the connection itself (spec 2.3.5).
pub type ChannelId = u16;

/// The frame type octet (spec 4.2.3). An open newtype: unknown values are representable,
/// so a decoder can report them instead of failing to express them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameType(pub u8);

impl FrameType {
    /// A method frame (`frame-method`).
    pub const METHOD: FrameType = FrameType(1);
    /// A content header frame (`frame-header`).
    pub const HEADER: FrameType = FrameType(2);
    /// A content body frame (`frame-body`).
    pub const BODY: FrameType = FrameType(3);
    /// A heartbeat frame (`frame-heartbeat`).
    pub const HEARTBEAT: FrameType = FrameType(8);
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameType::METHOD => f.write_str("METHOD"),
            FrameType::HEADER => f.write_str("HEADER"),
            FrameType::BODY => f.write_str("BODY"),
            FrameType::HEARTBEAT => f.write_str("HEARTBEAT"),
            FrameType(other) => write!(f, "FrameType({other})"),
        }
    }
}

/// A reply code, as carried by connection.close, channel.close and basic.return
/// (spec 1.2). An open newtype: codes this crate does not name still round-trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReplyCode(pub u16);

macro_rules! reply_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $hard:literal;)*) => {
        impl ReplyCode {
            $($(#[$doc])* pub const $name: ReplyCode = ReplyCode($value);)*

            /// The constant's name as the spec and RabbitMQ's reply texts spell it
            /// (`PRECONDITION_FAILED`), if this code is one the spec defines.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Whether the spec classes this code as a hard error (it closes the connection)
            /// rather than a soft error (it closes the channel).
            pub fn is_hard_error(self) -> bool {
                match self.0 {
                    $($value => $hard,)*
                    _ => true,
                }
            }
        }
    };
}

reply_codes! {
    /// Success: a normal close.
    REPLY_SUCCESS = 200, false;
    /// The message is too large for the server to accept.
    CONTENT_TOO_LARGE = 311, false;
    /// A mandatory message could not be routed to any queue (RabbitMQ's basic.return code).
    NO_ROUTE = 312, false;
    /// An immediate message found no consumer.
    NO_CONSUMERS = 313, false;
    /// An operator closed the connection.
    CONNECTION_FORCED = 320, true;
    /// The virtual host path is invalid.
    INVALID_PATH = 402, true;
    /// The client may not access the resource.
    ACCESS_REFUSED = 403, false;
    /// The named resource does not exist.
    NOT_FOUND = 404, false;
    /// Another connection holds the resource exclusively.
    RESOURCE_LOCKED = 405, false;
    /// A precondition of the method failed (redeclare with other arguments, unknown tag).
    PRECONDITION_FAILED = 406, false;
    /// A malformed frame.
    FRAME_ERROR = 501, true;
    /// A frame with illegal field values.
    SYNTAX_ERROR = 502, true;
    /// A method that is not valid here.
    COMMAND_INVALID = 503, true;
    /// A channel that is not open, or already open.
    CHANNEL_ERROR = 504, true;
    /// A frame that was not expected in this state.
    UNEXPECTED_FRAME = 505, true;
    /// The server ran out of a resource.
    RESOURCE_ERROR = 506, true;
    /// The method is not allowed.
    NOT_ALLOWED = 530, true;
    /// The method is not implemented.
    NOT_IMPLEMENTED = 540, true;
    /// An internal error of the server.
    INTERNAL_ERROR = 541, true;
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} {}", self.0, name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<u16> for ReplyCode {
    fn from(code: u16) -> Self {
        ReplyCode(code)
    }
}

impl From<ReplyCode> for u16 {
    fn from(code: ReplyCode) -> Self {
        code.0
    }
}
