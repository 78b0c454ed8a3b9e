//! The client's errors. Each says whose doing it was: the server closed the connection or a
//! channel (with the reply code and text it gave), the network failed, the server went
//! silent, or this side closed first.

use std::sync::Arc;

use amqp_codec::{DecodeError, EncodeError, ReplyCode, ShortString};

/// A close sent by the server: connection.close or channel.close (spec 1.4.2.9, 1.5.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerClose {
    /// The reply code, e.g. 406 PRECONDITION_FAILED.
    pub code: ReplyCode,
    /// The reply text, e.g. `PRECONDITION_FAILED - inequivalent arg 'durable' ...`.
    pub text: ShortString,
    /// The class of the method that caused it (0 if none).
    pub class_id: u16,
    /// The method that caused it (0 if none).
    pub method_id: u16,
}

impl std::fmt::Display for ServerClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.0, self.text)?;
        if let Some(method) = amqp_codec::spec::MethodInfo::lookup(self.class_id, self.method_id) {
            write!(f, " (after {})", method.name)?;
        }
        Ok(())
    }
}

/// Everything that can go wrong. Cloneable, so one failure can end many pending calls.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server closed the connection (connection.close).
    #[error("connection closed by the server: {0}")]
    ConnectionClosed(ServerClose),
    /// The server closed the channel (channel.close); the connection is still usable.
    #[error("channel closed by the server: {0}")]
    ChannelClosed(ServerClose),
    /// This side closed the connection; the call came after (or raced with) the close.
    #[error("connection closed by this client")]
    ConnectionClosedLocally,
    /// This side closed the channel.
    #[error("channel closed by this client")]
    ChannelClosedLocally,
    /// The socket failed or the server went away without a close.
    #[error("network error: {0}")]
    Io(Arc<std::io::Error>),
    /// Nothing came from the server for two heartbeat intervals.
    #[error("no heartbeat from the server for {0} seconds: connection presumed dead")]
    HeartbeatTimeout(u64),
    /// The server sent bytes that are not valid AMQP; the connection was closed with the
    /// error's reply code.
    #[error("the server sent a malformed frame ({code}): {0}", code = .0.reply_code())]
    Protocol(DecodeError),
    /// The server sent a well-formed frame that makes no sense here.
    #[error("protocol violation by the server: {0}")]
    UnexpectedFrame(String),
    /// Login refused (403 ACCESS_REFUSED during the handshake, or the socket closed there).
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The URI could not be parsed.
    #[error("invalid AMQP URI {0}")]
    InvalidUri(String),
    /// Something this client was asked to send cannot be encoded (a 256-byte queue name).
    #[error("cannot encode: {0}")]
    Encode(EncodeError),
    /// All channel numbers up to channel_max are in use.
    #[error("no free channel: all {0} channels are open")]
    NoFreeChannel(u16),
    /// An operation did not complete in the time allowed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server cancelled the consumer (the queue was deleted, or its node went down):
    /// RabbitMQ's consumer cancel notification.
    #[error("consumer {0} was cancelled by the server (queue deleted?)")]
    ConsumerCancelled(String),
    /// The server does not support what was asked (e.g. a capability it did not announce).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(Arc::new(err))
    }
}

impl From<EncodeError> for Error {
    fn from(err: EncodeError) -> Self {
        Error::Encode(err)
    }
}

impl Error {
    /// The reply code, when the server closed something.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Error::ConnectionClosed(close) | Error::ChannelClosed(close) => Some(close.code),
            _ => None,
        }
    }

    /// Whether the connection is gone (as opposed to just one channel).
    pub fn is_connection_error(&self) -> bool {
        !matches!(
            self,
            Error::ChannelClosed(_) | Error::ChannelClosedLocally | Error::Encode(_)
        )
    }
}
