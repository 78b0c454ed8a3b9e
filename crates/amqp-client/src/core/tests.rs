//! The core driven against a scripted server, in memory, with a fake clock: no sockets, no
//! sleeps. The `Server` helper encodes what a server would send and decodes what the client
//! wrote.

use std::time::{Duration, Instant};

use amqp_codec::methods::*;
use amqp_codec::{
    body_frames, decode, BasicProperties, ContentHeader, FieldValue, Frame, Limits, Method,
    ReplyCode,
};
use bytes::{BufMut, Bytes, BytesMut};

use super::*;

struct Pair {
    client: ConnectionCore<u32>,
    /// What the client wrote and the server has not read yet.
    to_server: BytesMut,
    now: Instant,
}

impl Pair {
    fn new(uri: &str) -> Pair {
        let now = Instant::now();
        let config = ConnectionConfig::new(AmqpUri::parse(uri).unwrap());
        Pair {
            client: ConnectionCore::new(config, now),
            to_server: BytesMut::new(),
            now,
        }
    }

    /// A client that finished the handshake against RabbitMQ's default tune offer.
    fn open() -> Pair {
        let mut pair = Pair::new("amqp://guest:guest@localhost/%2f");
        pair.handshake(Tune::RABBITMQ_DEFAULTS);
        pair
    }

    fn handshake(&mut self, offer: Tune) {
        assert_eq!(
            self.server_reads(),
            vec![Frame::ProtocolHeader(
                amqp_codec::ProtocolHeader::AMQP_0_9_1
            )]
        );
        self.server_sends(Frame::Method(0, rabbitmq_start().into()));
        let start_ok = self.server_reads();
        assert!(matches!(
            start_ok.as_slice(),
            [Frame::Method(0, Method::ConnectionStartOk(_))]
        ));
        self.server_sends(Frame::Method(
            0,
            ConnectionTune {
                channel_max: offer.channel_max,
                frame_max: offer.frame_max,
                heartbeat: offer.heartbeat,
            }
            .into(),
        ));
        let frames = self.server_reads();
        assert!(
            matches!(
                frames.as_slice(),
                [
                    Frame::Method(0, Method::ConnectionTuneOk(_)),
                    Frame::Method(0, Method::ConnectionOpen(_))
                ]
            ),
            "{frames:?}"
        );
        self.server_sends(Frame::Method(0, ConnectionOpenOk.into()));
        assert!(matches!(
            self.client.poll_event(),
            Some(Event::Connected { .. })
        ));
        assert_eq!(self.client.state(), ConnectionState::Open);
    }

    fn server_sends(&mut self, frame: Frame) {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes, 0).unwrap();
        self.client.handle_input(&mut bytes, self.now);
        assert!(bytes.is_empty());
    }

    fn server_sends_bytes(&mut self, bytes: &[u8]) {
        let mut bytes = BytesMut::from(bytes);
        self.client.handle_input(&mut bytes, self.now);
    }

    /// Every frame the client has written since the last call.
    fn server_reads(&mut self) -> Vec<Frame> {
        if let Some(out) = self.client.take_output(self.now) {
            self.to_server.put(out);
        }
        let mut frames = Vec::new();
        while let Some(frame) = decode(&mut self.to_server, &Limits::with_frame_max(0)).unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn events(&mut self) -> Vec<Event<u32>> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn open_channel(&mut self, token: u32) -> ChannelId {
        let id = self.client.open_channel(move |_| token).unwrap();
        assert_eq!(
            self.server_reads(),
            vec![Frame::Method(id, ChannelOpen.into())]
        );
        self.server_sends(Frame::Method(id, ChannelOpenOk.into()));
        let events = self.events();
        assert!(
            matches!(events.as_slice(), [Event::Reply { token: t, result: Ok(_) }] if *t == token)
        );
        id
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
    }
}

fn rabbitmq_start() -> ConnectionStart {
    let mut capabilities = FieldTable::new();
    capabilities.insert("publisher_confirms", true);
    capabilities.insert("consumer_cancel_notify", true);
    let mut server_properties = FieldTable::new();
    server_properties.insert("product", "RabbitMQ");
    server_properties.insert("capabilities", capabilities);
    ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: "AMQPLAIN PLAIN".into(),
        locales: "en_US".into(),
    }
}

fn declare(queue: &str) -> Method {
    QueueDeclare {
        queue: queue.into(),
        durable: true,
        ..Default::default()
    }
    .into()
}

