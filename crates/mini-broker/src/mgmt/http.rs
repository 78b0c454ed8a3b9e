//! A small HTTP/1.1 server: enough for `rabbitmqadmin`, curl, browsers and Prometheus.
//!
//! Requests are parsed with `httparse`; bodies need a `Content-Length` (chunked request bodies
//! are refused with 411, which no management client sends). Connections are kept alive
//! unless the client says `Connection: close` or speaks HTTP/1.0 without keep-alive, and are
//! closed after [`IDLE_TIMEOUT`] without a request. `Expect: 100-continue` (curl sends it for
//! bodies over 1 KiB) is answered before the body is read.
//!
//! Also here: percent-decoding of paths and queries, percent-encoding as RabbitMQ writes
//! binding property keys, and base64 for payloads and basic auth.

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::json::Json;

/// How long a connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body: RabbitMQ's default `management.http.max_body_size` (20 MiB).
pub const MAX_BODY: usize = 20 * 1024 * 1024;
const MAX_HEADERS: usize = 64;
/// How long, and for how many octets, a connection the server ends keeps reading what the
/// client still sends (see [`close_lingering`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX: usize = 1024 * 1024;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path's segments after the leading `/`, percent-decoded (`%2F` becomes `/`).
    pub segments: Vec<String>,
    /// Query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers (content-length is added when written).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &Json) -> Response {
        Response {
            status,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("cache-control", "no-cache".to_owned()),
            ],
            body: body.to_text().into_bytes(),
        }
    }

    /// A response without a body (201, 204, a bare 401).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text response with a content type.
    pub fn text(status: u16, content_type: &str, body: String) -> Response {
        Response {
            status,
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into_bytes(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Serves one connection: reads requests, answers each with `handle`, until the client
/// closes, asks to close, sends garbage, or idles.
pub async fn serve_connection<F, Fut>(mut socket: TcpStream, handle: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let head = match read_head(&mut socket, &mut buf).await? {
            Head::Closed => return Ok(()),
            Head::Invalid(response) => {
                write_response(&mut socket, &response, false).await?;
                return close_lingering(socket).await;
            }
            Head::Parsed(head) => head,
        };
        if head.chunked {
            write_response(&mut socket, &Response::empty(411), false).await?;
            return close_lingering(socket).await;
        }
        if head.content_length > MAX_BODY {
            write_response(&mut socket, &Response::empty(413), false).await?;
            return close_lingering(socket).await;
        }
        if head.expect_continue && head.content_length > 0 {
            socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        while buf.len() < head.content_length {
            let read = tokio::time::timeout(IDLE_TIMEOUT, socket.read_buf(&mut buf)).await;
            match read {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err),
            }
        }
        let body = buf.split_to(head.content_length).to_vec();
        let mut request = head.request;
        request.body = body;
        let is_head = request.method == "HEAD";
        let response = handle(request).await;
        if is_head {
            let mut headers_only = response.clone();
            let len = headers_only.body.len();
            headers_only.body.clear();
            headers_only
                .headers
                .push(("content-length", len.to_string()));
            write_raw(&mut socket, &headers_only, head.keep_alive, false).await?;
        } else {
            write_response(&mut socket, &response, head.keep_alive).await?;
        }
        if !head.keep_alive {
            return close_lingering(socket).await;
        }
    }
}

/// Ends a connection after the last answer: the write side is closed (the client reads the
/// answer, then end of stream), and what the client still sends (a body not read, the rest
/// of a request refused by its head, a pipelined request) is read and dropped, for at most
/// [`LINGER`] and [`LINGER_MAX`] octets. Closing a socket with unread octets makes the kernel
/// reset the connection, and the client may then lose the answer before it read it (a 401
/// for a publish with a wrong password would show as "connection reset").
async fn close_lingering(mut socket: TcpStream) -> std::io::Result<()> {
    socket.shutdown().await?;
    let mut sink = [0u8; 8 * 1024];
    let mut drained = 0;
    let deadline = tokio::time::Instant::now() + LINGER;
    while drained < LINGER_MAX {
        match tokio::time::timeout_at(deadline, socket.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => drained += read,
        }
    }
    Ok(())
}

struct ParsedHead {
    request: Request,
    content_length: usize,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

enum Head {
    Closed,
    Invalid(Response),
    Parsed(ParsedHead),
}

async fn read_head(socket: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Head> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Ok(Some((consumed, head))) => {
                    buf.advance(consumed);
                    return Ok(Head::Parsed(head));
                }
                Ok(None) => {}
                Err(response) => return Ok(Head::Invalid(response)),
            }
            if buf.len() > MAX_HEAD {
                return Ok(Head::Invalid(Response::empty(431)));
            }
        }
        match tokio::time::timeout(IDLE_TIMEOUT, socket.read_buf(buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(Head::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(err),
        }
    }
}

/// Parses a request head: `Ok(None)` if more bytes are needed, `Err` with the response
/// for a malformed one.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, ParsedHead)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let consumed = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Response::empty(431)),
        Err(_) => return Err(Response::empty(400)),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Response::empty(400));
    };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let content_length = match header("content-length") {
        Some(value) => value.parse::<usize>().map_err(|_| Response::empty(400))?,
        None => 0,
    };
    let chunked = header("transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity"));
    let connection = header("connection").map(str::to_ascii_lowercase);
    let keep_alive = match (version, connection.as_deref()) {
        (_, Some(c)) if c.contains("close") => false,
        (0, Some(c)) => c.contains("keep-alive"),
        (0, None) => false,
        _ => true,
    };
    let expect_continue = header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    };
    let segments = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect();
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(pair, true), String::new()),
        })
        .collect();
    let request = Request {
        method: method.to_owned(),
        segments,
        query,
        headers,
        body: Vec::new(),
    };
    Ok(Some((
        consumed,
        ParsedHead {
            request,
            content_length,
            chunked,
            keep_alive,
            expect_continue,
        },
    )))
}

