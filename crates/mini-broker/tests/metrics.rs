//! /metrics: message counters (for rates) next to the queue gauges.

use amqp_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};
use mini_broker::BrokerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

#[tokio::test]
async fn message_counters_count_publishes_deliveries_and_acks() {
    let running = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mgmt = running.mgmt_addr.expect("management listener");
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("counted", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for _ in 0..3 {
        channel
            .basic_publish("", "counted", BasicProperties::default(), "x", false)
            .await
            .unwrap();
    }
    channel
        .basic_publish("", "nowhere", BasicProperties::default(), "x", true)
        .await
        .unwrap();
    for _ in 0..2 {
        let got = channel.basic_get("counted", false).await.unwrap().unwrap();
        got.delivery.ack().await.unwrap();
    }
    // One more goes to a consumer, is rejected with requeue and comes back redelivered.
    let mut consumer = channel
        .basic_consume("counted", "", Default::default(), FieldTable::new())
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    first.reject(true).await.unwrap();
    let again = consumer.next().await.unwrap().unwrap();
    assert!(again.redelivered);
    again.ack().await.unwrap();
    // A round trip makes sure the acks were handled before scraping.
    channel
        .queue_declare("counted", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let metrics = scrape(mgmt).await;
    assert!(metrics.contains("# TYPE rabbitmq_global_messages_received_total counter"));
    assert_eq!(
        value(&metrics, "rabbitmq_global_messages_received_total"),
        4
    );
    assert_eq!(value(&metrics, "rabbitmq_global_messages_routed_total"), 3);
    assert_eq!(
        value(
            &metrics,
            "rabbitmq_global_messages_unroutable_returned_total"
        ),
        1
    );
    assert_eq!(
        value(&metrics, "rabbitmq_global_messages_delivered_total"),
        4
    );
    assert_eq!(
        value(&metrics, "rabbitmq_global_messages_redelivered_total"),
        1
    );
    assert_eq!(
        value(&metrics, "rabbitmq_global_messages_acknowledged_total"),
        3
    );
    assert_eq!(
        value(
            &metrics,
            "rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"counted\"}"
        ),
        0
    );
    connection.close().await.unwrap();
    running.shutdown().await;
}
