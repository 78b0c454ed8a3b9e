//! Protocol errors as the broker answers them: a reply code and RabbitMQ's reply text.
//!
//! Soft errors (403, 404, 405, 406) close the channel; hard errors (5xx, 320) close the
//! connection, exactly as the reply code's class in the spec says. Texts follow RabbitMQ's,
//! word for word, because clients and their users match on them.

use amqp_codec::ReplyCode;

/// A refusal: what goes into channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// The reply text, starting with the code's name as RabbitMQ writes it.
    pub text: String,
}

impl AmqpError {
    /// An error with `code`; the text is prefixed with the code's name (`NOT_FOUND - ...`).
    pub fn new(code: ReplyCode, detail: impl std::fmt::Display) -> AmqpError {
        let name = code.name().unwrap_or("ERROR");
        AmqpError {
            code,
            text: format!("{name} - {detail}"),
        }
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::ACCESS_REFUSED, detail)
    }

    /// 404 NOT_FOUND.
    pub fn not_found(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NOT_FOUND, detail)
    }

    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::RESOURCE_LOCKED, detail)
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::PRECONDITION_FAILED, detail)
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NOT_IMPLEMENTED, detail)
    }

    /// 530 NOT_ALLOWED.
    pub fn not_allowed(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NOT_ALLOWED, detail)
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::COMMAND_INVALID, detail)
    }

    /// 504 CHANNEL_ERROR.
    pub fn channel_error(detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::CHANNEL_ERROR, detail)
    }

    /// Whether it closes the whole connection rather than one channel.
    pub fn is_connection_error(&self) -> bool {
        self.code.is_hard_error()
    }
}

impl std::fmt::Display for AmqpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code.0, self.text)
    }
}

impl std::error::Error for AmqpError {}

/// RabbitMQ's name of a queue in error texts: `queue 'q' in vhost '/'`.
pub fn queue_resource(queue: &str, vhost: &str) -> String {
    format!("queue '{queue}' in vhost '{vhost}'")
}

/// RabbitMQ's name of an exchange in error texts: `exchange 'x' in vhost '/'`.
pub fn exchange_resource(exchange: &str, vhost: &str) -> String {
    format!("exchange '{exchange}' in vhost '{vhost}'")
}
