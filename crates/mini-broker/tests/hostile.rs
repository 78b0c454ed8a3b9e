//! Hostile clients: whatever a client sends, the broker never panics, answers only with
//! well-formed frames and the protocol's reply codes, closes the connection once the client
//! has gone, and keeps serving everyone else.
//!
//! Each case opens a raw connection, does the handshake properly (so that what follows
//! reaches the channels, not just the handshake), then sends a random sequence built from
//! proptest's random octets:
//!
//! - on eight channels opened first, protocol actions from a small vocabulary, so that they meet each other: channels opened
//!   and closed, a few queues and exchanges declared (with arguments RabbitMQ knows, and odd
//!   values for them), bound, purged and deleted, messages published (bodies split over body
//!   frames, sometimes fewer or more octets than the header announced), consumed, fetched,
//!   acked, nacked, rejected, recovered, qos, flow, transactions and confirms;
//! - any method at all with random arguments (`arbitrary`), on any channel;
//! - random octets, frames with one octet changed, a last frame cut short.
//!
//! Then the client half-closes the socket and reads until the broker closes it. After every
//! case a well-behaved client (amqp-client) declares a queue, publishes and gets its message
//! back. A panic anywhere in the broker (a connection task included) fails the test.
//!
//! The management API gets the same: random HTTP requests (methods, the API's paths and
//! others, credentials right, wrong or missing, JSON bodies with the fields the API reads,
//! bodies that are not JSON, lying Content-Lengths, requests cut short or pipelined); every
//! answer must be HTTP and none a 500, the connection must end, and a well-behaved
//! `GET /api/overview` is answered next.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::Duration;

use amqp_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};
use amqp_codec::methods::*;
use amqp_codec::{
    ContentHeader, FieldValue, Frame, Limits, LongString, Method, ProtocolHeader, ShortString,
};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use mini_broker::{BrokerOptions, RunningBroker};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the broker to answer or to close a connection whose client has gone.
const WAIT: Duration = Duration::from_secs(10);

/// The frame_max the hostile client negotiates.
const FRAME_MAX: u32 = 131_072;

/// Panics seen in this test binary's threads other than the tests' own (whose failed
/// assertions proptest handles): the brokers'.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The threads the tests run on.
static TEST_THREADS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

