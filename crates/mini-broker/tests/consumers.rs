//! Choosing among a queue's consumers: consumer priorities (basic.consume argument
//! `x-priority`) and single active consumer queues (`x-single-active-consumer`), for classic
//! and quorum queues. Each scenario is one function of a broker URL that returns what the
//! consumers observed; it runs against an in-process broker and, when one answers at
//! AMQP_URL, against RabbitMQ 3.10, and both must observe the same. Without RabbitMQ that
//! half says SKIPPED, unless REQUIRE_RABBITMQ=1 (as CI sets it): then it fails.
//!
//! No step waits for something not to happen: each scenario publishes a known number of
//! messages and waits until they are all accounted for, so a consumer that got none got
//! none.

use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, Consumer, Delivery, Error,
    FieldTable, FieldValue, QueueDeclareOptions, ServerClose,
};
use mini_broker::{BrokerOptions, RunningBroker};

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Queue names unique to this run, so RabbitMQ's leftovers never matter.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("consumers-{prefix}-{}-{nanos}", std::process::id())
}

/// A queue of `queue_type` ("classic" or "quorum"; quorum queues must be durable).
async fn declare(channel: &Channel, queue: &str, queue_type: &str, single_active: bool) {
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", queue_type);
    if single_active {
        arguments.insert("x-single-active-consumer", FieldValue::Bool(true));
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, options, arguments)
        .await
        .unwrap();
}

async fn publish(channel: &Channel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        channel
            .basic_publish(
                "",
                queue,
                BasicProperties::default(),
                (*body).to_owned(),
                false,
            )
            .await
            .unwrap();
    }
}

/// A consumer acking manually, on its own channel with `prefetch` (0: no limit), with
/// `x-priority` when given.
async fn consumer(
    connection: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
    priority: Option<i32>,
) -> (Channel, Consumer) {
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(prefetch, false).await.unwrap();
    let mut arguments = FieldTable::new();
    if let Some(priority) = priority {
        arguments.insert("x-priority", FieldValue::I32(priority));
    }
    let consumer = channel
        .basic_consume(queue, tag, BasicConsumeOptions::default(), arguments)
        .await
        .unwrap();
    (channel, consumer)
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is still running")
        .expect("a delivery, not an error")
}

/// The next `n` deliveries' bodies, `(r)` marking a redelivery.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let delivery = next(consumer).await;
        let mark = if delivery.redelivered { "(r)" } else { "" };
        bodies.push(format!("{}{mark}", String::from_utf8_lossy(&delivery.body)));
    }
    bodies
}

fn channel_close(result: Result<impl std::fmt::Debug, Error>) -> ServerClose {
    match result {
        Err(Error::ChannelClosed(close)) => close,
        other => panic!("expected channel.close, got {other:?}"),
    }
}

/// Ready messages, from a passive declare.
async fn ready(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, passive, FieldTable::new())
        .await
        .unwrap()
        .message_count
}

// ---- the scenarios ----------------------------------------------------------------------

