//! Large bodies: a body over the inline limit goes from the publisher's frame to the
//! consumer's socket without being copied (the outbox writes it with vectored writes), split
//! into body frames for the consumer's own frame_max. Every octet must arrive, in order,
//! whatever the two connections' frame sizes.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use mini_broker::BrokerOptions;

/// A body of `len` octets, each telling its position.
fn body(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_arrive_whole_across_different_frame_sizes() {
    let running = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The publisher sends frames of up to 128 KiB; the consumer takes at most 8 KiB ones.
    let publisher = Connection::open(&running.url()).await.unwrap();
    let consumer = Connection::open(&format!("{}?frame_max=8192", running.url()))
        .await
        .unwrap();
    let publish_channel = publisher.create_channel().await.unwrap();
    let consume_channel = consumer.create_channel().await.unwrap();
    consume_channel
        .queue_declare("large", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let sizes = [0, 1, 4096, 4097, 8184, 8185, 65_536, 131_064, 300_001];
    // Each size twice: a consumer that is not there yet, then one that is.
    for (i, &len) in sizes.iter().enumerate() {
        publish_channel
            .basic_publish("", "large", BasicProperties::default(), body(len, i), false)
            .await
            .unwrap();
    }
    let mut deliveries = consume_channel
        .basic_consume(
            "large",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        publish_channel
            .basic_publish(
                "",
                "large",
                BasicProperties::default(),
                body(len, i + 100),
                false,
            )
            .await
            .unwrap();
    }
    let expected = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| body(len, i))
        .chain(sizes.iter().enumerate().map(|(i, &len)| body(len, i + 100)));
    for (n, expected) in expected.enumerate() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {n} did not come"))
            .unwrap()
            .unwrap();
        assert_eq!(delivery.body.len(), expected.len(), "delivery {n}");
        assert!(
            delivery.body[..] == expected[..],
            "delivery {n}: octets differ"
        );
    }
    publisher.close().await.unwrap();
    consumer.close().await.unwrap();
    running.shutdown().await;
}
