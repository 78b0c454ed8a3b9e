//! The broker's protocol behaviour, checked against an in-process broker: malformed input
//! (with a raw socket client), heartbeats, dispatch and acknowledgement semantics, queue
//! lifecycles, and RabbitMQ's reply codes and texts.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, Consumer, Delivery, Error,
    FieldTable, FieldValue, QueueDeclareOptions, ServerClose,
};
use amqp_codec::methods::*;
use amqp_codec::{ChannelId, Frame, Limits, LongString, Method, ShortString};
use bytes::BytesMut;
use mini_broker::{BrokerConfig, BrokerOptions, RunningBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

async fn broker_with(config: BrokerConfig) -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn broker() -> RunningBroker {
    broker_with(BrokerConfig::default()).await
}

async fn connect(running: &RunningBroker) -> (Connection, Channel) {
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(queue, QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
}

async fn publish(channel: &Channel, queue: &str, body: &str) {
    channel
        .basic_publish(
            "",
            queue,
            BasicProperties::default(),
            body.to_owned(),
            false,
        )
        .await
        .unwrap();
}

async fn consume(channel: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    channel
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is still running")
        .expect("a delivery, not an error")
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

/// Every ready message, fetched with basic.get (auto-ack): bodies, `(r)` marking redelivered.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).await.unwrap() {
        let redelivered = if message.delivery.redelivered {
            "(r)"
        } else {
            ""
        };
        bodies.push(format!("{}{redelivered}", body(&message.delivery)));
    }
    bodies
}

/// The channel.close a refused operation caused.
fn channel_close(result: Result<impl std::fmt::Debug, Error>) -> ServerClose {
    match result {
        Err(Error::ChannelClosed(close)) => close,
        other => panic!("expected channel.close, got {other:?}"),
    }
}

/// How the server answered an asynchronous method (publish, ack): the channel.close the
/// next synchronous call runs into.
async fn close_after(channel: &Channel) -> ServerClose {
    channel_close(channel.basic_qos(0, false).await)
}

fn text(close: &ServerClose) -> (u16, String) {
    (close.code.0, close.text.to_string())
}

// ---- raw client ---------------------------------------------------------------------------

/// A client that speaks frames, for what a well-behaved client never sends.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(running: &RunningBroker) -> Raw {
        Raw {
            stream: TcpStream::connect(running.amqp_addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed: the next recv says so.
        let _ = self.stream.write_all(bytes).await;
    }

    async fn send(&mut self, channel: ChannelId, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        Frame::Method(channel, method.into())
            .encode(&mut out, 0)
            .unwrap();
        self.send_bytes(&out).await;
    }

    /// The next frame; None once the broker closed the socket.
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = amqp_codec::decode(&mut self.buf, &Limits::with_frame_max(0))
                    .expect("the broker sends well-formed frames")
                {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame or the end of the stream in time")
    }

    /// The next method frame (heartbeats skipped); None once the socket is closed.
    async fn recv_method(&mut self) -> Option<(ChannelId, Method)> {
        loop {
            match self.recv().await? {
                Frame::Method(channel, method) => return Some((channel, method)),
                Frame::Heartbeat => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Everything the broker still writes, until it closes the socket.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut all))
            .await
            .expect("the broker closes the socket in time")
            .ok();
        all
    }

    /// The handshake up to connection.tune; returns the broker's offer.
    async fn start(&mut self) -> ConnectionTune {
        self.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let Some((0, Method::ConnectionStart(_))) = self.recv_method().await else {
            panic!("expected connection.start");
        };
        self.send(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: LongString::new(&b"\x00guest\x00guest"[..]),
                locale: "en_US".into(),
            },
        )
        .await;
        match self.recv_method().await {
            Some((0, Method::ConnectionTune(tune))) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// The whole handshake with these tune-ok values, up to connection.open-ok.
    async fn handshake(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.start().await;
        self.send(
            0,
            ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
            },
        )
        .await;
        self.send(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            },
        )
        .await;
        match self.recv_method().await {
            Some((0, Method::ConnectionOpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    async fn open_channel(&mut self, channel: ChannelId) -> Method {
        self.send(channel, ChannelOpen).await;
        self.recv_method()
            .await
            .expect("an answer to channel.open")
            .1
    }
}

/// The connection.close the broker sent: code, text, class id, method id.
fn connection_close(method: Option<(ChannelId, Method)>) -> (u16, String, u16, u16) {
    match method {
        Some((0, Method::ConnectionClose(close))) => (
            close.reply_code,
            close.reply_text.to_string(),
            close.class_id,
            close.method_id,
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

// ---- malformed input ------------------------------------------------------------------------

#[tokio::test]
async fn bad_frame_end_closes_the_connection_with_501_and_the_broker_serves_others() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 0).await;
    // A method frame: type 1, channel 0, size 4, payload channel.open (20, 10), then 0x00
    // where the frame-end octet 0xCE belongs.
    raw.send_bytes(&[
        0x01, // frame type: method
        0x00, 0x00, // channel 0
        0x00, 0x00, 0x00, 0x04, // payload size 4
        0x00, 0x14, // class 20 (channel)
        0x00, 0x0a, // method 10 (open)
        0x00, // frame end: wrong
    ])
    .await;
    assert_eq!(
        connection_close(raw.recv_method().await),
        (
            501,
            "FRAME_ERROR - type 1, all octets = <<0,20,0,10>>: {invalid_frame_end_marker,0}"
                .to_owned(),
            0,
            0
        )
    );
    assert!(raw.recv().await.is_none(), "the socket is closed after it");

    let (_connection, channel) = connect(&running).await;
    declare(&channel, "still-serving").await;
}

#[tokio::test]
async fn frame_larger_than_the_negotiated_frame_max_is_501_frame_too_large() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 4096, 0).await;
    assert!(matches!(
        raw.open_channel(1).await,
        Method::ChannelOpenOk(_)
    ));
    let mut frames = BytesMut::new();
    Frame::Method(
        1,
        BasicPublish {
            exchange: "amq.direct".into(),
            routing_key: "k".into(),
            mandatory: false,
            immediate: false,
        }
        .into(),
    )
    .encode(&mut frames, 0)
    .unwrap();
    Frame::Header(
        1,
        amqp_codec::ContentHeader::basic(5000, BasicProperties::default()),
    )
    .encode(&mut frames, 0)
    .unwrap();
    raw.send_bytes(&frames).await;
    // A body frame of 5000 octets: type 3, channel 1, size 5000 (over 4096).
    let mut body = vec![0x03, 0x00, 0x01, 0x00, 0x00, 0x13, 0x88];
    body.extend(std::iter::repeat_n(b'x', 5000));
    body.push(0xce);
    raw.send_bytes(&body).await;
    assert_eq!(
        connection_close(raw.recv_method().await),
        (
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}".to_owned(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn garbage_instead_of_the_protocol_header_is_answered_with_amqp_0_9_1_and_closed() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw.read_to_end().await, b"AMQP\x00\x00\x09\x01");
}

#[tokio::test]
async fn unknown_class_and_method_close_the_socket_without_a_frame() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 0).await;
    raw.send_bytes(&[
        0x01, // frame type: method
        0x00, 0x00, // channel 0
        0x00, 0x00, 0x00, 0x04, // payload size 4
        0x03, 0xe7, // class 999
        0x00, 0x0a, // method 10
        0xce, // frame end
    ])
    .await;
    assert_eq!(raw.read_to_end().await, b"", "no close frame, just the end");
}

/// A client that pipelines many requests and then connection.close, goes on writing after
/// it, and reads slowly, still gets every reply, the close-ok and then the end of the stream.
/// The broker's replies are still queued in its socket, unsent, when it has handled the
/// close. Closing the socket then with the client's input unread makes the kernel send a
/// reset, which throws them away: before the broker lingered (read and dropped the input
/// until the client closed), about 7,000 of the 20,000 replies arrived, the last one cut
/// short, no close-ok, and the client's write failed with the reset.
#[tokio::test]
async fn input_after_connection_close_does_not_turn_the_close_into_a_reset() {
    const DECLARES: usize = 20_000;
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 0).await;
    raw.open_channel(1).await;
    let mut out = BytesMut::new();
    // queue.declare-ok repeats the long name: megabytes of replies, more than the sockets
    // hold while the client is not reading.
    let name = "q".repeat(200);
    for _ in 0..DECLARES {
        Frame::Method(
            1,
            QueueDeclare {
                queue: name.as_str().into(),
                ..Default::default()
            }
            .into(),
        )
        .encode(&mut out, 0)
        .unwrap();
    }
    Frame::Method(
        0,
        ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    )
    .encode(&mut out, 0)
    .unwrap();
    out.extend_from_slice(&[0xce; 8 * 1024 * 1024]);
    let (mut reader, mut writer) = raw.stream.into_split();
    // After the close the broker reads what follows only to drop it.
    let writing = tokio::spawn(async move { (writer.write_all(&out).await, writer) });
    // A slow reader: the replies stay queued in the broker's socket, unsent, long after the
    // broker has handled the close and written them.
    let mut all = raw.buf.split().to_vec();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0; 16 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(err),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the broker closes the socket in time");
    let mut input = BytesMut::from(&all[..]);
    let mut declare_oks = 0;
    let mut close_ok = false;
    while let Some(frame) = amqp_codec::decode(&mut input, &Limits::with_frame_max(0)).unwrap() {
        match frame {
            Frame::Method(1, Method::QueueDeclareOk(_)) => declare_oks += 1,
            Frame::Method(0, Method::ConnectionCloseOk(_)) => close_ok = true,
            other => panic!("unexpected {other:?} after {declare_oks} declare-oks"),
        }
    }
    assert!(
        read.is_ok(),
        "the stream ended in {read:?} after {declare_oks} replies"
    );
    assert_eq!(declare_oks, DECLARES, "every reply, none lost to a reset");
    assert!(close_ok, "connection.close-ok last");
    assert!(input.is_empty(), "a frame cut short: {input:?}");
    let (written, _writer) = writing.await.unwrap();
    assert!(written.is_ok(), "the client's write ended in {written:?}");
}

#[tokio::test]
async fn truncated_method_arguments_are_501_cannot_decode() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 0).await;
    raw.open_channel(1).await;
    raw.send_bytes(&[
        0x01, // frame type: method
        0x00, 0x01, // channel 1
        0x00, 0x00, 0x00, 0x06, // payload size 6
        0x00, 0x32, // class 50 (queue)
        0x00, 0x0a, // method 10 (declare)
        0x00, 0x00, // reserved-1, then nothing: the queue name is missing
        0xce, // frame end
    ])
    .await;
    assert_eq!(
        connection_close(raw.recv_method().await),
        (
            501,
            "FRAME_ERROR - cannot decode <<0,0>>".to_owned(),
            50,
            10
        )
    );
}