/// Counts, from now on, the panics of threads other than the tests' (this one joins them).
fn count_panics() {
    static HOOK: Once = Once::new();
    let test_threads = || TEST_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    test_threads().push(std::thread::current().id());
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !test_threads().contains(&std::thread::current().id()) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Channels the hostile client opens after the handshake and sends its actions on: a
/// channel error ends one of them, not the case.
const CHANNELS: u16 = 8;

/// Queue names the vocabulary uses, so that actions meet.
const QUEUES: [&str; 4] = ["hostile-a", "hostile-b", "hostile-c", "amq.hostile"];
/// Exchange names, one of which is never declared.
const EXCHANGES: [&str; 4] = ["", "hostile-x", "amq.topic", "hostile-missing"];
/// Consumer tags.
const TAGS: [&str; 3] = ["", "t1", "t2"];

fn pick<'s>(u: &mut Unstructured<'_>, from: &[&'s str]) -> arbitrary::Result<&'s str> {
    Ok(from[u.choose_index(from.len())?])
}

/// A queue argument RabbitMQ knows, with a value that is sometimes wrong for it.
fn queue_argument(u: &mut Unstructured<'_>) -> arbitrary::Result<(&'static str, FieldValue)> {
    let key = pick(
        u,
        &[
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-queue-type",
            "x-max-priority",
            "x-single-active-consumer",
            "x-delivery-limit",
        ],
    )?;
    let value = match u.int_in_range(0..=5)? {
        0 => FieldValue::I64(u.int_in_range(-2..=3)?),
        1 => FieldValue::I32(u.arbitrary()?),
        2 => FieldValue::Bool(u.arbitrary()?),
        3 => FieldValue::LongString(LongString::from(pick(
            u,
            &[
                "drop-head",
                "reject-publish",
                "quorum",
                "classic",
                "stream",
                "hostile-x",
                "",
            ],
        )?)),
        4 => FieldValue::arbitrary(u)?,
        _ => FieldValue::I64(u.int_in_range(0..=300)?),
    };
    Ok((key, value))
}

fn queue_arguments(u: &mut Unstructured<'_>) -> arbitrary::Result<FieldTable> {
    let mut table = FieldTable::new();
    // Half the declarations without arguments, so that most of them make a queue.
    for _ in 0..u.int_in_range(0..=3u8)?.saturating_sub(1) {
        let (key, value) = queue_argument(u)?;
        table.insert(key, value);
    }
    Ok(table)
}

/// Appends the frames of one random action to `out`.
fn action(u: &mut Unstructured<'_>, out: &mut BytesMut) -> arbitrary::Result<()> {
    let channel: u16 = u.int_in_range(1..=CHANNELS)?;
    let method = |out: &mut BytesMut, channel: u16, method: Method| {
        Frame::Method(channel, method)
            .encode(out, FRAME_MAX)
            .expect("an encodable method");
    };
    // Weights out of 100: mostly the vocabulary, a little of what ends a connection.
    match u.int_in_range(0..=99)? {
        0 => method(out, channel, ChannelOpen.into()),
        1 => method(
            out,
            channel,
            ChannelClose {
                reply_code: 200,
                reply_text: "bye".into(),
                ..Default::default()
            }
            .into(),
        ),
        2 => method(out, channel, ChannelCloseOk.into()),
        3..=12 => method(
            out,
            channel,
            QueueDeclare {
                queue: pick(u, &QUEUES)?.into(),
                passive: u.ratio(1, 8)?,
                durable: u.arbitrary()?,
                exclusive: u.ratio(1, 4)?,
                auto_delete: u.ratio(1, 4)?,
                no_wait: u.ratio(1, 4)?,
                arguments: queue_arguments(u)?,
            }
            .into(),
        ),
        13..=18 => {
            let queue: ShortString = pick(u, &QUEUES)?.into();
            let m: Method = match u.int_in_range(0..=2)? {
                0 => QueuePurge {
                    queue,
                    ..Default::default()
                }
                .into(),
                1 => QueueDelete {
                    queue,
                    if_unused: u.arbitrary()?,
                    if_empty: u.arbitrary()?,
                    ..Default::default()
                }
                .into(),
                _ => QueueUnbind {
                    queue,
                    exchange: pick(u, &EXCHANGES)?.into(),
                    routing_key: pick(u, &["#", "a.b", ""])?.into(),
                    ..Default::default()
                }
                .into(),
            };
            method(out, channel, m);
        }
        19..=22 => method(
            out,
            channel,
            ExchangeDeclare {
                exchange: pick(u, &EXCHANGES)?.into(),
                kind: pick(u, &["direct", "fanout", "topic", "headers", "x-nope"])?.into(),
                passive: u.ratio(1, 8)?,
                durable: u.arbitrary()?,
                auto_delete: u.ratio(1, 4)?,
                internal: u.ratio(1, 8)?,
                ..Default::default()
            }
            .into(),
        ),
        23..=28 => {
            let mut arguments = FieldTable::new();
            if u.arbitrary()? {
                arguments.insert("x-match", pick(u, &["all", "any", "nope"])?);
                arguments.insert("k", "v");
            }
            let m: Method = if u.arbitrary()? {
                QueueBind {
                    queue: pick(u, &QUEUES)?.into(),
                    exchange: pick(u, &EXCHANGES)?.into(),
                    routing_key: pick(u, &["#", "*.b", "a.b", "hostile-a", ""])?.into(),
                    arguments,
                    ..Default::default()
                }
                .into()
            } else {
                ExchangeBind {
                    destination: pick(u, &EXCHANGES)?.into(),
                    source: pick(u, &EXCHANGES)?.into(),
                    routing_key: pick(u, &["#", "a.b"])?.into(),
                    arguments,
                    ..Default::default()
                }
                .into()
            };
            method(out, channel, m);
        }
        29..=53 | 95..=99 => publish(u, channel, out)?,
        54..=61 => method(
            out,
            channel,
            BasicConsume {
                queue: pick(u, &QUEUES)?.into(),
                consumer_tag: pick(u, &TAGS)?.into(),
                no_ack: u.arbitrary()?,
                exclusive: u.ratio(1, 4)?,
                arguments: if u.ratio(1, 4)? {
                    [("x-priority", FieldValue::arbitrary(u)?)]
                        .into_iter()
                        .collect()
                } else {
                    FieldTable::new()
                },
                ..Default::default()
            }
            .into(),
        ),
        62..=64 => method(
            out,
            channel,
            BasicCancel {
                consumer_tag: pick(u, &TAGS)?.into(),
                no_wait: u.arbitrary()?,
            }
            .into(),
        ),
        65..=76 => {
            let delivery_tag = u.int_in_range(0..=12)?;
            let m: Method = match u.int_in_range(0..=2)? {
                0 => BasicAck {
                    delivery_tag,
                    multiple: u.arbitrary()?,
                }
                .into(),
                1 => BasicNack {
                    delivery_tag,
                    multiple: u.arbitrary()?,
                    requeue: u.arbitrary()?,
                }
                .into(),
                _ => BasicReject {
                    delivery_tag,
                    requeue: u.arbitrary()?,
                }
                .into(),
            };
            method(out, channel, m);
        }
        77..=81 => method(
            out,
            channel,
            BasicGet {
                queue: pick(u, &QUEUES)?.into(),
                no_ack: u.arbitrary()?,
            }
            .into(),
        ),
        82..=89 => {
            let m: Method = match u.int_in_range(0..=6)? {
                0 => BasicQos {
                    prefetch_size: if u.ratio(1, 8)? { 1 } else { 0 },
                    prefetch_count: u.int_in_range(0..=3)?,
                    global: u.arbitrary()?,
                }
                .into(),
                1 => BasicRecover {
                    requeue: u.arbitrary()?,
                }
                .into(),
                2 => TxSelect.into(),
                3 => TxCommit.into(),
                4 => TxRollback.into(),
                5 => ConfirmSelect {
                    nowait: u.arbitrary()?,
                }
                .into(),
                _ => ChannelFlow {
                    active: u.arbitrary()?,
                }
                .into(),
            };
            method(out, channel, m);
        }
        90 => {
            // Any method, any arguments, any of the first channels (0 is the connection's).
            let channel = u.int_in_range(0..=4)?;
            method(out, channel, Method::arbitrary(u)?);
        }
        91 => Frame::arbitrary(u)?
            .encode(out, FRAME_MAX)
            .unwrap_or_default(),
        92 => Frame::Heartbeat
            .encode(out, FRAME_MAX)
            .expect("a heartbeat"),
        93 => {
            // A well-formed action with one octet changed.
            let start = out.len();
            publish(u, channel, out)?;
            if out.len() > start {
                let at = u.int_in_range(start..=out.len() - 1)?;
                out[at] ^= u.int_in_range(1..=255)?;
            }
        }
        _ => {
            let len = u.int_in_range(1..=16)?;
            out.extend_from_slice(u.bytes(len.min(u.len()))?);
        }
    }
    Ok(())
}

/// A basic.publish with its content: properties of any kind, a body split over body frames,
/// and sometimes a header that announces another size than the body frames carry.
fn publish(u: &mut Unstructured<'_>, channel: u16, out: &mut BytesMut) -> arbitrary::Result<()> {
    let publish = BasicPublish {
        exchange: pick(u, &EXCHANGES)?.into(),
        routing_key: pick(u, &["hostile-a", "hostile-b", "a.b", "nowhere"])?.into(),
        mandatory: u.arbitrary()?,
        immediate: u.ratio(1, 64)?,
    };
    let body_len: u64 = match u.int_in_range(0..=4)? {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => 5_000,
        _ => 200_000,
    };
    let announced = match u.int_in_range(0..=7)? {
        0 => body_len + 1,
        1 => body_len.saturating_sub(1),
        2 => u64::MAX,
        _ => body_len,
    };
    let properties = if u.arbitrary()? {
        amqp_codec::BasicProperties::arbitrary(u)?
    } else {
        Default::default()
    };
    Frame::Method(channel, publish.into())
        .encode(out, FRAME_MAX)
        .expect("an encodable publish");
    let header = ContentHeader {
        class_id: ContentHeader::BASIC_CLASS_ID,
        body_size: announced,
        properties,
    };
    // Properties too large for one frame cannot be encoded: send the publish without them.
    if Frame::Header(channel, header)
        .encode(out, FRAME_MAX)
        .is_err()
    {
        return Ok(());
    }
    let body = Bytes::from(vec![b'h'; body_len as usize]);
    let mut at = 0;
    while at < body.len() {
        let size = u.int_in_range(1..=(FRAME_MAX as usize - 8))?;
        let end = (at + size).min(body.len());
        Frame::Body(channel, body.slice(at..end))
            .encode(out, FRAME_MAX)
            .expect("a body frame within frame_max");
        at = end;
    }
    Ok(())
}

/// Reads frames until `done` says so; panics if the broker sends something malformed, a
/// reply code outside the protocol's, or nothing for [`WAIT`].
async fn read_until(
    socket: &mut TcpStream,
    input: &mut BytesMut,
    mut done: impl FnMut(&Frame) -> bool,
) -> bool {
    let limits = Limits::with_frame_max(FRAME_MAX);
    loop {
        while let Some(frame) = amqp_codec::decode(input, &limits).expect("a well-formed frame") {
            check_reply_code(&frame);
            if done(&frame) {
                return true;
            }
        }
        let read = tokio::time::timeout(WAIT, socket.read_buf(input))
            .await
            .expect("the broker answers or closes within the wait");
        match read {
            Ok(0) => return false,
            Ok(_) => {}
            Err(error) => panic!("reading from the broker: {error} ({:?})", error.kind()),
        }
    }
}

/// The reply codes of the spec (plus RabbitMQ's use of them): anything else from the broker
/// is a bug.
fn check_reply_code(frame: &Frame) {
    const CODES: [u16; 17] = [
        200, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530,
    ];
    let code = match frame {
        Frame::Method(_, Method::ConnectionClose(close)) => close.reply_code,
        Frame::Method(_, Method::ChannelClose(close)) => close.reply_code,
        Frame::Method(_, Method::BasicReturn(ret)) => ret.reply_code,
        _ => return,
    };
    assert!(
        CODES.contains(&code) || code == 540 || code == 541,
        "reply code {code} in {frame:?}"
    );
}

/// The handshake as a client does it: guest/guest, vhost `/`, no heartbeats.
async fn handshake(running: &RunningBroker) -> (TcpStream, BytesMut) {
    let mut socket = TcpStream::connect(running.amqp_addr).await.unwrap();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1)
        .encode(&mut out, 0)
        .unwrap();
    let start_ok = ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    };
    Frame::Method(0, start_ok.into())
        .encode(&mut out, 0)
        .unwrap();
    socket.write_all(&out).await.unwrap();
    let tuned = read_until(&mut socket, &mut input, |frame| {
        matches!(frame, Frame::Method(0, Method::ConnectionTune(_)))
    })
    .await;
    assert!(tuned, "connection.tune");
    out.clear();
    let tune_ok = ConnectionTuneOk {
        channel_max: 2047,
        frame_max: FRAME_MAX,
        heartbeat: 0,
    };
    Frame::Method(0, tune_ok.into())
        .encode(&mut out, 0)
        .unwrap();
    let open = ConnectionOpen {
        virtual_host: "/".into(),
    };
    Frame::Method(0, open.into()).encode(&mut out, 0).unwrap();
    socket.write_all(&out).await.unwrap();
    let opened = read_until(&mut socket, &mut input, |frame| {
        matches!(frame, Frame::Method(0, Method::ConnectionOpenOk(_)))
    })
    .await;
    assert!(opened, "connection.open-ok");
    (socket, input)
}

