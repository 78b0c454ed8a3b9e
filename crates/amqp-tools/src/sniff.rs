//! `amqp-sniff`: a transparent TCP proxy that prints every AMQP frame going through it.
//!
//! ```text
//!  client ──► amqp-sniff (--listen) ──► broker (--upstream)
//!         ◄──        │              ◄──
//!                    └─► stdout: one line per frame, per connection, per direction
//! ```
//!
//! Point any client (pika, the Java client, this workspace's) at the `--listen` address
//! instead of the broker's and read the conversation:
//!
//! ```text
//!    0.000000 #1 connection from 127.0.0.1:51622 to 127.0.0.1:5672
//!    0.000393 #1 -> 8B protocol-header AMQP 0-9-1
//!    0.002107 #1 <- 503B ch=0 connection.start version_major=0 version_minor=9 server_properties={...}
//!    0.004872 #1 -> 54B ch=1 basic.publish exchange="" routing_key="hello" mandatory=false immediate=false
//!    0.004873 #1 -> 34B ch=1 content-header class=60 body_size=12 delivery_mode=1
//!    0.004873 #1 -> 20B ch=1 content-body size=12 "Hello World!"
//!    0.012211 #1 closed: the client sent 570 octets, the server 826
//! ```
//!
//! `#1` numbers the connections in the order they were accepted. `->` is what the client sent,
//! `<-` what the server sent; then the frame's size in octets, framing included, and the frame
//! as `amqp-dump` prints it ([`amqp_codec::describe`]). The time is seconds since the sniffer
//! started. `--json` prints the JSON lines of [`amqp_codec::trace`] instead.
//!
//! ## Transparent
//! Octets are forwarded as they are read, unchanged, before anything looks at them: each
//! direction of each connection has a task that reads what has arrived, writes it on, and
//! only then hands a copy to the printer. A client cannot tell the proxy is there, except by
//! the address it connects to. Nothing is buffered beyond one read; a half-close (FIN) is
//! passed on as a half-close.
//!
//! ## The printer
//! One thread decodes the copies ([`StreamDecoder`], one per direction) and prints the lines,
//! so a slow terminal never slows the forwarding, and lines of different connections never
//! mix. Octets that do not decode (a client speaking HTTP to the AMQP port, say) are printed
//! in hex with their offset, and that direction of that connection is no longer decoded: its
//! later octets are printed in hex, and still forwarded.
//!
//! With [`Options::raw_dump`] each direction is also written to a file,
//! `DIR/conn-N-client.bin` (what the client sent) and `DIR/conn-N-server.bin`, which
//! `amqp-dump` reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use amqp_codec::describe::DEFAULT_BODY_LIMIT;
use amqp_codec::trace::{Direction, Format, Line, Note, StreamDecoder, Who};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Octets read at most at once, per direction.
const READ_CHUNK: usize = 64 * 1024;
/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After one direction of a connection fails (a reset), how long the other may go on to
/// deliver what it still carries before it is cut.
const FAILURE_GRACE: Duration = Duration::from_secs(2);

/// What to listen on, where to forward, how to print.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker's address (`host:port`), connected to once per accepted connection.
    pub upstream: String,
    /// Text or JSON lines.
    pub format: Format,
    /// Octets of a body shown before the rest is cut.
    pub body_limit: usize,
    /// A directory to write each direction of each connection to, raw.
    pub raw_dump: Option<PathBuf>,
}

impl Options {
    /// Text lines, default body limit, no raw dump.
    pub fn new(upstream: impl Into<String>) -> Options {
        Options {
            upstream: upstream.into(),
            format: Format::Text,
            body_limit: DEFAULT_BODY_LIMIT,
            raw_dump: None,
        }
    }
}

/// What the forwarding tasks tell the printer.
#[derive(Debug)]
enum Report {
    /// A client connected.
    Accepted {
        connection: u64,
        at: Instant,
        client: SocketAddr,
    },
    /// The upstream could not be reached: the client's connection is closed.
    UpstreamFailed {
        connection: u64,
        at: Instant,
        error: io::Error,
    },
    /// Octets forwarded one way.
    Data {
        connection: u64,
        at: Instant,
        direction: Direction,
        octets: Bytes,
    },
    /// One direction ended with an error (a reset): what was being done, and the error.
    Failed {
        connection: u64,
        at: Instant,
        what: String,
    },
    /// Both directions are done.
    Closed { connection: u64, at: Instant },
}

