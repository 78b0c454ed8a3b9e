//! `mini-broker ctl`: `rabbitmqctl`'s listing commands, answered from the management API.
//!
//! ```text
//! mini-broker ctl [--mgmt 127.0.0.1:15672] [--user guest] [--password guest]
//!                 [-p VHOST] [-q] [-s] [--no-table-headers] [-t SECONDS]
//!                 list_queues|list_exchanges|list_bindings|list_connections
//!                 |list_channels|list_consumers|list_vhosts [COLUMN...]
//! mini-broker ctl [...] [-p VHOST] list_permissions
//! mini-broker ctl [...] list_user_permissions USER
//! ```
//!
//! The output is `rabbitmqctl`'s, byte for byte where this broker has the same data: the
//! preamble lines (`Timeout: 60.0 seconds ...`, `Listing queues for vhost / ...`), a header
//! line of column names when there are rows, then one tab-separated row per object, with
//! booleans as `true`/`false` and argument tables in Erlang notation
//! (`[{"x-max-length",100}]`). `-q` drops the preamble, `-s` the preamble and the header,
//! `--no-table-headers` the header. It talks HTTP/1.1 to the management API of a running
//! broker, so it works across processes like `rabbitmqctl` does.
//!
//! Differences, where this broker has no such data: channel and connection `pid`s are made
//! up as `<NODE.PEER_PORT.CHANNEL.0>` (unique and stable while the connection lives).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::mgmt::http::{base64_encode, quote_segment};
use crate::mgmt::json::Json;

/// Exit status for a bad command line (as rabbitmqctl: EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// Exit status when the vhost named does not exist (EX_DATAERR, as rabbitmqctl
/// list_permissions).
pub const EXIT_DATAERR: i32 = 65;
/// Exit status when the broker cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit status when the credentials are refused (EX_NOPERM).
pub const EXIT_NOPERM: i32 = 77;

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The management API's address (`host:port`).
    pub mgmt: String,
    /// User name for basic auth.
    pub user: String,
    /// Password for basic auth.
    pub password: String,
    /// The vhost for per-vhost listings.
    pub vhost: String,
    /// Drop the informational preamble.
    pub quiet: bool,
    /// Drop the header line.
    pub no_headers: bool,
    /// Seconds to wait for the API.
    pub timeout: f64,
    /// The command (`list_queues`, ...).
    pub command: String,
    /// The columns asked for (none: the command's defaults).
    pub columns: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mgmt: "127.0.0.1:15672".to_owned(),
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            quiet: false,
            no_headers: false,
            timeout: 60.0,
            command: String::new(),
            columns: Vec::new(),
        }
    }
}

/// Parses the arguments after `ctl`. Options may come before or after the command.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("option {what} needs a value")),
            }
        };
        match name {
            "--mgmt" => options.mgmt = value(name)?,
            "--user" | "-u" => options.user = value(name)?,
            "--password" => options.password = value(name)?,
            "-p" | "--vhost" => options.vhost = value(name)?,
            "-t" | "--timeout" => {
                let text = value(name)?;
                options.timeout = text
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .ok_or_else(|| format!("invalid timeout '{text}'"))?;
            }
            "-q" | "--quiet" => options.quiet = true,
            "-s" | "--silent" => {
                options.quiet = true;
                options.no_headers = true;
            }
            "--no-table-headers" => options.no_headers = true,
            other if other.starts_with('-') && other.len() > 1 => {
                return Err(format!("unknown option '{other}'"))
            }
            _ => rest.push(arg.clone()),
        }
    }
    let mut rest = rest.into_iter();
    options.command = rest.next().ok_or("no command given")?;
    options.columns = rest
        .flat_map(|c| {
            c.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(options)
}

/// One listing command: where its objects come from and how its columns read them.
#[derive(Default)]
struct Listing {
    path: String,
    per_vhost: bool,
    preamble: Vec<String>,
    defaults: &'static [&'static str],
    columns: &'static [&'static str],
    /// How many arguments the command takes instead of columns (the permission listings
    /// take none, or the user); None: columns.
    arguments: Option<usize>,
    /// The permission listings print an empty line when there is nothing to list.
    empty_line: bool,
    /// What the permission listings say, after the preamble, when the vhost or user named
    /// does not exist (the API answers 404): the message and the exit status.
    missing: Option<(String, i32)>,
}

