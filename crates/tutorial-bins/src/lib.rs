//! # tutorial-bins: RabbitMQ's tutorials as Rust programs
//!
//! The programs of RabbitMQ's seven tutorials, written on [`amqp_client`], printing what the
//! official Python (and, for tutorial 7, Java) programs print. Run them against RabbitMQ or
//! against this project's `mini-broker`; every program takes the broker from `--uri` or
//! `AMQP_URL` (default [`DEFAULT_URL`]).
//!
//! | tutorial            | programs                                   | what it shows                 |
//! |---------------------|--------------------------------------------|-------------------------------|
//! | 1 "Hello World!"    | `send`, `receive`                          | one queue, one consumer       |
//! | 2 Work queues       | `new_task`, `worker`                       | round-robin, acks, prefetch   |
//! | 3 Publish/Subscribe | `emit_log`, `receive_logs`                 | fanout exchange               |
//! | 4 Routing           | `emit_log_direct`, `receive_logs_direct`   | direct exchange               |
//! | 5 Topics            | `emit_log_topic`, `receive_logs_topic`     | topic exchange                |
//! | 6 RPC               | `rpc_server`, `rpc_client`                 | reply_to, correlation_id      |
//! | 7 Publisher confirms| `publisher_confirms`                       | three ways to wait for acks   |
//!
//! `demo work-queues` runs tutorial 2 in one process, broker included.
//!
//! ```text
//!   src/bin/*.rs   the programs: what the tutorial shows, nothing else
//!        │
//!   this library   --uri / AMQP_URL, --trace, connect with a timeout, one-line errors and
//!        │         exit codes, Ctrl+C, consuming until interrupted, line-flushed output
//!   amqp-client
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use amqp_client::{AmqpUri, Connection, ConnectionConfig, Consumer, Delivery};

/// The broker the programs use unless told otherwise: RabbitMQ's default, on this machine.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672/%2f";

/// How long connecting (TCP and the AMQP handshake) may take, unless the URI's
/// `connection_timeout` says otherwise: a broker that is not there, or does not speak AMQP,
/// gives an error in seconds instead of a hang.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing the connections may take when the program ends or is interrupted.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker options every program takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The broker's amqp:// URI.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_URL)]
    pub uri: String,
    /// Print every AMQP frame sent and received on stderr, one line each, as AMQP_TRACE=1
    /// does (the lines show the password of the login).
    #[arg(long)]
    pub trace: bool,
}

/// Why a program failed: printed as one line, `error: ...`, on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    /// A failure saying `message`.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<amqp_client::Error> for Failure {
    fn from(err: amqp_client::Error) -> Failure {
        Failure(describe(&err))
    }
}

/// What the programs return.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Prints one line on stdout and flushes it, as `println!` does, but never panics (a closed
/// pipe is not worth a panic): the tests read the programs' output through pipes.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(::std::format_args!($($arg)*))
    };
}

/// The function behind [`say!`].
pub fn say_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs a program: parses its arguments, runs it on a tokio runtime, and turns the outcome
/// into an exit code. An error is printed as one line on stderr (`error: ...`) with exit
/// code 1. Ctrl+C (or SIGTERM) prints `Interrupted`, as the Python tutorials do, and exits
/// with 0. Either way the connections opened with [`connect`] are closed politely first,
/// so the broker requeues what was not acked at once and logs no abrupt disconnect.
pub fn run<A, P, F>(program: P) -> ExitCode
where
    A: clap::Parser,
    P: FnOnce(A) -> F,
    F: Future<Output = Result<()>>,
{
    let args = A::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            complain(&format!("cannot start the tokio runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            result = program(args) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    complain(&failure.0);
                    ExitCode::FAILURE
                }
            },
            () = interrupted() => {
                say!("Interrupted");
                ExitCode::SUCCESS
            }
        }
    });
    runtime.block_on(close_connections());
    code
}

/// Prints `error: <message>` on stderr.
fn complain(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
    let _ = err.flush();
}

/// Resolves on Ctrl+C, or SIGTERM on Unix.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling here: never resolve, let the program run.
        std::future::pending::<()>().await;
    }
}

/// The connections [`connect`] opened, for [`run`] to close at the end.
static CONNECTIONS: Mutex<Vec<Connection>> = Mutex::new(Vec::new());

