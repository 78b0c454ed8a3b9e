//! amqp-client against RabbitMQ: the connection (spec class 10): handshake and login, tune
//! negotiation, update-secret, and the broker closing the connection under us.

use std::time::Duration;

use amqp_client::{
    AmqpUri, BasicConsumeOptions, Connection, ConnectionConfig, Error, FieldTable, FieldValue,
    QueueDeclareOptions,
};
use amqp_codec::ReplyCode;
use integration_tests::{rabbitmq_url, rabbitmqctl, unique, with_query};

/// Enough for anything that should happen at once; a hang fails the test instead of blocking it.
const PROMPTLY: Duration = Duration::from_secs(10);

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn heartbeat_in_uri_is_the_negotiated_interval() {
    let Some(url) = rabbitmq_url("heartbeat_in_uri_is_the_negotiated_interval").await else {
        return;
    };
    let five = Connection::open(&with_query(&url, "heartbeat=5"))
        .await
        .unwrap();
    assert_eq!(five.tune().heartbeat, 5);
    let off = Connection::open(&with_query(&url, "heartbeat=0"))
        .await
        .unwrap();
    assert_eq!(off.tune().heartbeat, 0);
    let default = Connection::open(&url).await.unwrap();
    // RabbitMQ's default offer, accepted as is.
    assert_eq!(default.tune().heartbeat, 60);
    for connection in [five, off, default] {
        connection.close().await.unwrap();
    }
}

#[tokio::test]
async fn frame_max_and_channel_max_in_uri_are_negotiated_down() {
    let Some(url) = rabbitmq_url("frame_max_and_channel_max_in_uri_are_negotiated_down").await
    else {
        return;
    };
    let connection = Connection::open(&with_query(&url, "frame_max=8192&channel_max=2"))
        .await
        .unwrap();
    let tune = connection.tune();
    assert_eq!((tune.frame_max, tune.channel_max), (8192, 2));
    let first = connection.create_channel().await.unwrap();
    let second = connection.create_channel().await.unwrap();
    assert_eq!((first.id(), second.id()), (1, 2));
    let third = connection.create_channel().await.unwrap_err();
    assert!(matches!(third, Error::NoFreeChannel(2)), "{third:?}");
    // Closing one frees its number for the next.
    first.close().await.unwrap();
    let again = connection.create_channel().await.unwrap();
    assert_eq!(again.id(), 1);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn server_properties_name_rabbitmq_and_its_capabilities() {
    let Some(url) = rabbitmq_url("server_properties_name_rabbitmq_and_its_capabilities").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let properties = connection.server_properties();
    assert!(
        matches!(properties.get("product"), Some(FieldValue::LongString(p)) if p.as_bytes() == b"RabbitMQ"),
        "{properties:?}"
    );
    for capability in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "exchange_exchange_bindings",
        "authentication_failure_close",
    ] {
        assert!(
            amqp_client::core::server_capability(properties, capability),
            "{capability} missing from {properties:?}"
        );
    }
    assert!(connection.is_open());
    assert!(!connection.is_blocked());
    assert!(connection.close_reason().is_none());
    connection.close().await.unwrap();
}