fn listing(options: &Options) -> Option<Listing> {
    let vhost = &options.vhost;
    let quoted = quote_segment(vhost);
    let listing = match options.command.as_str() {
        "list_queues" => Listing {
            path: format!("/api/queues/{quoted}"),
            per_vhost: true,
            preamble: vec![
                format!("Timeout: {:?} seconds ...", options.timeout),
                format!("Listing queues for vhost {vhost} ..."),
            ],
            defaults: &["name", "messages"],
            columns: &[
                "name",
                "durable",
                "auto_delete",
                "arguments",
                "policy",
                "exclusive",
                "exclusive_consumer_tag",
                "messages_ready",
                "messages_unacknowledged",
                "messages",
                "messages_ready_ram",
                "messages_unacknowledged_ram",
                "messages_ram",
                "messages_persistent",
                "message_bytes",
                "message_bytes_ready",
                "message_bytes_unacknowledged",
                "message_bytes_ram",
                "message_bytes_persistent",
                "head_message_timestamp",
                "consumers",
                "consumer_utilisation",
                "consumer_capacity",
                "state",
                "type",
            ],
            ..Listing::default()
        },
        "list_exchanges" => Listing {
            path: format!("/api/exchanges/{quoted}"),
            per_vhost: true,
            preamble: vec![format!("Listing exchanges for vhost {vhost} ...")],
            defaults: &["name", "type"],
            columns: &[
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
                "policy",
            ],
            ..Listing::default()
        },
        "list_bindings" => Listing {
            path: format!("/api/bindings/{quoted}"),
            per_vhost: true,
            // Sic: rabbitmqctl prints no space before the dots here.
            preamble: vec![format!("Listing bindings for vhost {vhost}...")],
            defaults: &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
            columns: &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
            ..Listing::default()
        },
        "list_connections" => Listing {
            path: "/api/connections".to_owned(),
            per_vhost: false,
            preamble: vec!["Listing connections ...".to_owned()],
            defaults: &["user", "peer_host", "peer_port", "state"],
            columns: &[
                "pid",
                "name",
                "port",
                "host",
                "peer_port",
                "peer_host",
                "ssl",
                "state",
                "channels",
                "protocol",
                "user",
                "vhost",
                "timeout",
                "frame_max",
                "channel_max",
                "connected_at",
                "type",
            ],
            ..Listing::default()
        },
        "list_channels" => Listing {
            path: "/api/channels".to_owned(),
            per_vhost: false,
            preamble: vec!["Listing channels ...".to_owned()],
            defaults: &["pid", "user", "consumer_count", "messages_unacknowledged"],
            columns: &[
                "pid",
                "connection",
                "name",
                "number",
                "user",
                "vhost",
                "transactional",
                "confirm",
                "consumer_count",
                "messages_unacknowledged",
                "messages_uncommitted",
                "acks_uncommitted",
                "messages_unconfirmed",
                "prefetch_count",
                "global_prefetch_count",
                "state",
            ],
            ..Listing::default()
        },
        "list_consumers" => Listing {
            path: format!("/api/consumers/{quoted}"),
            per_vhost: true,
            preamble: vec![format!("Listing consumers in vhost {vhost} ...")],
            defaults: &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
            columns: &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "activity_status",
                "arguments",
            ],
            ..Listing::default()
        },
        "list_vhosts" => Listing {
            path: "/api/vhosts".to_owned(),
            per_vhost: false,
            preamble: vec!["Listing vhosts ...".to_owned()],
            defaults: &["name"],
            columns: &["name", "tracing", "description"],
            ..Listing::default()
        },
        "list_permissions" => Listing {
            path: format!("/api/vhosts/{quoted}/permissions"),
            per_vhost: true,
            preamble: vec![format!("Listing permissions for vhost \"{vhost}\" ...")],
            defaults: &["user", "configure", "write", "read"],
            columns: &["user", "configure", "write", "read"],
            arguments: Some(0),
            empty_line: true,
            missing: Some((
                format!("Virtual host '{vhost}' does not exist\n"),
                EXIT_DATAERR,
            )),
        },
        "list_user_permissions" => {
            // The user is the command's argument, not a column.
            let user = options.columns.first()?;
            Listing {
                path: format!("/api/users/{}/permissions", quote_segment(user)),
                per_vhost: false,
                preamble: vec![format!("Listing permissions for user \"{user}\" ...")],
                defaults: &["vhost", "configure", "write", "read"],
                columns: &["vhost", "configure", "write", "read"],
                arguments: Some(1),
                empty_line: true,
                missing: Some((
                    format!("Error:\n{{:no_such_user, \"{user}\"}}\n"),
                    EXIT_UNAVAILABLE,
                )),
            }
        }
        _ => return None,
    };
    Some(listing)
}

