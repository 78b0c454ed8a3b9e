//! Crash loop: `kill -9` the broker at random moments under confirmed publishing and acked
//! consuming, restart it, and check that nothing confirmed was lost.
//!
//! ```text
//! cargo run --release -p mini-broker --example crash_loop -- --rounds 50
//! cargo run --release -p mini-broker --example crash_loop -- --rounds 50 --broker target/release/mini-broker
//! # a 256 KiB paging budget: backlogs page out and are read back across the kills
//! cargo run --release -p mini-broker --example crash_loop -- --rounds 20 --paging-threshold 262144
//! ```
//!
//! Each round starts a broker on a data directory kept across rounds, runs `--publishers`
//! publishers (persistent messages, confirms, at most `--window` unconfirmed each) into the
//! durable queue `crash-loop` and one consumer acking every delivery (in about a third of
//! the rounds there is no consumer, so a backlog builds up), and `kill -9`s the broker after
//! a random time. Sometimes it is killed a second time right after the restart (during
//! recovery). Then it restarts the broker and drains the queue, and checks:
//!
//! - lost: a message the broker confirmed that is neither in the queue nor was acked by
//!   the consumer. Must be 0.
//! - order: per publisher, the queue gives messages in publish order (both the consumer's
//!   deliveries and the drain after the restart). Must be 0.
//! - duplicates: a message the consumer acked comes back only as a redelivery (the broker
//!   may have lost the ack in the crash); the drain holds each message once; a message
//!   drained and acked in an earlier round never comes back. Must be 0.
//! - redelivered: messages in the drain that had been delivered before the crash; they
//!   must carry redelivered=true. Those that do not are counted as "unflagged"; since the
//!   store flags every message recovered after a crash, this must be 0 too.
//!
//! By default the broker is this same program in `--serve` mode (it links the broker
//! library, so it is always the code just built); `--broker PATH` runs the real
//! `mini-broker` binary instead. Exits with status 1 if any check failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Confirmation, Connection, FieldTable, PublishConfirm,
    QueueDeclareOptions,
};
use clap::Parser;

const QUEUE: &str = "crash-loop";
/// A durable queue whose confirmed message makes sure the drain's acks are on disk.
const BARRIER_QUEUE: &str = "crash-loop-barrier";

/// Crash-loop options.
#[derive(Debug, Clone, Parser)]
#[command(name = "crash_loop")]
pub struct Options {
    /// Rounds (kill -9 and restart) to run.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 3)]
    pub publishers: u32,
    /// Unconfirmed messages each publisher may have outstanding.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Shortest time from starting the clients to the kill, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub min_kill_ms: u64,
    /// Longest time from starting the clients to the kill, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub max_kill_ms: u64,
    /// Random seed (default: from the clock); printed so that a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The broker binary to run (default: this program in --serve mode).
    #[arg(long)]
    pub broker: Option<PathBuf>,
    /// The data directory (default: a fresh one under the temp dir, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// The built-in broker's paging budget in bytes (default: the broker's): a small one
    /// makes the queue page its backlog out and read it back while it is killed.
    #[arg(long)]
    pub paging_threshold: Option<u64>,
    /// Internal: run as the broker, on this AMQP address.
    #[arg(long, hide = true)]
    pub serve: Option<std::net::SocketAddr>,
}

impl Options {
    /// Defaults, as with no arguments.
    pub fn defaults() -> Options {
        Options::parse_from(["crash_loop"])
    }
}

/// Counts over one round or the whole run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Messages handed to the client library.
    pub published: u64,
    /// basic.ack from the broker.
    pub confirmed: u64,
    /// basic.nack from the broker.
    pub nacked: u64,
    /// Deliveries to the consumer.
    pub consumed: u64,
    /// Acks the consumer sent.
    pub acked: u64,
    /// Messages found in the queue after the restart.
    pub drained: u64,
    /// Of those, delivered before the crash, with redelivered=true.
    pub redelivered: u64,
    /// Of those, delivered before the crash, without redelivered=true.
    pub unflagged: u64,
    /// Of those, acked by the consumer before the crash (the ack was lost in the crash).
    pub ack_lost: u64,
    /// Kills during recovery (right after a restart).
    pub recovery_kills: u64,
    /// Confirmed messages lost.
    pub lost: u64,
    /// Messages out of publish order.
    pub order: u64,
    /// Duplicates that are not redeliveries.
    pub duplicates: u64,
    /// Longest restart (process start to AMQP port open), in milliseconds.
    pub max_restart_ms: u64,
}

