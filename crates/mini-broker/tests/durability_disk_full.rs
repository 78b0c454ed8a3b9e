//! A full disk, for real: the broker's data directory is on a small tmpfs (mounted by the
//! test, which needs root; without it the tests print SKIPPED and pass; the same failure
//! paths are covered without root by the store's unit tests, through a fault-injection hook,
//! and the disk alarm by the in-process test at the end).
//!
//! Once the disk is full, the persistent publishes on their way to it get basic.nack and the
//! log says why; the disk alarm goes on, as in RabbitMQ: publishers that announced the
//! capability get connection.blocked and are no longer read from, while consumers keep
//! consuming and acking. When space comes back (a file is deleted, or consumers ack
//! messages so that the log can drop them) the store writes again, the alarm clears, the
//! publishers get connection.unblocked and go on, without a restart. After a kill -9 and a
//! restart every confirmed message is there, in order, and acked ones stay gone. Free space
//! below `disk_free_limit` raises the same alarm.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Confirmation, Connection, FieldTable,
    PublishConfirm, QueueDeclareOptions,
};
use mini_broker::{BrokerConfig, BrokerOptions};

const BODY_SIZE: usize = 4096;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "4m"); None (and a SKIPPED line) if that is not
    /// permitted here.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!(
            "mini-broker-disk-full-{test}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(err) => {
                eprintln!("SKIPPED {test}: cannot run mount: {err}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One test's small disk: the tmpfs, the data directory on it, and the broker's log and
/// configuration file (outside the tmpfs, removed when dropped).
struct DiskTest {
    tmpfs: Tmpfs,
    data_dir: PathBuf,
    log: PathBuf,
}

impl DiskTest {
    fn new(test: &str, size: &str) -> Option<DiskTest> {
        let tmpfs = Tmpfs::mount(test, size)?;
        let data_dir = tmpfs.dir.join("data");
        let log = std::env::temp_dir().join(format!(
            "mini-broker-disk-{test}-{}.log",
            std::process::id()
        ));
        Some(DiskTest {
            tmpfs,
            data_dir,
            log,
        })
    }

    async fn spawn(&self, disk_free_limit: u64) -> BrokerProcess {
        spawn_broker(&self.data_dir, &self.log, disk_free_limit).await
    }
}

impl Drop for DiskTest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(self.log.with_extension("toml"));
    }
}

