//! amqp-client against RabbitMQ: channel errors (spec 1.5.2.5) are typed, carry RabbitMQ's
//! reply code and text, end only their channel, and stick to it.

use std::time::Duration;

use amqp_client::{Channel, Connection, Error, FieldTable, QueueDeclareOptions, ServerClose};
use amqp_codec::ReplyCode;
use integration_tests::{rabbitmq_url, unique};

const PROMPTLY: Duration = Duration::from_secs(10);

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// The server's close, or a panic naming what came instead.
fn channel_close(err: Error) -> ServerClose {
    match err {
        Error::ChannelClosed(close) => close,
        other => panic!("expected ChannelClosed, got {other:?}"),
    }
}

/// The channel still works: a declare of a server-named queue succeeds on it.
async fn assert_usable(channel: &Channel) {
    channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .expect("the channel is still usable");
}

#[tokio::test]
async fn redeclare_with_other_durable_flag_is_406_with_rabbitmq_text() {
    let Some(url) =
        rabbitmq_url("redeclare_with_other_durable_flag_is_406_with_rabbitmq_text").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-inequivalent");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let close = channel_close(
        channel
            .queue_declare(&queue, durable, FieldTable::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(close.code, ReplyCode::PRECONDITION_FAILED);
    assert_eq!(
        close.text.to_str_lossy(),
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{queue}' in vhost '/': received 'true' but current is 'false'"
        )
    );
    // queue.declare is class 50, method 10.
    assert_eq!((close.class_id, close.method_id), (50, 10));
    let cleanup = connection.create_channel().await.unwrap();
    cleanup.queue_delete(&queue, false, false).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404_not_found() {
    let Some(url) = rabbitmq_url("passive_declare_of_missing_queue_is_404_not_found").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("client-missing");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let close = channel_close(
        channel
            .queue_declare(&queue, passive, FieldTable::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert_eq!(
        close.text.to_str_lossy(),
        format!("NOT_FOUND - no queue '{queue}' in vhost '/'")
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_the_channel_404_for_the_next_call() {
    let Some(url) =
        rabbitmq_url("publish_to_missing_exchange_closes_the_channel_404_for_the_next_call").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = unique("client-no-such-exchange");
    // basic.publish has no reply: the publish itself cannot fail, the channel closes later.
    channel
        .basic_publish(&exchange, "", Default::default(), "lost", false)
        .await
        .unwrap();
    let expected = format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'");
    let close = channel_close(
        channel
            .queue_declare("", exclusive(), FieldTable::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert_eq!(close.text.to_str_lossy(), expected);
    // basic.publish is class 60, method 40.
    assert_eq!((close.class_id, close.method_id), (60, 40));
    // The channel stays closed with the server's reason, whatever is tried next.
    for _ in 0..2 {
        let close = channel_close(
            channel
                .queue_declare("", exclusive(), FieldTable::new())
                .await
                .unwrap_err(),
        );
        assert_eq!(close.code, ReplyCode::NOT_FOUND);
        assert_eq!(close.text.to_str_lossy(), expected);
    }
    let publish = channel
        .basic_publish("", "x", Default::default(), "after", false)
        .await;
    assert!(
        matches!(&publish, Err(Error::ChannelClosed(c)) if c.code == ReplyCode::NOT_FOUND),
        "{:?}",
        publish.err()
    );
    let ack = channel.basic_ack(1, false).await.unwrap_err();
    assert_eq!(channel_close(ack).code, ReplyCode::NOT_FOUND);
    assert!(connection.is_open());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn declaring_a_queue_named_amq_dot_is_403_access_refused() {
    let Some(url) = rabbitmq_url("declaring_a_queue_named_amq_dot_is_403_access_refused").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = unique("amq.client");
    let close = channel_close(
        channel
            .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(close.code, ReplyCode::ACCESS_REFUSED);
    let text = close.text.to_str_lossy();
    assert!(text.starts_with("ACCESS_REFUSED - queue name "), "{text}");
    assert!(text.contains(&queue), "{text}");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn channel_error_leaves_the_connection_and_other_channels_usable() {
    let Some(url) =
        rabbitmq_url("channel_error_leaves_the_connection_and_other_channels_usable").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let bystander = connection.create_channel().await.unwrap();
    let victim = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let close = channel_close(
        victim
            .queue_declare(&unique("client-missing"), passive, FieldTable::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert!(connection.is_open());
    assert_usable(&bystander).await;
    // A new channel opens and works, and the dead one stays dead.
    let fresh = connection.create_channel().await.unwrap();
    assert_ne!(fresh.id(), victim.id());
    assert_usable(&fresh).await;
    let again = victim
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(channel_close(again).code, ReplyCode::NOT_FOUND);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn calls_pipelined_behind_a_failing_one_fail_with_the_same_channel_error() {
    let Some(url) =
        rabbitmq_url("calls_pipelined_behind_a_failing_one_fail_with_the_same_channel_error").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let missing = unique("client-missing");
    let (failing, behind) = tokio::time::timeout(PROMPTLY, async {
        tokio::join!(
            channel.queue_declare(&missing, passive, FieldTable::new()),
            channel.queue_declare("", exclusive(), FieldTable::new())
        )
    })
    .await
    .expect("both calls answered");
    assert_eq!(
        channel_close(failing.unwrap_err()).code,
        ReplyCode::NOT_FOUND
    );
    // The second was sent before the close arrived, or refused after it: either way the
    // server's 404 is its answer.
    assert_eq!(
        channel_close(behind.unwrap_err()).code,
        ReplyCode::NOT_FOUND
    );
    connection.close().await.unwrap();
}

#[tokio::test]
async fn too_long_queue_name_is_refused_before_sending_and_the_channel_survives() {
    let Some(url) =
        rabbitmq_url("too_long_queue_name_is_refused_before_sending_and_the_channel_survives")
            .await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let name = "q".repeat(256);
    let err = channel
        .queue_declare(&name, exclusive(), FieldTable::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err:?}");
    assert!(!err.is_connection_error());
    assert_usable(&channel).await;
    connection.close().await.unwrap();
}