#[test]
fn handshake_sends_plain_credentials_capabilities_and_settles_tune() {
    let mut pair = Pair::new("amqp://alice:s3cret@localhost/prod?heartbeat=30");
    assert_eq!(
        pair.server_reads(),
        vec![Frame::ProtocolHeader(
            amqp_codec::ProtocolHeader::AMQP_0_9_1
        )]
    );
    pair.server_sends(Frame::Method(0, rabbitmq_start().into()));
    let [Frame::Method(0, Method::ConnectionStartOk(start_ok))] =
        <[Frame; 1]>::try_from(pair.server_reads()).unwrap()
    else {
        panic!("expected start-ok");
    };
    assert_eq!(start_ok.mechanism, "PLAIN");
    assert_eq!(start_ok.response.as_bytes(), b"\0alice\0s3cret");
    let Some(FieldValue::Table(capabilities)) = start_ok.client_properties.get("capabilities")
    else {
        panic!("no capabilities table");
    };
    for name in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "authentication_failure_close",
    ] {
        assert_eq!(
            capabilities.get(name),
            Some(&FieldValue::Bool(true)),
            "{name}"
        );
    }
    pair.server_sends(Frame::Method(
        0,
        ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }
        .into(),
    ));
    assert_eq!(
        pair.server_reads(),
        vec![
            Frame::Method(
                0,
                ConnectionTuneOk {
                    channel_max: 2047,
                    frame_max: 131_072,
                    heartbeat: 30
                }
                .into()
            ),
            Frame::Method(
                0,
                ConnectionOpen {
                    virtual_host: "prod".into()
                }
                .into()
            ),
        ]
    );
    assert_eq!(pair.client.state(), ConnectionState::AwaitingOpenOk);
    pair.server_sends(Frame::Method(0, ConnectionOpenOk.into()));
    match pair.client.poll_event() {
        Some(Event::Connected {
            tune,
            server_properties,
        }) => {
            assert_eq!(tune.heartbeat, 30);
            assert!(server_capability(&server_properties, "publisher_confirms"));
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

#[test]
fn handshake_with_amqplain_sends_login_table_without_length_prefix() {
    let mut pair = Pair::new("amqp://bob:pw@localhost?auth_mechanism=AMQPLAIN");
    pair.server_reads();
    pair.server_sends(Frame::Method(0, rabbitmq_start().into()));
    let [Frame::Method(0, Method::ConnectionStartOk(start_ok))] =
        <[Frame; 1]>::try_from(pair.server_reads()).unwrap()
    else {
        panic!("expected start-ok");
    };
    assert_eq!(start_ok.mechanism, "AMQPLAIN");
    assert_eq!(
        start_ok.response.as_bytes(),
        b"\x05LOGINS\x00\x00\x00\x03bob\x08PASSWORDS\x00\x00\x00\x02pw"
    );
}

#[test]
fn handshake_access_refused_is_an_authentication_error() {
    let mut pair = Pair::new("amqp://guest:wrong@localhost");
    pair.server_reads();
    pair.server_sends(Frame::Method(0, rabbitmq_start().into()));
    pair.server_reads();
    pair.server_sends(Frame::Method(
        0,
        ConnectionClose {
            reply_code: 403,
            reply_text: "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"
                .into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    ));
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(0, ConnectionCloseOk.into())]
    );
    let events = pair.events();
    assert!(
        matches!(events.as_slice(), [Event::Closed(Error::AuthenticationFailed(text))] if text.contains("ACCESS_REFUSED")),
        "{events:?}"
    );
}

#[test]
fn handshake_socket_closed_after_start_ok_is_an_authentication_error() {
    let mut pair = Pair::new("amqp://guest:wrong@localhost");
    pair.server_reads();
    pair.server_sends(Frame::Method(0, rabbitmq_start().into()));
    pair.client.handle_eof(None);
    assert!(matches!(
        pair.client.close_reason(),
        Some(Error::AuthenticationFailed(_))
    ));
}

#[test]
fn heartbeat_zero_in_uri_turns_heartbeats_off() {
    let mut pair = Pair::new("amqp://localhost?heartbeat=0");
    pair.handshake(Tune::RABBITMQ_DEFAULTS);
    assert_eq!(pair.client.tune().heartbeat, 0);
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn call_reply_is_matched_to_its_token() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.call(ch, declare("task_queue"), 7).unwrap();
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(ch, declare("task_queue"))]
    );
    pair.server_sends(Frame::Method(
        ch,
        QueueDeclareOk {
            queue: "task_queue".into(),
            message_count: 3,
            consumer_count: 0,
        }
        .into(),
    ));
    match pair.events().as_slice() {
        [Event::Reply {
            token: 7,
            result: Ok(reply),
        }] => match &reply.method {
            Method::QueueDeclareOk(ok) => assert_eq!(ok.message_count, 3),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn basic_recover_waits_for_recover_ok_though_the_spec_xml_names_no_reply() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client
        .call(ch, BasicRecover { requeue: true }.into(), 7)
        .unwrap();
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(ch, BasicRecover { requeue: true }.into())]
    );
    assert!(pair.events().is_empty(), "nothing before recover-ok");
    pair.server_sends(Frame::Method(ch, BasicRecoverOk.into()));
    assert!(matches!(
        pair.events().as_slice(),
        [Event::Reply {
            token: 7,
            result: Ok(reply),
        }] if matches!(reply.method, Method::BasicRecoverOk(_))
    ));
    assert_eq!(pair.client.state(), ConnectionState::Open);
}