async fn write_response(
    socket: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    write_raw(socket, response, keep_alive, true).await
}

async fn write_raw(
    socket: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    add_length: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nserver: mini-broker\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if add_length {
        out.push_str(&format!("content-length: {}\r\n", response.body.len()));
    }
    if !keep_alive {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response.body);
    socket.write_all(&bytes).await?;
    socket.flush().await
}

// ---- encodings ----------------------------------------------------------------------------

/// Decodes `%XX` escapes (and `+` as a space in query strings); invalid escapes stay as they
/// are, invalid UTF-8 is replaced.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' && plus_is_space { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes as RabbitMQ writes binding property keys: letters, digits, `.`, `-` and
/// `_` stay, a space becomes `+`, everything else `%XX` (upper-case hex).
pub fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes a path segment (unreserved characters stay).
pub fn quote_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, ASCII whitespace ignored); None if invalid.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        let value = BASE64.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xFF) as u8);
        }
    }
    if padding > 2 || bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..10 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let text = base64_encode(&data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64_decode(&text), Some(data));
        }
        assert_eq!(base64_encode(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64_decode("/w=="), Some(vec![0xFF]));
        assert_eq!(base64_decode("a*=="), None);
    }

    #[test]
    fn percent_decode_handles_slashes_plus_and_bad_escapes() {
        assert_eq!(percent_decode("%2F", false), "/");
        assert_eq!(percent_decode("a+b%2", false), "a+b%2");
        assert_eq!(percent_decode("a+b%zz", true), "a b%zz");
    }

    #[test]
    fn quote_plus_matches_rabbitmq_properties_keys() {
        // As RabbitMQ 3.10 answers for this routing key.
        assert_eq!(
            quote_plus("a b/c*d:e~f%g+h.i-j_k"),
            "a+b%2Fc%2Ad%3Ae%7Ef%25g%2Bh.i-j_k"
        );
    }

    #[test]
    fn head_with_query_and_encoded_vhost_is_parsed() {
        let raw = b"GET /api/queues/%2F/q%201?columns=name,messages&sort=name HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\n\r\n";
        let (consumed, head) = parse_head(raw).unwrap().unwrap();
        assert_eq!(consumed, raw.len());
        assert_eq!(head.request.segments, ["api", "queues", "/", "q 1"]);
        assert_eq!(head.request.query("columns"), Some("name,messages"));
        assert_eq!(head.request.header("authorization"), Some("Basic abc"));
        assert!(head.keep_alive);
    }

    #[test]
    fn http_1_0_without_keep_alive_closes() {
        let raw = b"GET /api/overview HTTP/1.0\r\n\r\n";
        let (_, head) = parse_head(raw).unwrap().unwrap();
        assert!(!head.keep_alive);
        assert!(parse_head(b"GET /api/overview HTTP/1.1\r\nHost")
            .unwrap()
            .is_none());
    }
}
