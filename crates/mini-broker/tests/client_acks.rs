//! The client holds acks back for a moment while its consumer still has deliveries in hand,
//! or while the channel has no prefetch window (basic.qos), so that they
//! reach the broker as one `basic.ack multiple=true`: checked here against an in-process
//! broker's own counts, that such acks still arrive while the application holds the rest or
//! has taken everything, that they arrive before a nack made after them, and that a consumer
//! with prefetch 1 gets its next delivery after each ack.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, Connection, Consumer, Delivery, FieldTable, QueueDeclareOptions,
};
use mini_broker::{BrokerOptions, RunningBroker};

mod common;
use common::settle;

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the stream is open")
        .expect("a delivery")
}

/// A queue `name` with `count` messages, and a channel consuming it with `prefetch`.
async fn consuming(
    running: &RunningBroker,
    name: &str,
    count: usize,
    prefetch: u16,
) -> (Connection, Consumer) {
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(name, Default::default(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    for i in 0..count {
        channel
            .basic_publish("", name, Default::default(), format!("m{i}"), false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel.basic_qos(prefetch, false).await.unwrap();
    let consumer = consumer_channel
        .basic_consume(name, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    (connection, consumer)
}

#[tokio::test]
async fn acks_held_back_while_deliveries_wait_in_the_consumer_still_reach_the_broker() {
    let running = broker().await;
    let (connection, mut consumer) = consuming(&running, "held", 10, 10).await;
    let first = next(&mut consumer).await;
    // All ten are delivered: one in hand, nine in the consumer's buffer.
    settle(&running, "held", 0, 10).await;
    first.ack().await.unwrap();
    let second = next(&mut consumer).await;
    second.ack().await.unwrap();
    let third = next(&mut consumer).await;
    third.ack().await.unwrap();
    // Seven deliveries still wait in the consumer, so the three acks may be held back, but
    // only for a moment: the broker settles them while nothing else is sent or taken.
    settle(&running, "held", 0, 7).await;
    // The rest, acked as they come, are all settled too.
    for _ in 0..7 {
        next(&mut consumer).await.ack().await.unwrap();
    }
    settle(&running, "held", 0, 0).await;
    connection.close().await.unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn a_prefetch_one_consumer_gets_each_next_delivery_after_its_ack() {
    let running = broker().await;
    let (connection, mut consumer) = consuming(&running, "fair", 20, 1).await;
    for i in 0..20 {
        let delivery = next(&mut consumer).await;
        assert_eq!(&delivery.body[..], format!("m{i}").as_bytes());
        // One in flight: the broker keeps the rest until this ack.
        settle(&running, "fair", 19 - i, 1).await;
        delivery.ack().await.unwrap();
    }
    settle(&running, "fair", 0, 0).await;
    connection.close().await.unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn acks_without_a_prefetch_window_with_nothing_more_in_hand_reach_the_broker() {
    let running = broker().await;
    let (connection, mut consumer) = consuming(&running, "wide", 3, 0).await;
    settle(&running, "wide", 0, 3).await;
    let deliveries = [
        next(&mut consumer).await,
        next(&mut consumer).await,
        next(&mut consumer).await,
    ];
    // The consumer has taken everything and the broker needs no acks to deliver more: the
    // acks go out without waiting for more, with nothing else sent.
    for delivery in &deliveries {
        delivery.ack().await.unwrap();
    }
    settle(&running, "wide", 0, 0).await;
    connection.close().await.unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn acks_held_back_reach_the_broker_before_a_nack_made_after_them() {
    let running = broker().await;
    let (connection, mut consumer) = consuming(&running, "order", 3, 0).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    let third = next(&mut consumer).await;
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    // A multiple nack up to the third drops whatever is still unacked. Were it to overtake
    // the acks, it would drop all three, and the acks of unknown tags would close the
    // channel (406 precondition-failed).
    let channel = third.channel().unwrap().clone();
    channel
        .basic_nack(third.delivery_tag, true, false)
        .await
        .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare("order", passive, FieldTable::new())
        .await
        .expect("the channel is still open");
    assert_eq!(declared.message_count, 0);
    settle(&running, "order", 0, 0).await;
    connection.close().await.unwrap();
    running.shutdown().await;
}