#[test]
fn basic_get_is_answered_by_get_ok_with_content_or_get_empty() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client
        .call(
            ch,
            BasicGet {
                queue: "q".into(),
                no_ack: false,
            }
            .into(),
            2,
        )
        .unwrap();
    pair.client
        .call(
            ch,
            BasicGet {
                queue: "q".into(),
                no_ack: false,
            }
            .into(),
            3,
        )
        .unwrap();
    pair.server_reads();
    pair.server_sends(Frame::Method(
        ch,
        BasicGetOk {
            delivery_tag: 1,
            message_count: 0,
            ..Default::default()
        }
        .into(),
    ));
    pair.server_sends(Frame::Header(
        ch,
        ContentHeader::basic(2, BasicProperties::default()),
    ));
    pair.server_sends(Frame::Body(ch, Bytes::from_static(b"hi")));
    pair.server_sends(Frame::Method(ch, BasicGetEmpty.into()));
    match pair.events().as_slice() {
        [Event::Reply {
            token: 2,
            result: Ok(get_ok),
        }, Event::Reply {
            token: 3,
            result: Ok(get_empty),
        }] => {
            assert!(matches!(get_ok.method, Method::BasicGetOk(_)));
            let body = get_ok.content.as_ref().map(|content| &content.body[..]);
            assert_eq!(body, Some(&b"hi"[..]));
            assert!(matches!(get_empty.method, Method::BasicGetEmpty(_)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn channel_error_fails_pending_calls_and_leaves_the_connection_usable() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    let other = pair.open_channel(2);
    pair.client.call(ch, declare("hello"), 10).unwrap();
    pair.server_reads();
    let text = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'hello' in vhost '/': received 'true' but current is 'false'";
    pair.server_sends(Frame::Method(
        ch,
        ChannelClose {
            reply_code: 406,
            reply_text: text.into(),
            class_id: 50,
            method_id: 10,
        }
        .into(),
    ));
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(ch, ChannelCloseOk.into())]
    );
    let events = pair.events();
    match events.as_slice() {
        [Event::Reply {
            token: 10,
            result: Err(Error::ChannelClosed(close)),
        }, Event::ChannelClosed {
            channel,
            error: Some(_),
        }] => {
            assert_eq!(close.code, ReplyCode::PRECONDITION_FAILED);
            assert_eq!(close.text, text);
            assert_eq!(*channel, ch);
            assert!(close.to_string().contains("after queue.declare"));
        }
        other => panic!("{other:?}"),
    }
    // A call that was on its way when the close came fails with the server's reason.
    assert!(matches!(
        pair.client.call(ch, declare("x"), 11),
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::PRECONDITION_FAILED
    ));
    assert!(
        matches!(
            pair.events().as_slice(),
            [Event::Reply {
                token: 11,
                result: Err(Error::ChannelClosed(_))
            }]
        ),
        "a refused call still hands its token back"
    );
    assert!(matches!(
        pair.client.send(ch, BasicAck::default().into()),
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::PRECONDITION_FAILED
    ));
    // The other channel and the connection carry on.
    pair.client.call(other, declare("x"), 12).unwrap();
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(other, declare("x"))]
    );
    assert_eq!(pair.client.state(), ConnectionState::Open);
}

#[test]
fn server_closed_channel_number_is_reused_only_when_no_other_is_free() {
    let mut pair = Pair::new("amqp://guest:guest@localhost/%2f?channel_max=3");
    pair.handshake(Tune::RABBITMQ_DEFAULTS);
    let closed = pair.open_channel(1);
    let close = ChannelClose {
        reply_code: 404,
        reply_text: "NOT_FOUND - no exchange 'x' in vhost '/'".into(),
        class_id: 60,
        method_id: 40,
    };
    pair.server_sends(Frame::Method(closed, close.into()));
    pair.server_reads();
    pair.events();
    // Numbers 2 and 3 come first; a request still addressed to 1 keeps failing with 404.
    assert_eq!(pair.open_channel(2), 2);
    assert_eq!(pair.open_channel(3), 3);
    assert!(matches!(
        pair.client.call(closed, declare("x"), 4),
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND
    ));
    pair.events();
    // Only when nothing else is free is 1 reused, and then it is a new, open channel.
    assert_eq!(pair.open_channel(5), closed);
    pair.client.call(closed, declare("y"), 6).unwrap();
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(closed, declare("y"))]
    );
}

#[test]
fn server_connection_close_fails_every_pending_call_and_answers_close_ok() {
    let mut pair = Pair::open();
    let a = pair.open_channel(1);
    let b = pair.open_channel(2);
    pair.client.call(a, declare("a"), 20).unwrap();
    pair.client.call(b, declare("b"), 21).unwrap();
    pair.server_reads();
    pair.server_sends(
        Frame::Method(
            0,
            ConnectionClose {
                reply_code: 320,
                reply_text:
                    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                        .into(),
                class_id: 0,
                method_id: 0,
            }
            .into(),
        ),
    );
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(0, ConnectionCloseOk.into())]
    );
    let events = pair.events();
    let failed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Reply {
                token,
                result: Err(Error::ConnectionClosed(close)),
            } if close.code == ReplyCode::CONNECTION_FORCED => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![20, 21]);
    assert!(matches!(
        events.last(),
        Some(Event::Closed(Error::ConnectionClosed(_)))
    ));
    assert!(pair.client.call(a, declare("a"), 22).is_err());
}

#[test]
fn local_close_waits_for_close_ok_and_discards_other_frames() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.call(ch, declare("a"), 30).unwrap();
    pair.client.close(31).unwrap();
    let frames = pair.server_reads();
    assert!(
        matches!(frames.last(), Some(Frame::Method(0, Method::ConnectionClose(c))) if c.reply_code == 200)
    );
    assert_eq!(pair.client.state(), ConnectionState::Closing);
    // A reply that crossed the close on the wire is discarded.
    pair.server_sends(Frame::Method(ch, QueueDeclareOk::default().into()));
    pair.server_sends(Frame::Method(0, ConnectionCloseOk.into()));
    let events = pair.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 30,
            result: Err(Error::ConnectionClosedLocally)
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 31,
            result: Ok(_)
        }
    )));
    assert_eq!(pair.client.state(), ConnectionState::Closed);
}