#[tokio::test]
async fn amqplain_login_is_accepted() {
    let Some(url) = rabbitmq_url("amqplain_login_is_accepted").await else {
        return;
    };
    let connection = Connection::open(&with_query(&url, "auth_mechanism=AMQPLAIN"))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn bad_password_fails_with_authentication_failed() {
    let Some(url) = rabbitmq_url("bad_password_fails_with_authentication_failed").await else {
        return;
    };
    let mut uri = AmqpUri::parse(&url).unwrap();
    uri.password = "not-the-password".into();
    let err = Connection::open_with(ConnectionConfig::new(uri))
        .await
        .unwrap_err();
    let Error::AuthenticationFailed(text) = &err else {
        panic!("expected AuthenticationFailed, got {err:?}");
    };
    // RabbitMQ closes with 403 and says why (authentication_failure_close).
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
}

#[tokio::test]
async fn unknown_vhost_fails_with_connection_closed_530_not_allowed() {
    let Some(url) =
        rabbitmq_url("unknown_vhost_fails_with_connection_closed_530_not_allowed").await
    else {
        return;
    };
    let mut uri = AmqpUri::parse(&url).unwrap();
    let vhost = unique("no-such-vhost");
    uri.vhost = vhost.clone();
    let err = Connection::open_with(ConnectionConfig::new(uri))
        .await
        .unwrap_err();
    let Error::ConnectionClosed(close) = &err else {
        panic!("expected ConnectionClosed, got {err:?}");
    };
    assert_eq!(close.code, ReplyCode::NOT_ALLOWED);
    let text = close.text.to_str_lossy();
    assert!(text.starts_with("NOT_ALLOWED - "), "{text}");
    assert!(text.contains(&vhost), "{text}");
}

#[tokio::test]
async fn update_secret_is_acknowledged_and_the_connection_stays_usable() {
    let Some(url) =
        rabbitmq_url("update_secret_is_acknowledged_and_the_connection_stays_usable").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // RabbitMQ 3.10's internal backend keeps no expiring state, so it answers any new secret
    // with update-secret-ok (an OAuth 2 backend would check the token).
    tokio::time::timeout(PROMPTLY, connection.update_secret("guest", "rotation"))
        .await
        .expect("update-secret answered")
        .unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    assert!(queue.name.to_str_lossy().starts_with("amq.gen-"));
    // Two in a row are matched to their own oks.
    let (first, second) = tokio::join!(
        connection.update_secret("guest", "one"),
        connection.update_secret("guest", "two")
    );
    first.unwrap();
    second.unwrap();
    assert!(connection.is_open());
    connection.close().await.unwrap();
}

/// The pid of the connection named `name`, from `rabbitmqctl list_connections`.
fn connection_pid(test: &str, name: &str) -> Option<String> {
    // A new connection shows up in the listing a moment after the handshake.
    for _ in 0..50 {
        let listing = rabbitmqctl(
            test,
            &[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
        )?;
        if let Some(line) = listing.lines().find(|line| line.contains(name)) {
            return line.split('\t').next().map(str::to_owned);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{test}: connection {name} not in rabbitmqctl list_connections");
}

#[tokio::test]
async fn broker_closing_the_connection_ends_everything_with_320_connection_forced() {
    let test = "broker_closing_the_connection_ends_everything_with_320_connection_forced";
    let Some(url) = rabbitmq_url(test).await else {
        return;
    };
    let name = unique("client-forced-close");
    let mut config = ConnectionConfig::new(AmqpUri::parse(&url).unwrap());
    config.connection_name = Some(name.clone());
    let connection = Connection::open_with(config).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            &queue.name.to_str_lossy(),
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let Some(pid) = connection_pid(test, &name) else {
        return;
    };
    let waiting = tokio::spawn(async move { consumer.next().await });
    rabbitmqctl(test, &["close_connection", &pid, "closed by the test"]).unwrap();

    let is_forced = |err: &Error| {
        matches!(err, Error::ConnectionClosed(close)
            if close.code == ReplyCode::CONNECTION_FORCED
                && close.text.to_str_lossy().contains("closed by the test"))
    };
    let ended = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("the consumer stream ended")
        .unwrap();
    assert!(
        matches!(&ended, Some(Err(err)) if is_forced(err)),
        "{ended:?}"
    );
    let reason = connection.close_reason().expect("a close reason");
    assert!(is_forced(&reason), "{reason:?}");
    assert!(!connection.is_open());
    // Everything tried afterwards fails at once with the same reason.
    let declare = tokio::time::timeout(
        PROMPTLY,
        channel.queue_declare("", exclusive(), FieldTable::new()),
    )
    .await
    .expect("declare answered")
    .unwrap_err();
    assert!(is_forced(&declare), "{declare:?}");
    let open = tokio::time::timeout(PROMPTLY, connection.create_channel())
        .await
        .expect("create_channel answered")
        .unwrap_err();
    assert!(is_forced(&open), "{open:?}");
    let publish = tokio::time::timeout(
        PROMPTLY,
        channel.basic_publish("", "x", Default::default(), "late", false),
    )
    .await
    .expect("publish answered");
    assert!(
        matches!(&publish, Err(err) if is_forced(err)),
        "{:?}",
        publish.err()
    );
    let close = tokio::time::timeout(PROMPTLY, connection.close())
        .await
        .expect("close answered");
    assert!(matches!(&close, Err(err) if is_forced(err)), "{close:?}");
}

#[tokio::test]
async fn calls_after_a_local_close_fail_with_closed_locally() {
    let Some(url) = rabbitmq_url("calls_after_a_local_close_fail_with_closed_locally").await else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    connection.close().await.unwrap();
    assert!(!connection.is_open());
    let declare = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap_err();
    assert!(
        matches!(declare, Error::ConnectionClosedLocally),
        "{declare:?}"
    );
    let open = connection.create_channel().await.unwrap_err();
    assert!(matches!(open, Error::ConnectionClosedLocally), "{open:?}");
    // A second close is harmless.
    connection.close().await.unwrap();
}

#[tokio::test]
async fn closed_channel_fails_calls_and_leaves_the_connection_open() {
    let Some(url) = rabbitmq_url("closed_channel_fails_calls_and_leaves_the_connection_open").await
    else {
        return;
    };
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.close().await.unwrap();
    let declare = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap_err();
    assert!(
        matches!(declare, Error::ChannelClosedLocally),
        "{declare:?}"
    );
    let other = connection.create_channel().await.unwrap();
    other
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    assert!(connection.is_open());
    connection.close().await.unwrap();
}
