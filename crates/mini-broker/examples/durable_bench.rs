//! Durability measurements: confirmed persistent throughput, restart time and memory with a
//! large backlog, and disk usage under steady traffic. Works against mini-broker or RabbitMQ.
//!
//! ```text
//! # 1 producer (persistent, confirms, 1000 unconfirmed at most) and 1 consumer (acks),
//! # durable queue; median of 3 runs
//! cargo run --release -p mini-broker --example durable_bench -- throughput --url amqp://guest:guest@127.0.0.1:5672/%2f
//! # fill a durable queue with 1M persistent 1 KiB messages, then restart the broker and time it
//! cargo run --release -p mini-broker --example durable_bench -- restart --broker target/release/mini-broker --messages 1000000 --body 1024
//! # 2M messages through a durable queue, sampling the message log's size
//! cargo run --release -p mini-broker --example durable_bench -- steady --broker target/release/mini-broker --messages 2000000 --body 1024
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Confirmation, Connection, FieldTable, PublishConfirm,
    QueueDeclareOptions,
};
use clap::{Parser, Subcommand};

const QUEUE: &str = "durable-bench";

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Confirmed persistent publishing with a concurrent acking consumer.
    Throughput {
        /// The broker.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        /// Messages per run.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Body size.
        #[arg(long, default_value_t = 16)]
        body: usize,
        /// Unconfirmed messages the producer may have outstanding.
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// The consumer's prefetch (basic.qos).
        #[arg(long, default_value_t = 1000)]
        prefetch: u16,
        /// Runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Fills a durable queue with persistent messages, restarts the broker, and reports
    /// the restart time and the broker's memory (RSS) before and after.
    Restart {
        /// The mini-broker binary.
        #[arg(long)]
        broker: PathBuf,
        /// Its data directory (default: a fresh one under the temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Messages to fill the queue with.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Body size.
        #[arg(long, default_value_t = 16)]
        body: usize,
    },
    /// Publishes and consumes `messages` through a durable queue, sampling the size of the
    /// message log.
    Steady {
        /// The mini-broker binary.
        #[arg(long)]
        broker: PathBuf,
        /// Messages.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Body size.
        #[arg(long, default_value_t = 1024)]
        body: usize,
    },
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Publishes `messages` persistent messages with at most `window` unconfirmed; returns how
/// many were acked.
async fn produce(url: String, messages: u64, body: usize, window: usize) -> u64 {
    let connection = Connection::open(&url).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select().await.expect("confirm.select");
    let payload = bytes::Bytes::from(vec![0x42u8; body]);
    let mut pending: VecDeque<PublishConfirm> = VecDeque::with_capacity(window);
    let mut acked = 0;
    for _ in 0..messages {
        if pending.len() >= window {
            if let Some(confirm) = pending.pop_front() {
                if confirm.await.expect("confirm") == Confirmation::Ack {
                    acked += 1;
                }
            }
        }
        let confirm = channel
            .basic_publish("", QUEUE, persistent(), payload.clone(), false)
            .await
            .expect("publish");
        pending.push_back(confirm);
    }
    for confirm in pending {
        if confirm.await.expect("confirm") == Confirmation::Ack {
            acked += 1;
        }
    }
    let _ = connection.close().await;
    acked
}

/// Consumes and acks `messages` messages; counts them in `consumed`.
async fn consume(url: String, messages: u64, prefetch: u16, consumed: Arc<AtomicU64>) {
    let connection = Connection::open(&url).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel.basic_qos(prefetch, false).await.expect("qos");
    let mut consumer = channel
        .basic_consume(QUEUE, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .expect("consume");
    for _ in 0..messages {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .expect("a delivery within 60 s")
            .expect("consumer open")
            .expect("delivery");
        channel
            .basic_ack(delivery.delivery_tag, false)
            .await
            .expect("ack");
        consumed.fetch_add(1, Ordering::Relaxed);
    }
    let _ = connection.close().await;
}

async fn reset_queue(url: &str) {
    let connection = Connection::open(url).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(QUEUE, durable(), FieldTable::new())
        .await
        .expect("declare");
    channel.queue_purge(QUEUE).await.expect("purge");
    let _ = connection.close().await;
}

/// One run: (publish rate, consume rate) in messages per second.
async fn throughput_run(
    url: &str,
    messages: u64,
    body: usize,
    window: usize,
    prefetch: u16,
) -> (f64, f64) {
    reset_queue(url).await;
    let consumed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let consumer = tokio::spawn(consume(
        url.to_owned(),
        messages,
        prefetch,
        consumed.clone(),
    ));
    let acked = produce(url.to_owned(), messages, body, window).await;
    let published_in = started.elapsed();
    consumer.await.expect("consumer");
    let consumed_in = started.elapsed();
    assert_eq!(acked, messages, "every message confirmed");
    (
        messages as f64 / published_in.as_secs_f64(),
        messages as f64 / consumed_in.as_secs_f64(),
    )
}

/// Starts the broker and waits until it answers a queue.declare: (broker, time from the
/// start to the answer, messages in the queue).
async fn restart(binary: &Path, data_dir: &Path, log: &Path) -> (Broker, Duration, u32) {
    let started = Instant::now();
    let (broker, _) = Broker::start(binary, data_dir, log).await;
    let connection = Connection::open(&broker.url).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(QUEUE, durable(), FieldTable::new())
        .await
        .expect("declare");
    let took = started.elapsed();
    let _ = connection.close().await;
    (broker, took, declared.message_count)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    async fn start(binary: &Path, data_dir: &Path, log: &Path) -> (Broker, Duration) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--mgmt-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("broker starts");
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
                return (Broker { child, url }, started.elapsed());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the broker exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn stop(&mut self) {
        // SIGTERM: a clean shutdown.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (files, bytes) of the message log.
fn log_size(data_dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("messages")) else {
        return (0, 0);
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::main]
async fn main() {
    match Args::parse().command {
        Mode::Throughput {
            url,
            messages,
            body,
            window,
            prefetch,
            runs,
        } => {
            let mut publish = Vec::new();
            let mut consume = Vec::new();
            for run in 1..=runs {
                let (p, c) = throughput_run(&url, messages, body, window, prefetch).await;
                println!("run {run}: publish {p:.0} msg/s, consume {c:.0} msg/s");
                publish.push(p);
                consume.push(c);
            }
            println!(
                "median of {runs}: publish {:.0} msg/s, consume {:.0} msg/s ({messages} messages of {body} B, window {window}, prefetch {prefetch})",
                median(&mut publish),
                median(&mut consume)
            );
        }
        Mode::Restart {
            broker,
            data_dir,
            messages,
            body,
        } => {
            let data_dir = data_dir.unwrap_or_else(|| fresh_dir("restart"));
            let log = data_dir.with_extension("log");
            let (mut running, _) = Broker::start(&broker, &data_dir, &log).await;
            reset_queue(&running.url).await;
            let idle = running.rss_mib();
            let started = Instant::now();
            let acked = produce(running.url.clone(), messages, body, 1000).await;
            let filled_in = started.elapsed();
            let filled = running.rss_mib();
            let (files, bytes) = log_size(&data_dir);
            println!(
                "filled {acked} persistent {body} B messages in {filled_in:.1?} ({:.0} msg/s); RSS {idle:.0} MiB idle -> {filled:.0} MiB; message log {files} files, {:.0} MiB",
                acked as f64 / filled_in.as_secs_f64(),
                bytes as f64 / 1048576.0
            );
            running.stop();
            let (mut restarted, took, count) = restart(&broker, &data_dir, &log).await;
            println!(
                "clean restart: serving (queue.declare-ok: {count} messages) after {took:.2?}; RSS {:.0} MiB",
                restarted.rss_mib()
            );
            let _ = restarted.child.kill();
            let _ = restarted.child.wait();
            let (restarted, took, count) = restart(&broker, &data_dir, &log).await;
            println!(
                "restart after kill -9: serving ({count} messages) after {took:.2?}; RSS {:.0} MiB",
                restarted.rss_mib()
            );
            drop(restarted);
            let recovered: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("recovered") || l.contains("restored"))
                .map(str::to_owned)
                .collect();
            for line in recovered {
                println!("  log: {line}");
            }
        }
        Mode::Steady {
            broker,
            messages,
            body,
        } => {
            let data_dir = fresh_dir("steady");
            let log = data_dir.with_extension("log");
            let (running, _) = Broker::start(&broker, &data_dir, &log).await;
            reset_queue(&running.url).await;
            let consumed = Arc::new(AtomicU64::new(0));
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let data_dir = data_dir.clone();
                let done = done.clone();
                let consumed = consumed.clone();
                tokio::spawn(async move {
                    let mut max = (0, 0u64);
                    let mut samples = 0;
                    while !done.load(Ordering::Relaxed) {
                        let (files, bytes) = log_size(&data_dir);
                        max = (max.0.max(files), max.1.max(bytes));
                        samples += 1;
                        if samples % 20 == 0 {
                            println!(
                                "  {:>8} consumed: message log {files} files, {:.1} MiB",
                                consumed.load(Ordering::Relaxed),
                                bytes as f64 / 1048576.0
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    max
                })
            };
            let started = Instant::now();
            let consumer = tokio::spawn(consume(
                running.url.clone(),
                messages,
                1000,
                consumed.clone(),
            ));
            let acked = produce(running.url.clone(), messages, body, 1000).await;
            consumer.await.expect("consumer");
            let took = started.elapsed();
            done.store(true, Ordering::Relaxed);
            let max = sampler.await.expect("sampler");
            // Give the writer its idle sync and reclaim.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (files, bytes) = log_size(&data_dir);
            println!(
                "{acked} persistent {body} B messages published and consumed in {took:.1?} ({:.0} msg/s; {:.0} MiB of bodies); message log at most {} files / {:.1} MiB, at the end {files} files / {:.1} MiB",
                acked as f64 / took.as_secs_f64(),
                (acked * body as u64) as f64 / 1048576.0,
                max.0,
                max.1 as f64 / 1048576.0,
                bytes as f64 / 1048576.0
            );
            drop(running);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
}