/// Decodes every whole frame in `input`, checking each (see [`read_until`]).
fn check_frames(input: &mut BytesMut) {
    let limits = Limits::with_frame_max(FRAME_MAX);
    while let Some(frame) = amqp_codec::decode(input, &limits).expect("a well-formed frame") {
        check_reply_code(&frame);
    }
}

/// One hostile connection: the handshake, the random actions (in a few writes), a
/// half-close, then everything the broker says until it closes the socket.
async fn hostile_connection(running: &RunningBroker, seed: &[u8]) {
    let mut u = Unstructured::new(seed);
    let mut out = BytesMut::new();
    // One case in four stays in the handshake: a protocol header (sometimes a wrong one),
    // then whatever comes, connection methods with random arguments among it.
    let (mut socket, mut input) = if u.ratio(1, 4).unwrap_or(false) {
        let socket = TcpStream::connect(running.amqp_addr).await.unwrap();
        let header: &[u8] = match u.int_in_range(0..=3).unwrap_or(0) {
            0 => b"AMQP\x00\x00\x09\x00",
            1 => b"AMQP\x01\x01\x00\x09",
            _ => b"AMQP\x00\x00\x09\x01",
        };
        out.extend_from_slice(header);
        // (`ratio` says yes for ever once the octets are used up: hence the bound.)
        for _ in 0..8 {
            if u.is_empty() || !u.ratio(1, 2).unwrap_or(false) {
                break;
            }
            let Ok(method) = Method::arbitrary(&mut u) else {
                break;
            };
            let _ = Frame::Method(0, method).encode(&mut out, FRAME_MAX);
        }
        (socket, BytesMut::new())
    } else {
        let opened = handshake(running).await;
        for channel in 1..=CHANNELS {
            Frame::Method(channel, ChannelOpen.into())
                .encode(&mut out, FRAME_MAX)
                .unwrap();
        }
        opened
    };
    loop {
        let last = u.is_empty() || action(&mut u, &mut out).is_err();
        if out.len() < 64 * 1024 && !last {
            continue;
        }
        if last && seed.len() % 2 == 1 && out.len() > 1 {
            // The last frame cut short.
            out.truncate(out.len() - 1);
        }
        // Write what there is while reading what comes back, so that neither side waits on
        // a full socket buffer; after the last write, half-close.
        let chunk = out.split();
        let (mut reader, mut writer) = socket.split();
        let write = async {
            let _ = writer.write_all(&chunk).await;
            if last {
                let _ = writer.shutdown().await;
            }
        };
        let drain = async {
            while reader.read_buf(&mut input).await.unwrap_or(0) > 0 {
                check_frames(&mut input);
            }
        };
        let broker_closed = tokio::select! {
            _ = write => false,
            _ = drain => true,
        };
        if last || broker_closed {
            break;
        }
    }
    // Everything else the broker says, until it closes the socket: it must, the client
    // having gone.
    let closed = read_until(&mut socket, &mut input, |_| false).await;
    assert!(!closed);
    assert!(
        input.is_empty(),
        "a frame cut short by the broker: {input:?}"
    );
}