/// Accepts connections on `listener` forever, forwarding each to [`Options::upstream`] and
/// printing its frames to `out` (from a thread of its own).
///
/// Returns only if the printer thread cannot be started.
pub async fn run(
    listener: TcpListener,
    options: Options,
    out: impl Write + Send + 'static,
) -> io::Result<()> {
    let start = Instant::now();
    let (reports, inbox) = mpsc::channel();
    let printer = Printer::new(options.clone(), start, out);
    thread::Builder::new()
        .name("amqp-sniff printer".into())
        .spawn(move || printer.run(inbox))?;
    let options = Arc::new(options);
    let mut next = 1u64;
    loop {
        match listener.accept().await {
            Ok((client, address)) => {
                let connection = next;
                next = next.saturating_add(1);
                let _ = reports.send(Report::Accepted {
                    connection,
                    at: Instant::now(),
                    client: address,
                });
                tokio::spawn(proxy(connection, client, options.clone(), reports.clone()));
            }
            Err(error) => {
                // Out of file descriptors, say: wait a little rather than spin.
                eprintln!("amqp-sniff: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Carries one connection: connects upstream, then forwards both ways until both are done.
async fn proxy(
    connection: u64,
    client: TcpStream,
    options: Arc<Options>,
    reports: mpsc::Sender<Report>,
) {
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&options.upstream)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                let _ = reports.send(Report::UpstreamFailed {
                    connection,
                    at: Instant::now(),
                    error,
                });
                return;
            }
            Err(_) => {
                let _ = reports.send(Report::UpstreamFailed {
                    connection,
                    at: Instant::now(),
                    error: io::ErrorKind::TimedOut.into(),
                });
                return;
            }
        };
    // AMQP clients and brokers turn Nagle off; so does the proxy, or it would add delay.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let mut to_server = tokio::spawn(forward(
        client_read,
        upstream_write,
        connection,
        Direction::Sent,
        reports.clone(),
    ));
    let mut to_client = tokio::spawn(forward(
        upstream_read,
        client_write,
        connection,
        Direction::Received,
        reports.clone(),
    ));
    let (first, mut other) = tokio::select! {
        done = &mut to_server => (done, to_client),
        done = &mut to_client => (done, to_server),
    };
    let failed = !matches!(first, Ok(Ok(())));
    if failed {
        // The connection is broken: let the other direction deliver what it has, then cut it.
        if tokio::time::timeout(FAILURE_GRACE, &mut other)
            .await
            .is_err()
        {
            other.abort();
        }
    } else {
        let _ = other.await;
    }
    let _ = reports.send(Report::Closed {
        connection,
        at: Instant::now(),
    });
}

/// Forwards one direction: read what has arrived, write it on, then copy it to the printer.
/// At the end of the input, half-closes the output.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connection: u64,
    direction: Direction,
    reports: mpsc::Sender<Report>,
) -> io::Result<()> {
    let (source, sink) = match direction {
        Direction::Sent => ("client", "server"),
        Direction::Received => ("server", "client"),
    };
    let fail = |doing: String, error: io::Error| {
        let _ = reports.send(Report::Failed {
            connection,
            at: Instant::now(),
            what: format!("{doing}: {error}"),
        });
        Err(error)
    };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(error) => return fail(format!("reading from the {source}"), error),
        };
        let at = Instant::now();
        let Some(octets @ [_, ..]) = buf.get(..n) else {
            // The end of this direction: pass the half-close on.
            let _ = to.shutdown().await;
            return Ok(());
        };
        if let Err(error) = to.write_all(octets).await {
            return fail(format!("writing to the {sink}"), error);
        }
        // The printer may be gone (stdout closed): forwarding goes on regardless.
        let _ = reports.send(Report::Data {
            connection,
            at,
            direction,
            octets: Bytes::copy_from_slice(octets),
        });
    }
}

/// One connection as the printer knows it.
struct Traced {
    who: Who,
    /// What the client sent, then what the server sent.
    decoders: [StreamDecoder; 2],
    /// The raw dump files, in the same order, when asked for and creatable.
    dumps: Option<[File; 2]>,
}

/// Decodes the copies and prints the lines. Owns the output.
struct Printer<W: Write> {
    options: Options,
    start: Instant,
    out: io::BufWriter<W>,
    connections: HashMap<u64, Traced>,
    /// Set once the output failed: nothing more is printed (the octets still flow).
    broken: bool,
}

impl<W: Write> Printer<W> {
    fn new(options: Options, start: Instant, out: W) -> Self {
        Printer {
            options,
            start,
            out: io::BufWriter::new(out),
            connections: HashMap::new(),
            broken: false,
        }
    }

