//! `amqp-sniff` run as a process between real clients and brokers, and `AMQP_TRACE` on a
//! client and a broker.
//!
//! The sniffer's transparency is checked from outside: the tests put a recording proxy of
//! their own on each side of it (client → front recorder → amqp-sniff → behind recorder →
//! broker) and compare what each recorder saw, octet for octet, in both directions. Then
//! they read what the sniffer printed.
//!
//! Brokers: mini-broker, started in-process on a free port; and RabbitMQ at `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`), skipped when absent unless
//! `REQUIRE_RABBITMQ=1`, as CI sets it. The pika test needs python3 with pika, which CI
//! installs; it too is skipped when absent, unless `REQUIRE_RABBITMQ=1`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use amqp_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};
use mini_broker::{BrokerOptions, RunningBroker};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a test waits for something that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- the sniffer as a process ---------------------------------------------------------------

/// `amqp-sniff` running as a child process, its stdout collected by a thread.
struct Sniffer {
    child: Child,
    address: SocketAddr,
    stdout: Arc<Mutex<String>>,
}

impl Sniffer {
    /// Starts `amqp-sniff --listen 127.0.0.1:0 --upstream <upstream> <extra>` and reads the
    /// address it listens on from its first line on stderr.
    fn start(upstream: SocketAddr, extra: &[&str]) -> Sniffer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-sniff"))
            .args(["--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("amqp-sniff starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        let address = first
            .strip_prefix("amqp-sniff: listening on ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from amqp-sniff: {first:?}"));
        // Keep draining stderr so the sniffer never blocks on it.
        thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
        });
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stdout.take().unwrap();
        let collected = stdout.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Sniffer {
            child,
            address,
            stdout,
        }
    }

    /// Waits until the output satisfies `done`, and returns it; fails the test after
    /// [`PATIENCE`].
    async fn output_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let output = self.stdout.lock().unwrap().clone();
            if done(&output) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "amqp-sniff never printed {what}; it printed:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- recording proxies on either side of it -------------------------------------------------

/// What one connection carried through a [`Recorder`].
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Recording {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

/// A plain forwarding proxy that records both directions of every connection.
struct Recorder {
    address: SocketAddr,
    /// Connections whose both directions have ended.
    finished: Arc<Mutex<Vec<Recording>>>,
    accept: JoinHandle<()>,
}

impl Recorder {
    async fn start(target: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let finished = Arc::new(Mutex::new(Vec::new()));
        let done = finished.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let done = done.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let mut up = tokio::spawn(copy_recording(client_read, server_write));
                    let mut down = tokio::spawn(copy_recording(server_read, client_write));
                    // When one direction fails, the other gets a moment, then is cut.
                    let (to_server, to_client) = tokio::select! {
                        up_done = &mut up => (up_done.unwrap(), finish(down).await),
                        down_done = &mut down => (finish(up).await, down_done.unwrap()),
                    };
                    done.lock().unwrap().push(Recording {
                        to_server: to_server.0,
                        to_client: to_client.0,
                    });
                });
            }
        });
        Recorder {
            address,
            finished,
            accept,
        }
    }

    /// The recordings, once `count` connections have ended.
    async fn finished(&self, count: usize) -> Vec<Recording> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let finished = self.finished.lock().unwrap().clone();
            if finished.len() >= count {
                return finished;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} connections through the recorder ended",
                finished.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The other direction's recording: whatever it had when it ended, or within two seconds.
async fn finish(mut task: JoinHandle<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    match tokio::time::timeout(Duration::from_secs(2), &mut task).await {
        Ok(result) => result.unwrap(),
        Err(_) => {
            task.abort();
            (Vec::new(), false)
        }
    }
}

/// Copies one direction, recording it; at its end passes the half-close on. Returns the
/// octets and whether it ended cleanly.
async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return (seen, true);
            }
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    return (seen, false);
                }
            }
            Err(_) => return (seen, false),
        }
    }
}

