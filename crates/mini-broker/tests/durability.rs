//! Durability: durable definitions and persistent messages survive a restart and a
//! `kill -9`; transient ones do not; confirmed means on disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Confirmation, Connection, FieldTable, QueueDeclareOptions,
};
use mini_broker::{BrokerOptions, RunningBroker};

fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mini-broker-durability-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &Path) -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn durable_queue_and_persistent_messages_survive_a_restart_transient_ones_do_not() {
    let dir = data_dir("restart");
    let running = start(&dir).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let mut ttl = FieldTable::new();
    ttl.insert("x-max-length", 100i32);
    channel
        .queue_declare("with_args", durable, ttl.clone())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    for body in ["first", "second", "third"] {
        let confirm = channel
            .basic_publish("", "task_queue", persistent(), body, false)
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    }
    // A transient message in the durable queue, and a persistent one in a transient queue.
    channel
        .basic_publish(
            "",
            "task_queue",
            BasicProperties::default(),
            "transient",
            false,
        )
        .await
        .unwrap();
    channel
        .basic_publish("", "hello", persistent(), "in a transient queue", false)
        .await
        .unwrap();
    assert!(channel.wait_for_confirms().await.unwrap());
    // "first" is delivered but not acked when the broker stops.
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel.basic_qos(1, false).await.unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "task_queue",
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    assert_eq!(&first.body[..], b"first");
    running.shutdown().await;

    let running = start(&dir).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            "task_queue",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        declared.message_count, 3,
        "the three persistent messages, not the transient one"
    );
    // The arguments came back exactly: redeclaring with them is accepted.
    channel
        .queue_declare("with_args", durable, ttl)
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Some(message) = channel.basic_get("task_queue", true).await.unwrap() {
        received.push((
            String::from_utf8(message.delivery.body.to_vec()).unwrap(),
            message.delivery.redelivered,
        ));
    }
    assert_eq!(
        received,
        vec![
            ("first".to_owned(), true),
            ("second".to_owned(), false),
            ("third".to_owned(), false)
        ],
        "in order; the one delivered before the restart is redelivered"
    );
    let missing = channel
        .queue_declare(
            "hello",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        missing.reply_code().map(|c| c.0),
        Some(404),
        "the transient queue is gone"
    );
    connection.close().await.unwrap();
    running.shutdown().await;

    // Everything was acked (basic.get with no_ack): after another restart the queue is empty.
    let running = start(&dir).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await
        .unwrap();
    assert_eq!(declared.message_count, 0);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn durable_exchange_and_binding_survive_a_restart() {
    let dir = data_dir("bindings");
    let running = start(&dir).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable_exchange = amqp_client::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare("direct_logs", "direct", durable_exchange, FieldTable::new())
        .await
        .unwrap();
    channel
        .exchange_declare(
            "transient_x",
            "fanout",
            Default::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("errors", durable, FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_bind("errors", "direct_logs", "error", FieldTable::new())
        .await
        .unwrap();
    running.shutdown().await;

    let running = start(&dir).await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    let confirm = channel
        .basic_publish("direct_logs", "error", persistent(), "disk full", true)
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    let got = channel
        .basic_get("errors", true)
        .await
        .unwrap()
        .expect("routed through the restored binding");
    assert_eq!(&got.delivery.body[..], b"disk full");
    let err = channel
        .exchange_declare(
            "transient_x",
            "fanout",
            amqp_client::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reply_code().map(|c| c.0), Some(404));
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

struct BrokerProcess {
    child: Child,
    url: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_broker(dir: &Path) -> BrokerProcess {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return BrokerProcess { child, url };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mini-broker did not start");
}

/// Publishes with confirms until the broker is killed mid-stream; returns the confirmed
/// message numbers.
async fn publish_until_killed(
    broker: &mut BrokerProcess,
    queue: &str,
    kill_after: usize,
) -> Vec<u32> {
    let connection = Connection::open(&broker.url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, durable, FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    let mut pending = std::collections::VecDeque::new();
    let mut confirmed = Vec::new();
    for n in 0u32.. {
        let published = channel
            .basic_publish("", queue, persistent(), n.to_be_bytes().to_vec(), false)
            .await;
        let Ok(confirm) = published else { break };
        pending.push_back((n, confirm));
        // Keep a window of 100 unconfirmed.
        if pending.len() >= 100 {
            let (n, confirm) = pending.pop_front().unwrap();
            match confirm.await {
                Ok(Confirmation::Ack) => confirmed.push(n),
                _ => break,
            }
        }
        if confirmed.len() == kill_after {
            broker.child.kill().unwrap();
            let _ = broker.child.wait();
        }
    }
    // Confirms that arrived before the kill count too.
    while let Some((n, confirm)) = pending.pop_front() {
        if let Ok(Confirmation::Ack) = confirm.await {
            confirmed.push(n);
        }
    }
    confirmed
}

#[tokio::test]
async fn kill_9_under_confirmed_publishing_loses_nothing_confirmed_and_keeps_order() {
    let dir = data_dir("kill9");
    // Each round uses its own queue: the previous round's reads (basic.get, no-ack) may not
    // have reached the disk before that broker was killed too, and would come back.
    for round in 0..3 {
        let queue = format!("crash-{round}");
        let mut broker = spawn_broker(&dir).await;
        let confirmed = publish_until_killed(&mut broker, &queue, 500 + round * 300).await;
        assert!(confirmed.len() >= 500);
        let broker = spawn_broker(&dir).await;
        let connection = Connection::open(&broker.url).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut found = Vec::new();
        while let Some(message) = channel.basic_get(&queue, true).await.unwrap() {
            found.push(u32::from_be_bytes(
                message.delivery.body[..4].try_into().unwrap(),
            ));
        }
        let mut sorted = found.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, found, "round {round}: in order, no duplicates");
        for n in &confirmed {
            assert!(
                found.binary_search(n).is_ok(),
                "round {round}: confirmed message {n} lost"
            );
        }
        connection.close().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
