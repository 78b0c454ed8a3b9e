//! amqp-client against RabbitMQ: consuming (spec class 60): basic.consume streams, cancel,
//! qos, get, ack / nack / reject, recover, and RabbitMQ's consumer cancel notification.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, Channel, Connection, Consumer, Delivery, Error, FieldTable,
    QueueDeclareOptions,
};
use amqp_codec::ReplyCode;
use integration_tests::{rabbitmq_url, unique};

const PROMPTLY: Duration = Duration::from_secs(10);

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// A server-named exclusive queue holding `bodies` (published with confirms, so they are in
/// the queue when this returns).
async fn queue_with(channel: &Channel, bodies: &[&str]) -> String {
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    let publisher = channel.connection().create_channel().await.unwrap();
    publisher.confirm_select().await.unwrap();
    for body in bodies {
        publisher
            .basic_publish("", &queue, Default::default(), body.to_string(), false)
            .await
            .unwrap();
    }
    assert!(publisher.wait_for_confirms().await.unwrap());
    publisher.close().await.unwrap();
    queue
}

async fn consume(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap()
}

/// The next delivery, which must come promptly.
async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the stream is open")
        .expect("a delivery, not an error")
}

/// Cancels the consumer and closes its channel, which requeues what is unacked; returns a
/// new channel on the same connection. The queue hears of the close just after close-ok, so
/// the caller polls for the requeued messages.
async fn cancel_and_close(channel: &Channel, consumer: &Consumer) -> Channel {
    channel
        .basic_cancel(&consumer.tag().to_str_lossy())
        .await
        .unwrap();
    channel.close().await.unwrap();
    channel.connection().create_channel().await.unwrap()
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

/// Messages ready (not delivered) in `queue`, from a passive declare.
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

#[tokio::test]
async fn consumer_tag_is_server_generated_or_the_one_given() {
    let Some(url) = rabbitmq_url("consumer_tag_is_server_generated_or_the_one_given").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["one", "two"]).await;
    channel.basic_qos(1, false).await.unwrap();
    let mut generated = consume(&channel, &queue).await;
    assert!(
        generated.tag().to_str_lossy().starts_with("amq.ctag-"),
        "{:?}",
        generated.tag()
    );
    let chosen_tag = unique("client-tag");
    let mut chosen = channel
        .basic_consume(
            &queue,
            &chosen_tag,
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    assert_eq!(chosen.tag(), chosen_tag.as_str());
    // Each stream gets the deliveries addressed to its tag.
    let first = next(&mut generated).await;
    let second = next(&mut chosen).await;
    assert_eq!(&first.consumer_tag, generated.tag());
    assert_eq!(second.consumer_tag, chosen_tag.as_str());
    let mut bodies = [body(&first), body(&second)];
    bodies.sort();
    assert_eq!(bodies, ["one", "two"]);
    // Reusing a tag on the channel is a 530 connection error in RabbitMQ.
    let err = channel
        .basic_consume(
            &queue,
            &chosen_tag,
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionClosed(c) if c.code == ReplyCode::NOT_ALLOWED
            && c.text.to_str_lossy().contains(&chosen_tag)),
        "{err:?}"
    );
}

