//! The frame-by-frame walkthrough of tutorial 2, Work queues
//! (`docs/walkthrough-work-queues.md`), checked against the wire.
//!
//! The transcripts in the walkthrough are not written by hand: this test captures them. It
//! runs the tutorial's scenarios against a mini-broker in this process, with every
//! connection going through a recording proxy:
//!
//! ```text
//!  new_task, worker (processes) ─► recording proxy ─► mini-broker (in this process)
//!  amqp-client (in this process) ─►       │
//!                                         └─► one log, in the order the proxy saw things
//! ```
//!
//! The proxy logs what it read before it forwards it, so whatever a frame causes (the
//! reply, a delivery on another connection) is logged after it. Each scenario waits for one
//! step's effects before it takes the next, so the log comes out in the same order on
//! every run. Frames are rendered as `amqp-dump` prints them
//! (`amqp_codec::describe::text`), with what differs between runs masked: server-generated
//! names (`amq.ctag-…`, `amq.gen-…`) and product versions.
//!
//! The walkthrough holds each transcript as a text code block between a line
//! `<!-- trace:NAME -->` and a line `<!-- /trace -->`, and `docs/walkthrough/` holds each
//! scenario's whole transcript, connection by connection, plus the octets of `new_task`'s
//! connection in the hex `amqp-dump --hex` reads. When what the programs send changes, this
//! test fails with a diff;
//! `WALKTHROUGH_WRITE=1 cargo test -p tutorial-bins --test walkthrough` rewrites the blocks
//! and the files (the prose around them is the author's to update).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use amqp_client::{BasicProperties, Confirmation, Connection, FieldTable, QueueDeclareOptions};
use amqp_codec::describe;
use amqp_codec::trace::{Event, StreamDecoder};
use amqp_codec::{Frame, ReplyCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use support::{finish, Program, NEW_TASK, PATIENCE, WORKER};

/// Set to `1` to rewrite the transcripts instead of comparing them.
const WRITE_VAR: &str = "WALKTHROUGH_WRITE";

/// The walkthrough, relative to the workspace root.
const DOC: &str = "docs/walkthrough-work-queues.md";

/// The folder of whole transcripts, relative to the workspace root.
const TRANSCRIPTS: &str = "docs/walkthrough";

const WAITING: &str = " [*] Waiting for messages. To exit press CTRL+C";

#[test]
fn walkthrough_transcripts_match_what_the_wire_carries() {
    let mut captured = Captured::default();
    tutorial(&mut captured);
    two_workers(&mut captured);
    no_prefetch(&mut captured);
    redeclare(&mut captured);
    confirms(&mut captured);
    check_or_write(&captured);
}

// ---- the scenarios ----------------------------------------------------------------------

/// The tutorial as its page runs it: a worker waits, `new_task` sends "First message.", the
/// worker does it and acks, then Ctrl+C ends the worker.
fn tutorial(captured: &mut Captured) {
    let recorder = Recorder::start();
    let mut worker = start(WORKER, &recorder.url("worker"), &["--ms-per-dot", "10"]);
    worker.expect_line(WAITING);
    // new_task traces its own frames too: they must be the ones the proxy saw.
    let mut command = Command::new(NEW_TASK);
    command
        .env("AMQP_TRACE", "1")
        .args(["--uri", &recorder.url("new_task"), "First", "message."]);
    let mut traced = Program::spawn(command);
    let finished = finish(&mut traced);
    if !finished.status.success() || finished.stdout != [" [x] Sent First message."] {
        traced.fail("did not send its task");
    }
    worker.expect_line(" [x] Received First message.");
    worker.expect_line(" [x] Done");
    recorder.wait("the worker's basic.ack", |log| {
        log.count("worker", Side::Client, "basic.ack") == 1
    });
    worker.interrupt_cleanly();
    recorder.wait_closed(&["new_task", "worker"]);

    let log = recorder.log();
    let new_task = log.connection("new_task");
    let trace = client_trace(&finished.stderr);
    assert_eq!(
        trace.frames,
        new_task
            .iter()
            .filter(|line| line.kind != "closed")
            .map(|line| line.text.replacen("new_task", "client#1", 1))
            .collect::<Vec<_>>(),
        "AMQP_TRACE=1 and the proxy should see the same frames"
    );
    captured.block("amqp-trace", trace.shown);
    let publish = new_task
        .iter()
        .find(|line| line.kind == "basic.publish")
        .expect("new_task publishes");
    captured.block("example", format!("{}\n", publish.text));
    captured.block(
        "handshake",
        slice(&new_task, None, Some("connection.open-ok")),
    );
    captured.block(
        "new-task",
        slice(&new_task, Some("connection.open-ok"), None),
    );
    captured.block(
        "publish-bytes",
        log.hex("new_task", Side::Client, |kind| {
            matches!(kind, "basic.publish" | "content-header" | "content-body")
        }),
    );
    let worker = log.connection("worker");
    captured.block("worker", slice(&worker, Some("connection.open-ok"), None));
    captured.file("tutorial.txt", log.transcript(&["new_task", "worker"]));
    captured.file(
        "new_task-client.hex",
        log.hex("new_task", Side::Client, |_| true),
    );
    captured.file(
        "new_task-server.hex",
        log.hex("new_task", Side::Server, |_| true),
    );
}

/// Two workers with prefetch 1: a long task keeps the first busy, so both short tasks go to
/// the second; then the first is killed (SIGKILL) in the middle of its task, and the broker
/// gives the task to the second, redelivered.
fn two_workers(captured: &mut Captured) {
    let recorder = Recorder::start();
    // The first worker would take 10 s over the long task: it is killed long before.
    let mut first = start(WORKER, &recorder.url("worker-1"), &["--ms-per-dot", "1000"]);
    first.expect_line(WAITING);
    let mut second = start(WORKER, &recorder.url("worker-2"), &["--ms-per-dot", "10"]);
    second.expect_line(WAITING);
    recorder.mark("tasks");

    let long = "Long task..........";
    new_task(&recorder, "new_task-1", long);
    first.expect_line(&format!(" [x] Received {long}"));
    for (i, short) in ["Short task 1.", "Short task 2."].into_iter().enumerate() {
        new_task(&recorder, &format!("new_task-{}", i + 2), short);
        second.expect_line(&format!(" [x] Received {short}"));
        second.expect_line(" [x] Done");
        recorder.wait("worker-2's basic.ack", |log| {
            log.count("worker-2", Side::Client, "basic.ack") == i + 1
        });
    }
    recorder.mark("kill");

    first.kill();
    if first.lines().iter().any(|line| line == " [x] Done") {
        first.fail("finished the long task before it was killed");
    }
    second.expect_line(&format!(" [x] Received {long} (redelivered)"));
    second.expect_line(" [x] Done");
    recorder.wait("worker-2's third basic.ack", |log| {
        log.count("worker-2", Side::Client, "basic.ack") == 3
    });
    recorder.mark("end");
    second.interrupt_cleanly();
    let names = [
        "worker-1",
        "worker-2",
        "new_task-1",
        "new_task-2",
        "new_task-3",
    ];
    recorder.wait_closed(&names);

    let log = recorder.log();
    let workers = ["worker-1", "worker-2"];
    captured.block("prefetch", log.between(&workers, "tasks", "kill"));
    captured.block("worker-dies", log.between(&workers, "kill", "end"));
    captured.file("two-workers.txt", log.transcript(&names));
}

/// The same two workers without basic.qos (`--prefetch 0`): round-robin hands the second
/// short task to the first worker, busy or not.
fn no_prefetch(captured: &mut Captured) {
    let recorder = Recorder::start();
    let mut first = start(
        WORKER,
        &recorder.url("worker-1"),
        &["--prefetch", "0", "--ms-per-dot", "1000"],
    );
    first.expect_line(WAITING);
    let mut second = start(
        WORKER,
        &recorder.url("worker-2"),
        &["--prefetch", "0", "--ms-per-dot", "10"],
    );
    second.expect_line(WAITING);
    recorder.mark("tasks");

    let long = "Long task..........";
    new_task(&recorder, "new_task-1", long);
    first.expect_line(&format!(" [x] Received {long}"));
    new_task(&recorder, "new_task-2", "Short task 1.");
    second.expect_line(" [x] Received Short task 1.");
    second.expect_line(" [x] Done");
    recorder.wait("worker-2's basic.ack", |log| {
        log.count("worker-2", Side::Client, "basic.ack") == 1
    });
    new_task(&recorder, "new_task-3", "Short task 2.");
    // The first worker is asleep over the long task: the delivery waits in its socket.
    recorder.wait("the second delivery to worker-1", |log| {
        log.count("worker-1", Side::Server, "content-body") == 2
    });
    recorder.mark("end");
    if first
        .lines()
        .iter()
        .any(|line| line.contains("Short task 2."))
    {
        first.fail("took the short task before finishing the long one");
    }
    let log = recorder.log();
    captured.block(
        "no-prefetch",
        log.between(&["worker-1", "worker-2"], "tasks", "end"),
    );
}

/// The seed's warning: `hello` exists, not durable; declaring it durable fails.
fn redeclare(captured: &mut Captured) {
    let recorder = Recorder::start();
    let url = recorder.url("client");
    recorder.block_on(async {
        let connection = Connection::open(&url).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel.open");
        channel
            .queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())
            .await
            .expect("queue.declare hello");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let refused = channel
            .queue_declare("hello", durable, FieldTable::new())
            .await
            .expect_err("redeclaring hello durable should fail");
        assert_eq!(refused.reply_code(), Some(ReplyCode::PRECONDITION_FAILED));
        connection.close().await.expect("connection.close");
    });
    recorder.wait_closed(&["client"]);
    let log = recorder.log();
    let client = log.connection("client");
    captured.block(
        "redeclare",
        slice(
            &client,
            Some("connection.open-ok"),
            Some("channel.close-ok"),
        ),
    );
    captured.file("redeclare.txt", log.transcript(&["client"]));
}