#[test]
fn close_race_both_sides_close_the_connection_at_once() {
    let mut pair = Pair::open();
    pair.client.close(1).unwrap();
    pair.server_reads();
    // The server's own close crossed ours: answer it, and we are done.
    pair.server_sends(Frame::Method(
        0,
        ConnectionClose {
            reply_code: 320,
            reply_text: "CONNECTION_FORCED".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    ));
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(0, ConnectionCloseOk.into())]
    );
    assert_eq!(pair.client.state(), ConnectionState::Closed);
    let events = pair.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 1,
            result: Err(_)
        }
    )));
}

#[test]
fn channel_close_race_with_server_close_resolves_and_tolerates_late_close_ok() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.close_channel(ch, 40).unwrap();
    pair.server_reads();
    pair.server_sends(Frame::Method(
        ch,
        ChannelClose {
            reply_code: 404,
            reply_text: "NOT_FOUND - no queue 'q' in vhost '/'".into(),
            class_id: 60,
            method_id: 20,
        }
        .into(),
    ));
    assert_eq!(
        pair.server_reads(),
        vec![Frame::Method(ch, ChannelCloseOk.into())]
    );
    assert!(pair
        .events()
        .iter()
        .any(|e| matches!(e, Event::Reply { token: 40, .. })));
    // The server's answer to our close arrives after: no error.
    pair.server_sends(Frame::Method(ch, ChannelCloseOk.into()));
    assert_eq!(pair.client.state(), ConnectionState::Open);
}

#[test]
fn delivery_content_is_assembled_across_body_frames() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    let body = Bytes::from(vec![7u8; 300_000]);
    pair.server_sends(Frame::Method(
        ch,
        BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 1,
            ..Default::default()
        }
        .into(),
    ));
    pair.server_sends(Frame::Header(
        ch,
        ContentHeader::basic(
            body.len() as u64,
            BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
        ),
    ));
    let frames: Vec<Frame> = body_frames(ch, &body, 131_072).collect();
    assert_eq!(frames.len(), 3);
    for frame in frames {
        pair.server_sends(frame);
    }
    match pair.events().as_slice() {
        [Event::Delivery { channel, message }] => {
            assert_eq!(*channel, ch);
            assert_eq!(message.method.consumer_tag, "ctag");
            assert_eq!(message.body, body);
            let properties = message.properties.as_deref().map(|p| p.delivery_mode);
            assert_eq!(properties, Some(Some(2)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_splits_body_by_negotiated_frame_max_without_waiting() {
    let mut pair = Pair::new("amqp://localhost?frame_max=8192");
    pair.handshake(Tune::RABBITMQ_DEFAULTS);
    let ch = pair.open_channel(1);
    let body = vec![1u8; 20_000];
    let seq = pair
        .client
        .publish(
            ch,
            BasicPublish {
                routing_key: "q".into(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from(body),
        )
        .unwrap();
    assert_eq!(seq, None);
    let frames = pair.server_reads();
    assert_eq!(
        frames.len(),
        2 + 3,
        "method, header, 3 bodies of at most 8184 bytes"
    );
    assert!(frames.iter().all(|f| f.encoded_len() <= 8192));
}

#[test]
fn confirm_mode_numbers_publishes_and_reports_acks_and_nacks() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client
        .call(ch, ConfirmSelect { nowait: false }.into(), 50)
        .unwrap();
    pair.server_sends(Frame::Method(ch, ConfirmSelectOk.into()));
    let publish = || BasicPublish {
        routing_key: "q".into(),
        ..Default::default()
    };
    let seqs: Vec<_> = (0..3)
        .map(|_| {
            pair.client
                .publish(
                    ch,
                    publish(),
                    &BasicProperties::default(),
                    Bytes::from_static(b"x"),
                )
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![Some(1), Some(2), Some(3)]);
    pair.server_sends(Frame::Method(
        ch,
        BasicAck {
            delivery_tag: 2,
            multiple: true,
        }
        .into(),
    ));
    pair.server_sends(Frame::Method(
        ch,
        BasicNack {
            delivery_tag: 3,
            multiple: false,
            requeue: false,
        }
        .into(),
    ));
    let confirms: Vec<(u64, bool, bool)> = pair
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Confirm {
                delivery_tag,
                multiple,
                ack,
                ..
            } => Some((delivery_tag, multiple, ack)),
            _ => None,
        })
        .collect();
    assert_eq!(confirms, vec![(2, true, true), (3, false, false)]);
}

#[test]
fn server_basic_cancel_is_reported_as_consumer_cancelled() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.server_sends(Frame::Method(
        ch,
        BasicCancel {
            consumer_tag: "ctag".into(),
            no_wait: true,
        }
        .into(),
    ));
    assert!(
        pair.server_reads().is_empty(),
        "no-wait cancel needs no cancel-ok"
    );
    assert!(
        matches!(pair.events().as_slice(), [Event::ConsumerCancelled { consumer_tag, .. }] if *consumer_tag == "ctag")
    );
}

#[test]
fn blocked_and_unblocked_are_surfaced() {
    let mut pair = Pair::open();
    pair.server_sends(Frame::Method(
        0,
        ConnectionBlocked {
            reason: "low on memory".into(),
        }
        .into(),
    ));
    assert!(pair.client.is_blocked());
    pair.server_sends(Frame::Method(0, ConnectionUnblocked.into()));
    assert!(!pair.client.is_blocked());
    let events = pair.events();
    assert!(
        matches!(events.as_slice(), [Event::Blocked { reason }, Event::Unblocked] if *reason == "low on memory")
    );
}

#[test]
fn heartbeat_is_sent_after_half_an_idle_interval() {
    let mut pair = Pair::open();
    pair.server_reads();
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    pair.advance(Duration::from_secs(29));
    assert!(pair.server_reads().is_empty());
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.server_reads(), vec![Frame::Heartbeat]);
}

#[test]
fn pending_output_leaves_only_the_silence_deadline() {
    let mut pair = Pair::open();
    pair.server_reads();
    let start = pair.now;
    // A heartbeat is due but not taken (the socket is not accepting writes).
    pair.now += Duration::from_secs(30);
    pair.client.handle_timeout(pair.now);
    assert!(pair.client.has_output());
    // Only the silence check remains to wake for, not a heartbeat already in the past.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(start + Duration::from_secs(120))
    );
    pair.now = start + Duration::from_secs(120);
    pair.client.handle_timeout(pair.now);
    assert_eq!(pair.client.state(), ConnectionState::Closed);
    assert!(matches!(
        pair.client.close_reason(),
        Some(Error::HeartbeatTimeout(120))
    ));
}

#[test]
fn silent_server_for_two_intervals_is_declared_dead_and_pending_calls_fail() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.call(ch, declare("q"), 60).unwrap();
    for _ in 0..3 {
        pair.advance(Duration::from_secs(30));
        pair.server_reads();
        pair.server_sends(Frame::Heartbeat);
    }
    assert_eq!(
        pair.client.state(),
        ConnectionState::Open,
        "heartbeats from the server keep it alive"
    );
    pair.advance(Duration::from_secs(119));
    assert_eq!(pair.client.state(), ConnectionState::Open);
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.client.state(), ConnectionState::Closed);
    let events = pair.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 60,
            result: Err(Error::HeartbeatTimeout(120))
        }
    )));
}

