//! AMQP URIs, as RabbitMQ's URI spec defines them:
//! `amqp://user:pass@host:port/vhost?heartbeat=30&frame_max=131072&channel_max=0&connection_timeout=10000`.
//!
//! Every part is optional: `amqp://` alone means guest/guest on localhost:5672, vhost `/`.
//! User, password and vhost are percent-decoded (`%2f` is the vhost `/`; an empty path is also
//! `/`, but `amqp://host/` names the vhost `""`). IPv6 hosts are written in brackets:
//! `amqp://[::1]:5672`.

use std::time::Duration;

use crate::error::Error;

/// A parsed `amqp://` URI: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Host name or IP address (without the IPv6 brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name for SASL.
    pub username: String,
    /// Password for SASL.
    pub password: String,
    /// Virtual host to open.
    pub vhost: String,
    /// Requested heartbeat interval in seconds; None: accept the server's; Some(0): off.
    pub heartbeat: Option<u16>,
    /// Requested frame_max; 0: accept the server's.
    pub frame_max: u32,
    /// Requested channel_max; 0: accept the server's.
    pub channel_max: u16,
    /// How long the TCP connect plus the AMQP handshake may take.
    pub connection_timeout: Option<Duration>,
    /// SASL mechanism: `PLAIN` (default) or `AMQPLAIN` (query parameter `auth_mechanism`).
    pub auth_mechanism: AuthMechanism,
}

/// The SASL mechanisms this client speaks (spec 1.4.2.2, RabbitMQ's access control guide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMechanism {
    /// RFC 4616 PLAIN: `\0user\0password`.
    #[default]
    Plain,
    /// RabbitMQ's AMQPLAIN: a field table of LOGIN and PASSWORD, without its length prefix.
    AmqPlain,
}

impl AuthMechanism {
    /// The mechanism's name as connection.start-ok carries it.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::AmqPlain => "AMQPLAIN",
        }
    }
}

impl Default for AmqpUri {
    fn default() -> Self {
        AmqpUri {
            host: "localhost".into(),
            port: 5672,
            username: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            heartbeat: None,
            frame_max: 0,
            channel_max: 0,
            connection_timeout: None,
            auth_mechanism: AuthMechanism::Plain,
        }
    }
}

impl std::str::FromStr for AmqpUri {
    type Err = Error;

    fn from_str(uri: &str) -> Result<Self, Error> {
        AmqpUri::parse(uri)
    }
}

