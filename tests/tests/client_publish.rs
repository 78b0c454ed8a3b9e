//! amqp-client against RabbitMQ: basic.publish and content (spec 2.3.5.2, 4.2.6): every
//! property round-trips, and bodies are split across frames by the negotiated frame_max.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, FieldValue, QueueDeclareOptions,
    ShortString,
};
use amqp_codec::{FieldArray, LongString};
use bytes::Bytes;
use integration_tests::{rabbitmq_url, with_query};

const PROMPTLY: Duration = Duration::from_secs(10);

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// A headers table with every field type RabbitMQ keeps as sent.
fn rich_headers() -> FieldTable {
    let mut nested = FieldTable::new();
    nested.insert("depth", 2i32);
    let mut headers = FieldTable::new();
    headers.insert("string", "héllo");
    headers.insert("bool", true);
    headers.insert("i32", -42i32);
    headers.insert("i64", i64::MAX);
    headers.insert("f64", FieldValue::F64(2.5));
    headers.insert("timestamp", FieldValue::Timestamp(1_700_000_000));
    headers.insert(
        "bytes",
        FieldValue::ByteArray(Bytes::from_static(b"\x00\x01\xff")),
    );
    headers.insert(
        "array",
        FieldValue::Array(FieldArray(vec![
            FieldValue::I32(1),
            FieldValue::LongString(LongString::new("two")),
        ])),
    );
    headers.insert("nested", nested);
    headers.insert("void", FieldValue::Void);
    headers
}

fn every_property() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("identity".into()),
        headers: Some(rich_headers()),
        delivery_mode: Some(2),
        priority: Some(7),
        correlation_id: Some("corr-1".into()),
        reply_to: Some("client-replies".into()),
        expiration: Some("60000".into()),
        message_id: Some("msg-1".into()),
        timestamp: Some(1_700_000_123),
        kind: Some("order.created".into()),
        // RabbitMQ checks user-id against the login: it must be the connection's user.
        user_id: Some("guest".into()),
        app_id: Some("amqp-rs tests".into()),
        cluster_id: None,
    }
}

#[tokio::test]
async fn every_property_round_trips_through_consume_and_get() {
    let Some(url) = rabbitmq_url("every_property_round_trips_through_consume_and_get").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    let sent = every_property();
    channel.confirm_select().await.unwrap();
    for _ in 0..2 {
        channel
            .basic_publish("", &queue, sent.clone(), "{}", false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    // The first copy through basic.get-ok, the second through basic.deliver.
    let fetched = channel.basic_get(&queue, true).await.unwrap().unwrap();
    assert_eq!(fetched.delivery.properties, sent);
    assert_eq!(fetched.message_count, 1);
    let mut consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.properties, sent);
    let headers = delivery.properties.headers.as_ref().unwrap();
    assert!(headers.same_entries(&rich_headers()), "{headers:?}");
    assert_eq!(&delivery.body[..], b"{}");
    assert_eq!(delivery.exchange, "");
    assert_eq!(delivery.routing_key, queue.as_str());
    delivery.ack().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn one_mebibyte_body_is_split_into_8k_frames_and_reassembled() {
    let Some(url) = rabbitmq_url("one_mebibyte_body_is_split_into_8k_frames_and_reassembled").await
    else {
        return;
    };
    let connection = Connection::open(&with_query(&url, "frame_max=8192"))
        .await
        .unwrap();
    assert_eq!(connection.tune().frame_max, 8192);
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    // Not a repeating pattern with a period dividing the frame size, so a misplaced frame
    // cannot go unnoticed.
    let body: Bytes = (0..1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    channel.confirm_select().await.unwrap();
    for _ in 0..2 {
        channel
            .basic_publish("", &queue, BasicProperties::default(), body.clone(), false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    let fetched = channel.basic_get(&queue, true).await.unwrap().unwrap();
    assert_eq!(fetched.delivery.body.len(), body.len());
    assert!(fetched.delivery.body == body);
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
    let delivery = tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(delivery.body == body);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn empty_body_and_frame_sized_bodies_round_trip() {
    let Some(url) = rabbitmq_url("empty_body_and_frame_sized_bodies_round_trip").await else {
        return;
    };
    let connection = Connection::open(&with_query(&url, "frame_max=8192"))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    // A body frame carries at most frame_max - 8 octets: test both sides of that edge.
    let sizes = [0usize, 1, 8183, 8184, 8185, 2 * 8184, 2 * 8184 + 1];
    channel.confirm_select().await.unwrap();
    for size in sizes {
        channel
            .basic_publish(
                "",
                &queue,
                BasicProperties::default(),
                vec![b'x'; size],
                false,
            )
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    for size in sizes {
        let fetched = channel.basic_get(&queue, true).await.unwrap().unwrap();
        assert_eq!(fetched.delivery.body.len(), size);
        assert!(fetched.delivery.body.iter().all(|&b| b == b'x'));
    }
    connection.close().await.unwrap();
}

#[tokio::test]
async fn publishes_arrive_in_order_on_one_channel() {
    let Some(url) = rabbitmq_url("publishes_arrive_in_order_on_one_channel").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
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
    let count = 2000u32;
    // Every other one through basic_publish_to, with the address made once.
    let (exchange, routing_key) = (ShortString::from(""), ShortString::from(queue.as_str()));
    for i in 0..count {
        let properties = BasicProperties::default();
        if i % 2 == 0 {
            channel
                .basic_publish("", &queue, properties, i.to_string(), false)
                .await
                .unwrap();
        } else {
            channel
                .basic_publish_to(&exchange, &routing_key, properties, i.to_string(), false)
                .await
                .unwrap();
        }
    }
    for i in 0..count {
        let delivery = tokio::time::timeout(PROMPTLY, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.body, i.to_string().as_bytes());
        assert_eq!(delivery.delivery_tag, u64::from(i) + 1);
    }
    connection.close().await.unwrap();
}