#[test]
fn malformed_frame_from_server_closes_with_its_reply_code() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.call(ch, declare("q"), 70).unwrap();
    pair.server_reads();
    // A heartbeat frame whose end octet is wrong.
    pair.server_sends_bytes(&[8, 0, 0, 0, 0, 0, 0, 0x00]);
    let frames = pair.server_reads();
    assert!(
        matches!(frames.as_slice(), [Frame::Method(0, Method::ConnectionClose(c))] if c.reply_code == 501),
        "{frames:?}"
    );
    let events = pair.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 70,
            result: Err(Error::Protocol(_))
        }
    )));
    assert_eq!(pair.client.state(), ConnectionState::Closed);
}

#[test]
fn eof_while_open_fails_pending_calls_with_an_io_error() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.client.call(ch, declare("q"), 80).unwrap();
    pair.client.handle_eof(None);
    let events = pair.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reply {
            token: 80,
            result: Err(Error::Io(_))
        }
    )));
    assert!(matches!(events.last(), Some(Event::Closed(Error::Io(_)))));
}

#[test]
fn unexpected_reply_is_a_protocol_violation() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    pair.server_sends(Frame::Method(ch, QueueDeclareOk::default().into()));
    let frames = pair.server_reads();
    assert!(
        matches!(frames.as_slice(), [Frame::Method(0, Method::ConnectionClose(c))] if c.reply_code == 503)
    );
    assert!(matches!(
        pair.client.close_reason(),
        Some(Error::UnexpectedFrame(_))
    ));
}

// ---- acks of the oldest deliveries go out as one -------------------------------------------

/// Starts a consumer `tag` on `ch` (basic.consume, consume-ok).
fn consume(pair: &mut Pair, ch: ChannelId, tag: &str, no_ack: bool) {
    let consume = BasicConsume {
        queue: "q".into(),
        consumer_tag: tag.into(),
        no_ack,
        ..Default::default()
    };
    pair.client.call(ch, consume.into(), 50).unwrap();
    pair.server_reads();
    pair.server_sends(Frame::Method(
        ch,
        BasicConsumeOk {
            consumer_tag: tag.into(),
        }
        .into(),
    ));
    pair.events();
}

/// The server delivers a two-octet message to consumer `tag`.
fn deliver(pair: &mut Pair, ch: ChannelId, tag: &str, delivery_tag: u64) {
    pair.server_sends(Frame::Method(
        ch,
        BasicDeliver {
            consumer_tag: tag.into(),
            delivery_tag,
            ..Default::default()
        }
        .into(),
    ));
    pair.server_sends(Frame::Header(
        ch,
        ContentHeader::basic(2, BasicProperties::default()),
    ));
    pair.server_sends(Frame::Body(ch, Bytes::from_static(b"hi")));
}

/// A channel with consumer "c" (manual acks) and deliveries 1..=`deliveries` to it.
fn consuming(deliveries: u64) -> (Pair, ChannelId) {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    consume(&mut pair, ch, "c", false);
    for tag in 1..=deliveries {
        deliver(&mut pair, ch, "c", tag);
    }
    (pair, ch)
}

fn ack(ch: ChannelId, delivery_tag: u64, multiple: bool) -> Frame {
    Frame::Method(
        ch,
        BasicAck {
            delivery_tag,
            multiple,
        }
        .into(),
    )
}

fn send_ack(pair: &mut Pair, ch: ChannelId, delivery_tag: u64) {
    let method = BasicAck {
        delivery_tag,
        multiple: false,
    };
    pair.client.send(ch, method.into()).unwrap();
}

