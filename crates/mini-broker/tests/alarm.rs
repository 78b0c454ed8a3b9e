//! The memory alarm: publishers are blocked (connection.blocked) above the high watermark,
//! and unblocked when consumers drain the queues.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use mini_broker::{BrokerOptions, RunningBroker};

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn queued_bytes_over_the_watermark_block_publishers_until_drained() {
    let running = broker().await;
    running.broker.set_memory_high_watermark(10_000);
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("big", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let mut blocked = connection.blocked_watch();
    for _ in 0..3 {
        channel
            .basic_publish(
                "",
                "big",
                BasicProperties::default(),
                vec![0u8; 5_000],
                false,
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), blocked.wait_for(|b| *b))
        .await
        .expect("connection.blocked within 5 s")
        .unwrap();
    assert!(connection.is_blocked());
    assert!(*running.broker.alarm.borrow());

    // A consumer on another connection drains the queue: the alarm clears.
    let consumer_connection = Connection::open(&running.url()).await.unwrap();
    let consumer_channel = consumer_connection.create_channel().await.unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "big",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap();
        assert_eq!(delivery.unwrap().unwrap().body.len(), 5_000);
    }
    tokio::time::timeout(Duration::from_secs(5), blocked.wait_for(|b| !*b))
        .await
        .expect("connection.unblocked within 5 s")
        .unwrap();
    // Publishing works again.
    channel
        .basic_publish("", "big", BasicProperties::default(), "after", false)
        .await
        .unwrap();
    connection.close().await.unwrap();
    consumer_connection.close().await.unwrap();
    running.shutdown().await;
}