/// A client that does nothing wrong is served as usual.
async fn well_behaved(running: &RunningBroker, n: usize) {
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("well-behaved-{n}");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    channel
        .basic_publish("", &queue, BasicProperties::default(), "ok", false)
        .await
        .unwrap();
    let mut got = None;
    for _ in 0..200 {
        got = channel.basic_get(&queue, true).await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = got.expect("the message published a moment ago");
    assert_eq!(&got.delivery.body[..], b"ok");
    channel.queue_delete(&queue, false, false).await.unwrap();
    connection.close().await.unwrap();
}

/// A runtime and a broker of its own for a test (with a management API at `mgmt_listen`),
/// the test's thread joining those whose panics are not counted.
fn hostile_setup(mgmt_listen: Option<SocketAddr>) -> (tokio::runtime::Runtime, RunningBroker) {
    count_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = runtime.block_on(async {
        mini_broker::start(BrokerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            mgmt_listen,
            ..Default::default()
        })
        .await
        .unwrap()
    });
    (runtime, running)
}

/// 192 cases, or HOSTILE_CASES=N.
fn cases() -> ProptestConfig {
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(192),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn random_frames_never_crash_the_broker_nor_disturb_other_clients() {
    let (runtime, running) = hostile_setup(None);
    let case = AtomicUsize::new(0);
    proptest!(cases(), |(seed in proptest::collection::vec(any::<u8>(), 0..3000))| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        let panics = PANICS.load(Ordering::SeqCst);
        runtime.block_on(hostile_connection(&running, &seed));
        runtime.block_on(well_behaved(&running, n));
        // Per case, so that proptest shrinks to the input that made the broker panic.
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), panics, "the broker panicked");
    });
}