#[tokio::test]
async fn tune_ok_with_channel_max_0_is_refused_without_a_close_frame() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    let offer = raw.start().await;
    assert_eq!(offer.channel_max, 2047);
    raw.send(
        0,
        ConnectionTuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        },
    )
    .await;
    raw.send(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
        },
    )
    .await;
    assert_eq!(
        raw.read_to_end().await,
        b"",
        "silently closed, as RabbitMQ does"
    );
}

#[tokio::test]
async fn channel_max_limits_the_number_of_open_channels_not_their_numbers() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2, 131_072, 0).await;
    assert!(matches!(
        raw.open_channel(7).await,
        Method::ChannelOpenOk(_)
    ));
    assert!(matches!(
        raw.open_channel(1).await,
        Method::ChannelOpenOk(_)
    ));
    raw.send(2, ChannelOpen).await;
    assert_eq!(
        connection_close(raw.recv_method().await),
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
                .to_owned(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn method_on_a_channel_never_opened_is_504_expected_channel_open() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 0).await;
    raw.send(
        5,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: 1,
            global: false,
        },
    )
    .await;
    assert_eq!(
        connection_close(raw.recv_method().await),
        (
            504,
            "CHANNEL_ERROR - expected 'channel.open'".to_owned(),
            60,
            10
        )
    );
}

