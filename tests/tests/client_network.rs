//! amqp-client against RabbitMQ through a TCP proxy the test controls: the broker vanishing
//! (its sockets killed) and going silent (the proxy stops forwarding) must end every pending
//! call, confirm and consumer with an error, promptly. The shared RabbitMQ is never stopped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amqp_client::{
    AmqpUri, BasicConsumeOptions, BasicProperties, Channel, Connection, ConnectionConfig, Consumer,
    Error, FieldTable, QueueDeclareOptions,
};
use integration_tests::rabbitmq_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A hang guard, far above the few seconds the failures below take.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// What the proxy does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copies both ways.
    Forward,
    /// Stops reading and writing, sockets left open: the peer goes silent.
    Stall,
    /// Closes every socket: the peer is gone.
    Kill,
}

/// A TCP proxy from 127.0.0.1:<ephemeral> to the broker.
struct Proxy {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, modes.clone()));
                tokio::spawn(pump(server_read, client_write, modes.clone()));
            }
        });
        Proxy { address, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// A connection configuration for `url` that goes through this proxy.
    fn config(&self, url: &str, heartbeat: u16) -> ConnectionConfig {
        let mut uri = AmqpUri::parse(url).unwrap();
        uri.host = self.address.ip().to_string();
        uri.port = self.address.port();
        uri.heartbeat = Some(heartbeat);
        ConnectionConfig::new(uri)
    }
}