// ---- the management API ---------------------------------------------------------------------

/// `guest:guest` and `guest:wrong`, base64.
const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q=";
const WRONG_PASSWORD: &str = "Z3Vlc3Q6d3Jvbmc=";

/// Paths of the management API, with names that requests share, and some that are not.
const HTTP_PATHS: [&str; 27] = [
    "/api/overview",
    "/api/whoami",
    "/api/vhosts",
    "/api/queues",
    "/api/queues/%2f",
    "/api/queues/%2f/hq",
    "/api/queues/%2F/hq/get",
    "/api/queues/%2f/hq/contents",
    "/api/queues/%2f/hq/bindings",
    "/api/queues/%2f/amq.hq",
    "/api/exchanges",
    "/api/exchanges/%2f/hx",
    "/api/exchanges/%2f/hx/publish",
    "/api/exchanges/%2f/amq.default/publish",
    "/api/bindings/%2f/e/hx/q/hq",
    "/api/bindings/%2f/e/hx/q/hq/~",
    "/api/connections",
    "/api/channels",
    "/api/consumers",
    "/api/permissions/%2f/guest",
    "/api/permissions/%2f/nobody",
    "/metrics",
    "/api/queues/%zz/hq",
    "/api/queues/%",
    "/api/queues/%2f/",
    "/api/../../etc/passwd",
    "/",
];

