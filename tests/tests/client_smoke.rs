//! A first end-to-end check of amqp-client against a real RabbitMQ.

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use integration_tests::{rabbitmq_url, unique};

#[tokio::test]
async fn publish_consume_ack_round_trip_against_rabbitmq() {
    let Some(url) = rabbitmq_url("publish_consume_ack_round_trip_against_rabbitmq").await else {
        return;
    };
    let connection = Connection::open(&url).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let queue = unique("smoke");
    let declared = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .expect("declare");
    assert_eq!(declared.name, queue.as_str());
    channel.basic_qos(1, false).await.unwrap();
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    channel
        .basic_publish("", &queue, persistent, "Hello World!", false)
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert_eq!(&delivery.body[..], b"Hello World!");
    assert_eq!(delivery.properties.delivery_mode, Some(2));
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();
    connection.close().await.unwrap();
}
