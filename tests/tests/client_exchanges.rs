//! amqp-client against RabbitMQ: exchanges (spec class 40): declare, delete, and
//! RabbitMQ's exchange-to-exchange bindings.

use amqp_client::{
    Channel, Connection, Error, ExchangeDeclareOptions, FieldTable, QueueDeclareOptions,
};
use amqp_codec::ReplyCode;
use integration_tests::{rabbitmq_url, unique};

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// A server-named exclusive queue.
async fn temporary_queue(channel: &Channel) -> String {
    let declared = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    declared.name.to_str_lossy().into_owned()
}

/// The bodies waiting in `queue`, fetched with basic.get and acked.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).await.unwrap() {
        bodies.push(String::from_utf8_lossy(&message.delivery.body).into_owned());
    }
    bodies
}

#[tokio::test]
async fn exchange_declare_of_each_kind_then_passive_then_delete() {
    let Some(url) = rabbitmq_url("exchange_declare_of_each_kind_then_passive_then_delete").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for kind in ["direct", "fanout", "topic", "headers"] {
        let exchange = unique(&format!("client-{kind}"));
        let options = ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        channel
            .exchange_declare(&exchange, kind, options, FieldTable::new())
            .await
            .unwrap();
        // Redeclaring with the same flags, and a passive declare, both succeed.
        channel
            .exchange_declare(&exchange, kind, options, FieldTable::new())
            .await
            .unwrap();
        channel
            .exchange_declare(&exchange, "", passive(), FieldTable::new())
            .await
            .unwrap();
        channel.exchange_delete(&exchange, false).await.unwrap();
        let gone = channel.connection().create_channel().await.unwrap();
        let err = gone
            .exchange_declare(&exchange, "", passive(), FieldTable::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND
                && c.text.to_str_lossy() == format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'")),
            "{kind}: {err:?}"
        );
    }
    connection.close().await.unwrap();
}

#[tokio::test]
async fn exchange_declare_of_unknown_kind_is_503_command_invalid() {
    let Some(url) = rabbitmq_url("exchange_declare_of_unknown_kind_is_503_command_invalid").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let err = channel
        .exchange_declare(
            &unique("client-odd"),
            "no-such-kind",
            ExchangeDeclareOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    // RabbitMQ makes an unknown exchange type a connection error.
    assert!(
        matches!(&err, Error::ConnectionClosed(c) if c.code == ReplyCode::COMMAND_INVALID
            && c.text.to_str_lossy() == "COMMAND_INVALID - unknown exchange type 'no-such-kind'"),
        "{err:?}"
    );
    assert!(err.is_connection_error());
    assert!(!connection.is_open());
}

#[tokio::test]
async fn exchange_delete_if_unused_with_a_binding_is_406() {
    let Some(url) = rabbitmq_url("exchange_delete_if_unused_with_a_binding_is_406").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = unique("client-used");
    channel
        .exchange_declare(
            &exchange,
            "fanout",
            ExchangeDeclareOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let queue = temporary_queue(&channel).await;
    channel
        .queue_bind(&queue, &exchange, "", FieldTable::new())
        .await
        .unwrap();
    let err = channel.exchange_delete(&exchange, true).await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED),
        "{err:?}"
    );
    let cleanup = connection.create_channel().await.unwrap();
    cleanup.exchange_delete(&exchange, false).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes_until_unbound() {
    let Some(url) = rabbitmq_url("exchange_to_exchange_binding_routes_until_unbound").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let source = unique("client-e2e-source");
    let destination = unique("client-e2e-destination");
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    // Not auto-delete: the source must outlive its only binding.
    channel
        .exchange_declare(
            &source,
            "topic",
            ExchangeDeclareOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    channel
        .exchange_declare(&destination, "direct", auto_delete, FieldTable::new())
        .await
        .unwrap();
    let queue = temporary_queue(&channel).await;
    channel
        .queue_bind(&queue, &destination, "orders.eu", FieldTable::new())
        .await
        .unwrap();
    channel
        .exchange_bind(&destination, &source, "orders.*", FieldTable::new())
        .await
        .unwrap();
    // Confirms make each publish settled before the queue is read.
    channel.confirm_select().await.unwrap();
    for (key, body) in [
        ("orders.eu", "routed"),
        ("orders.us", "dropped by destination"),
        ("invoices.eu", "dropped by source"),
    ] {
        channel
            .basic_publish(&source, key, Default::default(), body, false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    assert_eq!(drain(&channel, &queue).await, ["routed"]);

    channel
        .exchange_unbind(&destination, &source, "orders.*", FieldTable::new())
        .await
        .unwrap();
    channel
        .basic_publish(
            &source,
            "orders.eu",
            Default::default(),
            "after unbind",
            false,
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            &destination,
            "orders.eu",
            Default::default(),
            "direct",
            false,
        )
        .await
        .unwrap();
    assert!(channel.wait_for_confirms().await.unwrap());
    assert_eq!(drain(&channel, &queue).await, ["direct"]);
    channel.exchange_delete(&source, false).await.unwrap();
    channel.exchange_delete(&destination, false).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn publish_to_internal_exchange_is_403_but_bound_exchanges_reach_it() {
    let Some(url) =
        rabbitmq_url("publish_to_internal_exchange_is_403_but_bound_exchanges_reach_it").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let front = unique("client-front");
    let internal = unique("client-internal");
    // Auto-delete: both go when the exclusive queue does, even if the test fails.
    channel
        .exchange_declare(
            &front,
            "fanout",
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    channel
        .exchange_declare(
            &internal,
            "fanout",
            ExchangeDeclareOptions {
                internal: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    let queue = temporary_queue(&channel).await;
    channel
        .queue_bind(&queue, &internal, "", FieldTable::new())
        .await
        .unwrap();
    channel
        .exchange_bind(&internal, &front, "", FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    channel
        .basic_publish(&front, "", Default::default(), "via front", false)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(drain(&channel, &queue).await, ["via front"]);

    channel
        .basic_publish(&internal, "", Default::default(), "direct", false)
        .await
        .unwrap();
    let err = channel.wait_for_confirms().await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::ACCESS_REFUSED
            && c.text.to_str_lossy().contains("internal")),
        "{err:?}"
    );
    let cleanup = connection.create_channel().await.unwrap();
    cleanup.exchange_delete(&front, false).await.unwrap();
    cleanup.exchange_delete(&internal, false).await.unwrap();
    connection.close().await.unwrap();
}