/// A high-priority consumer with prefetch 1 that never acks and a negative-priority one
/// without a limit, the low one registered first: the high one gets the first message, the
/// low one the rest. Then two consumers of equal priority alternate while a lower one,
/// registered before them, gets nothing.
async fn priorities(url: &str, queue_type: &str, names: &[String; 2]) -> Vec<String> {
    let connection = Connection::open(url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();

    let queue = &names[0];
    declare(&channel, queue, queue_type, false).await;
    let (_low_channel, mut low) = consumer(&connection, queue, "low", 0, Some(-5)).await;
    let (_high_channel, mut high) = consumer(&connection, queue, "high", 1, Some(10)).await;
    publish(&channel, queue, &["m0", "m1", "m2", "m3", "m4"]).await;
    seen.push(format!("high {:?}", take(&mut high, 1).await));
    seen.push(format!("low {:?}", take(&mut low, 4).await));

    let queue = &names[1];
    declare(&channel, queue, queue_type, false).await;
    let (_default_channel, _default) = consumer(&connection, queue, "default", 1, None).await;
    let (_a_channel, mut a) = consumer(&connection, queue, "a", 0, Some(3)).await;
    let (_b_channel, mut b) = consumer(&connection, queue, "b", 0, Some(3)).await;
    publish(&channel, queue, &["n0", "n1", "n2", "n3", "n4", "n5"]).await;
    seen.push(format!("a {:?}", take(&mut a, 3).await));
    seen.push(format!("b {:?}", take(&mut b, 3).await));

    for queue in names {
        channel.queue_delete(queue, false, false).await.unwrap();
    }
    connection.close().await.unwrap();
    seen
}

/// A single active consumer queue with two consumers, the second of higher priority: only
/// the first gets messages. Cancelled, it keeps its unacked messages; when its channel
/// closes they come back, redelivered, in order, to the second.
async fn single_active(url: &str, queue_type: &str, queue: &str) -> Vec<String> {
    let connection = Connection::open(url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();
    declare(&channel, queue, queue_type, true).await;
    let (first_channel, mut first) = consumer(&connection, queue, "first", 0, None).await;
    let (_second_channel, mut second) = consumer(&connection, queue, "second", 0, Some(10)).await;
    publish(&channel, queue, &["m0", "m1", "m2"]).await;
    seen.push(format!("first {:?}", take(&mut first, 3).await));
    first_channel.basic_cancel("first").await.unwrap();
    seen.push(format!(
        "ready after cancel {}",
        ready(&channel, queue).await
    ));
    first_channel.close().await.unwrap();
    seen.push(format!("second {:?}", take(&mut second, 3).await));
    publish(&channel, queue, &["m3"]).await;
    seen.push(format!("second {:?}", take(&mut second, 1).await));
    channel.queue_delete(queue, false, false).await.unwrap();
    connection.close().await.unwrap();
    seen
}

/// The refusals: an `x-priority` that is not an integer; an exclusive consumer on a single
/// active consumer queue (classic queues refuse it even as the first consumer, quorum queues
/// ignore the flag).
async fn refusals(url: &str, queue_type: &str, queue: &str) -> Vec<String> {
    let connection = Connection::open(url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();
    declare(&channel, queue, queue_type, true).await;

    let mut arguments = FieldTable::new();
    arguments.insert("x-priority", "high");
    let refused = connection.create_channel().await.unwrap();
    let close = channel_close(
        refused
            .basic_consume(queue, "", BasicConsumeOptions::default(), arguments)
            .await,
    );
    seen.push(format!("{} {}", close.code.0, close.text));

    let exclusive = connection.create_channel().await.unwrap();
    let options = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    match exclusive
        .basic_consume(queue, "", options, FieldTable::new())
        .await
    {
        Ok(_) => seen.push("exclusive consumer accepted".to_owned()),
        Err(error) => {
            let close = channel_close(Err::<(), _>(error));
            seen.push(format!("{} {}", close.code.0, close.text));
        }
    }

    channel.queue_delete(queue, false, false).await.unwrap();
    connection.close().await.unwrap();
    seen
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| (*l).to_owned()).collect()
}

fn priorities_expected() -> Vec<String> {
    strings(&[
        r#"high ["m0"]"#,
        r#"low ["m1", "m2", "m3", "m4"]"#,
        r#"a ["n0", "n2", "n4"]"#,
        r#"b ["n1", "n3", "n5"]"#,
    ])
}

fn single_active_expected() -> Vec<String> {
    strings(&[
        r#"first ["m0", "m1", "m2"]"#,
        "ready after cancel 0",
        r#"second ["m0(r)", "m1(r)", "m2(r)"]"#,
        r#"second ["m3"]"#,
    ])
}

fn refusals_expected(queue_type: &str, queue: &str) -> Vec<String> {
    let exclusive = match queue_type {
        "classic" => format!("403 ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"),
        _ => "exclusive consumer accepted".to_owned(),
    };
    vec![
        format!(
            "406 PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' in vhost '/': \"expected integer, got longstr\""
        ),
        exclusive,
    ]
}

/// Every scenario against the broker at `url`, each checked against what RabbitMQ 3.10
/// was seen to do.
async fn check_all(url: &str) {
    for queue_type in ["classic", "quorum"] {
        let names = [unique("prio"), unique("equal")];
        assert_eq!(
            priorities(url, queue_type, &names).await,
            priorities_expected(),
            "{queue_type}"
        );
        assert_eq!(
            single_active(url, queue_type, &unique("sac")).await,
            single_active_expected(),
            "{queue_type}"
        );
        let queue = unique("refuse");
        assert_eq!(
            refusals(url, queue_type, &queue).await,
            refusals_expected(queue_type, &queue),
            "{queue_type}"
        );
    }
}

// ---- against the in-process broker ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumers_go_first_and_equal_ones_alternate() {
    let running = broker().await;
    for queue_type in ["classic", "quorum"] {
        let names = [unique("prio"), unique("equal")];
        assert_eq!(
            priorities(&running.url(), queue_type, &names).await,
            priorities_expected(),
            "{queue_type}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_hands_over_with_the_unacked_messages_in_order() {
    let running = broker().await;
    for queue_type in ["classic", "quorum"] {
        assert_eq!(
            single_active(&running.url(), queue_type, &unique("sac")).await,
            single_active_expected(),
            "{queue_type}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_integer_priority_is_406_and_exclusive_consume_on_single_active_queue_is_403() {
    let running = broker().await;
    for queue_type in ["classic", "quorum"] {
        let queue = unique("refuse");
        assert_eq!(
            refusals(&running.url(), queue_type, &queue).await,
            refusals_expected(queue_type, &queue),
            "{queue_type}"
        );
    }
}

/// Runs `mini-broker ctl --mgmt ADDR ARGS...`.
async fn ctl(running: &RunningBroker, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .arg("ctl")
        .args(["--mgmt", &running.mgmt_addr.unwrap().to_string()])
        .args(args)
        .output()
        .await
        .expect("the mini-broker binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_consumers_shows_the_single_active_and_the_waiting_consumer_with_arguments() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    declare(&channel, "sac-listed", "classic", true).await;
    let _first = consumer(&connection, "sac-listed", "first", 0, None).await;
    let _second = consumer(&connection, "sac-listed", "second", 0, Some(10)).await;
    let output = ctl(
        &running,
        &[
            "list_consumers",
            "-q",
            "consumer_tag",
            "active",
            "activity_status",
            "arguments",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    // As `rabbitmqctl list_consumers` prints them (RabbitMQ 3.10).
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "consumer_tag\tactive\tactivity_status\targuments\n\
         first\ttrue\tsingle_active\t[]\n\
         second\tfalse\twaiting\t[{\"x-priority\",10}]\n"
    );
}

// ---- against RabbitMQ -------------------------------------------------------------------

/// RabbitMQ's URL when one answers; otherwise None after saying SKIPPED (or a panic under
/// REQUIRE_RABBITMQ=1).
async fn rabbitmq(test: &str) -> Option<String> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let reachable = tokio::time::timeout(Duration::from_secs(5), Connection::open(&url))
        .await
        .is_ok_and(|r| r.is_ok());
    if reachable {
        return Some(url);
    }
    if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") {
        panic!("{test}: REQUIRE_RABBITMQ=1 but no RabbitMQ answers at AMQP_URL ({url})");
    }
    eprintln!("SKIPPED {test}: no RabbitMQ answers at AMQP_URL ({url}); REQUIRE_RABBITMQ=1 makes this a failure");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_and_the_broker_choose_the_same_consumers() {
    let test = "rabbitmq_and_the_broker_choose_the_same_consumers";
    let Some(rabbit_url) = rabbitmq(test).await else {
        return;
    };
    check_all(&rabbit_url).await;
    let running = broker().await;
    check_all(&running.url()).await;
}