/// new_task with publisher confirms: the broker acks the persistent message.
fn confirms(captured: &mut Captured) {
    let recorder = Recorder::start();
    let url = recorder.url("client");
    recorder.block_on(async {
        let connection = Connection::open(&url).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel.open");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("task_queue", durable, FieldTable::new())
            .await
            .expect("queue.declare");
        channel.confirm_select().await.expect("confirm.select");
        let persistent = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let confirm = channel
            .basic_publish("", "task_queue", persistent, "Hello World!", false)
            .await
            .expect("basic.publish");
        assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack);
        connection.close().await.expect("connection.close");
    });
    recorder.wait_closed(&["client"]);
    let log = recorder.log();
    let client = log.connection("client");
    captured.block(
        "confirm",
        slice(&client, Some("queue.declare-ok"), Some("basic.ack")),
    );
    captured.file("confirms.txt", log.transcript(&["client"]));
}

/// What a client printed with `AMQP_TRACE=1`.
struct ClientTrace {
    /// The frame lines without their time, masked: `client#1 -> 8B protocol-header ...`.
    frames: Vec<String>,
    /// Every line, time and port masked, as the walkthrough shows them.
    shown: String,
}

/// Reads the lines `AMQP_TRACE=1` printed on stderr: `   0.000210 client#1 -> 8B ...`.
fn client_trace(stderr: &str) -> ClientTrace {
    let mut frames = Vec::new();
    let mut shown = String::new();
    for line in stderr.lines() {
        let (time, rest) = line
            .trim_start()
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a trace line: {line:?}"));
        assert!(time.parse::<f64>().is_ok(), "not a trace line: {line:?}");
        let rest = mask(rest);
        let rest = match rest.split_once("connection with 127.0.0.1:") {
            Some((head, _port)) => format!("{head}connection with 127.0.0.1:<port>"),
            None => {
                frames.push(rest.clone());
                rest
            }
        };
        let _ = writeln!(shown, "   <time> {rest}");
    }
    ClientTrace { frames, shown }
}