/// Runs `ctl` with the arguments after `ctl`; prints to stdout/stderr and returns the exit
/// status.
pub fn run(args: &[String]) -> i32 {
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("Error: {err}\n\n{}", usage());
            return EXIT_USAGE;
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    let status = execute(&options, &mut out, &mut err);
    print!("{out}");
    eprint!("{err}");
    status
}

fn usage() -> &'static str {
    "Usage: mini-broker ctl [--mgmt HOST:PORT] [--user USER] [--password PASSWORD] [-p VHOST] \
     [-q] [-s] [--no-table-headers] [-t SECONDS] \
     list_queues|list_exchanges|list_bindings|list_connections|list_channels|list_consumers|list_vhosts \
     [COLUMN...] | list_permissions | list_user_permissions USER"
}

/// Runs a parsed command, writing what rabbitmqctl would print to `out` and `err`.
pub fn execute(options: &Options, out: &mut String, err: &mut String) -> i32 {
    let Some(listing) = listing(options) else {
        if options.command == "list_user_permissions" {
            return argument_error(options, "not enough arguments", err);
        }
        err.push_str(&format!(
            "Error: command '{}' is not supported\n\n{}\n",
            options.command,
            usage()
        ));
        return EXIT_USAGE;
    };
    match listing.arguments {
        Some(n) if options.columns.len() > n => {
            return argument_error(options, "too many arguments", err)
        }
        _ => {}
    }
    let columns: Vec<String> = if options.columns.is_empty() || listing.arguments.is_some() {
        listing.defaults.iter().map(|c| c.to_string()).collect()
    } else {
        options.columns.clone()
    };
    let unknown: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| !listing.columns.contains(c))
        .collect();
    if !unknown.is_empty() {
        err.push_str(&format!(
            "Error (argument validation): Info key(s) {} are not supported\nArguments given:\n\t{} {}\n\n{}\n",
            unknown.join(","),
            options.command,
            options.columns.join(" "),
            usage()
        ));
        return EXIT_USAGE;
    }
    let timeout = Duration::from_secs_f64(options.timeout);
    let (status, body) = match http_get(options, &listing.path, timeout) {
        Ok(answer) => answer,
        Err(e) => {
            err.push_str(&format!(
                "Error: unable to reach the management API at {}: {e}\n",
                options.mgmt
            ));
            return EXIT_UNAVAILABLE;
        }
    };
    let items = match status {
        200 => match Json::parse(&body) {
            Ok(Json::Array(items)) => items,
            _ => {
                err.push_str("Error: the management API answered something that is not a list\n");
                return EXIT_UNAVAILABLE;
            }
        },
        404 => match &listing.missing {
            Some((message, status)) => {
                if !options.quiet {
                    for line in &listing.preamble {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                err.push_str(message);
                return *status;
            }
            // An unknown vhost lists nothing, as rabbitmqctl does.
            None if listing.per_vhost => Vec::new(),
            None => {
                err.push_str("Error: the management API answered 404\n");
                return EXIT_UNAVAILABLE;
            }
        },
        401 => {
            err.push_str(&format!(
                "Error: the management API refused user '{}'\n",
                options.user
            ));
            return EXIT_NOPERM;
        }
        other => {
            err.push_str(&format!(
                "Error: the management API answered {other}: {}\n",
                String::from_utf8_lossy(&body)
            ));
            return EXIT_UNAVAILABLE;
        }
    };
    if !options.quiet {
        for line in &listing.preamble {
            out.push_str(line);
            out.push('\n');
        }
    }
    if items.is_empty() {
        if listing.empty_line {
            out.push('\n');
        }
        return 0;
    }
    if !options.no_headers {
        out.push_str(&columns.join("\t"));
        out.push('\n');
    }
    for item in &items {
        let row: Vec<String> = columns
            .iter()
            .map(|c| cell(&options.command, c, item))
            .collect();
        out.push_str(&row.join("\t"));
        out.push('\n');
    }
    0
}

/// rabbitmqctl's refusal of a command line with too few or too many arguments.
fn argument_error(options: &Options, problem: &str, err: &mut String) -> i32 {
    err.push_str(&format!(
        "Error (argument validation): {problem}.\nArguments given:\n\t{} {}\n\n{}\n",
        options.command,
        options.columns.join(" "),
        usage()
    ));
    EXIT_USAGE
}

/// The text of one column of one object, as rabbitmqctl prints it.
fn cell(command: &str, column: &str, item: &Json) -> String {
    let node = item
        .get("node")
        .or_else(|| item.path("channel_details.node"))
        .and_then(Json::as_str)
        .unwrap_or("mini-broker@localhost");
    match (command, column) {
        (_, "arguments") => {
            let arguments = item.get("arguments").cloned().unwrap_or_default();
            if command == "list_bindings" {
                // RabbitMQ keeps binding arguments sorted; rabbitmqctl shows them so.
                let mut entries = arguments.as_object().unwrap_or_default().to_vec();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                erlang(&Json::Object(entries))
            } else {
                erlang(&arguments)
            }
        }
        ("list_bindings", "source_name") => plain(item.get("source")),
        ("list_bindings", "source_kind") => "exchange".to_owned(),
        ("list_bindings", "destination_name") => plain(item.get("destination")),
        ("list_bindings", "destination_kind") => plain(item.get("destination_type")),
        ("list_connections", "protocol") => match item.get("protocol").and_then(Json::as_str) {
            Some("AMQP 0-9-1") => "{0,9,1}".to_owned(),
            other => other.unwrap_or("").to_owned(),
        },
        ("list_connections", "pid") => pid(node, item.get("peer_port"), 0),
        ("list_channels", "pid") => pid(
            node,
            item.path("connection_details.peer_port"),
            item.get("number").and_then(Json::as_u64).unwrap_or(0),
        ),
        ("list_channels", "connection") => pid(node, item.path("connection_details.peer_port"), 0),
        ("list_consumers", "queue_name") => plain(item.path("queue.name")),
        ("list_consumers", "channel_pid") => pid(
            node,
            item.path("channel_details.peer_port"),
            item.path("channel_details.number")
                .and_then(Json::as_u64)
                .unwrap_or(0),
        ),
        _ => plain(item.get(column)),
    }
}

/// A made-up Erlang pid: `<NODE.PEER_PORT.CHANNEL.0>`.
fn pid(node: &str, peer_port: Option<&Json>, channel: u64) -> String {
    let port = peer_port.and_then(Json::as_u64).unwrap_or(0);
    format!("<{node}.{port}.{channel}.0>")
}

/// A scalar as rabbitmqctl prints it: strings bare, null empty.
fn plain(value: Option<&Json>) -> String {
    match value {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Bool(b)) => b.to_string(),
        Some(Json::Number(n)) => n.to_string(),
        Some(other) => erlang(other),
    }
}