impl Counts {
    /// Failed checks.
    pub fn violations(&self) -> u64 {
        self.lost + self.order + self.duplicates + self.unflagged
    }

    fn add(&mut self, other: &Counts) {
        self.published += other.published;
        self.confirmed += other.confirmed;
        self.nacked += other.nacked;
        self.consumed += other.consumed;
        self.acked += other.acked;
        self.drained += other.drained;
        self.redelivered += other.redelivered;
        self.unflagged += other.unflagged;
        self.ack_lost += other.ack_lost;
        self.recovery_kills += other.recovery_kills;
        self.lost += other.lost;
        self.order += other.order;
        self.duplicates += other.duplicates;
        self.max_restart_ms = self.max_restart_ms.max(other.max_restart_ms);
    }
}

/// A message's identity: (publisher, sequence number).
type Key = (u32, u64);

/// xorshift64*: enough randomness for kill times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    /// Starts a broker on `data_dir`; returns it and how long it took to open its port.
    async fn start(options: &Options, data_dir: &Path) -> (Broker, Duration) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("the broker log file");
        let mut command = match &options.broker {
            Some(binary) => {
                let mut command = Command::new(binary);
                command.args(["--listen", &listen, "--mgmt-listen", "127.0.0.1:0"]);
                command
            }
            None => {
                let mut command =
                    Command::new(std::env::current_exe().expect("this program's path"));
                command.args(["--serve", &listen]);
                if let Some(bytes) = options.paging_threshold {
                    command.arg("--paging-threshold").arg(bytes.to_string());
                }
                command
            }
        };
        let started = Instant::now();
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the broker starts");
        let deadline = started + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                let url = format!("amqp://guest:guest@{listen}/%2f");
                return (Broker { child, url }, started.elapsed());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the broker exited with {status}; see {}",
                    data_dir.with_extension("log").display()
                );
            }
            assert!(Instant::now() < deadline, "the broker did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn body(publisher: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut body = vec![0x5a; size.max(16)];
    body[..4].copy_from_slice(&publisher.to_be_bytes());
    body[8..16].copy_from_slice(&seq.to_be_bytes());
    body
}

