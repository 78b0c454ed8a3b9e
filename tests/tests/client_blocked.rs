//! amqp-client against RabbitMQ: connection.blocked / connection.unblocked (RabbitMQ's
//! blocked connection notifications), triggered by a memory alarm.
//!
//! The alarm blocks every publisher on the broker, so this file holds only tests that need
//! it, serialized by [`ALARM`]; cargo runs test binaries one after another, so no other test
//! file publishes meanwhile. The watermark is always restored, by a drop guard.

use std::time::Duration;

use amqp_client::{BasicProperties, Connection, Error, FieldTable, QueueDeclareOptions};
use integration_tests::{rabbitmq_url, rabbitmqctl};
use tokio::sync::Mutex;

/// Held by every test that raises the memory alarm.
static ALARM: Mutex<()> = Mutex::const_new(());

const PROMPTLY: Duration = Duration::from_secs(30);

/// RabbitMQ's default watermark, restored on drop (even when the test panics).
struct MemoryAlarm {
    test: &'static str,
}

impl MemoryAlarm {
    /// Sets a watermark so low that the memory alarm goes off at once; None when
    /// `rabbitmqctl` is not available (the test is skipped).
    fn raise(test: &'static str) -> Option<MemoryAlarm> {
        rabbitmqctl(test, &["set_vm_memory_high_watermark", "0.0000001"])?;
        Some(MemoryAlarm { test })
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(self.test, &["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_and_a_blocked_publish_times_out() {
    let test = "memory_alarm_blocks_publishers_and_a_blocked_publish_times_out";
    let Some(url) = rabbitmq_url(test).await else {
        return;
    };
    let _serial = ALARM.lock().await;
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    assert!(!connection.is_blocked());
    let mut blocked = connection.blocked_watch();
    assert!(!*blocked.borrow_and_update());

    let alarm = MemoryAlarm::raise(test);
    let Some(alarm) = alarm else {
        return;
    };
    // RabbitMQ tells connections it blocks; a publish makes sure this one is among them.
    channel
        .basic_publish("", &queue, BasicProperties::default(), "before", false)
        .await
        .unwrap();
    tokio::time::timeout(PROMPTLY, blocked.wait_for(|b| *b))
        .await
        .expect("connection.blocked arrived")
        .unwrap();
    assert!(connection.is_blocked());

    channel.set_blocked_publish_timeout(Some(Duration::from_millis(500)));
    let err = channel
        .basic_publish(
            "",
            &queue,
            BasicProperties::default(),
            "while blocked",
            false,
        )
        .await
        .err();
    assert!(matches!(err, Some(Error::Timeout(_))), "{err:?}");
    // Only publishing waits: the connection is alive.
    assert!(connection.is_open());

    drop(alarm);
    tokio::time::timeout(PROMPTLY, blocked.wait_for(|b| !*b))
        .await
        .expect("connection.unblocked arrived")
        .unwrap();
    assert!(!connection.is_blocked());
    channel
        .basic_publish("", &queue, BasicProperties::default(), "after", false)
        .await
        .unwrap();
    // The publish made before the block got through once the alarm cleared.
    channel.confirm_select().await.unwrap();
    assert!(channel.wait_for_confirms().await.unwrap());
    let mut bodies = Vec::new();
    for _ in 0..50 {
        match channel.basic_get(&queue, true).await.unwrap() {
            Some(message) => {
                bodies.push(String::from_utf8_lossy(&message.delivery.body).into_owned())
            }
            None if bodies.len() >= 2 => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(bodies, ["before", "after"]);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn blocked_publish_without_a_timeout_goes_out_once_unblocked() {
    let test = "blocked_publish_without_a_timeout_goes_out_once_unblocked";
    let Some(url) = rabbitmq_url(test).await else {
        return;
    };
    let _serial = ALARM.lock().await;
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    channel.confirm_select().await.unwrap();
    let mut blocked = connection.blocked_watch();
    let Some(alarm) = MemoryAlarm::raise(test) else {
        return;
    };
    channel
        .basic_publish("", &queue, BasicProperties::default(), "first", false)
        .await
        .unwrap();
    tokio::time::timeout(PROMPTLY, blocked.wait_for(|b| *b))
        .await
        .expect("connection.blocked arrived")
        .unwrap();
    let waiting = {
        let channel = channel.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            channel
                .basic_publish("", &queue, BasicProperties::default(), "second", false)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the publish waits while blocked");
    drop(alarm);
    let confirm = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("the publish went out once unblocked")
        .unwrap()
        .unwrap();
    assert_eq!(
        tokio::time::timeout(PROMPTLY, confirm)
            .await
            .unwrap()
            .unwrap(),
        amqp_client::Confirmation::Ack
    );
    assert!(channel.wait_for_confirms().await.unwrap());
    connection.close().await.unwrap();
}
