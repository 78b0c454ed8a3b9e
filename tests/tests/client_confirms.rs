//! amqp-client against RabbitMQ: publisher confirms (RabbitMQ's confirm.select, basic.ack /
//! basic.nack from the broker), mandatory returns, and transactions (spec class 90).

use std::time::Duration;

use amqp_client::{
    BasicProperties, Channel, Confirmation, Connection, Error, FieldTable, QueueDeclareOptions,
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

async fn temporary_queue(channel: &Channel, arguments: FieldTable) -> String {
    channel
        .queue_declare("", exclusive(), arguments)
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned()
}

/// Messages ready in `queue`.
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
async fn each_publish_in_confirm_mode_is_acked_and_wait_for_confirms_is_true() {
    let Some(url) =
        rabbitmq_url("each_publish_in_confirm_mode_is_acked_and_wait_for_confirms_is_true").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = temporary_queue(&channel, FieldTable::new()).await;
    // Before confirm.select nothing is asked.
    let before = channel
        .basic_publish("", &queue, BasicProperties::default(), "plain", false)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(before, Confirmation::NotRequested);
    // With nothing published in confirm mode, there is nothing to wait for.
    channel.confirm_select().await.unwrap();
    assert!(channel.wait_for_confirms().await.unwrap());
    let mut confirms = Vec::new();
    for i in 0..500 {
        confirms.push(
            channel
                .basic_publish(
                    "",
                    &queue,
                    BasicProperties::default(),
                    format!("{i}"),
                    false,
                )
                .await
                .unwrap(),
        );
    }
    let all = tokio::time::timeout(PROMPTLY, channel.wait_for_confirms())
        .await
        .expect("confirmed in time")
        .unwrap();
    assert!(all);
    for confirm in confirms {
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    }
    assert_eq!(ready(&channel, &queue).await, 501);
    // confirm.select again is harmless.
    channel.confirm_select().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn publish_rejected_by_a_full_queue_is_nacked_and_wait_for_confirms_is_false() {
    let Some(url) =
        rabbitmq_url("publish_rejected_by_a_full_queue_is_nacked_and_wait_for_confirms_is_false")
            .await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-length", 1i32);
    arguments.insert("x-overflow", "reject-publish");
    let queue = temporary_queue(&channel, arguments).await;
    channel.confirm_select().await.unwrap();
    let first = channel
        .basic_publish("", &queue, BasicProperties::default(), "fits", false)
        .await
        .unwrap();
    let second = channel
        .basic_publish("", &queue, BasicProperties::default(), "overflows", false)
        .await
        .unwrap();
    assert!(!channel.wait_for_confirms().await.unwrap());
    assert_eq!(first.await.unwrap(), Confirmation::Ack);
    assert_eq!(second.await.unwrap(), Confirmation::Nack);
    // A later wait only covers later publishes.
    channel.queue_purge(&queue).await.unwrap();
    channel
        .basic_publish("", &queue, BasicProperties::default(), "fits again", false)
        .await
        .unwrap();
    assert!(channel.wait_for_confirms().await.unwrap());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_before_its_ack() {
    let Some(url) = rabbitmq_url("mandatory_unroutable_publish_is_returned_before_its_ack").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut returns = channel.returns(16).await.unwrap();
    channel.confirm_select().await.unwrap();
    let nowhere = unique("client-nowhere");
    let properties = BasicProperties {
        correlation_id: Some("ret-1".into()),
        ..Default::default()
    };
    let confirm = channel
        .basic_publish("", &nowhere, properties.clone(), "unroutable", true)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(PROMPTLY, confirm)
            .await
            .unwrap()
            .unwrap(),
        Confirmation::Ack
    );
    // basic.return came before basic.ack, so it is already there.
    let returned = returns.try_recv().expect("returned before the ack");
    assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE.0);
    assert_eq!(returned.reply_text, "NO_ROUTE");
    assert_eq!(returned.exchange, "");
    assert_eq!(returned.routing_key, nowhere.as_str());
    assert_eq!(returned.properties, properties);
    assert_eq!(&returned.body[..], b"unroutable");

    // Without mandatory, an unroutable message is dropped silently (and still acked).
    let confirm = channel
        .basic_publish("", &nowhere, BasicProperties::default(), "dropped", false)
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    assert!(returns.try_recv().is_err());
    // A routable mandatory message is not returned.
    let queue = temporary_queue(&channel, FieldTable::new()).await;
    let confirm = channel
        .basic_publish("", &queue, BasicProperties::default(), "routed", true)
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    assert!(returns.try_recv().is_err());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn mandatory_return_arrives_without_confirm_mode_too() {
    let Some(url) = rabbitmq_url("mandatory_return_arrives_without_confirm_mode_too").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut returns = channel.returns(4).await.unwrap();
    let nowhere = unique("client-nowhere");
    channel
        .basic_publish("", &nowhere, BasicProperties::default(), "back", true)
        .await
        .unwrap();
    let returned = tokio::time::timeout(PROMPTLY, returns.recv())
        .await
        .expect("returned in time")
        .expect("a return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(&returned.body[..], b"back");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn tx_rollback_discards_publishes_and_commit_delivers_them() {
    let Some(url) = rabbitmq_url("tx_rollback_discards_publishes_and_commit_delivers_them").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = temporary_queue(&channel, FieldTable::new()).await;
    channel.tx_select().await.unwrap();
    for body in ["r1", "r2"] {
        channel
            .basic_publish("", &queue, BasicProperties::default(), body, false)
            .await
            .unwrap();
    }
    channel.tx_rollback().await.unwrap();
    assert_eq!(ready(&channel, &queue).await, 0);

    channel
        .basic_publish("", &queue, BasicProperties::default(), "c1", false)
        .await
        .unwrap();
    // Not visible before the commit.
    assert_eq!(ready(&channel, &queue).await, 0);
    channel.tx_commit().await.unwrap();
    assert_eq!(ready(&channel, &queue).await, 1);

    // Acks are transactional too: a rolled-back ack leaves the message unacked.
    let message = channel.basic_get(&queue, false).await.unwrap().unwrap();
    assert_eq!(&message.delivery.body[..], b"c1");
    message.delivery.ack().await.unwrap();
    channel.tx_rollback().await.unwrap();
    channel.basic_recover(true).await.unwrap();
    let again = channel.basic_get(&queue, false).await.unwrap().unwrap();
    assert!(again.delivery.redelivered);
    again.delivery.ack().await.unwrap();
    channel.tx_commit().await.unwrap();
    assert_eq!(ready(&channel, &queue).await, 0);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn tx_commit_without_select_and_confirm_on_a_tx_channel_are_406() {
    let Some(url) =
        rabbitmq_url("tx_commit_without_select_and_confirm_on_a_tx_channel_are_406").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let err = channel.tx_commit().await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy() == "PRECONDITION_FAILED - channel is not transactional"),
        "{err:?}"
    );
    let channel = connection.create_channel().await.unwrap();
    channel.tx_select().await.unwrap();
    let err = channel.confirm_select().await.unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::PRECONDITION_FAILED
            && c.text.to_str_lossy() == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"),
        "{err:?}"
    );
    connection.close().await.unwrap();
}
