//! A tokio-util [`Decoder`]/[`Encoder`] over the pure codec, for `Framed` sockets.
//!
//! It only forwards to [`crate::decode`] and [`Frame::encode`]; the limits can be raised or
//! lowered once tune negotiation settles frame_max.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{decode, Frame, Limits};

/// A `Framed` codec for AMQP 0-9-1 frames.
#[derive(Debug, Clone, Default)]
pub struct AmqpCodec {
    /// What decoding accepts; `limits.frame_max` also bounds what encoding writes.
    pub limits: Limits,
}

/// Errors of the framed codec: the codec's own, or the socket's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Bytes that are not AMQP.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame that cannot be sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for AmqpCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(decode(src, &self.limits)?)
    }
}

impl Encoder<Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(frame.encode(dst, self.limits.frame_max)?)
    }
}

impl Encoder<&Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(frame.encode(dst, self.limits.frame_max)?)
    }
}