/// Asserts two recordings are the same, saying where they first differ if not.
fn assert_same(front: &Recording, behind: &Recording) {
    for (what, a, b) in [
        ("client to server", &front.to_server, &behind.to_server),
        ("server to client", &front.to_client, &behind.to_client),
    ] {
        let first_difference = a.iter().zip(b.iter()).position(|(x, y)| x != y);
        assert!(
            a == b,
            "{what}: {} octets went into the sniffer, {} came out; first difference at {:?}",
            a.len(),
            b.len(),
            first_difference
        );
    }
}

// ---- brokers and clients --------------------------------------------------------------------

async fn start_mini_broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await
    .expect("mini-broker starts")
}

fn required() -> bool {
    std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1")
}

/// `AMQP_URL` when a RabbitMQ answers there; None (after saying so) when not, or a failure
/// when `REQUIRE_RABBITMQ=1` (the pattern of the workspace's `tests/lib.rs`).
async fn rabbitmq_url(test: &str) -> Option<String> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let address = authority(&url).1.to_owned();
    let address = if address.contains(':') {
        address
    } else {
        format!("{address}:5672")
    };
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&address)).await,
        Ok(Ok(_))
    );
    if reachable {
        return Some(url);
    }
    assert!(
        !required(),
        "{test}: REQUIRE_RABBITMQ=1 but no RabbitMQ answers at {address} (AMQP_URL={url})"
    );
    eprintln!("SKIPPED {test}: no RabbitMQ at {address}; set AMQP_URL or start one (REQUIRE_RABBITMQ=1 makes this a failure)");
    None
}

/// The user info (with its `@`, or empty) and the `host:port` of an amqp:// URL.
fn authority(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    }
}

/// `url` with its host and port replaced by `address`: the same broker, through a proxy.
fn url_through(url: &str, address: SocketAddr) -> String {
    let (user, host) = authority(url);
    let scheme = url.split_once("://").map_or("amqp", |(s, _)| s);
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    debug_assert!(!host.is_empty());
    format!("{scheme}://{user}{address}{path}")
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Our client: declare `queue`, publish `body` to it, basic.get it back, close.
async fn publish_and_get(url: &str, queue: &str, body: &str) {
    let connection = Connection::open(url).await.expect("connects");
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, options, FieldTable::new())
        .await
        .unwrap();
    channel
        .basic_publish(
            "",
            queue,
            BasicProperties::default(),
            body.as_bytes().to_vec(),
            false,
        )
        .await
        .unwrap();
    let got = channel
        .basic_get(queue, true)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(&got.delivery.body[..], body.as_bytes());
    channel.queue_delete(queue, false, false).await.unwrap();
    connection.close().await.unwrap();
}

/// pika: declare `queue`, publish `body`, basic.get it and print it, delete the queue, close.
const PIKA_SCRIPT: &str = r#"
import sys, pika
port, queue, body = int(sys.argv[1]), sys.argv[2], sys.argv[3]
connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=port))
channel = connection.channel()
channel.queue_declare(queue=queue, auto_delete=True)
channel.basic_publish(exchange="", routing_key=queue, body=body.encode())
method, properties, got = channel.basic_get(queue=queue, auto_ack=True)
print(got.decode())
channel.queue_delete(queue=queue)
connection.close()
"#;

/// Whether python3 can import pika; says so (or fails, when required) if not.
fn pika_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !ok {
        assert!(
            !required(),
            "{test}: REQUIRE_RABBITMQ=1 but python3 cannot import pika"
        );
        eprintln!("SKIPPED {test}: python3 with pika is not installed (REQUIRE_RABBITMQ=1 makes this a failure)");
    }
    ok
}

/// The lines of `output` of connection `#n`.
fn lines_of(output: &str, n: u64) -> Vec<&str> {
    let tag = format!(" #{n} ");
    output.lines().filter(|l| l.contains(&tag)).collect()
}

/// Asserts some line of `lines` contains each of `parts`, in order.
fn assert_line(lines: &[&str], parts: &[&str]) {
    let found = lines.iter().any(|line| {
        let mut rest = *line;
        parts.iter().all(|part| match rest.find(part) {
            Some(at) => {
                rest = &rest[at + part.len()..];
                true
            }
            None => false,
        })
    });
    assert!(found, "no line with {parts:?} among:\n{}", lines.join("\n"));
}