// ---- heartbeats -----------------------------------------------------------------------------

#[tokio::test]
async fn client_silent_past_two_heartbeat_intervals_is_disconnected() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.handshake(2047, 131_072, 1).await;
    // The broker heartbeats a silent client...
    assert!(matches!(raw.recv().await, Some(Frame::Heartbeat)));
    // ...and, hearing nothing back for two intervals, hangs up (RabbitMQ: about 2 s).
    loop {
        match raw.recv().await {
            Some(Frame::Heartbeat) => continue,
            None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

// ---- dispatch -------------------------------------------------------------------------------

#[tokio::test]
async fn messages_go_round_robin_over_two_consumers() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    declare(&channel, "rr").await;
    let mut first = consume(&channel, "rr", "c1", true).await;
    let mut second = consume(&channel, "rr", "c2", true).await;
    for i in 1..=6 {
        publish(&channel, "rr", &format!("m{i}")).await;
    }
    let mut got_first = Vec::new();
    let mut got_second = Vec::new();
    for _ in 0..3 {
        got_first.push(body(&next(&mut first).await));
        got_second.push(body(&next(&mut second).await));
    }
    assert_eq!(got_first, ["m1", "m3", "m5"]);
    assert_eq!(got_second, ["m2", "m4", "m6"]);
}

#[tokio::test]
async fn prefetch_1_gives_the_next_message_to_the_consumer_that_acked() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    declare(&channel, "fair").await;
    channel.basic_qos(1, false).await.unwrap();
    let mut slow = consume(&channel, "fair", "slow", false).await;
    let mut fast = consume(&channel, "fair", "fast", false).await;
    for i in 1..=4 {
        publish(&channel, "fair", &format!("m{i}")).await;
    }
    let slow_first = next(&mut slow).await;
    let fast_first = next(&mut fast).await;
    assert_eq!(
        (body(&slow_first), body(&fast_first)),
        ("m1".into(), "m2".into())
    );
    // Each holds one unacked message: the other two wait in the queue.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let waiting = channel
        .queue_declare("fair", passive, FieldTable::new())
        .await
        .unwrap();
    assert_eq!(waiting.message_count, 2);
    // The fast one acks twice and gets both; the slow one still holds m1.
    fast_first.ack().await.unwrap();
    let fast_second = next(&mut fast).await;
    assert_eq!(body(&fast_second), "m3");
    fast_second.ack().await.unwrap();
    assert_eq!(body(&next(&mut fast).await), "m4");
}