#[test]
fn acks_of_the_oldest_deliveries_sent_together_are_written_as_one_multiple_ack() {
    let (mut pair, ch) = consuming(4);
    for tag in 1..=3 {
        send_ack(&mut pair, ch, tag);
    }
    assert!(pair.client.has_output());
    assert_eq!(pair.server_reads(), vec![ack(ch, 3, true)]);
    // Delivery 4 is the oldest now; a lone ack goes out as it was made.
    send_ack(&mut pair, ch, 4);
    assert_eq!(pair.server_reads(), vec![ack(ch, 4, false)]);
}

#[test]
fn a_run_of_acks_alone_is_reported_until_another_frame_joins_or_it_is_taken() {
    let (mut pair, ch) = consuming(4);
    assert_eq!(pair.client.ack_run_alone(), None);
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 2);
    assert_eq!(pair.client.ack_run_alone(), Some((ch, 2)));
    // Any other frame ends it: the run is written before it, and there is more than acks.
    pair.client
        .send(
            ch,
            BasicNack {
                delivery_tag: 3,
                multiple: false,
                requeue: true,
            }
            .into(),
        )
        .unwrap();
    assert_eq!(pair.client.ack_run_alone(), None);
    pair.server_reads();
    send_ack(&mut pair, ch, 4);
    assert_eq!(pair.client.ack_run_alone(), Some((ch, 1)));
    assert_eq!(pair.server_reads(), vec![ack(ch, 4, false)]);
    assert_eq!(pair.client.ack_run_alone(), None);
}

#[test]
fn an_ack_that_is_not_of_the_oldest_delivery_is_written_as_made_after_the_run_before_it() {
    let (mut pair, ch) = consuming(4);
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 2);
    send_ack(&mut pair, ch, 4);
    send_ack(&mut pair, ch, 3);
    assert_eq!(
        pair.server_reads(),
        vec![ack(ch, 2, true), ack(ch, 4, false), ack(ch, 3, false)]
    );
}

#[test]
fn other_frames_keep_their_place_between_acks() {
    let (mut pair, ch) = consuming(3);
    send_ack(&mut pair, ch, 1);
    let nack = BasicNack {
        delivery_tag: 2,
        multiple: false,
        requeue: true,
    };
    pair.client.send(ch, nack.clone().into()).unwrap();
    send_ack(&mut pair, ch, 3);
    assert_eq!(
        pair.server_reads(),
        vec![
            ack(ch, 1, false),
            Frame::Method(ch, nack.into()),
            ack(ch, 3, false)
        ]
    );
}

#[test]
fn a_repeated_ack_is_still_written_so_the_server_can_refuse_it() {
    let (mut pair, ch) = consuming(1);
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 1);
    assert_eq!(
        pair.server_reads(),
        vec![ack(ch, 1, false), ack(ch, 1, false)]
    );
}

#[test]
fn deliveries_to_a_no_ack_consumer_do_not_break_a_run_of_acks() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    consume(&mut pair, ch, "manual", false);
    consume(&mut pair, ch, "auto", true);
    deliver(&mut pair, ch, "manual", 1);
    deliver(&mut pair, ch, "auto", 2);
    deliver(&mut pair, ch, "manual", 3);
    // Tag 2 needs no ack: 1 and 3 are the two oldest unacked, and one ack settles both.
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 3);
    assert_eq!(pair.server_reads(), vec![ack(ch, 3, true)]);
    // A (wrong) ack of the no-ack delivery is written as made: the server refuses it.
    send_ack(&mut pair, ch, 2);
    assert_eq!(pair.server_reads(), vec![ack(ch, 2, false)]);
}

#[test]
fn acks_in_a_transaction_are_written_as_made() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    consume(&mut pair, ch, "c", false);
    pair.client.call(ch, TxSelect.into(), 9).unwrap();
    pair.server_reads();
    pair.server_sends(Frame::Method(ch, TxSelectOk.into()));
    for tag in 1..=2 {
        deliver(&mut pair, ch, "c", tag);
    }
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 2);
    assert_eq!(
        pair.server_reads(),
        vec![ack(ch, 1, false), ack(ch, 2, false)]
    );
}

#[test]
fn acks_on_two_channels_are_runs_of_their_own_in_order() {
    let mut pair = Pair::open();
    let a = pair.open_channel(1);
    let b = pair.open_channel(2);
    consume(&mut pair, a, "ca", false);
    consume(&mut pair, b, "cb", false);
    for tag in 1..=2 {
        deliver(&mut pair, a, "ca", tag);
        deliver(&mut pair, b, "cb", tag);
    }
    send_ack(&mut pair, a, 1);
    send_ack(&mut pair, a, 2);
    send_ack(&mut pair, b, 1);
    send_ack(&mut pair, b, 2);
    assert_eq!(pair.server_reads(), vec![ack(a, 2, true), ack(b, 2, true)]);
}

#[test]
fn basic_get_ok_without_no_ack_is_tracked_like_a_delivery() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    for tag in 1..=2 {
        let get = BasicGet {
            queue: "q".into(),
            no_ack: false,
        };
        pair.client.call(ch, get.into(), 10).unwrap();
        pair.server_reads();
        pair.server_sends(Frame::Method(
            ch,
            BasicGetOk {
                delivery_tag: tag,
                ..Default::default()
            }
            .into(),
        ));
        pair.server_sends(Frame::Header(
            ch,
            ContentHeader::basic(0, BasicProperties::default()),
        ));
    }
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 2);
    assert_eq!(pair.server_reads(), vec![ack(ch, 2, true)]);
}

