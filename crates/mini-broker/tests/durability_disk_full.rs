//! A full disk, for real: the broker's data directory is on a 4 MiB tmpfs (mounted by the
//! test, which needs root; without it the tests print SKIPPED and pass; the same failure
//! paths are covered without root by the store's unit tests, through a fault-injection hook).
//!
//! Once the disk is full, persistent publishes to durable queues get basic.nack and the log
//! says why; the broker keeps serving everything else; when space comes back (a file is
//! deleted, or consumers ack messages so that the log can drop them) it accepts persistent
//! messages again without a restart; after a kill -9 and a restart every confirmed message
//! is there, in order, and acked ones stay gone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Confirmation, Connection, FieldTable,
    PublishConfirm, QueueDeclareOptions,
};

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

struct BrokerProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl BrokerProcess {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

/// Starts the broker binary on `data_dir`, its log (RUST_LOG=info) appended to `log`.
async fn spawn_broker(data_dir: &Path, log: &Path) -> BrokerProcess {
    let port = free_port();
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--mgmt-listen", "127.0.0.1:0", "--data-dir"])
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

/// Publishes persistent messages numbered from `*next`, 50 unconfirmed at most, until
/// `nacks_wanted` were nacked (the disk is full), or at most `limit` messages.
async fn publish_until_nacked(
    channel: &Channel,
    queue: &str,
    next: &mut u64,
    nacks_wanted: usize,
    limit: u64,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut pending: VecDeque<(u64, PublishConfirm)> = VecDeque::new();
    let end = *next + limit;
    while outcome.nacked.len() < nacks_wanted && *next < end {
        let confirm = channel
            .basic_publish("", queue, persistent(), body(*next), false)
            .await
            .unwrap();
        pending.push_back((*next, confirm));
        *next += 1;
        if pending.len() >= 50 {
            let (n, confirm) = pending.pop_front().unwrap();
            record(&mut outcome, n, confirm.await.unwrap());
        }
    }
    for (n, confirm) in pending {
        record(&mut outcome, n, confirm.await.unwrap());
    }
    outcome
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

#[tokio::test]
async fn full_disk_nacks_persistent_publishes_keeps_serving_and_recovers_when_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount("freed", "4m") else {
        return;
    };
    let data_dir = tmpfs.dir.join("data");
    let log =
        std::env::temp_dir().join(format!("mini-broker-disk-full-{}.log", std::process::id()));
    // Ballast: 1.5 MiB of the 4 MiB, deleted later to free space.
    let ballast = tmpfs.dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1536 * 1024]).unwrap();
    let mut broker = spawn_broker(&data_dir, &log).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("full", durable(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    let mut next = 0u64;
    let filled = publish_until_nacked(&channel, "full", &mut next, 20, 5_000).await;
    assert!(
        filled.nacked.len() >= 20,
        "no nacks after {next} persistent 4 KiB messages on a 4 MiB disk"
    );
    assert!(
        filled.acked.len() > 100,
        "{} acked before the disk was full",
        filled.acked.len()
    );
    let text = broker.log_text();
    let reason = text
        .lines()
        .find(|line| line.contains("No space left on device"))
        .unwrap_or_else(|| panic!("no log line says the disk is full:\n{text}"));
    assert!(reason.contains("basic.nack"), "{reason}");
    assert!(reason.contains("ERROR"), "{reason}");

    // The broker keeps serving: a new connection, transient messages, persistent messages to
    // a transient queue; persistent ones to the durable queue are still nacked.
    let other = Connection::open(&broker.url).await.unwrap();
    let other_channel = other.create_channel().await.unwrap();
    other_channel
        .queue_declare("scratch", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    other_channel.confirm_select().await.unwrap();
    for properties in [BasicProperties::default(), persistent()] {
        let confirm = other_channel
            .basic_publish("", "scratch", properties, "while full", false)
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    }
    assert_eq!(drain(&other_channel, "scratch").await.len(), 2);
    let refused = other_channel
        .basic_publish("", "full", persistent(), body(u64::MAX), false)
        .await
        .unwrap();
    assert_eq!(refused.await.unwrap(), Confirmation::Nack);

    // Space comes back: persistent messages are accepted again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let after = publish_until_acked(&channel, "full", &mut next).await;
    let text = broker.log_text();
    assert!(
        text.contains("can be written again"),
        "no log line says the broker recovered:\n{text}"
    );
    connection.close().await.unwrap();
    other.close().await.unwrap();

    // Everything confirmed is on disk: kill -9, restart, count.
    broker.kill();
    let broker = spawn_broker(&data_dir, &log).await;
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
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn consumers_acking_free_a_full_disk_and_acked_messages_stay_gone_after_a_restart() {
    let Some(tmpfs) = Tmpfs::mount("acked", "4m") else {
        return;
    };
    let data_dir = tmpfs.dir.join("data");
    let log =
        std::env::temp_dir().join(format!("mini-broker-disk-acked-{}.log", std::process::id()));
    let mut broker = spawn_broker(&data_dir, &log).await;
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("full", durable(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    let mut next = 0u64;
    let filled = publish_until_nacked(&channel, "full", &mut next, 20, 5_000).await;
    assert!(filled.nacked.len() >= 20);

    // A consumer takes and acks every message: the log's only segment is dead, and goes.
    let consumer_channel = connection.create_channel().await.unwrap();
    let declared = consumer_channel
        .queue_declare("full", durable(), FieldTable::new())
        .await
        .unwrap();
    let queued = declared.message_count as usize;
    assert!(queued >= filled.acked.len());
    let mut consumer = consumer_channel
        .basic_consume(
            "full",
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    for _ in 0..queued {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    consumer_channel.close().await.unwrap();
    let after = publish_until_acked(&channel, "full", &mut next).await;
    connection.close().await.unwrap();

    broker.kill();
    let broker = spawn_broker(&data_dir, &log).await;
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
    let _ = std::fs::remove_file(&log);
}
