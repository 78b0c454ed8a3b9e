//! How the broker reads: frames split across reads at any octet, large frames read to their
//! end, and connections that go quiet (and give their buffers up) coming back to life.

use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use amqp_codec::methods::*;
use amqp_codec::{encode_content, Frame, Limits, LongString, Method};
use bytes::BytesMut;
use mini_broker::{BrokerOptions, RunningBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A body of `len` octets, each telling its position.
fn body(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// A publisher on a raw socket: it writes the frames of many messages as one stream, cut into
/// pieces of sizes the test chooses.
struct RawPublisher {
    stream: TcpStream,
    input: BytesMut,
}

impl RawPublisher {
    /// Connects, opens the connection with frame_max 131,072, and channel 1.
    async fn open(running: &RunningBroker) -> RawPublisher {
        let mut publisher = RawPublisher {
            stream: TcpStream::connect(running.amqp_addr).await.unwrap(),
            input: BytesMut::new(),
        };
        publisher.write(b"AMQP\x00\x00\x09\x01").await;
        let Method::ConnectionStart(_) = publisher.recv_method().await else {
            panic!("expected connection.start");
        };
        publisher
            .send(ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: LongString::new(&b"\x00guest\x00guest"[..]),
                locale: "en_US".into(),
            })
            .await;
        let Method::ConnectionTune(_) = publisher.recv_method().await else {
            panic!("expected connection.tune");
        };
        publisher
            .send(ConnectionTuneOk {
                channel_max: 16,
                frame_max: 131_072,
                heartbeat: 0,
            })
            .await;
        publisher
            .send(ConnectionOpen {
                virtual_host: "/".into(),
            })
            .await;
        let Method::ConnectionOpenOk(_) = publisher.recv_method().await else {
            panic!("expected connection.open-ok");
        };
        let mut open = BytesMut::new();
        Frame::Method(1, ChannelOpen.into())
            .encode(&mut open, 0)
            .unwrap();
        publisher.write(&open).await;
        let Method::ChannelOpenOk(_) = publisher.recv_method().await else {
            panic!("expected channel.open-ok");
        };
        publisher
    }

    async fn write(&mut self, octets: &[u8]) {
        self.stream.write_all(octets).await.unwrap();
    }

    async fn send(&mut self, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        Frame::Method(0, method.into()).encode(&mut out, 0).unwrap();
        self.write(&out).await;
    }

    async fn recv_method(&mut self) -> Method {
        tokio::time::timeout(WAIT, async {
            loop {
                match amqp_codec::decode(&mut self.input, &Limits::with_frame_max(0)).unwrap() {
                    Some(Frame::Method(_, method)) => return method,
                    Some(_) => continue,
                    None => {}
                }
                let read = self.stream.read_buf(&mut self.input).await.unwrap();
                assert_ne!(read, 0, "the broker closed the connection");
            }
        })
        .await
        .expect("a method in time")
    }
}

/// The frames of a basic.publish of `body` to `queue` on channel 1.
fn publish_frames(out: &mut BytesMut, queue: &str, body: &[u8]) {
    let publish = Method::BasicPublish(BasicPublish {
        exchange: "".into(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    });
    encode_content(out, 1, &publish, &Default::default(), body, 131_072).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_at_any_octet_and_large_frames_split_across_reads_arrive_whole() {
    let running = broker().await;
    let consumer = Connection::open(&running.url()).await.unwrap();
    let channel = consumer.create_channel().await.unwrap();
    channel
        .queue_declare("reading", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let mut deliveries = channel
        .basic_consume(
            "reading",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();

    // Small and large bodies, one frame (up to 131,064 octets) or several, mixed.
    let sizes = [
        16, 65_536, 65_536, 1, 100_000, 20_000, 16_384, 5_000, 131_064, 131_065, 300_001, 0,
        65_536, 3,
    ];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| body(len, i))
        .collect();
    let mut stream = BytesMut::new();
    for body in &bodies {
        publish_frames(&mut stream, "reading", body);
    }
    // The stream in pieces that end anywhere: inside frame headers, one octet before or after
    // a frame's end, in the middle of large frames; a pause after each, so most are read on
    // their own.
    let mut publisher = RawPublisher::open(&running).await;
    let pieces = [
        1, 6, 1, 7, 20_000, 3, 16_385, 65_000, 2, 1_000, 130_000, 8, 50_000,
    ];
    let mut at = 0;
    for piece in pieces.iter().cycle() {
        if at == stream.len() {
            break;
        }
        let end = stream.len().min(at + piece);
        publisher.write(&stream[at..end]).await;
        at = end;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    for (n, expected) in bodies.iter().enumerate() {
        let delivery = tokio::time::timeout(WAIT, deliveries.next())
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
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_stay_open_and_each_answers_when_it_is_used_again() {
    const CONNECTIONS: usize = 300;
    let running = broker().await;
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(&running.url()).await.unwrap());
    }
    // Quiet for longer than the broker waits before it gives a quiet connection's read
    // buffer up (1 s): every connection has given its buffers up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(running.broker.connections.all().len(), CONNECTIONS);
    for (i, connection) in connections.iter().enumerate() {
        let channel = connection.create_channel().await.unwrap();
        let queue = format!("idle-{i}");
        channel
            .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
            .await
            .unwrap();
        // A body large enough for a large frame, every tenth connection.
        let len = if i % 10 == 0 { 70_000 } else { 10 };
        channel
            .basic_publish("", &queue, BasicProperties::default(), body(len, i), false)
            .await
            .unwrap();
        let message = channel
            .basic_get(&queue, true)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("connection {i}: the message is not in its queue"));
        assert!(
            message.delivery.body[..] == body(len, i)[..],
            "connection {i}"
        );
    }
    running.shutdown().await;
}