struct BrokerProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl BrokerProcess {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `line` (or after 5 s, for the caller's assertion to show it):
    /// the broker changes an alarm's state before it writes the line that says so, so a
    /// client can see connection.blocked a moment before the log does.
    async fn log_text_once_it_says(&self, line: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.log_text();
            if text.contains(line) || tokio::time::Instant::now() >= deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the broker binary on `data_dir` with this `disk_free_limit`, its log
/// (RUST_LOG=info) appended to `log`.
async fn spawn_broker(data_dir: &Path, log: &Path, disk_free_limit: u64) -> BrokerProcess {
    let port = free_port();
    let config = log.with_extension("toml");
    std::fs::write(&config, format!("disk_free_limit = {disk_free_limit}\n")).unwrap();
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--mgmt-listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut broker = BrokerProcess {
        child,
        url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        log: log.to_owned(),
    };
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return broker;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    broker.kill();
    panic!("mini-broker did not start: {}", broker.log_text());
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

fn body(n: u64) -> Vec<u8> {
    let mut body = vec![0u8; BODY_SIZE];
    body[..8].copy_from_slice(&n.to_be_bytes());
    body
}

fn number(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// What became of the persistent publishes to one queue.
#[derive(Default)]
struct Outcome {
    acked: Vec<u64>,
    nacked: Vec<u64>,
}

fn record(outcome: &mut Outcome, n: u64, confirmation: Confirmation) {
    match confirmation {
        Confirmation::Ack => outcome.acked.push(n),
        Confirmation::Nack => outcome.nacked.push(n),
        Confirmation::NotRequested => panic!("not in confirm mode"),
    }
}

/// Publishes one persistent message every 100 ms until one is acked; its number.
async fn publish_until_acked(channel: &Channel, queue: &str, next: &mut u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = *next;
        *next += 1;
        let confirm = channel
            .basic_publish("", queue, persistent(), body(n), false)
            .await
            .unwrap();
        if confirm.await.unwrap() == Confirmation::Ack {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "persistent publishes still nacked 15 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message in `queue`, fetched with basic.get (no-ack), by number.
async fn drain(channel: &Channel, queue: &str) -> Vec<u64> {
    let mut found = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).await.unwrap() {
        found.push(number(&message.delivery.body));
    }
    found
}

/// Publishes persistent messages numbered from 0, 50 unconfirmed at most, until `stop` is
/// set; then waits for every confirm. Runs as its own task: while the connection is blocked
/// it waits (its publishes are not read, or the client holds them back).
fn publish_until_stopped(
    channel: Channel,
    queue: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Outcome, u64)> {
    tokio::spawn(async move {
        let mut outcome = Outcome::default();
        let mut pending: VecDeque<(u64, PublishConfirm)> = VecDeque::new();
        let mut next = 0u64;
        while !stop.load(Ordering::Relaxed) && next < 20_000 {
            let confirm = channel
                .basic_publish("", queue, persistent(), body(next), false)
                .await
                .unwrap();
            pending.push_back((next, confirm));
            next += 1;
            if pending.len() >= 50 {
                let (n, confirm) = pending.pop_front().unwrap();
                record(&mut outcome, n, confirm.await.unwrap());
            }
        }
        for (n, confirm) in pending {
            record(&mut outcome, n, confirm.await.unwrap());
        }
        (outcome, next)
    })
}

/// Publishes persistent messages to "full" with confirms until the disk alarm blocks the
/// connection; the publisher task then finishes once unblocked: its outcome and how many
/// it published.
async fn fill_until_blocked(
    connection: &Connection,
    channel: Channel,
) -> tokio::task::JoinHandle<(Outcome, u64)> {
    channel.confirm_select().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until_stopped(channel, "full", stop.clone());
    wait_blocked(
        connection,
        true,
        Duration::from_secs(60),
        "connection.blocked once the disk is full",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher
}

async fn wait_blocked(connection: &Connection, blocked: bool, within: Duration, what: &str) {
    let mut watch = connection.blocked_watch();
    tokio::time::timeout(within, watch.wait_for(|b| *b == blocked))
        .await
        .unwrap_or_else(|_| panic!("{what} within {within:?}"))
        .unwrap();
}

#[tokio::test]
async fn full_disk_raises_the_disk_alarm_blocks_publishers_and_loses_nothing_confirmed() {
    let Some(disk) = DiskTest::new("freed", "4m") else {
        return;
    };
    // Ballast: 1.5 MiB of the 4 MiB, deleted later to free space. No disk_free_limit: only
    // the failing store raises the alarm here.
    let ballast = disk.tmpfs.dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1536 * 1024]).unwrap();
    let mut broker = disk.spawn(0).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("full", durable(), FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_declare("scratch", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    channel
        .basic_publish(
            "",
            "scratch",
            BasicProperties::default(),
            body(u64::MAX),
            false,
        )
        .await
        .unwrap();
    let publisher = fill_until_blocked(&connection, channel).await;
    let text = broker
        .log_text_once_it_says("disk resource limit alarm set")
        .await;
    let reason = text
        .lines()
        .find(|line| line.contains("No space left on device"))
        .unwrap_or_else(|| panic!("no log line says the disk is full:\n{text}"));
    assert!(reason.contains("basic.nack"), "{reason}");
    assert!(reason.contains("ERROR"), "{reason}");
    assert!(
        text.contains("disk resource limit alarm set"),
        "no log line says the alarm is on:\n{text}"
    );

    // A connection that only consumes is served while publishers are blocked.
    let consumer = Connection::open(&broker.url).await.unwrap();
    let consumer_channel = consumer.create_channel().await.unwrap();
    assert_eq!(drain(&consumer_channel, "scratch").await.len(), 1);

    // Space comes back: the store writes again, the alarm clears, the publisher goes on.
    std::fs::remove_file(&ballast).unwrap();
    wait_blocked(
        &connection,
        false,
        Duration::from_secs(15),
        "connection.unblocked after space was freed",
    )
    .await;
    let (filled, published) = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("the publisher finishes once unblocked")
        .unwrap();
    assert_eq!(filled.acked.len() + filled.nacked.len(), published as usize);
    assert!(
        filled.acked.len() > 100,
        "{} acked before the disk was full",
        filled.acked.len()
    );
    assert!(
        !filled.nacked.is_empty(),
        "the publishes on their way to the disk when it filled are nacked"
    );
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    let mut next = published;
    let after = publish_until_acked(&channel, "full", &mut next).await;
    let text = broker
        .log_text_once_it_says("disk resource limit alarm cleared")
        .await;
    assert!(
        text.contains("can be written again"),
        "no log line says the store recovered:\n{text}"
    );
    assert!(
        text.contains("disk resource limit alarm cleared"),
        "no log line says the alarm cleared:\n{text}"
    );
    connection.close().await.unwrap();
    consumer.close().await.unwrap();

    // Everything confirmed is on disk: kill -9, restart, count.
    broker.kill();
    let broker = disk.spawn(0).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let found = drain(&channel, "full").await;
    assert!(
        found.windows(2).all(|w| w[0] < w[1]),
        "in publish order, no duplicates"
    );
    for n in filled.acked.iter().chain([&after]) {
        assert!(
            found.binary_search(n).is_ok(),
            "confirmed message {n} lost ({} found)",
            found.len()
        );
    }
    connection.close().await.unwrap();
    drop(broker);
}

#[tokio::test]
async fn consumers_acking_free_a_full_disk_and_acked_messages_stay_gone_after_a_restart() {
    let Some(disk) = DiskTest::new("acked", "4m") else {
        return;
    };
    let mut broker = disk.spawn(0).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("full", durable(), FieldTable::new())
        .await
        .unwrap();
    let publisher = fill_until_blocked(&connection, channel).await;

    // A consumer on its own connection (the blocked one is not read) takes and acks every
    // message: the log's segments die and go, the store writes again, the alarm clears.
    let consumer = Connection::open(&broker.url).await.unwrap();
    let consumer_channel = consumer.create_channel().await.unwrap();
    let mut deliveries = consumer_channel
        .basic_consume(
            "full",
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let mut acked_by_consumer = 0usize;
    let mut unblocked = connection.blocked_watch();
    loop {
        tokio::select! {
            delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next()) => {
                let delivery = delivery.expect("a delivery within 10 s").unwrap().unwrap();
                delivery.ack().await.unwrap();
                acked_by_consumer += 1;
            }
            _ = unblocked.wait_for(|b| !*b) => break,
        }
    }
    let (filled, published) = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("the publisher finishes once unblocked")
        .unwrap();
    assert!(!filled.nacked.is_empty());
    assert!(acked_by_consumer > 0);
    // The consumer takes the rest, so that only what comes next stays.
    consumer_channel.close().await.unwrap();
    let drain_channel = consumer.create_channel().await.unwrap();
    drain(&drain_channel, "full").await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    let mut next = published;
    let after = publish_until_acked(&channel, "full", &mut next).await;
    connection.close().await.unwrap();
    consumer.close().await.unwrap();

    broker.kill();
    let broker = disk.spawn(0).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let found = drain(&channel, "full").await;
    assert!(
        found.contains(&after),
        "the message confirmed after recovery"
    );
    assert!(
        found.iter().all(|n| *n >= after),
        "acked messages came back: {:?}",
        &found[..found.len().min(10)]
    );
    connection.close().await.unwrap();
    drop(broker);
}

#[tokio::test]
async fn free_space_below_disk_free_limit_blocks_publishers_until_space_is_freed() {
    let Some(disk) = DiskTest::new("limit", "8m") else {
        return;
    };
    // 5 MiB of ballast on 8 MiB leaves about 3 MiB free, below a 4 MB limit.
    let ballast = disk.tmpfs.dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 5 * 1024 * 1024]).unwrap();
    let broker = disk.spawn(4_000_000).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    wait_blocked(
        &connection,
        true,
        Duration::from_secs(5),
        "connection.blocked with free space below the limit",
    )
    .await;
    let text = broker.log_text_once_it_says("is insufficient").await;
    assert!(
        text.contains("free disk space") && text.contains("is insufficient"),
        "no log line says why:\n{text}"
    );
    std::fs::remove_file(&ballast).unwrap();
    wait_blocked(
        &connection,
        false,
        Duration::from_secs(5),
        "connection.unblocked once space is freed",
    )
    .await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("after", durable(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    let confirm = channel
        .basic_publish("", "after", persistent(), body(1), false)
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    connection.close().await.unwrap();
    drop(broker);
}

/// Without root: an in-process broker whose `disk_free_limit` is raised above any free
/// space and lowered again, as `rabbitmqctl set_disk_free_limit` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_shows_in_the_api_and_tells_pika_low_on_disk() {
    let data_dir =
        std::env::temp_dir().join(format!("mini-broker-disk-alarm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let running = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.clone()),
        config: BrokerConfig::default(),
        ..Default::default()
    })
    .await
    .unwrap();
    let health = |running: &mini_broker::RunningBroker| {
        let addr = running.mgmt_addr.unwrap();
        async move { http_get(addr, "/api/health/checks/alarms").await }
    };
    assert_eq!(
        health(&running).await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    let connection = Connection::open(&running.url()).await.unwrap();
    let mut pika = pika_watching_for_blocked(running.amqp_addr.port()).await;
    running.broker.set_disk_free_limit(u64::MAX);
    wait_blocked(
        &connection,
        true,
        Duration::from_secs(5),
        "connection.blocked",
    )
    .await;
    assert!(running.broker.alarms().disk);
    assert!(!running.broker.alarms().memory);
    let (status, body) = health(&running).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"status":"failed","reason":"There are alarms in effect in the cluster","alarms":[{"node":"mini-broker@localhost","resource":"disk"}]}"#
    );
    if let Some((_child, lines)) = &mut pika {
        let reason = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("pika answers within 15 s")
            .unwrap();
        assert_eq!(reason.as_deref(), Some("low on disk"));
    }
    running.broker.set_disk_free_limit(0);
    wait_blocked(
        &connection,
        false,
        Duration::from_secs(5),
        "connection.unblocked",
    )
    .await;
    assert_eq!(health(&running).await.0, 200);
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// pika, connected before the alarm: it prints `ready`, then the reason of the first
/// connection.blocked it gets. None (after saying SKIPPED) without pika, unless
/// REQUIRE_RABBITMQ=1.
async fn pika_watching_for_blocked(
    port: u16,
) -> Option<(
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
)> {
    use tokio::io::AsyncBufReadExt;
    let script = format!(
        r#"
import pika
reasons = []
params = pika.ConnectionParameters("127.0.0.1", {port}, "/", pika.PlainCredentials("guest", "guest"))
connection = pika.BlockingConnection(params)
connection.add_on_connection_blocked_callback(lambda c, frame: reasons.append(frame.method.reason))
print("ready", flush=True)
for _ in range(100):
    connection.process_data_events(time_limit=0.1)
    if reasons:
        break
print(reasons[0] if reasons else "none", flush=True)
connection.close()
"#
    );
    let child = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let skip = || {
        if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") {
            panic!("REQUIRE_RABBITMQ=1 but python3 with pika cannot run");
        }
        eprintln!("SKIPPED the pika part: python3 with pika cannot run");
        None
    };
    let Ok(mut child) = child else {
        return skip();
    };
    let stdout = child.stdout.take()?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        Ok(Ok(Some(line))) if line == "ready" => Some((child, lines)),
        _ => skip(),
    }
}

/// A GET with guest's credentials: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // guest:guest
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}