async fn close_connections() {
    let connections = match CONNECTIONS.lock() {
        Ok(mut connections) => std::mem::take(&mut *connections),
        Err(_) => return,
    };
    for connection in connections {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
    }
}

/// Opens a connection to the broker (connection.start/tune/open), within
/// [`CONNECTION_TIMEOUT`] unless the URI sets `connection_timeout`. The connection is named
/// after the program, as `rabbitmqctl list_connections client_properties` shows. With
/// `--trace`, every frame of this connection (and of the program's later ones) is printed
/// on stderr.
pub async fn connect(broker: &BrokerArgs) -> Result<Connection> {
    if broker.trace {
        amqp_codec::trace::enable(amqp_codec::trace::Format::Text);
    }
    let cannot = |why: String| {
        Failure(format!(
            "cannot connect to {}: {why}",
            without_password(&broker.uri)
        ))
    };
    let mut uri = AmqpUri::parse(&broker.uri).map_err(|err| Failure(describe(&err)))?;
    uri.connection_timeout.get_or_insert(CONNECTION_TIMEOUT);
    let timeout = uri.connection_timeout.unwrap_or(CONNECTION_TIMEOUT);
    let mut config = ConnectionConfig::new(uri);
    config.connection_name = Some(program_name());
    let connection = match Connection::open_with(config).await {
        Ok(connection) => connection,
        Err(amqp_client::Error::Timeout(_)) => {
            return Err(cannot(format!(
                "no AMQP handshake within {} ms",
                timeout.as_millis()
            )))
        }
        Err(err) => return Err(cannot(describe(&err))),
    };
    if let Ok(mut connections) = CONNECTIONS.lock() {
        connections.push(connection.clone());
    }
    Ok(connection)
}

/// Hands each delivery to `callback`, one at a time, until the consumer ends: pika's
/// `start_consuming`. Ends with Ok when the consumer is cancelled from this side, with the
/// reason when the broker cancels it or closes the channel or connection. Ctrl+C is
/// [`run`]'s business.
pub async fn start_consuming<C, F>(mut consumer: Consumer, mut callback: C) -> Result<()>
where
    C: FnMut(Delivery) -> F,
    F: Future<Output = Result<()>>,
{
    while let Some(delivery) = consumer.next().await {
        callback(delivery?).await?;
    }
    Ok(())
}

/// A message body as text (invalid UTF-8 shown as U+FFFD).
pub fn text(body: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(body)
}

/// A number with thousands separators, as Java's `%,d` prints it: `50,000`.
pub fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// An identifier unlikely to repeat (a correlation id, a queue name): 32 hex digits from
/// the process id, the clock and the standard library's random hash keys.
pub fn unique_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    let high = hasher.finish();
    hasher.write_u64(high);
    format!("{high:016x}{:016x}", hasher.finish())
}

/// The URI with its password masked, fit for an error message: `amqp://guest:***@host/`.
pub fn without_password(uri: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Cow::Borrowed(uri);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Cow::Borrowed(uri);
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => Cow::Owned(format!("{scheme}://{user}:***@{host}{path}")),
        None => Cow::Borrowed(uri),
    }
}

/// One line for an error: the client's own words, without the `(os error 111)` noise.
fn describe(err: &amqp_client::Error) -> String {
    match err {
        amqp_client::Error::Io(io) => {
            let text = io.to_string();
            match text.rfind(" (os error ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
        other => other.to_string(),
    }
}

/// This program's file name, without directory and extension.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|path| path.file_stem())
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tutorial".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn without_password_masks_only_the_password() {
        assert_eq!(
            without_password("amqp://guest:guest@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(
            without_password("amqp://user@host?heartbeat=5"),
            "amqp://user@host?heartbeat=5"
        );
        assert_eq!(
            without_password("amqp://localhost/%2f"),
            "amqp://localhost/%2f"
        );
        assert_eq!(without_password("not a uri"), "not a uri");
    }

    #[test]
    fn unique_id_differs_between_calls() {
        let first = unique_id();
        assert_eq!(first.len(), 32);
        assert_ne!(first, unique_id());
    }

    #[test]
    fn describe_drops_the_os_error_number() {
        let refused = std::io::Error::from_raw_os_error(111);
        let text = describe(&amqp_client::Error::from(refused));
        assert!(!text.contains("os error"), "{text}");
    }
}