    /// Prints reports as they come, flushing whenever none is waiting; ends when every sender
    /// is gone.
    fn run(mut self, inbox: mpsc::Receiver<Report>) {
        while let Ok(report) = inbox.recv() {
            self.handle(report);
            while let Ok(report) = inbox.try_recv() {
                self.handle(report);
            }
            if !self.broken && self.out.flush().is_err() {
                self.broken = true;
            }
        }
    }

    fn handle(&mut self, report: Report) {
        match report {
            Report::Accepted {
                connection,
                at,
                client,
            } => {
                let who = Who {
                    role: "",
                    connection,
                };
                let text = format!("connection from {client} to {}", self.options.upstream);
                self.note(at, &who, "open", &text);
                let dumps = self.open_dumps(at, &who);
                self.connections.insert(
                    connection,
                    Traced {
                        who,
                        decoders: [StreamDecoder::new(), StreamDecoder::new()],
                        dumps,
                    },
                );
            }
            Report::UpstreamFailed {
                connection,
                at,
                error,
            } => {
                if let Some(traced) = self.connections.remove(&connection) {
                    let text = format!(
                        "cannot connect to {}: {error}; closing the client's connection",
                        self.options.upstream
                    );
                    self.note(at, &traced.who, "error", &text);
                }
            }
            Report::Data {
                connection,
                at,
                direction,
                octets,
            } => self.data(connection, at, direction, &octets),
            Report::Failed {
                connection,
                at,
                what,
            } => {
                if let Some(who) = self.connections.get(&connection).map(|t| t.who.clone()) {
                    self.note(at, &who, "error", &what);
                }
            }
            Report::Closed { connection, at } => {
                if let Some(traced) = self.connections.remove(&connection) {
                    self.closed(at, traced);
                }
            }
        }
    }

    fn data(&mut self, connection: u64, at: Instant, direction: Direction, octets: &[u8]) {
        let Some(traced) = self.connections.get_mut(&connection) else {
            return;
        };
        let index = match direction {
            Direction::Sent => 0,
            Direction::Received => 1,
        };
        if let Some(file) = traced.dumps.as_mut().and_then(|files| files.get_mut(index)) {
            if let Err(error) = file.write_all(octets) {
                eprintln!("amqp-sniff: raw dump of #{connection}: {error}; no longer dumped");
                traced.dumps = None;
            }
        }
        let Some(decoder) = traced.decoders.get_mut(index) else {
            return;
        };
        let time = at.saturating_duration_since(self.start);
        let (format, body_limit) = (self.options.format, self.options.body_limit);
        let (out, broken, who) = (&mut self.out, &mut self.broken, &traced.who);
        decoder.feed(octets, |event| {
            let line = Line {
                format,
                time,
                who,
                direction,
                event: &event,
                body_limit,
            };
            if !*broken && writeln!(out, "{line}").is_err() {
                *broken = true;
            }
        });
    }

    fn closed(&mut self, at: Instant, traced: Traced) {
        let [to_server, to_client] = &traced.decoders;
        for (decoder, from) in [(to_server, "client"), (to_client, "server")] {
            if decoder.pending() > 0 {
                let text = format!(
                    "the {from} stopped inside a frame: {} octets of it never completed",
                    decoder.pending()
                );
                self.note(at, &traced.who, "error", &text);
            }
        }
        let text = format!(
            "closed: the client sent {} octets, the server {}",
            to_server.octets(),
            to_client.octets()
        );
        self.note(at, &traced.who, "close", &text);
    }

    /// The two raw dump files of a new connection, if asked for.
    fn open_dumps(&mut self, at: Instant, who: &Who) -> Option<[File; 2]> {
        let dir = self.options.raw_dump.clone()?;
        let open = |side: &str| {
            let path = dir.join(format!("conn-{}-{side}.bin", who.connection));
            File::create(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        match open("client").and_then(|client| Ok([client, open("server")?])) {
            Ok(files) => Some(files),
            Err(error) => {
                self.note(at, who, "error", &format!("raw dump: {error}"));
                None
            }
        }
    }

    fn note(&mut self, at: Instant, who: &Who, kind: &str, text: &str) {
        let note = Note {
            format: self.options.format,
            time: at.saturating_duration_since(self.start),
            who,
            kind,
            text,
        };
        if !self.broken && writeln!(self.out, "{note}").is_err() {
            self.broken = true;
        }
    }
}