#[tokio::test]
async fn exclusive_consumer_refuses_a_second_consumer_with_403() {
    let Some(url) = rabbitmq_url("exclusive_consumer_refuses_a_second_consumer_with_403").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &[]).await;
    let exclusive_consumer = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _owner = channel
        .basic_consume(&queue, "", exclusive_consumer, FieldTable::new())
        .await
        .unwrap();
    let other = connection.create_channel().await.unwrap();
    let err = other
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::ACCESS_REFUSED
            && c.text.to_str_lossy() == format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")),
        "{err:?}"
    );
    // The owner's channel is unaffected.
    channel.basic_qos(5, false).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn basic_cancel_ends_the_stream_with_none_after_earlier_deliveries() {
    let Some(url) =
        rabbitmq_url("basic_cancel_ends_the_stream_with_none_after_earlier_deliveries").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["a", "b", "c"]).await;
    let mut consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    // Wait for the first so the broker has started delivering, then cancel.
    assert_eq!(body(&next(&mut consumer).await), "a");
    let tag = consumer.tag().to_str_lossy().into_owned();
    tokio::time::timeout(PROMPTLY, channel.basic_cancel(&tag))
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    while let Some(delivery) = tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .expect("the stream ends")
    {
        rest.push(body(&delivery.unwrap()));
    }
    assert_eq!(rest, ["b", "c"]);
    // Still None when polled again; the channel carries on.
    assert!(consumer.next().await.is_none());
    assert_eq!(ready(&channel, &queue).await, 0);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn prefetch_one_holds_back_the_next_delivery_until_the_ack() {
    let Some(url) = rabbitmq_url("prefetch_one_holds_back_the_next_delivery_until_the_ack").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["first", "second", "third"]).await;
    channel.basic_qos(1, false).await.unwrap();
    let mut consumer = consume(&channel, &queue).await;
    let first = next(&mut consumer).await;
    assert_eq!(body(&first), "first");
    // One unacked delivery: the broker keeps the other two ready instead of sending them.
    let observer = connection.create_channel().await.unwrap();
    assert_eq!(ready(&observer, &queue).await, 2);
    first.ack().await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(body(&second), "second");
    assert_eq!(ready(&observer, &queue).await, 1);
    second.ack().await.unwrap();
    assert_eq!(body(&next(&mut consumer).await), "third");
    assert_eq!(ready(&observer, &queue).await, 0);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn basic_get_returns_message_count_then_none_when_empty() {
    let Some(url) = rabbitmq_url("basic_get_returns_message_count_then_none_when_empty").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["x", "y", "z"]).await;
    let mut counts = Vec::new();
    while let Some(message) = channel.basic_get(&queue, false).await.unwrap() {
        assert!(!message.delivery.redelivered);
        assert_eq!(message.delivery.routing_key, queue.as_str());
        counts.push((body(&message.delivery), message.message_count));
        message.delivery.ack().await.unwrap();
    }
    assert_eq!(counts, [("x".into(), 2), ("y".into(), 1), ("z".into(), 0)]);
    assert!(channel.basic_get(&queue, false).await.unwrap().is_none());
    let err = channel
        .basic_get(&unique("client-missing"), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND),
        "{err:?}"
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn ack_multiple_settles_every_delivery_up_to_the_tag() {
    let Some(url) = rabbitmq_url("ack_multiple_settles_every_delivery_up_to_the_tag").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["1", "2", "3", "4"]).await;
    let mut consumer = consume(&channel, &queue).await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(next(&mut consumer).await.delivery_tag);
    }
    assert_eq!(tags, [1, 2, 3, 4]);
    channel.basic_ack(3, true).await.unwrap();
    // Only the fourth is requeued.
    let channel = cancel_and_close(&channel, &consumer).await;
    let mut left = None;
    for _ in 0..100 {
        left = channel.basic_get(&queue, true).await.unwrap();
        if left.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = left.expect("the unacked delivery requeued");
    assert_eq!(body(&left.delivery), "4");
    assert!(left.delivery.redelivered);
    assert_eq!(left.message_count, 0);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn acks_made_back_to_back_settle_exactly_the_deliveries_acked() {
    // The client may write a run of acks of the oldest deliveries as one multiple ack: it
    // must never settle a delivery that was not acked.
    let Some(url) =
        rabbitmq_url("acks_made_back_to_back_settle_exactly_the_deliveries_acked").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let bodies: Vec<String> = (1..=200).map(|i| i.to_string()).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let queue = queue_with(&channel, &bodies).await;
    let mut consumer = consume(&channel, &queue).await;
    let mut deliveries = Vec::new();
    for _ in 0..200 {
        deliveries.push(next(&mut consumer).await);
    }
    // The first 99 can go out as multiple acks; after 100 every ack goes as made.
    let unacked = ["100", "101", "200"];
    for delivery in deliveries
        .iter()
        .filter(|d| !unacked.contains(&body(d).as_str()))
    {
        delivery.ack().await.unwrap();
    }
    let channel = cancel_and_close(&channel, &consumer).await;
    let mut requeued = Vec::new();
    for _ in 0..100 {
        match channel.basic_get(&queue, true).await.unwrap() {
            Some(got) => {
                assert!(got.delivery.redelivered);
                requeued.push(body(&got.delivery));
                if got.message_count == 0 {
                    break;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(requeued, unacked);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn nack_multiple_with_requeue_redelivers_them_marked_redelivered() {
    let Some(url) =
        rabbitmq_url("nack_multiple_with_requeue_redelivers_them_marked_redelivered").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["a", "b", "c"]).await;
    let mut consumer = consume(&channel, &queue).await;
    let mut first_round = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut consumer).await;
        assert!(!delivery.redelivered);
        first_round.push(delivery);
    }
    channel
        .basic_nack(first_round[1].delivery_tag, true, true)
        .await
        .unwrap();
    // a and b come back, redelivered; c stays with the consumer, unacked.
    let mut second_round = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut consumer).await;
        assert!(delivery.redelivered, "{delivery:?}");
        second_round.push(body(&delivery));
        delivery.ack().await.unwrap();
    }
    second_round.sort();
    assert_eq!(second_round, ["a", "b"]);
    // Nack without requeue drops it.
    first_round[2].nack(false).await.unwrap();
    channel
        .basic_cancel(&consumer.tag().to_str_lossy())
        .await
        .unwrap();
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn reject_requeues_or_drops_one_delivery() {
    let Some(url) = rabbitmq_url("reject_requeues_or_drops_one_delivery").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["keep", "drop"]).await;
    let keep = channel.basic_get(&queue, false).await.unwrap().unwrap();
    let drop = channel.basic_get(&queue, false).await.unwrap().unwrap();
    assert_eq!(body(&keep.delivery), "keep");
    keep.delivery.reject(true).await.unwrap();
    drop.delivery.reject(false).await.unwrap();
    let again = channel.basic_get(&queue, true).await.unwrap().unwrap();
    assert_eq!(body(&again.delivery), "keep");
    assert!(again.delivery.redelivered);
    assert_eq!(again.message_count, 0);
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn recover_with_requeue_redelivers_unacked_messages() {
    let Some(url) = rabbitmq_url("recover_with_requeue_redelivers_unacked_messages").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["p", "q"]).await;
    let mut consumer = consume(&channel, &queue).await;
    let mut first = [
        body(&next(&mut consumer).await),
        body(&next(&mut consumer).await),
    ];
    channel.basic_recover(true).await.unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut consumer).await;
        assert!(delivery.redelivered);
        again.push(body(&delivery));
        delivery.ack().await.unwrap();
    }
    first.sort();
    again.sort();
    assert_eq!(first.as_slice(), again.as_slice());
    channel
        .basic_cancel(&consumer.tag().to_str_lossy())
        .await
        .unwrap();
    assert_eq!(ready(&channel, &queue).await, 0);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn recover_without_requeue_is_540_not_implemented_by_rabbitmq() {
    let Some(url) =
        rabbitmq_url("recover_without_requeue_is_540_not_implemented_by_rabbitmq").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let err = channel.basic_recover(false).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionClosed(c) if c.code == ReplyCode::NOT_IMPLEMENTED
            && c.text.to_str_lossy() == "NOT_IMPLEMENTED - requeue=false"),
        "{err:?}"
    );
    assert!(!connection.is_open());
}