/// Names of JSON fields the API reads, so that random bodies often mean something.
const JSON_KEYS: [&str; 20] = [
    "durable",
    "auto_delete",
    "internal",
    "type",
    "arguments",
    "x-message-ttl",
    "x-max-length",
    "x-queue-type",
    "routing_key",
    "payload",
    "payload_encoding",
    "properties",
    "count",
    "ackmode",
    "encoding",
    "truncate",
    "configure",
    "write",
    "read",
    "delivery_mode",
];

/// A JSON value, nested at most `depth` deep.
fn json_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => "null".to_owned(),
        1 => u.arbitrary::<bool>()?.to_string(),
        2 => u.arbitrary::<i64>()?.to_string(),
        3 => u.int_in_range(-2i64..=1000)?.to_string(),
        4 => format!("{:e}", u.arbitrary::<f64>()?.clamp(-1e300, 1e300)),
        5 => format!("{:?}", pick(u, &JSON_KEYS)?),
        6 => format!("{:?}", String::arbitrary(u)?),
        7 if depth > 0 => {
            let items: arbitrary::Result<Vec<String>> = (0..u.int_in_range(0..=3)?)
                .map(|_| json_value(u, depth - 1))
                .collect();
            format!("[{}]", items?.join(","))
        }
        _ if depth > 0 => json_object(u, depth - 1)?,
        _ => "{}".to_owned(),
    })
}