#[tokio::test]
async fn rejected_messages_come_back_in_their_order_marked_redelivered() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    declare(&channel, "order").await;
    for b in ["A", "B", "C", "D"] {
        publish(&channel, "order", b).await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(channel.basic_get("order", false).await.unwrap().unwrap());
    }
    // Rejected in reverse order: a classic queue still puts them back as they were.
    for message in held.iter().rev() {
        channel
            .basic_reject(message.delivery.delivery_tag, true)
            .await
            .unwrap();
    }
    assert_eq!(
        drain(&channel, "order").await,
        ["A(r)", "B(r)", "C(r)", "D"]
    );
}

#[tokio::test]
async fn quorum_queue_returns_rejected_messages_to_the_back_with_a_delivery_count() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", "quorum");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("qq", durable, arguments)
        .await
        .unwrap();
    for b in ["A", "B"] {
        publish(&channel, "qq", b).await;
    }
    let first = channel.basic_get("qq", false).await.unwrap().unwrap();
    let count = |delivery: &Delivery| {
        delivery
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-delivery-count").cloned())
    };
    assert_eq!(count(&first.delivery), Some(FieldValue::I64(0)));
    channel
        .basic_reject(first.delivery.delivery_tag, true)
        .await
        .unwrap();
    let b = channel.basic_get("qq", true).await.unwrap().unwrap();
    assert_eq!(body(&b.delivery), "B");
    let a = channel.basic_get("qq", true).await.unwrap().unwrap();
    assert_eq!(body(&a.delivery), "A");
    assert!(a.delivery.redelivered);
    assert_eq!(count(&a.delivery), Some(FieldValue::I64(1)));
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_the_consumer_channel_closes() {
    let running = broker().await;
    let (connection, channel) = connect(&running).await;
    declare(&channel, "held").await;
    for b in ["A", "B", "C"] {
        publish(&channel, "held", b).await;
    }
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel.basic_qos(2, false).await.unwrap();
    let mut consumer = consume(&consumer_channel, "held", "c", false).await;
    assert_eq!(body(&next(&mut consumer).await), "A");
    assert_eq!(body(&next(&mut consumer).await), "B");
    consumer_channel.close().await.unwrap();
    assert_eq!(drain(&channel, "held").await, ["A(r)", "B(r)", "C"]);
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_the_consumer_connection_closes() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    declare(&channel, "held").await;
    for b in ["A", "B"] {
        publish(&channel, "held", b).await;
    }
    let (consumer_connection, consumer_channel) = connect(&running).await;
    let mut consumer = consume(&consumer_channel, "held", "c", false).await;
    assert_eq!(body(&next(&mut consumer).await), "A");
    assert_eq!(body(&next(&mut consumer).await), "B");
    consumer_connection.close().await.unwrap();
    assert_eq!(drain(&channel, "held").await, ["A(r)", "B(r)"]);
}