fn key(body: &[u8]) -> Option<Key> {
    let publisher = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    Some((publisher, seq))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// What one publisher saw until the broker died.
#[derive(Default)]
struct Published {
    next_seq: u64,
    attempted: u64,
    confirmed: Vec<u64>,
    nacked: u64,
}

async fn publisher(
    url: String,
    publisher: u32,
    first_seq: u64,
    window: usize,
    body_size: usize,
) -> Published {
    let mut report = Published {
        next_seq: first_seq,
        ..Published::default()
    };
    let Ok(connection) = Connection::open(&url).await else {
        return report;
    };
    let Ok(channel) = connection.create_channel().await else {
        return report;
    };
    if channel.confirm_select().await.is_err() {
        return report;
    }
    let properties = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let mut pending: VecDeque<(u64, PublishConfirm)> = VecDeque::new();
    loop {
        if pending.len() >= window {
            let Some((seq, confirm)) = pending.pop_front() else {
                break;
            };
            match confirm.await {
                Ok(Confirmation::Ack) => report.confirmed.push(seq),
                Ok(_) => report.nacked += 1,
                Err(_) => break,
            }
        }
        let seq = report.next_seq;
        report.next_seq += 1;
        report.attempted += 1;
        match channel
            .basic_publish(
                "",
                QUEUE,
                properties.clone(),
                body(publisher, seq, body_size),
                false,
            )
            .await
        {
            Ok(confirm) => pending.push_back((seq, confirm)),
            Err(_) => break,
        }
    }
    // Confirms that arrived before the connection died still count.
    for (seq, confirm) in pending {
        match confirm.await {
            Ok(Confirmation::Ack) => report.confirmed.push(seq),
            Ok(_) => report.nacked += 1,
            Err(_) => {}
        }
    }
    report
}

/// What the consumer saw until the broker died.
#[derive(Default)]
struct Consumed {
    /// In delivery order: the message and its redelivered flag.
    deliveries: Vec<(Key, bool)>,
    /// Messages whose ack was handed to the client library.
    acked: HashSet<Key>,
}

async fn consumer(url: String) -> Consumed {
    let mut report = Consumed::default();
    let Ok(connection) = Connection::open(&url).await else {
        return report;
    };
    let Ok(channel) = connection.create_channel().await else {
        return report;
    };
    if channel.basic_qos(500, false).await.is_err() {
        return report;
    }
    let Ok(mut consumer) = channel
        .basic_consume(QUEUE, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
    else {
        return report;
    };
    while let Some(Ok(delivery)) = consumer.next().await {
        let Some(key) = key(&delivery.body) else {
            continue;
        };
        report.deliveries.push((key, delivery.redelivered));
        if delivery.ack().await.is_err() {
            break;
        }
        report.acked.insert(key);
    }
    report
}

/// Everything in the queue, in order, with redelivered flags; the acks are made durable
/// (a confirmed persistent publish after them) before returning.
async fn drain(url: &str) -> Vec<(Key, bool)> {
    let connection = Connection::open(url).await.expect("connect to drain");
    let channel = connection.create_channel().await.expect("a channel");
    let declared = channel
        .queue_declare(QUEUE, durable(), FieldTable::new())
        .await
        .expect("declare");
    let count = declared.message_count as usize;
    channel.basic_qos(2000, false).await.expect("qos");
    let mut consumer = channel
        .basic_consume(QUEUE, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .expect("consume");
    let mut found = Vec::with_capacity(count);
    while found.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("the drain stalled")
            .expect("the consumer ended")
            .expect("a delivery");
        if let Some(key) = key(&delivery.body) {
            found.push((key, delivery.redelivered));
        }
        if found.len() % 1000 == 0 || found.len() == count {
            channel
                .basic_ack(delivery.delivery_tag, true)
                .await
                .expect("ack");
        }
    }
    channel
        .queue_declare(BARRIER_QUEUE, durable(), FieldTable::new())
        .await
        .expect("declare the barrier");
    channel.confirm_select().await.expect("confirm.select");
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let confirm = channel
        .basic_publish("", BARRIER_QUEUE, persistent, "barrier", false)
        .await
        .expect("publish the barrier");
    assert_eq!(confirm.await.expect("barrier confirm"), Confirmation::Ack);
    channel.queue_purge(BARRIER_QUEUE).await.expect("purge");
    let _ = connection.close().await;
    found
}

/// Runs the crash loop; returns the totals.
pub async fn run(options: &Options) -> Counts {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let mut rng = Rng(seed);
    let owned_dir = options.data_dir.is_none();
    let data_dir = options.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mini-broker-crash-loop-{}", std::process::id()))
    });
    if owned_dir {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if !options.quiet {
        println!(
            "crash loop: {} rounds, {} publishers (window {}), {} B bodies, kill after {}..{} ms, seed {seed}, data in {}",
            options.rounds,
            options.publishers,
            options.window,
            options.body_size.max(16),
            options.min_kill_ms,
            options.max_kill_ms,
            data_dir.display()
        );
        println!(
            "round  kill_ms consumer  published confirmed nacked  consumed    acked  drained redeliv unflag ack_lost restart_ms  lost order dups"
        );
    }
    let mut next_seq: Vec<u64> = vec![0; options.publishers as usize];
    let mut totals = Counts::default();
    let started = Instant::now();
    let (mut broker, _) = Broker::start(options, &data_dir).await;
    // Whatever an earlier run left in the queue is drained first.
    drain(&broker.url).await;
    for round in 1..=options.rounds {
        let mut counts = Counts::default();
        // Every message of an earlier round was drained, acked or never stored: none of
        // them may show up again.
        let round_start = next_seq.clone();
        let earlier = |key: &Key| round_start.get(key.0 as usize).is_some_and(|&s| key.1 < s);
        let span = options.max_kill_ms.saturating_sub(options.min_kill_ms);
        let kill_after = options.min_kill_ms + rng.below(span + 1);
        let with_consumer = rng.below(3) != 0;
        let publishers: Vec<_> = (0..options.publishers)
            .map(|p| {
                tokio::spawn(publisher(
                    broker.url.clone(),
                    p,
                    next_seq[p as usize],
                    options.window,
                    options.body_size,
                ))
            })
            .collect();
        let consumer = with_consumer.then(|| tokio::spawn(consumer(broker.url.clone())));
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        broker.kill_9();
        let mut confirmed: HashSet<Key> = HashSet::new();
        for (p, handle) in publishers.into_iter().enumerate() {
            let report = handle.await.expect("publisher task");
            next_seq[p] = report.next_seq;
            counts.published += report.attempted;
            counts.confirmed += report.confirmed.len() as u64;
            counts.nacked += report.nacked;
            confirmed.extend(report.confirmed.into_iter().map(|s| (p as u32, s)));
        }
        let consumed = match consumer {
            Some(handle) => handle.await.expect("consumer task"),
            None => Consumed::default(),
        };
        counts.consumed = consumed.deliveries.len() as u64;
        counts.acked = consumed.acked.len() as u64;
        // The consumer: per publisher in order, each message once (nothing was requeued).
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut seen: HashSet<Key> = HashSet::new();
        for &(key, _) in &consumed.deliveries {
            if !seen.insert(key) || earlier(&key) {
                counts.duplicates += 1;
            }
            if last.get(&key.0).is_some_and(|&s| s >= key.1) {
                counts.order += 1;
            }
            last.insert(key.0, key.1);
        }

        // Restart; sometimes kill it again during recovery.
        let (mut restarted, mut restart_time) = Broker::start(options, &data_dir).await;
        if rng.below(10) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
            restarted.kill_9();
            counts.recovery_kills += 1;
            (restarted, restart_time) = Broker::start(options, &data_dir).await;
        }
        broker = restarted;
        counts.max_restart_ms = restart_time.as_millis() as u64;
        let drained = drain(&broker.url).await;
        counts.drained = drained.len() as u64;
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut in_drain: HashSet<Key> = HashSet::new();
        for &(key, redelivered) in &drained {
            if !in_drain.insert(key) || earlier(&key) {
                counts.duplicates += 1;
            }
            if last.get(&key.0).is_some_and(|&s| s >= key.1) {
                counts.order += 1;
            }
            last.insert(key.0, key.1);
            if seen.contains(&key) {
                if redelivered {
                    counts.redelivered += 1;
                } else {
                    counts.unflagged += 1;
                }
                if consumed.acked.contains(&key) {
                    counts.ack_lost += 1;
                }
            }
        }
        for key in &confirmed {
            if !in_drain.contains(key) && !consumed.acked.contains(key) {
                counts.lost += 1;
                if counts.lost <= 5 {
                    eprintln!("round {round}: confirmed message {key:?} lost");
                }
            }
        }
        if !options.quiet {
            println!(
                "{round:>5} {kill_after:>8} {:>8} {:>10} {:>9} {:>6} {:>9} {:>8} {:>8} {:>7} {:>6} {:>8} {:>10} {:>5} {:>5} {:>4}",
                if with_consumer { "yes" } else { "no" },
                counts.published,
                counts.confirmed,
                counts.nacked,
                counts.consumed,
                counts.acked,
                counts.drained,
                counts.redelivered,
                counts.unflagged,
                counts.ack_lost,
                counts.max_restart_ms,
                counts.lost,
                counts.order,
                counts.duplicates
            );
        }
        totals.add(&counts);
    }
    drop(broker);
    println!(
        "summary: {} rounds in {:.1?} (seed {seed}): published {}, confirmed {}, nacked {}, consumed {}, acked {}, drained after restarts {} (redelivered {}, unflagged redeliveries {}, acks lost in a crash {}), kills during recovery {}, longest restart {} ms; LOST {}, OUT OF ORDER {}, DUPLICATES {}",
        options.rounds,
        started.elapsed(),
        totals.published,
        totals.confirmed,
        totals.nacked,
        totals.consumed,
        totals.acked,
        totals.drained,
        totals.redelivered,
        totals.unflagged,
        totals.ack_lost,
        totals.recovery_kills,
        totals.max_restart_ms,
        totals.lost,
        totals.order,
        totals.duplicates
    );
    if owned_dir {
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
    }
    totals
}

/// `--serve`: be the broker.
async fn serve(listen: std::net::SocketAddr, data_dir: PathBuf, paging_threshold: Option<u64>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = mini_broker::BrokerConfig::default();
    if let Some(bytes) = paging_threshold {
        config.paging_threshold = bytes;
    }
    let running = mini_broker::start(mini_broker::BrokerOptions {
        listen,
        data_dir: Some(data_dir),
        config,
        ..Default::default()
    })
    .await
    .expect("the broker starts");
    std::future::pending::<()>().await;
    drop(running);
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    if let Some(listen) = options.serve {
        let data_dir = options.data_dir.clone().expect("--data-dir with --serve");
        serve(listen, data_dir, options.paging_threshold).await;
        return;
    }
    let totals = run(&options).await;
    if totals.violations() > 0 {
        std::process::exit(1);
    }
}