// ---- when a run of acks may wait for more (consumer buffer, prefetch window) ---------------

/// Sends basic.qos on `ch` and takes its qos-ok.
fn qos(pair: &mut Pair, ch: ChannelId, prefetch_size: u32, prefetch_count: u16, global: bool) {
    let qos = BasicQos {
        prefetch_size,
        prefetch_count,
        global,
    };
    pair.client.call(ch, qos.into(), 40).unwrap();
    pair.server_reads();
    pair.server_sends(Frame::Method(ch, BasicQosOk.into()));
    pair.events();
}

/// A channel with basic.qos `prefetch_count`, consumer "c" and deliveries 1..=`deliveries`.
fn consuming_with_prefetch(prefetch_count: u16, deliveries: u64) -> (Pair, ChannelId) {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    qos(&mut pair, ch, 0, prefetch_count, false);
    consume(&mut pair, ch, "c", false);
    for tag in 1..=deliveries {
        deliver(&mut pair, ch, "c", tag);
    }
    (pair, ch)
}

/// Whether the run may wait when the consumer has nothing more in hand.
fn may_wait_alone(pair: &Pair) -> bool {
    pair.client.ack_run_may_wait(|_| false)
}

#[test]
fn a_prefetch_one_consumers_ack_never_waits() {
    let (mut pair, ch) = consuming_with_prefetch(1, 1);
    send_ack(&mut pair, ch, 1);
    assert_eq!(pair.client.ack_run_alone(), Some((ch, 1)));
    assert!(!may_wait_alone(&pair));
    assert_eq!(pair.server_reads(), vec![ack(ch, 1, false)]);
}

#[test]
fn with_a_prefetch_window_a_run_waits_only_while_its_consumer_has_deliveries_in_hand() {
    // 1 acked of 1000: small next to the window, but the server may be waiting for it.
    let (mut pair, ch) = consuming_with_prefetch(1000, 3);
    assert!(!pair.client.ack_run_may_wait(|_| true), "no run yet");
    send_ack(&mut pair, ch, 1);
    assert!(!may_wait_alone(&pair));
    let mut asked = None;
    assert!(pair.client.ack_run_may_wait(|channel| {
        asked = Some(channel);
        true
    }));
    assert_eq!(asked, Some(ch));
    // Whatever the driver decides, what goes out is the same one frame.
    send_ack(&mut pair, ch, 2);
    assert_eq!(pair.server_reads(), vec![ack(ch, 2, true)]);
}

#[test]
fn a_run_waits_for_more_acks_until_it_holds_ack_run_max_acks() {
    let max = u64::from(ACK_RUN_MAX);
    let (mut pair, ch) = consuming(max + 1);
    for tag in 1..max {
        send_ack(&mut pair, ch, tag);
        assert!(pair.client.ack_run_may_wait(|_| true), "{tag} acks held");
    }
    send_ack(&mut pair, ch, max);
    assert!(!pair.client.ack_run_may_wait(|_| true));
    assert_eq!(pair.server_reads(), vec![ack(ch, max, true)]);
}

#[test]
fn without_a_prefetch_window_a_run_with_nothing_more_in_hand_does_not_wait_either() {
    let (mut pair, ch) = consuming(2);
    send_ack(&mut pair, ch, 1);
    assert!(!may_wait_alone(&pair));
}

#[test]
fn a_run_is_written_before_any_frame_made_after_it_and_waits_no_more() {
    // Everything that may depend on the acks before it: they reach the server first.
    let methods: Vec<Method> = vec![
        BasicNack {
            delivery_tag: 3,
            multiple: true,
            requeue: true,
        }
        .into(),
        BasicReject {
            delivery_tag: 3,
            requeue: false,
        }
        .into(),
        BasicRecover { requeue: true }.into(),
        BasicCancel {
            consumer_tag: "c".into(),
            no_wait: false,
        }
        .into(),
        BasicGet {
            queue: "q".into(),
            no_ack: false,
        }
        .into(),
        BasicQos {
            prefetch_size: 0,
            prefetch_count: 10,
            global: false,
        }
        .into(),
        TxSelect.into(),
        ConfirmSelect { nowait: false }.into(),
        declare("q"),
    ];
    for method in methods {
        let (mut pair, ch) = consuming(3);
        send_ack(&mut pair, ch, 1);
        send_ack(&mut pair, ch, 2);
        assert!(pair.client.ack_run_may_wait(|_| true));
        let name = method.name();
        if responses(&method).is_empty() {
            pair.client.send(ch, method.clone()).unwrap();
        } else {
            pair.client.call(ch, method.clone(), 7).unwrap();
        }
        assert!(!pair.client.ack_run_may_wait(|_| true), "after {name}");
        assert_eq!(
            pair.server_reads(),
            vec![ack(ch, 2, true), Frame::Method(ch, method)],
            "{name}"
        );
    }
}

/// A channel with deliveries 1 and 2, both acked: a run of two waiting to be written.
fn two_acks_held() -> (Pair, ChannelId) {
    let (mut pair, ch) = consuming(2);
    send_ack(&mut pair, ch, 1);
    send_ack(&mut pair, ch, 2);
    (pair, ch)
}