#[tokio::test]
async fn message_ttl_0_reaches_a_waiting_consumer_but_not_a_later_get() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    let mut arguments = FieldTable::new();
    arguments.insert("x-message-ttl", 0);
    channel
        .queue_declare("ttl0", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&channel, "ttl0", "gone").await;
    assert!(channel.basic_get("ttl0", true).await.unwrap().is_none());
    let mut consumer = consume(&channel, "ttl0", "c", true).await;
    publish(&channel, "ttl0", "taken").await;
    assert_eq!(body(&next(&mut consumer).await), "taken");
}

// ---- errors and their texts -------------------------------------------------------------------

#[tokio::test]
async fn ack_of_an_unknown_delivery_tag_is_406() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    channel.basic_ack(99, false).await.unwrap();
    assert_eq!(
        text(&close_after(&channel).await),
        (406, "PRECONDITION_FAILED - unknown delivery tag 99".into())
    );
}

#[tokio::test]
async fn message_over_max_message_size_is_406() {
    let running = broker_with(BrokerConfig {
        max_message_size: 1000,
        ..Default::default()
    })
    .await;
    let (_connection, channel) = connect(&running).await;
    declare(&channel, "small").await;
    publish(&channel, "small", &"x".repeat(2000)).await;
    let close = close_after(&channel).await;
    assert_eq!(
        text(&close),
        (
            406,
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000"
                .into()
        )
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
}

#[tokio::test]
async fn missing_queue_and_exchange_are_404() {
    let running = broker().await;
    let (connection, channel) = connect(&running).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let close = channel_close(
        channel
            .queue_declare("nope", passive, FieldTable::new())
            .await,
    );
    assert_eq!(
        text(&close),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish("nope-x", "k", BasicProperties::default(), "m", false)
        .await
        .unwrap();
    assert_eq!(
        text(&close_after(&channel).await),
        (404, "NOT_FOUND - no exchange 'nope-x' in vhost '/'".into())
    );
}

#[tokio::test]
async fn reserved_names_and_exclusive_consumers_are_403() {
    let running = broker().await;
    let (connection, channel) = connect(&running).await;
    let close = channel_close(
        channel
            .queue_declare(
                "amq.mine",
                QueueDeclareOptions::default(),
                FieldTable::new(),
            )
            .await,
    );
    assert_eq!(
        text(&close),
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'".into()
        )
    );
    let channel = connection.create_channel().await.unwrap();
    declare(&channel, "solo").await;
    channel
        .basic_consume(
            "solo",
            "only",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    let other = connection.create_channel().await.unwrap();
    let close = channel_close(
        other
            .basic_consume(
                "solo",
                "second",
                BasicConsumeOptions::default(),
                FieldTable::new(),
            )
            .await,
    );
    assert_eq!(
        text(&close),
        (
            403,
            "ACCESS_REFUSED - queue 'solo' in vhost '/' in exclusive use".into()
        )
    );
}

#[tokio::test]
async fn another_connections_exclusive_queue_is_405_and_gone_when_its_owner_closes() {
    let running = broker().await;
    let (owner, owner_channel) = connect(&running).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    owner_channel
        .queue_declare("mine", exclusive, FieldTable::new())
        .await
        .unwrap();
    let (other, channel) = connect(&running).await;
    let close = channel_close(channel.basic_get("mine", true).await);
    assert_eq!(
        text(&close),
        (
            405,
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'. \
             It could be originally declared on another connection or the exclusive property \
             value does not match that of the original declaration."
                .into()
        )
    );
    owner.close().await.unwrap();
    let channel = other.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let close = channel_close(
        channel
            .queue_declare("mine", passive, FieldTable::new())
            .await,
    );
    assert_eq!(close.code.0, 404, "deleted with its connection");
}

// ---- queue lifecycles -----------------------------------------------------------------------

#[tokio::test]
async fn consumer_is_told_with_basic_cancel_when_its_queue_is_deleted() {
    let running = broker().await;
    let (connection, channel) = connect(&running).await;
    declare(&channel, "doomed").await;
    let mut consumer = consume(&channel, "doomed", "watcher", false).await;
    let other = connection.create_channel().await.unwrap();
    other.queue_delete("doomed", false, false).await.unwrap();
    let end = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("the consumer hears of it in time");
    assert!(
        matches!(&end, Some(Err(Error::ConsumerCancelled(tag))) if tag == "watcher"),
        "{end:?}"
    );
    // The consumer's channel stays open.
    declare(&channel, "after").await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let running = broker().await;
    let (connection, channel) = connect(&running).await;
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare("temp", auto_delete, FieldTable::new())
        .await
        .unwrap();
    let _first = consume(&channel, "temp", "a", true).await;
    let _second = consume(&channel, "temp", "b", true).await;
    channel.basic_cancel("a").await.unwrap();
    assert!(running
        .broker
        .vhost("/")
        .unwrap()
        .queue(&"temp".into())
        .is_some());
    channel.basic_cancel("b").await.unwrap();
    let other = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let close = channel_close(
        other
            .queue_declare("temp", passive, FieldTable::new())
            .await,
    );
    assert_eq!(close.code.0, 404);
}

#[tokio::test]
async fn server_named_queue_is_amq_gen_and_22_base64url_characters() {
    let running = broker().await;
    let (_connection, channel) = connect(&running).await;
    let declared = channel
        .queue_declare("", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let name = declared.name.to_string();
    let suffix = name.strip_prefix("amq.gen-").expect("the amq.gen- prefix");
    assert_eq!(suffix.len(), 22, "{name}");
    assert!(suffix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    // "" then means that queue on this channel.
    publish(&channel, &name, "m").await;
    let got = channel.basic_get("", true).await.unwrap().unwrap();
    assert_eq!(got.delivery.routing_key, ShortString::from(name.as_str()));
}

#[tokio::test]
async fn protocol_header_for_0_9_1_is_answered_with_connection_start() {
    let running = broker().await;
    let mut raw = Raw::connect(&running).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    match raw.recv_method().await {
        Some((0, Method::ConnectionStart(start))) => {
            assert_eq!((start.version_major, start.version_minor), (0, 9));
            assert_eq!(start.mechanisms.as_bytes(), b"AMQPLAIN PLAIN");
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
}

// ---- publisher confirms ---------------------------------------------------------------------

/// Which delivery tags the broker confirmed, each exactly once: basic.ack or basic.nack of
/// one tag, or with multiple=true of every tag up to it still unconfirmed (RabbitMQ's
/// confirm extension of spec 1.8.3.3 and 1.8.3.13), which must name an unconfirmed tag.
struct ConfirmTracker {
    unconfirmed: std::collections::BTreeSet<u64>,
    acked: Vec<u64>,
    nacked: Vec<u64>,
    /// basic.ack and basic.nack frames received.
    frames: usize,
}

impl ConfirmTracker {
    fn new(tags: std::ops::RangeInclusive<u64>) -> ConfirmTracker {
        ConfirmTracker {
            unconfirmed: tags.collect(),
            acked: Vec::new(),
            nacked: Vec::new(),
            frames: 0,
        }
    }

    /// Takes a confirm in; false for any other method.
    fn confirm(&mut self, method: &Method) -> bool {
        let (tag, multiple, ack) = match method {
            Method::BasicAck(ack) => (ack.delivery_tag, ack.multiple, true),
            Method::BasicNack(nack) => (nack.delivery_tag, nack.multiple, false),
            _ => return false,
        };
        self.frames += 1;
        assert!(
            self.unconfirmed.contains(&tag),
            "{method:?} names a tag confirmed before or never published"
        );
        let covered: Vec<u64> = if multiple {
            self.unconfirmed.range(..=tag).copied().collect()
        } else {
            vec![tag]
        };
        for tag in covered {
            self.unconfirmed.remove(&tag);
            if ack {
                self.acked.push(tag);
            } else {
                self.nacked.push(tag);
            }
        }
        true
    }

    /// Reads confirms from `raw` until every tag is confirmed.
    async fn read_all(&mut self, raw: &mut Raw) {
        while !self.unconfirmed.is_empty() {
            let (_, method) = raw.recv_method().await.expect("the broker still talks");
            assert!(self.confirm(&method), "unexpected {method:?}");
        }
    }
}

/// A raw client on channel 1 in confirm mode that declared `queues` (with their arguments
/// and durability).
async fn confirming_raw(running: &RunningBroker, queues: &[(&str, bool, FieldTable)]) -> Raw {
    let mut raw = Raw::connect(running).await;
    raw.handshake(2047, 131_072, 0).await;
    assert!(matches!(
        raw.open_channel(1).await,
        Method::ChannelOpenOk(_)
    ));
    for (queue, durable, arguments) in queues {
        raw.send(
            1,
            QueueDeclare {
                queue: (*queue).into(),
                passive: false,
                durable: *durable,
                exclusive: false,
                auto_delete: false,
                no_wait: false,
                arguments: arguments.clone(),
            },
        )
        .await;
        assert!(matches!(
            raw.recv_method().await,
            Some((1, Method::QueueDeclareOk(_)))
        ));
    }
    raw.send(1, ConfirmSelect { nowait: false }).await;
    assert!(matches!(
        raw.recv_method().await,
        Some((1, Method::ConfirmSelectOk(_)))
    ));
    raw
}

/// Appends one publish on channel 1 to the default exchange: method, header, 16-octet body.
fn put_publish(out: &mut BytesMut, queue: &str, persistent: bool) {
    Frame::Method(
        1,
        BasicPublish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        }
        .into(),
    )
    .encode(out, 0)
    .unwrap();
    let properties = BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..Default::default()
    };
    Frame::Header(1, amqp_codec::ContentHeader::basic(16, properties))
        .encode(out, 0)
        .unwrap();
    Frame::Body(1, bytes::Bytes::from_static(b"sixteen octets!!"))
        .encode(out, 0)
        .unwrap();
}

#[tokio::test]
async fn a_burst_of_publishes_gets_fewer_acks_than_messages_each_tag_acked_once() {
    let running = broker().await;
    let mut raw = confirming_raw(&running, &[("confirm-burst", false, FieldTable::new())]).await;
    let mut burst = BytesMut::new();
    for _ in 0..200 {
        put_publish(&mut burst, "confirm-burst", false);
    }
    raw.send_bytes(&burst).await;
    let mut confirms = ConfirmTracker::new(1..=200);
    confirms.read_all(&mut raw).await;
    assert_eq!(confirms.acked.len(), 200);
    assert!(confirms.frames < 200, "{} acks", confirms.frames);
}

#[tokio::test]
async fn a_nack_in_a_burst_splits_the_acks_and_covers_only_its_own_tag() {
    let running = broker().await;
    let mut full = FieldTable::new();
    full.insert("x-max-length", 0i32);
    full.insert("x-overflow", "reject-publish");
    let mut raw = confirming_raw(
        &running,
        &[
            ("confirm-open", false, FieldTable::new()),
            ("confirm-full", false, full),
        ],
    )
    .await;
    // Tags 1-3 and 5-7 are routed; 4 is refused by a queue that takes nothing.
    let mut burst = BytesMut::new();
    for tag in 1..=7 {
        let queue = if tag == 4 {
            "confirm-full"
        } else {
            "confirm-open"
        };
        put_publish(&mut burst, queue, false);
    }
    raw.send_bytes(&burst).await;
    let mut confirms = ConfirmTracker::new(1..=7);
    confirms.read_all(&mut raw).await;
    assert_eq!(confirms.acked, [1, 2, 3, 5, 6, 7]);
    assert_eq!(confirms.nacked, [4]);
}

#[tokio::test]
async fn persistent_and_transient_publishes_mixed_are_each_confirmed_once() {
    let dir = std::env::temp_dir().join(format!(
        "mini-broker-protocol-confirms-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let running = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut raw = confirming_raw(
        &running,
        &[
            ("confirm-durable", true, FieldTable::new()),
            ("confirm-transient", false, FieldTable::new()),
        ],
    )
    .await;
    // Runs of persistent messages (confirmed by the store after its fsync) between runs
    // and single transient ones (confirmed at once): a multiple ack from either side must
    // never cover a tag the other still owes. Whether the store answers within a read or
    // after it varies, so a few bursts.
    let mut published = 0;
    for _ in 0..5 {
        let mut burst = BytesMut::new();
        let first = published + 1;
        for round in 0..20u64 {
            for i in 0..(round % 4 + 1) * 5 {
                put_publish(&mut burst, "confirm-durable", true);
                published += 1;
                if i % 7 == 3 {
                    put_publish(&mut burst, "confirm-transient", false);
                    published += 1;
                }
            }
            for _ in 0..round % 3 * 4 {
                put_publish(&mut burst, "confirm-transient", false);
                published += 1;
            }
        }
        for chunk in burst.chunks(4096) {
            raw.send_bytes(chunk).await;
        }
        let mut confirms = ConfirmTracker::new(first..=published);
        confirms.read_all(&mut raw).await;
        assert_eq!(confirms.acked.len() as u64, published - first + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn acks_due_go_out_before_the_close_ok_of_a_close_in_the_same_read() {
    let running = broker().await;
    let mut raw = confirming_raw(&running, &[("confirm-close", false, FieldTable::new())]).await;
    let mut burst = BytesMut::new();
    for _ in 0..5 {
        put_publish(&mut burst, "confirm-close", false);
    }
    Frame::Method(
        1,
        ChannelClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    )
    .encode(&mut burst, 0)
    .unwrap();
    raw.send_bytes(&burst).await;
    let mut confirms = ConfirmTracker::new(1..=5);
    confirms.read_all(&mut raw).await;
    assert!(matches!(
        raw.recv_method().await,
        Some((1, Method::ChannelCloseOk(_)))
    ));
}