/// A value in the Erlang notation rabbitmqctl uses for tables: `[{"key",value}]`, strings
/// quoted, arrays `[a,b]`.
pub fn erlang(value: &Json) -> String {
    match value {
        Json::Null => "undefined".to_owned(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Json::Array(items) => format!(
            "[{}]",
            items.iter().map(erlang).collect::<Vec<_>>().join(",")
        ),
        Json::Object(entries) => format!(
            "[{}]",
            entries
                .iter()
                .map(|(k, v)| format!("{{{},{}}}", erlang(&Json::from(k.as_str())), erlang(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// `GET path` on the management API with basic auth; the status and the body.
fn http_get(options: &Options, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let host = options
        .mgmt
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let mut socket = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let credentials = base64_encode(format!("{}:{}", options.user, options.password).as_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {credentials}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    socket
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_response(&raw)
}

/// Splits a whole HTTP response into its status and body (Content-Length or to the end).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated HTTP response".to_owned()),
        Err(e) => return Err(format!("malformed HTTP response: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let body = raw.get(head_len..).unwrap_or_default();
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = match length {
        Some(n) => body.get(..n).ok_or("truncated HTTP body")?,
        None => body,
    };
    Ok((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_may_come_before_and_after_the_command() {
        let options = parse_args(&args(
            "--mgmt 127.0.0.1:1 list_queues -p vh name,messages -q",
        ))
        .unwrap();
        assert_eq!(options.mgmt, "127.0.0.1:1");
        assert_eq!(options.vhost, "vh");
        assert_eq!(options.command, "list_queues");
        assert_eq!(options.columns, ["name", "messages"]);
        assert!(options.quiet && !options.no_headers);
        assert!(parse_args(&args("--bogus list_queues")).is_err());
        assert!(parse_args(&args("-q")).is_err());
    }

    #[test]
    fn arguments_print_in_erlang_notation() {
        let json = Json::parse(
            br#"{"x-queue-type":"classic","x-message-ttl":60000,"b":true,"l":[1,"a"],"t":{"k":"v"}}"#,
        )
        .unwrap();
        // As rabbitmqctl list_queues arguments prints these (RabbitMQ 3.10).
        assert_eq!(
            erlang(&json),
            r#"[{"x-queue-type","classic"},{"x-message-ttl",60000},{"b",true},{"l",[1,"a"]},{"t",[{"k","v"}]}]"#
        );
        assert_eq!(erlang(&Json::object()), "[]");
    }

    #[test]
    fn unknown_column_is_refused_before_any_request() {
        let options = parse_args(&args("--mgmt 127.0.0.1:1 list_queues name bogus")).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        assert_eq!(execute(&options, &mut out, &mut err), EXIT_USAGE);
        assert!(out.is_empty());
        assert!(err.starts_with(
            "Error (argument validation): Info key(s) bogus are not supported\nArguments given:\n\tlist_queues name bogus\n"
        ));
    }

    #[test]
    fn timeout_preamble_prints_one_decimal() {
        let options = parse_args(&args("list_queues -t 10")).unwrap();
        let listing = listing(&options).unwrap();
        assert_eq!(listing.preamble[0], "Timeout: 10.0 seconds ...");
    }

    #[test]
    fn response_body_is_cut_at_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]trailing";
        assert_eq!(parse_response(raw).unwrap(), (200, b"[]".to_vec()));
    }
}
