//! The SASL responses of connection.start-ok (spec 1.4.2.2) for the two mechanisms RabbitMQ
//! offers by default, built and read in one place for the client and the broker.
//!
//! - `PLAIN` (RFC 4616): `authzid \0 username \0 password`, authzid empty.
//! - `AMQPLAIN` (RabbitMQ): a field table with `LOGIN` and `PASSWORD` long strings, encoded
//!   *without* the table's four-octet length prefix.

use bytes::{Bytes, BytesMut};

use crate::types::{FieldTable, FieldValue, LongString};
use crate::wire::{put_table, Reader};

/// The PLAIN response for `username` and `password`.
pub fn plain_response(username: &str, password: &str) -> LongString {
    let mut response = Vec::with_capacity(
        username
            .len()
            .saturating_add(password.len())
            .saturating_add(2),
    );
    response.push(0);
    response.extend_from_slice(username.as_bytes());
    response.push(0);
    response.extend_from_slice(password.as_bytes());
    LongString::new(response)
}

/// Username and password from a PLAIN response, if it is well formed UTF-8.
pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let username = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((username, password))
}

/// The AMQPLAIN response for `username` and `password`.
pub fn amqplain_response(username: &str, password: &str) -> LongString {
    let mut table = FieldTable::new();
    table.insert("LOGIN", username);
    table.insert("PASSWORD", password);
    let mut buf = BytesMut::new();
    // A table of two short entries always encodes; its first four octets are the length.
    if put_table(&mut buf, &table).is_err() {
        return LongString::default();
    }
    let entries = buf.split_off(4.min(buf.len()));
    LongString::new(entries.freeze())
}

/// Username and password from an AMQPLAIN response.
pub fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = BytesMut::with_capacity(response.len().saturating_add(4));
    framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
    framed.extend_from_slice(response);
    let framed: Bytes = framed.freeze();
    let mut reader = Reader::new(framed, "AMQPLAIN response", 4);
    let table = reader.table().ok()?;
    reader.finish().ok()?;
    let text = |key| match table.get(key) {
        Some(FieldValue::LongString(s)) => s.as_str().map(str::to_owned),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trips_and_has_rfc_4616_layout() {
        let response = plain_response("guest", "guest");
        assert_eq!(response.as_bytes(), b"\0guest\0guest");
        assert_eq!(
            parse_plain(response.as_bytes()),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
    }

    #[test]
    fn amqplain_is_a_table_without_its_length() {
        let response = amqplain_response("bob", "pw");
        assert_eq!(
            response.as_bytes(),
            b"\x05LOGINS\x00\x00\x00\x03bob\x08PASSWORDS\x00\x00\x00\x02pw"
        );
        assert_eq!(
            parse_amqplain(response.as_bytes()),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(parse_amqplain(b"\x05LOGIN"), None);
    }
}