#[test]
fn a_run_is_written_before_a_publish_channel_close_and_connection_close() {
    let (mut pair, ch) = two_acks_held();
    let publish = BasicPublish {
        routing_key: "q".into(),
        ..Default::default()
    };
    pair.client
        .publish(ch, publish, &BasicProperties::default(), Bytes::new())
        .unwrap();
    let frames = pair.server_reads();
    assert_eq!(frames.first(), Some(&ack(ch, 2, true)));
    assert!(matches!(
        frames.get(1),
        Some(Frame::Method(_, Method::BasicPublish(_)))
    ));

    let (mut pair, ch) = two_acks_held();
    pair.client.close_channel(ch, 8).unwrap();
    let frames = pair.server_reads();
    assert_eq!(frames.first(), Some(&ack(ch, 2, true)));
    assert!(matches!(
        frames.as_slice(),
        [_, Frame::Method(_, Method::ChannelClose(_))]
    ));

    let (mut pair, ch) = two_acks_held();
    pair.client.close(9).unwrap();
    let frames = pair.server_reads();
    assert_eq!(frames.first(), Some(&ack(ch, 2, true)));
    assert!(matches!(
        frames.as_slice(),
        [_, Frame::Method(0, Method::ConnectionClose(_))]
    ));
}

/// A body of `len` octets that is not all one value, so a misplaced slice shows.
fn body_of(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Publishes `body` on channel `ch` and returns the output parts as written, and the bodies
/// the server assembles from them.
fn publish_and_read(pair: &mut Pair, ch: ChannelId, body: &Bytes) -> (Vec<Bytes>, Vec<Frame>) {
    let publish = BasicPublish {
        routing_key: "q".into(),
        ..Default::default()
    };
    pair.client
        .publish(ch, publish, &BasicProperties::default(), body.clone())
        .unwrap();
    let out = pair.client.take_output(pair.now).unwrap();
    let parts = out.parts().map(Bytes::copy_from_slice).collect();
    let pointers: Vec<*const u8> = out.parts().map(<[u8]>::as_ptr).collect();
    assert_eq!(
        pointers.iter().filter(|&&p| p == body.as_ptr()).count(),
        usize::from(body.len() > COPY_BODY_MAX),
        "a large body's first frame goes out from the body itself; a small one is copied"
    );
    pair.to_server.put(out);
    let frames = pair.server_reads();
    (parts, frames)
}

fn assembled_body(frames: Vec<Frame>) -> Bytes {
    let mut assembler = amqp_codec::ContentAssembler::default();
    let mut bodies = Vec::new();
    for frame in frames {
        if let Some(command) = assembler.feed(frame).unwrap() {
            bodies.push(command.content.unwrap().body);
        }
    }
    assert_eq!(bodies.len(), 1);
    bodies.remove(0)
}

#[test]
fn publish_of_a_small_body_is_one_contiguous_piece() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    let body = body_of(COPY_BODY_MAX);
    let (parts, frames) = publish_and_read(&mut pair, ch, &body);
    assert_eq!(parts.len(), 1);
    assert_eq!(frames.len(), 3, "method, header, body");
    assert_eq!(assembled_body(frames), body);
}

#[test]
fn publish_of_a_large_body_sends_its_frames_payloads_as_slices_of_the_body() {
    let mut pair = Pair::new("amqp://localhost?frame_max=8192");
    pair.handshake(Tune::RABBITMQ_DEFAULTS);
    let ch = pair.open_channel(1);
    let max_payload = 8192 - 8;
    for (len, body_frames) in [
        (COPY_BODY_MAX + 1, 1),
        (max_payload, 1), // exactly one full frame
        (max_payload + 1, 2),
        (20 * max_payload, 20),
        (20 * max_payload + 5, 21),
    ] {
        let body = body_of(len);
        let (parts, frames) = publish_and_read(&mut pair, ch, &body);
        // Head and first frame header, then per body frame: payload, end octet and the next
        // header (or nothing after the last).
        assert_eq!(parts.len(), 1 + 2 * body_frames - 1 + 1, "body of {len}");
        assert_eq!(frames.len(), 2 + body_frames, "body of {len}");
        assert!(frames.iter().all(|f| f.encoded_len() <= 8192));
        assert_eq!(assembled_body(frames), body, "body of {len}");
    }
}

#[test]
fn frames_written_after_a_large_body_follow_it_in_order() {
    let mut pair = Pair::open();
    let ch = pair.open_channel(1);
    let publish = || BasicPublish {
        routing_key: "q".into(),
        ..Default::default()
    };
    let large = body_of(100_000);
    let small = body_of(3);
    pair.client
        .publish(ch, publish(), &BasicProperties::default(), large.clone())
        .unwrap();
    pair.client
        .publish(ch, publish(), &BasicProperties::default(), small.clone())
        .unwrap();
    pair.client.send(ch, BasicQos::default().into()).unwrap();
    let frames = pair.server_reads();
    assert!(matches!(
        frames.last(),
        Some(Frame::Method(_, Method::BasicQos(_)))
    ));
    let mut assembler = amqp_codec::ContentAssembler::default();
    let bodies: Vec<Bytes> = frames
        .into_iter()
        .filter_map(|frame| assembler.feed(frame).unwrap())
        .filter_map(|command| command.content.map(|c| c.body))
        .collect();
    assert_eq!(bodies, vec![large, small]);
}