fn json_object(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<String> {
    let mut fields = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let key = pick(u, &JSON_KEYS)?;
        fields.push(format!("{key:?}:{}", json_value(u, depth)?));
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

/// One random HTTP request: a method, a path of the API (or not), credentials right, wrong
/// or missing, a body of JSON (often with the fields the API reads) or not JSON at all, and a
/// Content-Length that is sometimes a lie; sometimes two requests back to back, sometimes
/// cut short.
fn http_request(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let method = match u.int_in_range(0..=9)? {
        0..=2 => "GET".to_owned(),
        3..=4 => "PUT".to_owned(),
        5 => "POST".to_owned(),
        6 => "DELETE".to_owned(),
        7 => pick(u, &["HEAD", "PATCH", "OPTIONS", "G\u{0}T", ""])?.to_owned(),
        _ => String::arbitrary(u)?,
    };
    let mut path = pick(u, &HTTP_PATHS)?.to_owned();
    match u.int_in_range(0..=5)? {
        0 => path.push_str(pick(
            u,
            &["?columns=name,messages", "?page=0", "?", "#x", "/x"],
        )?),
        1 => path = String::arbitrary(u)?,
        _ => {}
    }
    let body = match u.int_in_range(0..=4)? {
        0 => Vec::new(),
        1 => {
            let len = u.int_in_range(0..=64)?.min(u.len());
            u.bytes(len)?.to_vec()
        }
        2 => "[".repeat(u.int_in_range(1..=5000)?).into_bytes(),
        _ => json_object(u, 3)?.into_bytes(),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    match u.int_in_range(0..=9)? {
        0 => {}
        1 => head.push_str(&format!("Authorization: Basic {WRONG_PASSWORD}\r\n")),
        2 => head.push_str("Authorization: Basic !!not base64!!\r\n"),
        3 => head.push_str("Authorization: Bearer x\r\n"),
        _ => head.push_str(&format!("Authorization: Basic {GUEST}\r\n")),
    }
    if u.arbitrary()? {
        head.push_str("Content-Type: application/json\r\n");
    }
    match u.int_in_range(0..=9)? {
        0 => head.push_str(&format!("Content-Length: {}\r\n", body.len() + 5)),
        1 => head.push_str(&format!("Content-Length: {}\r\n", body.len() / 2)),
        2 => head.push_str(pick(
            u,
            &[
                "Content-Length: 99999999999999999999\r\n",
                "Content-Length: -1\r\n",
                "Content-Length: 1\r\nContent-Length: 2\r\n",
                "Transfer-Encoding: chunked\r\n",
            ],
        )?),
        3 => {}
        _ => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    if u.ratio(1, 8)? {
        let line = String::arbitrary(u)?;
        head.push_str(&format!("{line}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    if u.ratio(1, 8)? && !request.is_empty() {
        let at = u.int_in_range(0..=request.len() - 1)?;
        request.truncate(at);
    }
    Ok(request)
}

/// Sends `seed`'s requests on one connection, half-closes, and reads until the broker
/// closes it; every answer must be HTTP, and none a 500 (bad input is the client's error).
async fn hostile_http(running: &RunningBroker, seed: &[u8]) {
    let addr = running.mgmt_addr.expect("management listener");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut u = Unstructured::new(seed);
    let mut requests = Vec::new();
    for _ in 0..u.int_in_range(1..=3).unwrap_or(1) {
        match http_request(&mut u) {
            Ok(request) => requests.extend_from_slice(&request),
            Err(_) => break,
        }
    }
    let (mut reader, mut writer) = socket.split();
    let write = async {
        let _ = writer.write_all(&requests).await;
        let _ = writer.shutdown().await;
    };
    let mut answer = Vec::new();
    let read = async {
        tokio::time::timeout(WAIT, reader.read_to_end(&mut answer))
            .await
            .expect("the broker answers and closes within the wait")
    };
    let ((), read) = tokio::join!(write, read);
    if let Err(error) = read {
        panic!("reading from the broker: {error} ({:?})", error.kind());
    }
    if answer.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&answer);
    for status in text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..])
    {
        let code: u16 = status
            .get(..3)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP status line: {text:?}"));
        assert!((200..600).contains(&code), "{code} in {text:?}");
        assert_ne!(code, 500, "a server error for a client's request: {text:?}");
    }
    assert!(text.starts_with("HTTP/1.1 "), "an HTTP answer: {text:?}");
}

/// A well-behaved client of the management API is served as usual.
async fn well_behaved_http(running: &RunningBroker) {
    let addr = running.mgmt_addr.expect("management listener");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {GUEST}\r\n\
         Connection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("an answer within the wait")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    let overview: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert!(overview.is_object(), "{overview}");
}

#[test]
fn random_http_requests_never_crash_the_management_api_nor_disturb_other_clients() {
    let (runtime, running) = hostile_setup(Some("127.0.0.1:0".parse().unwrap()));
    proptest!(cases(), |(seed in proptest::collection::vec(any::<u8>(), 0..2000))| {
        let panics = PANICS.load(Ordering::SeqCst);
        runtime.block_on(hostile_http(&running, &seed));
        runtime.block_on(well_behaved_http(&running));
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), panics, "the broker panicked");
    });
}