// ---- the tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_between_pika_and_mini_broker_forwards_every_octet_and_prints_each_frame() {
    let test = "sniff_between_pika_and_mini_broker";
    if !pika_available(test) {
        return;
    }
    let broker = start_mini_broker().await;
    let behind = Recorder::start(broker.amqp_addr).await;
    let sniffer = Sniffer::start(behind.address, &[]);
    let front = Recorder::start(sniffer.address).await;
    let queue = unique("sniff-pika");
    let body = format!("Hello from pika {}", std::process::id());

    let output = tokio::process::Command::new("python3")
        .args([
            "-c",
            PIKA_SCRIPT,
            &front.address.port().to_string(),
            &queue,
            &body,
        ])
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("pika finishes")
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "pika failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), body);

    let front_saw = front.finished(1).await;
    let behind_saw = behind.finished(1).await;
    assert_same(&front_saw[0], &behind_saw[0]);
    assert!(front_saw[0].to_server.starts_with(b"AMQP\x00\x00\x09\x01"));

    let printed = sniffer
        .output_when("#1 closed", |o| o.contains("#1 closed"))
        .await;
    let lines = lines_of(&printed, 1);
    assert_line(&lines, &["#1 -> 8B protocol-header AMQP 0-9-1"]);
    assert_line(
        &lines,
        &["#1 <- ", "B ch=0 connection.start version_major=0"],
    );
    assert_line(&lines, &["#1 -> ", "B ch=0 connection.start-ok ", "Pika"]);
    assert_line(
        &lines,
        &[
            "#1 -> ",
            &format!("B ch=1 basic.publish exchange=\"\" routing_key=\"{queue}\""),
        ],
    );
    // Body frames: 8 octets of framing around the body.
    let body_line = format!(
        "{}B ch=1 content-body size={} \"{body}\"",
        body.len() + 8,
        body.len()
    );
    assert_line(&lines, &["#1 -> ", &body_line]);
    assert_line(&lines, &["#1 <- ", "ch=1 basic.get-ok delivery_tag=1"]);
    assert_line(&lines, &["#1 <- ", &body_line]);
    assert_line(&lines, &["#1 <- ", "ch=0 connection.close-ok"]);
    assert_line(
        &lines,
        &[&format!(
            "#1 closed: the client sent {} octets, the server {}",
            front_saw[0].to_server.len(),
            front_saw[0].to_client.len()
        )],
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_between_our_client_and_rabbitmq_forwards_every_octet_and_prints_each_frame() {
    let test = "sniff_between_our_client_and_rabbitmq";
    let Some(url) = rabbitmq_url(test).await else {
        return;
    };
    let (_, host) = authority(&url);
    let rabbitmq: SocketAddr = tokio::net::lookup_host(if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    })
    .await
    .unwrap()
    .next()
    .unwrap();
    let behind = Recorder::start(rabbitmq).await;
    let sniffer = Sniffer::start(behind.address, &["--body-limit", "16"]);
    let front = Recorder::start(sniffer.address).await;
    let queue = unique("sniff-rabbitmq");
    let body = "a body longer than sixteen octets";

    publish_and_get(&url_through(&url, front.address), &queue, body).await;

    let front_saw = front.finished(1).await;
    let behind_saw = behind.finished(1).await;
    assert_same(&front_saw[0], &behind_saw[0]);
    let printed = sniffer
        .output_when("#1 closed", |o| o.contains("#1 closed"))
        .await;
    let lines = lines_of(&printed, 1);
    assert_line(&lines, &["#1 -> 8B protocol-header AMQP 0-9-1"]);
    assert_line(
        &lines,
        &[
            "#1 <- ",
            "ch=0 connection.start ",
            "\"product\": \"RabbitMQ\"",
        ],
    );
    assert_line(
        &lines,
        &[
            "#1 -> ",
            &format!("ch=1 basic.publish exchange=\"\" routing_key=\"{queue}\""),
        ],
    );
    // --body-limit 16: the body is cut after 16 octets, and says so.
    assert_line(
        &lines,
        &["#1 -> 41B ch=1 content-body size=33 \"a body longer th\"..."],
    );
    assert_line(&lines, &["#1 <- ", "ch=1 basic.get-ok "]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_given_http_instead_of_amqp_prints_hex_forwards_it_unchanged_and_keeps_serving() {
    let broker = start_mini_broker().await;
    let behind = Recorder::start(broker.amqp_addr).await;
    let mut sniffer = Sniffer::start(behind.address, &[]);
    let request = b"GET / HTTP/1.1\r\n\r\n";

    let mut socket = TcpStream::connect(sniffer.address).await.unwrap();
    socket.write_all(request).await.unwrap();
    // The broker answers with the protocol header it speaks, and hangs up (spec 4.2.2).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the broker never hung up");
    assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
    drop(socket);

    let behind_saw = behind.finished(1).await;
    assert_eq!(behind_saw[0].to_server, request);
    assert_eq!(behind_saw[0].to_client, b"AMQP\x00\x00\x09\x01");
    let printed = sniffer
        .output_when("#1 closed", |o| o.contains("#1 closed"))
        .await;
    let lines = lines_of(&printed, 1);
    assert_line(
        &lines,
        &[
            "#1 -> undecodable at offset 0 (501 FRAME_ERROR: unknown frame type 71)",
            "18 octets: 47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a 0d 0a |GET / HTTP/1.1....|",
        ],
    );
    assert_line(&lines, &["#1 <- 8B protocol-header AMQP 0-9-1"]);

    // Still up, and still decoding other connections.
    assert!(sniffer.is_running());
    publish_and_get(
        &format!("amqp://guest:guest@{}/%2f", sniffer.address),
        &unique("sniff-after-http"),
        "still here",
    )
    .await;
    let printed = sniffer
        .output_when("#2 closed", |o| o.contains("#2 closed"))
        .await;
    assert_line(
        &lines_of(&printed, 2),
        &["#2 <- ", "B ch=0 connection.open-ok"],
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_with_20_concurrent_connections_forwards_each_unchanged_and_numbers_them() {
    const CONNECTIONS: u64 = 20;
    let broker = start_mini_broker().await;
    let behind = Recorder::start(broker.amqp_addr).await;
    let sniffer = Sniffer::start(behind.address, &["--json"]);
    let front = Recorder::start(sniffer.address).await;
    let url = format!("amqp://guest:guest@{}/%2f", front.address);

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                publish_and_get(&url, &unique("sniff-many"), &format!("message {i}")).await
            })
        })
        .collect();
    for client in clients {
        client.await.expect("every client completes");
    }

    let mut front_saw = front.finished(CONNECTIONS as usize).await;
    let mut behind_saw = behind.finished(CONNECTIONS as usize).await;
    // Each connection declares its own queue, so no two recordings are alike: sorted, the
    // two sides must pair up one for one.
    front_saw.sort();
    behind_saw.sort();
    for (front, behind) in front_saw.iter().zip(&behind_saw) {
        assert_same(front, behind);
    }

    let printed = sniffer
        .output_when("20 closed connections", |o| {
            o.matches(r#""type":"close""#).count() == CONNECTIONS as usize
        })
        .await;
    let objects: Vec<Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let mut opened: Vec<u64> = objects
        .iter()
        .filter(|o| o["type"] == "method" && o["class"] == "connection" && o["method"] == "open-ok")
        .map(|o| o["conn"].as_u64().unwrap())
        .collect();
    opened.sort_unstable();
    assert_eq!(opened, (1..=CONNECTIONS).collect::<Vec<_>>());
    let bodies = objects
        .iter()
        .filter(|o| o["type"] == "body" && o["dir"] == "recv")
        .count();
    assert_eq!(bodies, CONNECTIONS as usize);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_cannot_listen_on_a_taken_port_exits_saying_so() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_amqp-sniff"))
        .args(["--listen", &address, "--upstream", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("amqp-sniff: cannot listen on {address}: ")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniff_with_unreachable_upstream_says_so_and_closes_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let sniffer = Sniffer::start(free, &[]);
    let mut socket = TcpStream::connect(sniffer.address).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the sniffer kept the client's connection open"
    );
    let printed = sniffer
        .output_when("the upstream failure", |o| o.contains("cannot connect"))
        .await;
    assert_line(
        &lines_of(&printed, 1),
        &[
            &format!("#1 cannot connect to {free}: "),
            "closing the client's connection",
        ],
    );
}

// ---- AMQP_TRACE ------------------------------------------------------------------------------

/// The traced program of the `AMQP_TRACE` tests: a mini-broker and our client in one process,
/// publishing and getting one message. Run only as a child process, with `AMQP_TRACE` set,
/// by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of amqp_trace_*: run by them with AMQP_TRACE set"]
async fn traced_session() {
    let broker = start_mini_broker().await;
    publish_and_get(&broker.url(), "traced-queue", "traced hello").await;
    broker.shutdown().await;
}

/// Runs [`traced_session`] in a child process with `AMQP_TRACE=<value>`; returns its stderr.
fn run_traced_session(value: &str) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "traced_session", "--ignored", "--nocapture"])
        .env("AMQP_TRACE", value)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "the traced session failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn amqp_trace_1_prints_every_frame_of_client_and_broker_on_stderr() {
    let stderr = run_traced_session("1");
    let lines: Vec<&str> = stderr.lines().collect();
    // Every line starts with the time, seconds to the microsecond.
    for line in &lines {
        let time = line.split_whitespace().next().unwrap_or("");
        let (secs, micros) = time.split_once('.').unwrap_or(("", ""));
        assert!(
            secs.parse::<u64>().is_ok() && micros.len() == 6,
            "no time at the start of {line:?}"
        );
    }
    assert_line(&lines, &["client#", " connection with 127.0.0.1:"]);
    assert_line(&lines, &["client#", " -> 8B protocol-header AMQP 0-9-1"]);
    assert_line(
        &lines,
        &["client#", " <- ", "B ch=0 connection.start version_major=0"],
    );
    assert_line(
        &lines,
        &[
            "client#",
            " -> ",
            "B ch=1 basic.publish exchange=\"\" routing_key=\"traced-queue\"",
        ],
    );
    assert_line(
        &lines,
        &[
            "client#",
            " -> 20B ch=1 content-body size=12 \"traced hello\"",
        ],
    );
    assert_line(
        &lines,
        &["client#", " <- ", "B ch=1 basic.get-ok delivery_tag=1"],
    );
    // The broker's side of the same conversation.
    assert_line(&lines, &["broker#", " connection with 127.0.0.1:"]);
    assert_line(&lines, &["broker#", " <- 8B protocol-header AMQP 0-9-1"]);
    assert_line(&lines, &["broker#", " -> ", "B ch=0 connection.start "]);
    assert_line(
        &lines,
        &[
            "broker#",
            " <- 20B ch=1 content-body size=12 \"traced hello\"",
        ],
    );
    assert_line(&lines, &["broker#", " -> ", "B ch=0 connection.close-ok"]);
}

#[test]
fn amqp_trace_json_prints_one_json_object_per_frame_on_stderr() {
    let stderr = run_traced_session("json");
    let objects: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let sent_body = objects
        .iter()
        .find(|o| o["role"] == "client" && o["dir"] == "send" && o["type"] == "body");
    let sent_body = sent_body.expect("the client's body frame");
    assert_eq!(sent_body["body"], "traced hello");
    // "octets": the whole frame; "size": its body.
    assert_eq!(sent_body["octets"], 20);
    assert_eq!(sent_body["size"], 12);
    assert!(sent_body["time"].is_f64() && sent_body["conn"].is_u64());
    assert!(objects.iter().any(|o| o["role"] == "broker"
        && o["dir"] == "recv"
        && o["type"] == "method"
        && o["method"] == "publish"
        && o["fields"]["routing-key"] == "traced-queue"));
}