#[tokio::test]
async fn ack_of_unknown_delivery_tag_closes_the_channel_with_406() {
    let Some(url) = rabbitmq_url("ack_of_unknown_delivery_tag_closes_the_channel_with_406").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_ack(42, false).await.unwrap();
    let err = channel.basic_qos(1, false).await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy() == "PRECONDITION_FAILED - unknown delivery tag 42"),
        "{err:?}"
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_deleted_under_a_consumer_ends_its_stream_with_consumer_cancelled() {
    let Some(url) =
        rabbitmq_url("queue_deleted_under_a_consumer_ends_its_stream_with_consumer_cancelled")
            .await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &["before"]).await;
    let mut consumer = consume(&channel, &queue).await;
    let delivery = next(&mut consumer).await;
    delivery.ack().await.unwrap();
    let deleter = connection.create_channel().await.unwrap();
    deleter.queue_delete(&queue, false, false).await.unwrap();
    let ended = tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .expect("the stream ended");
    let tag = consumer.tag().to_str_lossy().into_owned();
    assert!(
        matches!(&ended, Some(Err(Error::ConsumerCancelled(t))) if *t == tag),
        "{ended:?}"
    );
    assert!(consumer.next().await.is_none());
    // Only the consumer ended: its channel works.
    channel.basic_qos(1, false).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn consumer_on_a_closed_channel_ends_with_the_channel_error() {
    let Some(url) = rabbitmq_url("consumer_on_a_closed_channel_ends_with_the_channel_error").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_with(&channel, &[]).await;
    let mut consumer = consume(&channel, &queue).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(&unique("client-missing"), passive, FieldTable::new())
        .await
        .unwrap_err();
    let ended = tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .expect("the stream ended");
    assert!(
        matches!(&ended, Some(Err(Error::ChannelClosed(c))) if c.code == ReplyCode::NOT_FOUND),
        "{ended:?}"
    );
    assert!(consumer.next().await.is_none());
    connection.close().await.unwrap();
}