/// Starts `binary --uri <url> <args...>` without the `AMQP_TRACE` this test may run under:
/// a traced program writes on stderr, which the checks want empty.
fn start(binary: &str, url: &str, args: &[&str]) -> Program {
    let mut command = Command::new(binary);
    command
        .env_remove("AMQP_TRACE")
        .arg("--uri")
        .arg(url)
        .args(args);
    Program::spawn(command)
}

/// Runs `new_task <task>` to its end, connected through the recorder as `name`.
fn new_task(recorder: &Recorder, name: &str, task: &str) {
    let words: Vec<&str> = task.split(' ').collect();
    let mut program = start(NEW_TASK, &recorder.url(name), &words);
    let finished = finish(&mut program);
    let sent = format!(" [x] Sent {task}");
    if !finished.status.success() || finished.stdout != [sent] || !finished.stderr.is_empty() {
        program.fail("did not send its task");
    }
}

// ---- the recording proxy ----------------------------------------------------------------

/// Who sent a frame: the client (`->`) or the broker (`<-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn arrow(self) -> &'static str {
        match self {
            Side::Client => "->",
            Side::Server => "<-",
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// One thing the proxy saw.
#[derive(Debug)]
enum Seen {
    /// A whole frame; `offset` is where it starts in its side's octets.
    Frame {
        connection: usize,
        side: Side,
        offset: usize,
        size: usize,
        frame: Box<Frame>,
    },
    /// Octets that are not AMQP frames.
    Undecodable {
        connection: usize,
        side: Side,
        what: String,
    },
    /// One side stopped sending: `how` is `closed` (FIN) or the error.
    Ended {
        connection: usize,
        side: Side,
        how: String,
    },
    /// A point in the scenario, set by the test.
    Mark(&'static str),
}

/// Everything the proxy saw, in order, with each connection's name and octets.
#[derive(Debug, Default)]
struct Log {
    names: Vec<String>,
    /// Per connection: what the client sent, what the server sent.
    octets: Vec<[Vec<u8>; 2]>,
    seen: Vec<Seen>,
}

/// One rendered line of a connection's transcript, with the kind of frame it shows.
#[derive(Debug, Clone)]
struct Line {
    kind: String,
    text: String,
}

impl Log {
    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no connection named {name}: {:?}", self.names))
    }

    /// How many frames of `kind` (`basic.ack`, `content-body`) `side` of `name` sent.
    fn count(&self, name: &str, side: Side, kind: &str) -> usize {
        let Some(wanted) = self.names.iter().position(|n| n == name) else {
            return 0;
        };
        self.seen
            .iter()
            .filter(|seen| {
                matches!(seen, Seen::Frame { connection, side: s, frame, .. }
                    if *connection == wanted && *s == side && frame_kind(frame) == kind)
            })
            .count()
    }

    /// Whether both sides of `name` stopped sending.
    fn closed(&self, name: &str) -> bool {
        let Some(wanted) = self.names.iter().position(|n| n == name) else {
            return false;
        };
        let ended = |side| {
            self.seen.iter().any(|seen| {
                matches!(seen, Seen::Ended { connection, side: s, .. }
                    if *connection == wanted && *s == side)
            })
        };
        ended(Side::Client) && ended(Side::Server)
    }

    /// `name`'s frames in order, then one line once both sides have closed.
    ///
    /// Which side closes its socket first after connection.close-ok is a race, so the two
    /// ends show as one line at the end.
    fn connection(&self, name: &str) -> Vec<Line> {
        let wanted = self.index(name);
        let mut lines = Vec::new();
        let mut ends = Vec::new();
        for seen in &self.seen {
            match seen {
                Seen::Frame {
                    connection,
                    side,
                    size,
                    frame,
                    ..
                } if *connection == wanted => lines.push(Line {
                    kind: frame_kind(frame).to_owned(),
                    text: frame_line(name, name.len(), *side, *size, frame),
                }),
                Seen::Undecodable {
                    connection,
                    side,
                    what,
                } if *connection == wanted => lines.push(Line {
                    kind: "undecodable".to_owned(),
                    text: format!("{name} {} {what}", side.arrow()),
                }),
                Seen::Ended {
                    connection,
                    side,
                    how,
                } if *connection == wanted => ends.push((*side, how.as_str())),
                _ => {}
            }
        }
        if ends.len() == 2 && ends.iter().all(|(_, how)| *how == "closed") {
            lines.push(Line {
                kind: "closed".to_owned(),
                text: format!("{name} -- (both sides closed the socket)"),
            });
        } else {
            ends.sort_by_key(|(side, _)| side.index());
            for (side, how) in ends {
                lines.push(Line {
                    kind: "ended".to_owned(),
                    text: format!("{name} {} ({how})", side.arrow()),
                });
            }
        }
        lines
    }

    /// What `names` sent and received from mark `from` to mark `to`, interleaved as the
    /// proxy saw it, with the clients' closes (the brokers' are a reaction that races with
    /// whatever else the broker does, so they are left out).
    fn between(&self, names: &[&str], from: &str, to: &str) -> String {
        let wanted: Vec<usize> = names.iter().map(|name| self.index(name)).collect();
        let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
        let start = self.mark(from);
        let end = self.mark(to);
        let mut out = String::new();
        for (at, seen) in self.seen.iter().enumerate().take(end).skip(start) {
            let line = match seen {
                Seen::Frame {
                    connection,
                    side,
                    size,
                    frame,
                    ..
                } if wanted.contains(connection) => {
                    frame_line(&self.names[*connection], width, *side, *size, frame)
                }
                Seen::Ended {
                    connection,
                    side: Side::Client,
                    how,
                } if wanted.contains(connection) => {
                    let name = &self.names[*connection];
                    let polite = self.seen[..at].iter().any(|seen| {
                        matches!(seen, Seen::Frame { connection: c, frame, .. }
                            if c == connection && frame_kind(frame) == "connection.close")
                    });
                    let without = if polite { "" } else { ", no connection.close" };
                    format!("{name:width$} -> (socket {how}{without})")
                }
                Seen::Undecodable {
                    connection, what, ..
                } if wanted.contains(connection) => {
                    panic!(
                        "{} sent octets that are not AMQP: {what}",
                        self.names[*connection]
                    )
                }
                _ => continue,
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn mark(&self, name: &str) -> usize {
        self.seen
            .iter()
            .position(|seen| matches!(seen, Seen::Mark(m) if *m == name))
            .unwrap_or_else(|| panic!("no mark {name}"))
    }

    /// Each of `names` in turn: every frame, one connection after the other.
    fn transcript(&self, names: &[&str]) -> String {
        let mut out = String::new();
        for name in names {
            let _ = writeln!(out, "# connection {name}");
            for line in self.connection(name) {
                out.push_str(&line.text);
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }

    /// The octets `side` of `name` sent, one frame per line in hex after a comment line
    /// showing the frame: what `amqp-dump --hex` reads. Only frames whose kind `keep` says.
    fn hex(&self, name: &str, side: Side, keep: impl Fn(&str) -> bool) -> String {
        let wanted = self.index(name);
        let octets = &self.octets[wanted][side.index()];
        let mut out = String::new();
        for seen in &self.seen {
            let Seen::Frame {
                connection,
                side: s,
                offset,
                size,
                frame,
            } = seen
            else {
                continue;
            };
            if *connection != wanted || *s != side || !keep(frame_kind(frame)) {
                continue;
            }
            let _ = writeln!(
                out,
                "# {}B {}",
                size,
                mask(&describe::text(frame).to_string())
            );
            for (i, octet) in octets[*offset..offset + size].iter().enumerate() {
                if i > 0 && i % 32 == 0 {
                    out.push('\n');
                } else if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{octet:02x}");
            }
            out.push('\n');
        }
        out
    }
}

/// `method.name` for a method frame, else the frame type as `amqp-dump` names it.
fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::ProtocolHeader(_) => "protocol-header",
        Frame::Method(_, method) => method.name(),
        Frame::Header(..) => "content-header",
        Frame::Body(..) => "content-body",
        Frame::Heartbeat => "heartbeat",
    }
}

/// `name -> 8B protocol-header AMQP 0-9-1`: as `AMQP_TRACE=1` and `amqp-sniff` print a
/// frame, with the connection's name in place of the time, masked.
fn frame_line(name: &str, width: usize, side: Side, size: usize, frame: &Frame) -> String {
    let text = mask(&describe::text(frame).to_string());
    format!("{name:width$} {} {size}B {text}", side.arrow())
}

/// Hides what differs from run to run or release to release: the random part of
/// server-generated names, and the `version` of client and server properties.
fn mask(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let next = ["amq.ctag-", "amq.gen-", "\"version\": \""]
            .iter()
            .filter_map(|prefix| rest.find(prefix).map(|at| (at, *prefix)))
            .min();
        let Some((at, prefix)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        if prefix.ends_with('"') {
            // A quoted version: up to the closing quote.
            let end = rest.find('"').unwrap_or(rest.len());
            out.push_str("<version>");
            rest = &rest[end..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            out.push('…');
            rest = &rest[end..];
        }
    }
}

/// The lines of `lines` after the first of kind `after` (from the start without one),
/// through the first of kind `through` (to the end without one).
fn slice(lines: &[Line], after: Option<&str>, through: Option<&str>) -> String {
    let start = match after {
        Some(kind) => {
            lines
                .iter()
                .position(|line| line.kind == kind)
                .unwrap_or_else(|| panic!("no {kind} in {lines:#?}"))
                + 1
        }
        None => 0,
    };
    let end = match through {
        Some(kind) => {
            start
                + lines[start..]
                    .iter()
                    .position(|line| line.kind == kind)
                    .unwrap_or_else(|| panic!("no {kind} after {after:?} in {lines:#?}"))
                + 1
        }
        None => lines.len(),
    };
    lines[start..end]
        .iter()
        .map(|line| format!("{}\n", line.text))
        .collect()
}

/// A mini-broker, and a recording proxy in front of it, on a runtime of their own.
struct Recorder {
    runtime: tokio::runtime::Runtime,
    broker: SocketAddr,
    /// Kept so the broker runs (dropping it would stop the broker's tasks).
    _running: mini_broker::RunningBroker,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    fn start() -> Recorder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let broker = runtime
            .block_on(mini_broker::start(mini_broker::BrokerOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Default::default()
            }))
            .expect("mini-broker starts");
        Recorder {
            broker: broker.amqp_addr,
            _running: broker,
            runtime,
            log: Arc::default(),
        }
    }

    /// An `amqp://` URL whose connections go through the proxy, logged as `name` (the
    /// first; a second one on the same URL would be `name#2`).
    fn url(&self, name: &str) -> String {
        let listener = self
            .runtime
            .block_on(TcpListener::bind(("127.0.0.1", 0)))
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let (log, broker, name) = (self.log.clone(), self.broker, name.to_owned());
        self.runtime.spawn(async move {
            let mut accepted = 0;
            while let Ok((client, _)) = listener.accept().await {
                accepted += 1;
                let label = match accepted {
                    1 => name.clone(),
                    n => format!("{name}#{n}"),
                };
                let connection = {
                    let mut log = lock(&log);
                    log.names.push(label);
                    log.octets.push([Vec::new(), Vec::new()]);
                    log.names.len() - 1
                };
                tokio::spawn(proxy(connection, client, broker, log.clone()));
            }
        });
        format!("amqp://guest:guest@{addr}/%2f")
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Puts a mark in the log, between what came before and what comes after.
    fn mark(&self, name: &'static str) {
        lock(&self.log).seen.push(Seen::Mark(name));
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }

    /// Waits (at most [`PATIENCE`]) until `done` says the log has what is awaited.
    fn wait(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let log = self.log();
                if done(&log) {
                    return;
                }
                if Instant::now() > deadline {
                    let names: Vec<&str> = log.names.iter().map(String::as_str).collect();
                    panic!(
                        "no {what} within {PATIENCE:?}; the log:\n{}",
                        log.transcript(&names)
                    );
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until both sides of each of `names` have closed.
    fn wait_closed(&self, names: &[&str]) {
        for name in names {
            self.wait(&format!("end of {name}"), |log| log.closed(name));
        }
    }
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connects `client` to the broker and forwards both ways, logging as it goes.
async fn proxy(connection: usize, client: TcpStream, broker: SocketAddr, log: Arc<Mutex<Log>>) {
    let upstream = TcpStream::connect(broker).await.expect("proxy connects");
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::spawn(forward(
        client_read,
        upstream_write,
        connection,
        Side::Client,
        log.clone(),
    ));
    tokio::spawn(forward(
        upstream_read,
        client_write,
        connection,
        Side::Server,
        log,
    ));
}

/// Forwards what `side` sends: each read is logged, frame by frame, before it is written on,
/// so that nothing it causes can be logged before it.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connection: usize,
    side: Side,
    log: Arc<Mutex<Log>>,
) {
    let mut decoder = StreamDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(error) => {
                lock(&log).seen.push(Seen::Ended {
                    connection,
                    side,
                    how: format!("reset: {:?}", error.kind()),
                });
                let _ = to.shutdown().await;
                return;
            }
        };
        let octets = &buf[..n];
        {
            let mut log = lock(&log);
            if n == 0 {
                log.seen.push(Seen::Ended {
                    connection,
                    side,
                    how: "closed".to_owned(),
                });
            } else {
                log.octets[connection][side.index()].extend_from_slice(octets);
                let Log { seen, .. } = &mut *log;
                decoder.feed(octets, |event| {
                    seen.push(match event {
                        Event::Frame {
                            offset,
                            size,
                            frame,
                        } => Seen::Frame {
                            connection,
                            side,
                            offset: offset as usize,
                            size,
                            frame: Box::new(frame),
                        },
                        Event::Undecodable { offset, error, .. } => Seen::Undecodable {
                            connection,
                            side,
                            what: format!("undecodable at offset {offset}: {error}"),
                        },
                        Event::Raw { offset, octets } => Seen::Undecodable {
                            connection,
                            side,
                            what: format!("{} octets at offset {offset}", octets.len()),
                        },
                    })
                });
            }
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(octets).await.is_err() {
            return;
        }
    }
}

// ---- the walkthrough and its transcripts -------------------------------------------------

/// What the scenarios captured: the walkthrough's blocks, and whole files.
#[derive(Debug, Default)]
struct Captured {
    blocks: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
}

impl Captured {
    fn block(&mut self, name: &str, lines: String) {
        assert!(!lines.is_empty(), "block {name} is empty");
        let previous = self.blocks.insert(name.to_owned(), lines);
        assert!(previous.is_none(), "block {name} captured twice");
    }

    fn file(&mut self, name: &str, text: String) {
        let header = format!(
            "# Captured by crates/tutorial-bins/tests/walkthrough.rs: do not edit.\n\
             # {WRITE_VAR}=1 cargo test -p tutorial-bins --test walkthrough rewrites it.\n\n"
        );
        self.files.insert(name.to_owned(), header + &text);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compares the captures with the walkthrough and `docs/walkthrough/`, failing with a diff;
/// or, with `WALKTHROUGH_WRITE=1`, writes them there.
fn check_or_write(captured: &Captured) {
    let root = workspace_root();
    let doc_path = root.join(DOC);
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", doc_path.display()));
    let (rewritten, differences) = match splice_blocks(&doc, &captured.blocks) {
        Ok(done) => done,
        Err(problem) => panic!("{DOC}: {problem}"),
    };
    let write = std::env::var(WRITE_VAR).is_ok_and(|v| v == "1");
    let mut failures = differences
        .iter()
        .map(|(name, old, new)| format!("{DOC}, block trace:{name}:\n{}", diff(old, new)))
        .collect::<Vec<_>>();
    let dir = root.join(TRANSCRIPTS);
    for (name, text) in &captured.files {
        let path = dir.join(name);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old != *text {
            failures.push(format!("{TRANSCRIPTS}/{name}:\n{}", diff(&old, text)));
            if write {
                std::fs::create_dir_all(&dir).expect("create docs/walkthrough");
                std::fs::write(&path, text)
                    .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
            }
        }
    }
    if write {
        if rewritten != doc {
            std::fs::write(&doc_path, rewritten)
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", doc_path.display()));
        }
        for failure in &failures {
            eprintln!("rewrote {}", failure.lines().next().unwrap_or_default());
        }
        return;
    }
    assert!(
        failures.is_empty(),
        "the wire no longer matches the walkthrough (- written, + captured); if the change \
         is meant, run `{WRITE_VAR}=1 cargo test -p tutorial-bins --test walkthrough` and \
         check the prose around the blocks:\n\n{}",
        failures.join("\n")
    );
}

const OPEN: &str = "<!-- trace:";
const CLOSE: &str = "<!-- /trace -->";

/// A block that changed: its name, what the walkthrough had, what was captured.
type Changed = (String, String, String);

/// `doc` with the lines between each `<!-- trace:NAME -->` line and the next
/// `<!-- /trace -->` line replaced by `blocks[NAME]` as a text code block, and the blocks
/// that changed. Markers count only alone on their line (so the prose can name them). An
/// error for a block the test does not capture, a capture without a block, a block twice, or
/// a block without its end.
fn splice_blocks(
    doc: &str,
    blocks: &BTreeMap<String, String>,
) -> Result<(String, Vec<Changed>), String> {
    let mut out = String::with_capacity(doc.len());
    let mut changed = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut lines = doc.split_inclusive('\n');
    while let Some(line) = lines.next() {
        out.push_str(line);
        let Some(name) = line
            .trim_end()
            .strip_prefix(OPEN)
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut old = String::new();
        let close = loop {
            match lines.next() {
                None => return Err(format!("trace:{name} has no {CLOSE} line")),
                Some(line) if line.trim_end() == CLOSE => break line,
                Some(line) => old.push_str(line),
            }
        };
        let captured = blocks
            .get(name)
            .ok_or_else(|| format!("trace:{name} is not captured by the test"))?;
        if seen.contains(&name) {
            return Err(format!("trace:{name} appears twice"));
        }
        seen.push(name);
        let new = format!("```text\n{captured}```\n");
        if old != new {
            changed.push((name.to_owned(), old, new.clone()));
        }
        out.push_str(&new);
        out.push_str(close);
    }
    let missing: Vec<&String> = blocks
        .keys()
        .filter(|name| !seen.contains(&name.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no block for {missing:?}: add a {OPEN}NAME --> line and a {CLOSE} line"
        ));
    }
    Ok((out, changed))
}

/// A line diff of `old` and `new`: `-` lines only in old, `+` only in new, `  ` common.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table, from the ends.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

// ---- the helpers' own tests --------------------------------------------------------------

#[test]
fn mask_hides_generated_names_and_versions_only() {
    assert_eq!(
        mask(r#"ch=1 basic.consume-ok consumer_tag="amq.ctag-Zx_3-kP0aQ" queue="amq.gen-Ab9""#),
        r#"ch=1 basic.consume-ok consumer_tag="amq.ctag-…" queue="amq.gen-…""#
    );
    assert_eq!(
        mask(
            r#"server_properties={"product": "mini-broker", "version": "0.1.0", "platform": "Rust"}"#
        ),
        r#"server_properties={"product": "mini-broker", "version": "<version>", "platform": "Rust"}"#
    );
    assert_eq!(
        mask(r#"routing_key="task_queue""#),
        r#"routing_key="task_queue""#
    );
}

#[test]
fn splice_blocks_replaces_only_the_marked_blocks_and_reports_changes() {
    let doc = "intro, naming `<!-- trace:a -->` in passing\n\
               <!-- trace:a -->\n```text\nold\n```\n<!-- /trace -->\nmiddle\n\
               <!-- trace:b -->\n```text\nsame\n```\n<!-- /trace -->\nend\n";
    let blocks = BTreeMap::from([
        ("a".to_owned(), "new\n".to_owned()),
        ("b".to_owned(), "same\n".to_owned()),
    ]);
    let (out, changed) = splice_blocks(doc, &blocks).unwrap();
    assert_eq!(
        out,
        "intro, naming `<!-- trace:a -->` in passing\n\
         <!-- trace:a -->\n```text\nnew\n```\n<!-- /trace -->\nmiddle\n\
         <!-- trace:b -->\n```text\nsame\n```\n<!-- /trace -->\nend\n"
    );
    assert_eq!(
        changed,
        vec![(
            "a".to_owned(),
            "```text\nold\n```\n".to_owned(),
            "```text\nnew\n```\n".to_owned()
        )]
    );
}

#[test]
fn splice_blocks_refuses_unknown_missing_twice_and_unclosed_blocks() {
    let one = BTreeMap::from([("a".to_owned(), "x\n".to_owned())]);
    let block = |name: &str| format!("<!-- trace:{name} -->\n<!-- /trace -->\n");
    let unknown = block("a") + &block("zz");
    assert!(splice_blocks(&unknown, &one)
        .unwrap_err()
        .contains("trace:zz is not captured"));
    assert!(splice_blocks("no blocks\n", &one)
        .unwrap_err()
        .contains("no block for [\"a\"]"));
    let twice = block("a") + &block("a");
    assert!(splice_blocks(&twice, &one)
        .unwrap_err()
        .contains("appears twice"));
    assert!(splice_blocks("<!-- trace:a -->\nx\n", &one)
        .unwrap_err()
        .contains("has no <!-- /trace --> line"));
}

#[test]
fn diff_marks_removed_and_added_lines() {
    assert_eq!(diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n- b\n+ x\n  c\n");
}
