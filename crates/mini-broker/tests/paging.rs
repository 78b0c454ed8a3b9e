//! Paging: a durable queue holding more persistent message bodies than the paging budget
//! keeps only part of them in memory, and still delivers every message, in order, with its
//! body and properties, through a restart too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, FieldTable, FieldValue,
    QueueDeclareOptions, ShortString,
};
use mini_broker::queue::Queue;
use mini_broker::{BrokerConfig, BrokerOptions, RunningBroker};

/// The paging budget the tests run with: 256 KiB.
const BUDGET: u64 = 256 * 1024;

fn data_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mini-broker-paging-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &Path) -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
        config: BrokerConfig {
            paging_threshold: BUDGET,
            ..BrokerConfig::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn queue(running: &RunningBroker, name: &str) -> Arc<Queue> {
    running
        .broker
        .vhost("/")
        .unwrap()
        .queue(&ShortString::from(name))
        .unwrap()
}

/// Message `i`'s body: 1 KiB, its number first.
fn body(i: usize) -> Vec<u8> {
    let mut body = format!("message {i:06} ").into_bytes();
    body.resize(1024, b'a' + (i % 26) as u8);
    body
}

/// Message `i` is persistent, except every 50th (transient: it never pages, and must still
/// come out in its place).
fn properties(i: usize) -> BasicProperties {
    let mut headers = FieldTable::new();
    headers.insert("n", FieldValue::I64(i as i64));
    BasicProperties {
        delivery_mode: Some(if i % 50 == 0 { 1 } else { 2 }),
        message_id: Some(format!("id-{i}").as_str().into()),
        headers: Some(headers),
        ..Default::default()
    }
}

async fn publish(channel: &Channel, queue: &str, range: std::ops::Range<usize>) {
    for i in range {
        channel
            .basic_publish("", queue, properties(i), body(i), false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
}

/// Waits until the broker's housekeeping paged messages of `queue` out, down to the budget;
/// returns how many.
async fn paged_out(queue: &Queue) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (paged, in_memory) = {
            let state = queue.state();
            (state.paged_out, state.ready_bytes - state.paged_out_bytes)
        };
        if paged > 0 && in_memory as u64 <= BUDGET {
            return paged;
        }
        assert!(
            Instant::now() < deadline,
            "{paged} messages paged out, {in_memory} bytes still in memory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection and a channel in confirm mode, with durable queue `name` declared.
async fn open_durable(
    running: &RunningBroker,
    name: &str,
    arguments: FieldTable,
) -> (Connection, Channel) {
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name, durable, arguments)
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    (connection, channel)
}

/// Consumes messages with manual acks and checks they are `numbers`, in order, whole.
async fn consume_in_order(
    channel: &Channel,
    queue: &str,
    numbers: impl IntoIterator<Item = usize>,
) {
    channel.basic_qos(200, false).await.unwrap();
    let mut consumer = channel
        .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in numbers {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not come"))
            .unwrap()
            .unwrap();
        assert_eq!(&delivery.body[..], &body(i)[..], "message {i}'s body");
        assert_eq!(
            delivery.properties,
            properties(i),
            "message {i}'s properties"
        );
        delivery.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_the_paging_budget_is_paged_out_and_comes_back_in_order() {
    let dir = data_dir("backlog");
    let running = start(&dir).await;
    let (connection, channel) = open_durable(&running, "backlog", FieldTable::new()).await;
    // 2 MiB of bodies: eight times the budget.
    let total = 2048;
    publish(&channel, "backlog", 0..total).await;
    let backlog = queue(&running, "backlog");
    let paged = paged_out(&backlog).await;
    {
        let state = backlog.state();
        assert_eq!(state.ready.len(), total);
        assert_eq!(
            state.ready_bytes,
            total * 1024,
            "paged out or not, all counted"
        );
        let in_memory = state.ready_bytes - state.paged_out_bytes;
        assert!(
            in_memory as u64 <= BUDGET,
            "{in_memory} bytes in memory, {paged} messages paged out"
        );
        assert!(
            state.ready.front().is_some_and(|m| !m.is_paged_out()),
            "the head stays in memory"
        );
    }
    consume_in_order(&channel, "backlog", 0..total).await;
    {
        let state = backlog.state();
        assert_eq!((state.ready.len(), state.ready_bytes), (0, 0));
        assert_eq!((state.paged_out, state.paged_out_bytes), (0, 0));
    }
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_out_messages_survive_a_restart_and_page_again() {
    let dir = data_dir("restart");
    let running = start(&dir).await;
    let (connection, channel) = open_durable(&running, "kept", FieldTable::new()).await;
    let total = 1000;
    publish(&channel, "kept", 0..total).await;
    paged_out(&queue(&running, "kept")).await;
    // A few are consumed (and acked) before the restart.
    consume_in_order(&channel, "kept", 0..10).await;
    connection.close().await.unwrap();
    running.shutdown().await;

    let running = start(&dir).await;
    let kept = queue(&running, "kept");
    paged_out(&kept).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // The transient messages did not survive; the persistent ones come back in order.
    let survivors: Vec<usize> = (10..total).filter(|i| i % 50 != 0).collect();
    assert_eq!(kept.message_count(), survivors.len());
    consume_in_order(&channel, "kept", survivors).await;
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_delivers_paged_out_messages_with_their_delivery_count() {
    let dir = data_dir("quorum");
    let running = start(&dir).await;
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", "quorum");
    let (connection, channel) = open_durable(&running, "quorum", arguments).await;
    let total = 600;
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    for i in 0..total {
        channel
            .basic_publish("", "quorum", persistent.clone(), body(i), false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    paged_out(&queue(&running, "quorum")).await;
    let mut count = 0;
    while let Some(message) = channel.basic_get("quorum", true).await.unwrap() {
        let headers = message.delivery.properties.headers.unwrap_or_default();
        assert_eq!(
            headers.get("x-delivery-count"),
            Some(&FieldValue::I64(0)),
            "message {count}"
        );
        assert_eq!(&message.delivery.body[..], &body(count)[..]);
        count += 1;
    }
    assert_eq!(count, total);
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