impl AmqpUri {
    /// Parses an `amqp://` URI. `amqps://` is refused: this client speaks no TLS yet.
    pub fn parse(uri: &str) -> Result<AmqpUri, Error> {
        let bad = |why: &str| Error::InvalidUri(format!("{uri}: {why}"));
        let rest = match uri.split_once("://") {
            Some(("amqp", rest)) => rest,
            Some(("amqps", _)) => return Err(bad("amqps (TLS) is not supported by this client")),
            Some((scheme, _)) => {
                return Err(bad(&format!("unknown scheme {scheme:?}, expected amqp")))
            }
            None => return Err(bad("expected amqp://")),
        };
        let mut parsed = AmqpUri::default();
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (rest, None),
        };
        let host_port = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (userinfo, None),
                };
                parsed.username =
                    percent_decode(user).ok_or_else(|| bad("bad percent-encoding in user"))?;
                if let Some(pass) = pass {
                    parsed.password = percent_decode(pass)
                        .ok_or_else(|| bad("bad percent-encoding in password"))?;
                }
                host_port
            }
            None => authority,
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("junk after IPv6 host")),
            };
            (host, port)
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        if !host.is_empty() {
            parsed.host =
                percent_decode(host).ok_or_else(|| bad("bad percent-encoding in host"))?;
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            parsed.port = port
                .parse()
                .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        }
        if let Some(path) = path {
            if path.contains('/') {
                return Err(bad("a vhost with a / must be percent-encoded as %2f"));
            }
            parsed.vhost =
                percent_decode(path).ok_or_else(|| bad("bad percent-encoding in vhost"))?;
        }
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| bad(&format!("{what} must be a number, got {value:?}"));
            match key {
                "heartbeat" => {
                    parsed.heartbeat = Some(value.parse().map_err(|_| number("heartbeat"))?)
                }
                "frame_max" => parsed.frame_max = value.parse().map_err(|_| number("frame_max"))?,
                "channel_max" => {
                    parsed.channel_max = value.parse().map_err(|_| number("channel_max"))?
                }
                "connection_timeout" => {
                    let millis: u64 = value.parse().map_err(|_| number("connection_timeout"))?;
                    parsed.connection_timeout = Some(Duration::from_millis(millis));
                }
                "auth_mechanism" => {
                    parsed.auth_mechanism = match value.to_ascii_uppercase().as_str() {
                        "PLAIN" => AuthMechanism::Plain,
                        "AMQPLAIN" => AuthMechanism::AmqPlain,
                        other => return Err(bad(&format!("unsupported auth_mechanism {other}"))),
                    }
                }
                // RabbitMQ's URI query parameters this client has no use for are ignored,
                // as other clients ignore them.
                _ => {}
            }
        }
        if parsed.frame_max != 0
            && parsed.frame_max < amqp_codec::constants::RABBITMQ_FRAME_MIN_SIZE
        {
            return Err(bad(
                "frame_max must be 0 or at least 8192 (RabbitMQ 4.1 refuses less)",
            ));
        }
        Ok(parsed)
    }

    /// The URI of the `AMQP_URL` environment variable, or the default (guest on localhost).
    pub fn from_env() -> Result<AmqpUri, Error> {
        match std::env::var("AMQP_URL") {
            Ok(url) if !url.is_empty() => AmqpUri::parse(&url),
            _ => Ok(AmqpUri::default()),
        }
    }

    /// `host:port` for a socket connect, bracketing IPv6 literals.
    pub fn socket_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Decodes `%XX` escapes; None if an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bare_scheme_gives_rabbitmq_defaults() {
        let uri = AmqpUri::parse("amqp://").unwrap();
        assert_eq!(uri, AmqpUri::default());
        assert_eq!(uri.socket_address(), "localhost:5672");
    }

    #[test]
    fn parse_full_uri_decodes_every_part() {
        let uri = AmqpUri::parse(
            "amqp://us%40er:p%3Ass@rabbit.example:5673/%2fprod?heartbeat=30&frame_max=131072&channel_max=100&connection_timeout=2500",
        )
        .unwrap();
        assert_eq!(uri.username, "us@er");
        assert_eq!(uri.password, "p:ss");
        assert_eq!(uri.host, "rabbit.example");
        assert_eq!(uri.port, 5673);
        assert_eq!(uri.vhost, "/prod");
        assert_eq!(uri.heartbeat, Some(30));
        assert_eq!(uri.frame_max, 131_072);
        assert_eq!(uri.channel_max, 100);
        assert_eq!(uri.connection_timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn parse_percent_2f_vhost_is_slash_and_empty_path_is_empty_vhost() {
        assert_eq!(AmqpUri::parse("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://h/").unwrap().vhost, "");
        assert_eq!(AmqpUri::parse("amqp://h").unwrap().vhost, "/");
    }

    #[test]
    fn parse_ipv6_literal_with_and_without_port() {
        let uri = AmqpUri::parse("amqp://guest:guest@[::1]:5673/%2f").unwrap();
        assert_eq!(uri.host, "::1");
        assert_eq!(uri.port, 5673);
        assert_eq!(uri.socket_address(), "[::1]:5673");
        assert_eq!(AmqpUri::parse("amqp://[fe80::1]").unwrap().port, 5672);
    }

    #[test]
    fn parse_refuses_bad_input_with_a_reason() {
        for bad in [
            "http://host",
            "amqps://host",
            "amqp://host:99999",
            "amqp://host/a/b",
            "amqp://host?heartbeat=x",
            "amqp://%zz@host",
            "amqp://[::1",
            "amqp://host?frame_max=4096",
        ] {
            let err = AmqpUri::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUri(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn parse_heartbeat_zero_means_off() {
        assert_eq!(
            AmqpUri::parse("amqp://h?heartbeat=0").unwrap().heartbeat,
            Some(0)
        );
        assert_eq!(
            AmqpUri::parse("amqp://h?auth_mechanism=amqplain")
                .unwrap()
                .auth_mechanism,
            AuthMechanism::AmqPlain
        );
    }
}