/// Copies `from` to `to` while the mode is Forward; closes both on Kill.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Kill => return,
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Forward => {}
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// A consumer on a new server-named exclusive queue.
async fn waiting_consumer(channel: &Channel) -> Consumer {
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn broker_gone_under_a_pending_confirm_and_a_waiting_consumer_ends_both_with_io_error() {
    let Some(url) = rabbitmq_url(
        "broker_gone_under_a_pending_confirm_and_a_waiting_consumer_ends_both_with_io_error",
    )
    .await
    else {
        return;
    };
    let proxy = Proxy::start(AmqpUri::parse(&url).unwrap().socket_address()).await;
    // Heartbeats off: what ends things here is the socket, not the silence.
    let connection = Connection::open_with(proxy.config(&url, 0)).await.unwrap();
    let consuming = connection.create_channel().await.unwrap();
    let mut consumer = waiting_consumer(&consuming).await;
    let publishing = connection.create_channel().await.unwrap();
    publishing.confirm_select().await.unwrap();
    let queue = publishing
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();

    // The publish leaves but never reaches the broker: its confirm stays pending.
    proxy.set(Mode::Stall);
    let confirm = publishing
        .basic_publish("", &queue, BasicProperties::default(), "in flight", false)
        .await
        .unwrap();
    let waiter = {
        let publishing = publishing.clone();
        tokio::spawn(async move { publishing.wait_for_confirms().await })
    };
    let call = {
        let publishing = publishing.clone();
        tokio::spawn(async move { publishing.queue_purge(&queue).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Mode::Kill);

    let is_io = |err: &Error| matches!(err, Error::Io(_));
    let confirmed = tokio::time::timeout(HANG_GUARD, confirm)
        .await
        .expect("the confirm ended");
    assert!(
        matches!(&confirmed, Err(err) if is_io(err)),
        "{confirmed:?}"
    );
    let waited = tokio::time::timeout(HANG_GUARD, waiter)
        .await
        .expect("wait_for_confirms ended")
        .unwrap();
    assert!(matches!(&waited, Err(err) if is_io(err)), "{waited:?}");
    let called = tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("the call ended")
        .unwrap();
    assert!(matches!(&called, Err(err) if is_io(err)), "{called:?}");
    let consumed = tokio::time::timeout(HANG_GUARD, consumer.next())
        .await
        .expect("the consumer ended");
    assert!(
        matches!(&consumed, Some(Err(err)) if is_io(err)),
        "{consumed:?}"
    );
    assert!(consumer.next().await.is_none());
    // The connection knows it is gone, and says so to whoever comes next.
    assert!(!connection.is_open());
    assert!(matches!(connection.close_reason(), Some(Error::Io(_))));
    let later = connection.create_channel().await.unwrap_err();
    assert!(is_io(&later), "{later:?}");
    let later = publishing
        .basic_publish("", "x", BasicProperties::default(), "late", false)
        .await
        .err();
    assert!(matches!(&later, Some(err) if is_io(err)), "{later:?}");
}

#[tokio::test]
async fn silent_broker_fails_every_pending_call_with_heartbeat_timeout() {
    let Some(url) =
        rabbitmq_url("silent_broker_fails_every_pending_call_with_heartbeat_timeout").await
    else {
        return;
    };
    let proxy = Proxy::start(AmqpUri::parse(&url).unwrap().socket_address()).await;
    let connection = Connection::open_with(proxy.config(&url, 1)).await.unwrap();
    assert_eq!(connection.tune().heartbeat, 1);
    let consuming = connection.create_channel().await.unwrap();
    let mut consumer = waiting_consumer(&consuming).await;
    let publishing = connection.create_channel().await.unwrap();
    publishing.confirm_select().await.unwrap();
    // Heartbeats keep an idle connection alive through the proxy.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(connection.is_open());

    proxy.set(Mode::Stall);
    let stalled_at = Instant::now();
    let confirm = publishing
        .basic_publish("", "", BasicProperties::default(), "unheard", false)
        .await
        .unwrap();
    let waiter = {
        let publishing = publishing.clone();
        tokio::spawn(async move { publishing.wait_for_confirms().await })
    };
    let call = {
        let publishing = publishing.clone();
        tokio::spawn(async move {
            publishing
                .queue_declare("", exclusive(), FieldTable::new())
                .await
        })
    };

    let is_timeout = |err: &Error| matches!(err, Error::HeartbeatTimeout(2));
    let consumed = tokio::time::timeout(HANG_GUARD, consumer.next())
        .await
        .expect("the consumer ended");
    let elapsed = stalled_at.elapsed();
    assert!(
        matches!(&consumed, Some(Err(err)) if is_timeout(err)),
        "{consumed:?}"
    );
    let confirmed = tokio::time::timeout(HANG_GUARD, confirm)
        .await
        .expect("the confirm ended");
    assert!(
        matches!(&confirmed, Err(err) if is_timeout(err)),
        "{confirmed:?}"
    );
    let waited = tokio::time::timeout(HANG_GUARD, waiter)
        .await
        .expect("wait_for_confirms ended")
        .unwrap();
    assert!(matches!(&waited, Err(err) if is_timeout(err)), "{waited:?}");
    let called = tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("the call ended")
        .unwrap();
    assert!(matches!(&called, Err(err) if is_timeout(err)), "{called:?}");
    assert!(matches!(
        connection.close_reason(),
        Some(Error::HeartbeatTimeout(2))
    ));
    eprintln!("heartbeat timeout declared {elapsed:?} after the proxy went silent");
}

#[tokio::test]
async fn silent_broker_is_detected_even_while_a_large_write_is_stuck() {
    let Some(url) =
        rabbitmq_url("silent_broker_is_detected_even_while_a_large_write_is_stuck").await
    else {
        return;
    };
    let proxy = Proxy::start(AmqpUri::parse(&url).unwrap().socket_address()).await;
    let connection = Connection::open_with(proxy.config(&url, 1)).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    proxy.set(Mode::Stall);
    // Far more than the socket buffers hold: the connection task's write cannot finish.
    let body = vec![0u8; 64 * 1024 * 1024];
    let confirm = channel
        .basic_publish("", "", BasicProperties::default(), body, false)
        .await
        .unwrap();
    let confirmed = tokio::time::timeout(HANG_GUARD, confirm)
        .await
        .expect("the confirm ended");
    assert!(
        matches!(&confirmed, Err(Error::HeartbeatTimeout(2))),
        "{confirmed:?}"
    );
    let call = tokio::time::timeout(HANG_GUARD, channel.basic_qos(1, false))
        .await
        .expect("the call ended");
    assert!(matches!(&call, Err(Error::HeartbeatTimeout(2))), "{call:?}");
}

#[tokio::test]
async fn consumer_with_a_full_buffer_gets_its_deliveries_then_the_error() {
    let Some(url) =
        rabbitmq_url("consumer_with_a_full_buffer_still_ends_with_the_error_after_its_deliveries")
            .await
    else {
        return;
    };
    let proxy = Proxy::start(AmqpUri::parse(&url).unwrap().socket_address()).await;
    let connection = Connection::open_with(proxy.config(&url, 0)).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap()
        .name
        .to_str_lossy()
        .into_owned();
    channel.confirm_select().await.unwrap();
    for body in ["1", "2", "3"] {
        channel
            .basic_publish("", &queue, BasicProperties::default(), body, false)
            .await
            .unwrap();
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    // A buffer of one: the first delivery fills it, the second waits in the connection.
    let mut consumer = channel
        .basic_consume_with_buffer(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
            1,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Mode::Kill);
    let mut delivered = 0;
    let last = loop {
        match tokio::time::timeout(HANG_GUARD, consumer.next())
            .await
            .expect("the consumer ended")
        {
            Some(Ok(_)) => delivered += 1,
            other => break other,
        }
    };
    // What arrived before the broker went away is handed over first, then why it ended.
    assert!(matches!(&last, Some(Err(Error::Io(_)))), "{last:?}");
    assert!(delivered <= 3, "{delivered}");
    assert!(consumer.next().await.is_none());
}
