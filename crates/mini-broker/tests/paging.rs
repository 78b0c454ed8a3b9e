//! Paging: a durable queue holding more persistent message bodies than the paging budget
//! keeps only part of them in memory, and still delivers every message, in order, with its
//! body and properties, through a restart too.
//!
//! A restart does not read the bodies of the recovered messages into memory: each durable
//! queue takes its messages paged out, reading back only what fits in the budget; unacked
//! ones come back redelivered, acked ones stay gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, Delivery, FieldTable, FieldValue,
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
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
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

/// `GET /api/queues/%2F/{name}` as guest: the queue as the management API shows it.
async fn queue_in_the_api(running: &RunningBroker, name: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = running.mgmt_addr.unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /api/queues/%2F/{name} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Message `i`'s body: 1 KiB, its number first.
fn body(i: usize) -> Vec<u8> {
    let mut body = format!("message {i:06} ").into_bytes();
    body.resize(1024, b'a' + (i % 26) as u8);
    body
}

/// Message `i` is persistent, except every 50th (transient: it never pages, and must still
/// come out in its place); its properties differ from message to message.
fn properties(i: usize) -> BasicProperties {
    let mut headers = FieldTable::new();
    headers.insert("n", FieldValue::I64(i as i64));
    let content_type = if i % 3 == 0 {
        "text/plain"
    } else {
        "application/octet-stream"
    };
    BasicProperties {
        content_type: Some(content_type.into()),
        delivery_mode: Some(if i % 50 == 0 { 1 } else { 2 }),
        priority: Some((i % 10) as u8),
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

/// Publishes persistent messages with no other property (a quorum queue adds a header).
async fn publish_bodies(channel: &Channel, queue: &str, range: std::ops::Range<usize>) {
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    for i in range {
        channel
            .basic_publish("", queue, persistent.clone(), body(i), false)
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

/// The next delivery of `consumer`, which should be message `i`.
async fn next_delivery(consumer: &mut amqp_client::Consumer, i: usize) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("message {i} did not come"))
        .unwrap()
        .unwrap()
}

/// Checks that a delivery is message `i`, whole: body, properties and redelivered flag.
fn check(delivery: &Delivery, i: usize, redelivered: bool) {
    assert_eq!(&delivery.body[..], &body(i)[..], "message {i}'s body");
    assert_eq!(
        delivery.properties,
        properties(i),
        "message {i}'s properties"
    );
    assert_eq!(delivery.redelivered, redelivered, "message {i}'s flag");
}

/// Consumes messages with manual acks and checks they are `numbers`, in order, whole, and
/// redelivered when `redelivered(i)` says so.
async fn consume_in_order(
    channel: &Channel,
    queue: &str,
    numbers: impl IntoIterator<Item = usize>,
    redelivered: impl Fn(usize) -> bool,
) {
    channel.basic_qos(200, false).await.unwrap();
    let mut consumer = channel
        .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in numbers {
        let delivery = next_delivery(&mut consumer, i).await;
        check(&delivery, i, redelivered(i));
        delivery.ack().await.unwrap();
    }
}

/// Consumes messages `numbers` (checking their bodies) and leaves them unacked: a prefetch
/// of just that many stops the broker from delivering more.
async fn hold_unacked(channel: &Channel, queue: &str, numbers: std::ops::Range<usize>) {
    channel
        .basic_qos(numbers.len() as u16, false)
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in numbers {
        let delivery = next_delivery(&mut consumer, i).await;
        assert_eq!(&delivery.body[..], &body(i)[..], "message {i}'s body");
    }
}

/// Gets messages `numbers` one by one (basic.get) and acks them.
async fn get_in_order(channel: &Channel, queue: &str, numbers: std::ops::Range<usize>) {
    for i in numbers {
        let message = channel.basic_get(queue, false).await.unwrap().unwrap();
        check(&message.delivery, i, false);
        message.delivery.ack().await.unwrap();
    }
}

/// (messages paged out, body bytes in memory) of a queue.
fn paging(queue: &Queue) -> (usize, usize) {
    let state = queue.state();
    (state.paged_out, state.ready_bytes - state.paged_out_bytes)
}

/// The messages of `range` that survive a restart: the persistent ones.
fn survivors(range: std::ops::Range<usize>) -> Vec<usize> {
    range.filter(|i| i % 50 != 0).collect()
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
    consume_in_order(&channel, "backlog", 0..total, |_| false).await;
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
    // A few are consumed (and acked) before the restart, and no other is delivered.
    get_in_order(&channel, "kept", 0..10).await;
    connection.close().await.unwrap();
    running.shutdown().await;

    let running = start(&dir).await;
    let kept = queue(&running, "kept");
    let paged = paged_out(&kept).await;
    assert!(paged > 0, "a restart brings the backlog back paged out");
    // The management API's counts say so, as RabbitMQ's do (`messages_ram` is the rest).
    let shown = queue_in_the_api(&running, "kept").await;
    assert_eq!(shown["messages_paged_out"], paged);
    assert_eq!(
        shown["messages_ram"],
        shown["messages"].as_u64().unwrap() - paged as u64
    );
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // The transient messages did not survive; the persistent ones come back in order.
    let survivors = survivors(10..total);
    assert_eq!(kept.message_count(), survivors.len());
    consume_in_order(&channel, "kept", survivors, |_| false).await;
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
    publish_bodies(&channel, "quorum", 0..total).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_brings_a_backlog_eighty_times_the_budget_back_paged_out_in_order_and_whole() {
    let dir = data_dir("recovery");
    let running = start(&dir).await;
    let (connection, channel) = open_durable(&running, "backlog", FieldTable::new()).await;
    // 20,000 × 1 KiB: 20 MiB of bodies, eighty times the budget.
    let total = 20_000;
    publish(&channel, "backlog", 0..total).await;
    // 0..100 are consumed and acked; 100..150 are delivered and left unacked.
    get_in_order(&channel, "backlog", 0..100).await;
    let unacked = Connection::open(&running.url()).await.unwrap();
    let unacked_channel = unacked.create_channel().await.unwrap();
    hold_unacked(&unacked_channel, "backlog", 100..150).await;
    running.shutdown().await;
    drop((connection, unacked));

    let running = start(&dir).await;
    let backlog = queue(&running, "backlog");
    // Right after the restart, before any housekeeping could page out.
    let ready = survivors(100..total).len();
    {
        let state = backlog.state();
        assert_eq!(state.ready.len(), ready);
        assert_eq!(
            state.ready_bytes,
            ready * 1024,
            "paged out or not, all counted"
        );
        assert!(
            state.ready.front().is_some_and(|m| !m.is_paged_out()),
            "the head was read back: it is delivered next"
        );
    }
    let (paged_out, in_memory) = paging(&backlog);
    assert!(
        in_memory as u64 <= BUDGET,
        "{in_memory} bytes of bodies in memory after the restart"
    );
    assert!(
        paged_out >= ready - (BUDGET / 1024) as usize,
        "only {paged_out} of {ready} messages paged out"
    );
    assert!(running.broker.memory_used() <= BUDGET);

    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    consume_in_order(&channel, "backlog", survivors(100..total), |i| i < 150).await;
    assert_eq!(paging(&backlog), (0, 0));
    assert_eq!(backlog.message_count(), 0);
    connection.close().await.unwrap();
    running.shutdown().await;

    // Every message was acked: none comes back, and the log's segments were reclaimed.
    let running = start(&dir).await;
    assert_eq!(queue(&running, "backlog").message_count(), 0);
    running.shutdown().await;
    let segments = std::fs::read_dir(dir.join("messages")).unwrap().count();
    assert!(segments <= 2, "{segments} segments left");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_share_the_budget_at_a_restart_and_a_quorum_queue_keeps_delivery_counts() {
    let dir = data_dir("shared");
    let running = start(&dir).await;
    // Restored in name order: "a-first" takes the budget, "b-quorum" comes back paged out.
    let (connection, channel) = open_durable(&running, "a-first", FieldTable::new()).await;
    publish(&channel, "a-first", 0..2000).await;
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", "quorum");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("b-quorum", durable, arguments)
        .await
        .unwrap();
    publish_bodies(&channel, "b-quorum", 0..300).await;
    // The first 20 of the quorum queue are delivered, and not acked before the restart.
    let unacked = Connection::open(&running.url()).await.unwrap();
    let unacked_channel = unacked.create_channel().await.unwrap();
    hold_unacked(&unacked_channel, "b-quorum", 0..20).await;
    running.shutdown().await;
    drop((connection, unacked));

    let running = start(&dir).await;
    let (first, quorum) = (queue(&running, "a-first"), queue(&running, "b-quorum"));
    let (_, first_in_memory) = paging(&first);
    assert!(first_in_memory > 0, "the first queue read its head back");
    assert_eq!(paging(&quorum), (300, 0), "nothing was left of the budget");
    assert!(running.broker.memory_used() <= BUDGET);

    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for i in 0..300 {
        let message = channel.basic_get("b-quorum", true).await.unwrap().unwrap();
        let delivery = message.delivery;
        assert_eq!(&delivery.body[..], &body(i)[..], "message {i}'s body");
        assert_eq!(delivery.redelivered, i < 20, "message {i}'s flag");
        let headers = delivery.properties.headers.unwrap_or_default();
        assert_eq!(
            headers.get("x-delivery-count"),
            Some(&FieldValue::I64(i64::from(i < 20))),
            "message {i}"
        );
    }
    assert!(channel.basic_get("b-quorum", true).await.unwrap().is_none());
    consume_in_order(&channel, "a-first", survivors(0..2000), |_| false).await;
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_queue_which_does_not_page_comes_back_whole_in_priority_order() {
    let dir = data_dir("priority");
    let running = start(&dir).await;
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-priority", FieldValue::U8(9));
    let (connection, channel) = open_durable(&running, "prioritised", arguments).await;
    publish(&channel, "prioritised", 0..2000).await;
    connection.close().await.unwrap();
    running.shutdown().await;

    let running = start(&dir).await;
    let prioritised = queue(&running, "prioritised");
    let mut order = survivors(0..2000);
    assert_eq!(paging(&prioritised), (0, order.len() * 1024));
    // Highest priority first; publish order among equals.
    order.sort_by_key(|&i| std::cmp::Reverse(i % 10));
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    consume_in_order(&channel, "prioritised", order, |_| false).await;
    connection.close().await.unwrap();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
