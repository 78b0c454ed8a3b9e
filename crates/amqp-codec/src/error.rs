//! Errors of the codec layer.
//!
//! Every decode error knows the AMQP reply code a peer must close the connection with
//! (spec section 1.2, "constants"): a malformed frame is a 501 FRAME_ERROR, a frame whose
//! fields do not parse is a 502 SYNTAX_ERROR, an unknown method is a 503 COMMAND_INVALID and
//! a frame out of sequence (content without its method, say) is a 505 UNEXPECTED_FRAME.

use crate::constants::ReplyCode;

/// Why bytes from the wire could not be turned into a frame.
///
/// All of these are connection errors: the receiver closes the connection with
/// [`DecodeError::reply_code`] and [`DecodeError`]'s `Display` text as the reply text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The connection did not start with `AMQP` followed by a version (spec 4.2.2).
    #[error("bad protocol header {found:02x?}: expected \"AMQP\" 0 0 9 1")]
    BadProtocolHeader {
        /// The eight bytes that were received.
        found: [u8; 8],
    },
    /// The frame type octet is none of method (1), header (2), body (3), heartbeat (8).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// The frame announces a payload larger than the negotiated `frame_max` allows.
    #[error("frame size {size} exceeds the negotiated frame_max {frame_max}")]
    FrameTooLarge {
        /// Payload size announced in the frame header.
        size: u32,
        /// The negotiated frame_max (header and end octet included).
        frame_max: u32,
    },
    /// The octet after the payload is not the frame-end octet 0xCE.
    #[error("frame end octet is 0x{0:02x}, expected 0xce")]
    BadFrameEnd(u8),
    /// A heartbeat frame on a channel other than 0 (spec 4.2.7).
    #[error("heartbeat frame on channel {0}, heartbeats belong to channel 0")]
    HeartbeatOnChannel(u16),
    /// A heartbeat frame that carries a payload.
    #[error("heartbeat frame with a {0} byte payload")]
    HeartbeatWithPayload(u32),
    /// A method frame names a class/method pair this codec does not know.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// Class id from the frame.
        class_id: u16,
        /// Method id from the frame.
        method_id: u16,
    },
    /// A content header frame for a class that carries no content (only basic does).
    #[error("content header for class {0}, only basic (60) carries content")]
    UnknownContentClass(u16),
    /// A payload ended before all its fields were read.
    #[error("{0}: payload ends too early")]
    Truncated(&'static str),
    /// Bytes were left over after the last field of a payload.
    #[error("{what}: {left} bytes left after the last field")]
    TrailingBytes {
        /// What was being parsed.
        what: &'static str,
        /// How many bytes were left.
        left: usize,
    },
    /// A field table or array value has a type letter RabbitMQ does not define.
    #[error("unknown field value type {0:?} in a field table")]
    UnknownFieldType(char),
    /// Field tables or arrays nested deeper than [`crate::Limits::max_table_depth`].
    #[error("field tables nested deeper than {0}")]
    TableTooDeep(usize),
    /// A content header sets property flag bits this codec does not know.
    #[error("content header sets unknown property flags 0x{0:04x}")]
    UnknownPropertyFlags(u16),
    /// A content header with a weight other than 0 (spec 4.2.6.1).
    #[error("content header weight {0}, must be 0")]
    NonZeroWeight(u16),
    /// A frame arrived that the content assembly state does not allow here
    /// (a header without its method, a body without its header, a method inside a content).
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// A content header announced a body larger than the receiver accepts. Unlike the other
    /// errors this is a channel error (406, as RabbitMQ answers a message over its
    /// `max_message_size`): the channel is closed, the connection stays.
    #[error("message size {size} is larger than configured max size {max}")]
    ContentTooLarge {
        /// Size announced in the content header.
        size: u64,
        /// The largest accepted body.
        max: u64,
    },
    /// Body frames carried more bytes than the content header announced.
    #[error("content body of {received} bytes exceeds the announced {expected}")]
    BodyTooLarge {
        /// Size announced in the content header.
        expected: u64,
        /// Bytes received so far.
        received: u64,
    },
}

impl DecodeError {
    /// The AMQP reply code to close the connection with.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            DecodeError::BadProtocolHeader { .. }
            | DecodeError::UnknownFrameType(_)
            | DecodeError::FrameTooLarge { .. }
            | DecodeError::BadFrameEnd(_)
            | DecodeError::HeartbeatOnChannel(_)
            | DecodeError::HeartbeatWithPayload(_)
            | DecodeError::BodyTooLarge { .. } => ReplyCode::FRAME_ERROR,
            DecodeError::Truncated(_)
            | DecodeError::TrailingBytes { .. }
            | DecodeError::UnknownFieldType(_)
            | DecodeError::TableTooDeep(_)
            | DecodeError::UnknownPropertyFlags(_)
            | DecodeError::NonZeroWeight(_) => ReplyCode::SYNTAX_ERROR,
            DecodeError::UnknownMethod { .. } | DecodeError::UnknownContentClass(_) => {
                ReplyCode::COMMAND_INVALID
            }
            DecodeError::UnexpectedFrame(_) => ReplyCode::UNEXPECTED_FRAME,
            DecodeError::ContentTooLarge { .. } => ReplyCode::PRECONDITION_FAILED,
        }
    }
}

/// Why a value could not be encoded. Nothing is ever truncated to make it fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A short string longer than 255 bytes (spec 4.2.5.3).
    #[error("short string of {0} bytes, at most 255 fit")]
    ShortStringTooLong(usize),
    /// A long string, table or array longer than a 32-bit length can say.
    #[error("{what} of {len} bytes does not fit a 32-bit length")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A frame larger than the negotiated frame_max.
    #[error("frame of {size} bytes exceeds the negotiated frame_max {frame_max}")]
    FrameTooLarge {
        /// Whole frame size (header and end octet included).
        size: usize,
        /// The negotiated frame_max.
        frame_max: u32,
    },
    /// Field tables nested deeper than the limit.
    #[error("field tables nested deeper than {0}")]
    TableTooDeep(usize),
    /// Content (a header and body frames) was asked for after a method that carries none.
    #[error("{0} carries no content")]
    MethodCarriesNoContent(&'static str),
}
