//! amqp-client against RabbitMQ: queues (spec class 50): declare with every flag and with
//! arguments, bind, unbind, purge, delete.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, Channel, Connection, Error, ExchangeDeclareOptions, FieldTable,
    QueueDeclareOptions,
};
use amqp_codec::ReplyCode;
use integration_tests::{rabbitmq_url, unique};

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Publishes `bodies` to `queue` through the default exchange and waits until the broker
/// has them (the channel must be in confirm mode).
async fn publish_confirmed(channel: &Channel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        channel
            .basic_publish("", queue, Default::default(), body.to_string(), false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
}

/// Deletes a queue this test declared, on a fresh channel (the test's may be closed).
async fn delete_queue(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel.queue_delete(queue, false, false).await.unwrap();
    channel.close().await.unwrap();
}

/// Waits until a passive declare of `queue` says 404: RabbitMQ deletes exclusive and
/// auto-delete queues just after it answers the close or cancel that ends them.
async fn assert_deleted_soon(connection: &Connection, queue: &str) {
    for _ in 0..100 {
        let channel = connection.create_channel().await.unwrap();
        match channel
            .queue_declare(queue, passive(), FieldTable::new())
            .await
        {
            Err(Error::ChannelClosed(c)) if c.code == ReplyCode::NOT_FOUND => return,
            Err(Error::ChannelClosed(c)) if c.code == ReplyCode::RESOURCE_LOCKED => {}
            Ok(_) => channel.close().await.unwrap(),
            Err(err) => panic!("{err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("queue {queue} still exists");
}

#[tokio::test]
async fn queue_declare_with_empty_name_gets_a_server_generated_name() {
    let Some(url) =
        rabbitmq_url("queue_declare_with_empty_name_gets_a_server_generated_name").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let first = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    let second = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    assert!(
        first.name.to_str_lossy().starts_with("amq.gen-"),
        "{first:?}"
    );
    assert_ne!(first.name, second.name);
    assert_eq!((first.message_count, first.consumer_count), (0, 0));
    connection.close().await.unwrap();
}

#[tokio::test]
async fn passive_declare_reports_message_and_consumer_counts() {
    let Some(url) = rabbitmq_url("passive_declare_reports_message_and_consumer_counts").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-counts");
    channel
        .queue_declare(&queue, exclusive(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    publish_confirmed(&channel, &queue, &["a", "b", "c"]).await;
    let counted = channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(counted.name, queue.as_str());
    assert_eq!((counted.message_count, counted.consumer_count), (3, 0));

    let consumer_channel = connection.create_channel().await.unwrap();
    // Prefetch 0 would take every message: with 1, two stay ready.
    consumer_channel.basic_qos(1, false).await.unwrap();
    let _consumer = consumer_channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let counted = channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(counted.consumer_count, 1);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn durable_queue_survives_its_connection_and_is_deleted_explicitly() {
    let Some(url) =
        rabbitmq_url("durable_queue_survives_its_connection_and_is_deleted_explicitly").await
    else {
        return;
    };
    let queue = unique("client-durable");
    let first = Connection::open(&url).await.unwrap();
    let channel = first.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&queue, durable, FieldTable::new())
        .await
        .unwrap();
    first.close().await.unwrap();

    let second = Connection::open(&url).await.unwrap();
    let channel = second.create_channel().await.unwrap();
    let found = channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(found.name, queue.as_str());
    assert_eq!(channel.queue_delete(&queue, false, false).await.unwrap(), 0);
    let err = channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND),
        "{err:?}"
    );
    second.close().await.unwrap();
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_goes_with_it() {
    let Some(url) =
        rabbitmq_url("exclusive_queue_is_locked_to_its_connection_and_goes_with_it").await
    else {
        return;
    };
    let owner = Connection::open(&url).await.unwrap();
    let queue = unique("client-exclusive");
    owner
        .create_channel()
        .await
        .unwrap()
        .queue_declare(&queue, exclusive(), FieldTable::new())
        .await
        .unwrap();

    let other = Connection::open(&url).await.unwrap();
    let channel = other.create_channel().await.unwrap();
    let err = channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::RESOURCE_LOCKED
            && c.text.to_str_lossy().starts_with("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue")),
        "{err:?}"
    );

    owner.close().await.unwrap();
    assert_deleted_soon(&other, &queue).await;
    other.close().await.unwrap();
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_is_cancelled() {
    let Some(url) =
        rabbitmq_url("auto_delete_queue_goes_when_its_last_consumer_is_cancelled").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-auto-delete");
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(&queue, auto_delete, FieldTable::new())
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    // Still there while consumed.
    channel
        .queue_declare(&queue, passive(), FieldTable::new())
        .await
        .unwrap();
    channel
        .basic_cancel(&consumer.tag().to_str_lossy())
        .await
        .unwrap();
    assert_deleted_soon(&connection, &queue).await;
    connection.close().await.unwrap();
}

#[tokio::test]
async fn message_ttl_argument_expires_messages() {
    let Some(url) = rabbitmq_url("message_ttl_argument_expires_messages").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-ttl");
    let mut arguments = FieldTable::new();
    arguments.insert("x-message-ttl", 50i32);
    channel
        .queue_declare(&queue, exclusive(), arguments.clone())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    publish_confirmed(&channel, &queue, &["short-lived"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());

    // Redeclaring with another TTL is inequivalent.
    let mut other = FieldTable::new();
    other.insert("x-message-ttl", 60_000i32);
    let err = channel
        .queue_declare(&queue, exclusive(), other)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy().contains("inequivalent arg 'x-message-ttl'")),
        "{err:?}"
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn quorum_queue_needs_durable_and_then_works() {
    let Some(url) = rabbitmq_url("quorum_queue_needs_durable_and_then_works").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-quorum");
    let mut quorum = FieldTable::new();
    quorum.insert("x-queue-type", "quorum");
    let err = channel
        .queue_declare(&queue, QueueDeclareOptions::default(), quorum.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy().contains("non-durable")),
        "{err:?}"
    );

    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = channel.queue_declare(&queue, durable, quorum).await;
    let result = async {
        let declared = declared?;
        assert_eq!(declared.name, queue.as_str());
        channel.confirm_select().await?;
        publish_confirmed(&channel, &queue, &["replicated"]).await;
        let message = channel.basic_get(&queue, false).await?.expect("a message");
        assert_eq!(&message.delivery.body[..], b"replicated");
        message.delivery.ack().await?;
        Ok::<_, Error>(())
    }
    .await;
    delete_queue(&connection, &queue).await;
    result.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_bind_routes_by_key_until_unbound() {
    let Some(url) = rabbitmq_url("queue_bind_routes_by_key_until_unbound").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = unique("client-bind");
    channel
        .exchange_declare(
            &exchange,
            "direct",
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    channel
        .queue_bind(&queue, &exchange, "red", FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_bind(&queue, &exchange, "blue", FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    for key in ["red", "green", "blue"] {
        channel
            .basic_publish(&exchange, key, Default::default(), key, false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    let mut routed = Vec::new();
    while let Some(message) = channel.basic_get(&queue, true).await.unwrap() {
        assert_eq!(message.delivery.exchange, exchange.as_str());
        routed.push(message.delivery.routing_key.to_str_lossy().into_owned());
    }
    assert_eq!(routed, ["red", "blue"]);

    channel
        .queue_unbind(&queue, &exchange, "red", FieldTable::new())
        .await
        .unwrap();
    for key in ["red", "blue"] {
        channel
            .basic_publish(&exchange, key, Default::default(), key, false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    let message = channel.basic_get(&queue, true).await.unwrap().unwrap();
    assert_eq!(&message.delivery.body[..], b"blue");
    assert_eq!(message.message_count, 0);
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_bind_to_missing_exchange_is_404() {
    let Some(url) = rabbitmq_url("queue_bind_to_missing_exchange_is_404").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name;
    let exchange = unique("client-missing-exchange");
    let err = channel
        .queue_bind(&queue.to_str_lossy(), &exchange, "", FieldTable::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND
            && c.text.to_str_lossy() == format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'")),
        "{err:?}"
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_purge_removes_ready_messages_and_counts_them() {
    let Some(url) = rabbitmq_url("queue_purge_removes_ready_messages_and_counts_them").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-purge");
    channel
        .queue_declare(&queue, exclusive(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    publish_confirmed(&channel, &queue, &["1", "2", "3", "4"]).await;
    assert_eq!(channel.queue_purge(&queue).await.unwrap(), 4);
    assert_eq!(channel.queue_purge(&queue).await.unwrap(), 0);
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_delete_if_empty_on_a_full_queue_is_406_then_delete_counts_messages() {
    let Some(url) =
        rabbitmq_url("queue_delete_if_empty_on_a_full_queue_is_406_then_delete_counts_messages")
            .await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-if-empty");
    channel
        .queue_declare(&queue, exclusive(), FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    publish_confirmed(&channel, &queue, &["x", "y"]).await;
    let err = channel.queue_delete(&queue, false, true).await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy() == format!("PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty")),
        "{err:?}"
    );
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(channel.queue_delete(&queue, false, false).await.unwrap(), 2);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn queue_delete_if_unused_with_a_consumer_is_406() {
    let Some(url) = rabbitmq_url("queue_delete_if_unused_with_a_consumer_is_406").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-if-unused");
    channel
        .queue_declare(&queue, exclusive(), FieldTable::new())
        .await
        .unwrap();
    let _consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let other = connection.create_channel().await.unwrap();
    let err = other.queue_delete(&queue, true, false).await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy() == format!("PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use")),
        "{err:?}"
    );
    connection.close().await.unwrap();
}
