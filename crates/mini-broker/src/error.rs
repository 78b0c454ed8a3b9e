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

/// Erlang's `~w` of a binary, as RabbitMQ prints octets in reply texts: `<<0,20,0,10>>`.
pub fn erlang_binary_w(octets: &[u8]) -> String {
    let mut out = String::with_capacity(4 + octets.len() * 4);
    out.push_str("<<");
    for (i, octet) in octets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&octet.to_string());
    }
    out.push_str(">>");
    out
}

/// Erlang's `~p` of a binary: `<<"text">>` when every octet is printable Latin-1 (Erlang's
/// default printable range), else the octets as [`erlang_binary_w`] shows them.
pub fn erlang_binary_p(octets: &[u8]) -> String {
    let printable = |b: u8| matches!(b, 32..=126 | 160..=255 | b'\n' | b'\r' | b'\t' | 0x0b | 0x08 | 0x0c | 0x1b);
    if octets.is_empty() || !octets.iter().all(|&b| printable(b)) {
        return erlang_binary_w(octets);
    }
    let mut out = String::with_capacity(6 + octets.len());
    out.push_str("<<\"");
    for &octet in octets {
        match octet {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x0b => out.push_str("\\v"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0x1b => out.push_str("\\e"),
            other => out.push(char::from(other)),
        }
    }
    out.push_str("\">>");
    out
}

/// RabbitMQ's name of a field value's type, as its error texts print it (`signedint`).
pub fn field_type_name(value: &amqp_codec::FieldValue) -> &'static str {
    use amqp_codec::FieldValue;
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        // RabbitMQ has no unsigned 64-bit type; it reads `L` as it reads `l`.
        FieldValue::I64(_) | FieldValue::U64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongString(_) => "longstr",
        FieldValue::ByteArray(_) => "binary",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
    }
}

/// A field value as Erlang prints it inside RabbitMQ's texts: strings as their text (`~s`),
/// everything else as the Erlang term (`~p`): `1000`, `true`, `undefined`.
pub fn field_value_text(value: &amqp_codec::FieldValue) -> String {
    use amqp_codec::FieldValue;
    match value {
        FieldValue::Bool(v) => v.to_string(),
        FieldValue::I8(v) => v.to_string(),
        FieldValue::U8(v) => v.to_string(),
        FieldValue::I16(v) => v.to_string(),
        FieldValue::U16(v) => v.to_string(),
        FieldValue::I32(v) => v.to_string(),
        FieldValue::U32(v) => v.to_string(),
        FieldValue::I64(v) => v.to_string(),
        FieldValue::U64(v) => v.to_string(),
        FieldValue::F32(v) => format!("{v:e}"),
        FieldValue::F64(v) => format!("{v:e}"),
        FieldValue::Decimal(d) => format!("{{{},{}}}", d.scale, d.value),
        FieldValue::LongString(s) => s.to_str_lossy().into_owned(),
        FieldValue::ByteArray(b) => String::from_utf8_lossy(b).into_owned(),
        FieldValue::Timestamp(t) => t.to_string(),
        FieldValue::Array(a) => {
            let items: Vec<String> = a.iter().map(erlang_term).collect();
            format!("[{}]", items.join(","))
        }
        FieldValue::Table(t) => erlang_table(t),
        FieldValue::Void => "undefined".to_owned(),
    }
}

/// A field value as an Erlang term (`~p` of RabbitMQ's decoded value): binaries as
/// `<<"text">>`, tables as lists of `{Key,Type,Value}`.
pub fn erlang_term(value: &amqp_codec::FieldValue) -> String {
    use amqp_codec::FieldValue;
    match value {
        FieldValue::LongString(s) => erlang_binary_p(s.as_bytes()),
        FieldValue::ByteArray(b) => erlang_binary_p(b),
        FieldValue::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|v| format!("{{{},{}}}", field_type_name(v), erlang_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => field_value_text(other),
    }
}

fn erlang_table(table: &amqp_codec::FieldTable) -> String {
    let items: Vec<String> = table
        .iter()
        .map(|(k, v)| {
            format!(
                "{{{},{},{}}}",
                erlang_binary_p(k.as_bytes()),
                field_type_name(v),
                erlang_term(v)
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_binary_prints_octets_or_printable_text() {
        assert_eq!(erlang_binary_w(&[0, 20, 0, 10]), "<<0,20,0,10>>");
        assert_eq!(erlang_binary_w(&[]), "<<>>");
        assert_eq!(erlang_binary_p(&[0, 20, 0, 10]), "<<0,20,0,10>>");
        assert_eq!(erlang_binary_p(b"some"), "<<\"some\">>");
        assert_eq!(erlang_binary_p(b"a\"b"), "<<\"a\\\"b\">>");
        assert_eq!(erlang_binary_p(b""), "<<>>");
    }
}
