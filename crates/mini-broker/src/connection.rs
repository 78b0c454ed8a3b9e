//! One client connection, server side: the handshake, the channels, and every method a
//! client may send, answered as RabbitMQ answers it.
//!
//! [`ServerConnection`] is a state machine over frames. The socket task in
//! [`crate::server`] feeds it bytes and the time; it answers into the connection's
//! [`Outbox`], which the writer task drains. It never blocks and never awaits, so it can be
//! driven in tests without sockets.
//!
//! ```text
//!  AwaitingProtocolHeader ─AMQP 0-9-1─► AwaitingStartOk ─PLAIN/AMQPLAIN ok─► AwaitingTuneOk
//!    ─tune-ok─► AwaitingOpen ─open─► Open ─close/close-ok─► Closed
//!          error once open (or opening): connection.close ─► Closing ─close-ok/timeout─► Closed
//!          error during the handshake, frame error: SilentClose ─3 s─► Closed
//! ```
//!
//! Errors follow the spec's classes: a soft error (403, 404, 405, 406) closes the channel
//! (channel.close, then channel.close-ok from the client); a hard error closes the
//! connection. Where RabbitMQ 3.10 departs from that, this broker departs with it, because
//! clients are written against RabbitMQ: a client it does not trust yet (a refused login
//! without `authentication_failure_close`, a bad tune-ok, an unknown mechanism) gets no
//! close frame, just a socket closed three seconds later; a frame error is reported and
//! followed by the same delay; an unknown class or method id closes the socket at once.
//! Reply texts are RabbitMQ's, Erlang terms included (`{frame_too_large,5000,4088}`).
//! Nothing a client sends can panic the broker or disturb another connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use amqp_codec::frame::decode_payload;
use amqp_codec::methods::*;
use amqp_codec::tune::Tune;
use amqp_codec::{
    ChannelId, Command, ContentAssembler, ContentHeader, DecodeError, FieldArray, FieldTable,
    FieldValue, Frame, FrameType, Limits, Method, ReplyCode, ShortString,
};
use bytes::{Buf, Bytes, BytesMut};

use crate::broker::{generated_queue_name, Broker, ExchangeFlags, MessageStats, QueueFlags, VHost};
use crate::delivery::{lock, ChannelLink, ContentMethod, Outbox, Unacked};
use crate::error::{erlang_binary_p, erlang_binary_w, queue_resource, AmqpError};
use crate::message::{Deadline, MessageContent, PublishedHeader, QueuedMessage};
use crate::permissions::Permit;
use crate::queue::{integer_argument, DeadLetters, Enqueued, Queue, QueueConsumer, QueueType};
use crate::registry::{ChannelInfo, ConnectionInfo};
use crate::store::log::PublishRecord;
use crate::store::Confirm;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Waiting for `AMQP 0 0 9 1`.
    AwaitingProtocolHeader,
    /// connection.start sent.
    AwaitingStartOk,
    /// connection.tune sent.
    AwaitingTuneOk,
    /// Waiting for connection.open.
    AwaitingOpen,
    /// Open.
    Open,
    /// connection.close sent, waiting for close-ok.
    Closing,
    /// Refused without a word (a failed handshake, a frame error): nothing more is read and
    /// the socket closes [`SILENT_CLOSE_DELAY`] later, as RabbitMQ does.
    SilentClose,
    /// Done: the socket should be closed once the outbox is flushed.
    Closed,
}

/// How long a client has to answer our connection.close before the socket is closed.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// RabbitMQ's `SILENT_CLOSE_DELAY`: how long it waits before closing the socket of a client
/// it refuses without a close frame ("we don't trust the client at this point").
pub const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

/// A channel's transaction buffer: what tx.commit applies.
#[derive(Default)]
struct Transaction {
    /// Each publish, its content header as received.
    publishes: Vec<Command<PublishedHeader>>,
    acks: Vec<TxAck>,
}

enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// What a channel's content assembly waits for (rabbit_command_assembler's states), with
/// the class and method id of the content-carrying method being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Method,
    Header(u16, u16),
    Body(u16, u16),
}

/// One open channel.
struct ServerChannel {
    link: Arc<ChannelLink>,
    /// Content assembly, with the publishers' content headers taken as they came.
    assembler: ContentAssembler<PublishedHeader>,
    expect: Expect,
    /// We sent channel.close and wait for close-ok.
    closing: bool,
    /// Consumers on this channel: tag to queue.
    consumers: HashMap<ShortString, Arc<Queue>>,
    /// basic.qos prefetch for consumers started after it (per consumer).
    prefetch_count: u16,
    /// Publisher confirms: the sequence number of the next publish.
    confirm_seq: Option<u64>,
    /// Whether some confirm of this channel went to the store (which sends it after the
    /// fsync): then a refused publish is nacked through the store too, in order.
    confirms_in_store: bool,
    /// Confirms of this channel handed to the store that it has not sent yet.
    confirms_unsent: Arc<AtomicU64>,
    /// Publisher confirms due and not sent yet: the first and last delivery tag of a run of
    /// consecutive basic.acks, sent together once the read's input is handled
    /// ([`ServerChannel::send_acks_due`]).
    acks_due: Option<(u64, u64)>,
    /// The queue the channel declared last: what `""` means in bind, consume, get, purge
    /// and delete (RabbitMQ's `most_recently_declared_queue`).
    last_declared_queue: ShortString,
    /// Transaction mode and its buffer.
    tx: Option<Transaction>,
}

impl ServerChannel {
    /// Records that the publish with `delivery_tag` is confirmed (basic.ack), to be sent with
    /// the acks due before it; true if it is the first due. Acks due are always consecutive:
    /// whatever else a publish gets (a nack, a confirm through the store) sends them first.
    fn ack_due(&mut self, delivery_tag: u64) -> bool {
        match &mut self.acks_due {
            Some((_, last)) if *last + 1 == delivery_tag => {
                *last = delivery_tag;
                false
            }
            due => {
                let first = due.is_none();
                *due = Some((delivery_tag, delivery_tag));
                first
            }
        }
    }

    /// Sends the acks due (spec 1.8.3.3; confirms are RabbitMQ's extension): several as one
    /// basic.ack with multiple=true, which acknowledges every earlier unconfirmed tag too, so
    /// only when no earlier confirm of this channel is still with the store (acks due are
    /// consecutive, and nacks go out at once); one basic.ack per tag otherwise.
    fn send_acks_due(&mut self, id: ChannelId, outbox: &Outbox) {
        let Some((first, last)) = self.acks_due.take() else {
            return;
        };
        if first < last && self.confirms_unsent.load(Ordering::Acquire) == 0 {
            outbox.send_method(
                id,
                BasicAck {
                    delivery_tag: last,
                    multiple: true,
                },
            );
            return;
        }
        for delivery_tag in first..=last {
            outbox.send_method(
                id,
                BasicAck {
                    delivery_tag,
                    multiple: false,
                },
            );
        }
    }
}

/// The server side of one connection.
pub struct ServerConnection {
    broker: Arc<Broker>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    state: ServerState,
    outbox: Arc<Outbox>,
    limits: Limits,
    tune: Tune,
    channels: HashMap<ChannelId, ServerChannel>,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// The user's permissions in the vhost (nothing before connection.open).
    permit: Permit,
    client_properties: FieldTable,
    info: Option<Arc<ConnectionInfo>>,
    /// Client capability: send basic.cancel when a queue goes away under a consumer.
    cancel_notify: bool,
    /// Client capability: connection.close 403 on bad credentials instead of a silent close.
    auth_failure_close: bool,
    /// Client capability: connection.blocked / unblocked notifications.
    blocked_notify: bool,
    /// Whether this connection has published (the memory alarm blocks publishers only).
    has_published: bool,
    /// Whether connection.blocked was sent and not yet followed by unblocked.
    blocked_sent: bool,
    /// Exclusive queues this connection owns (deleted with it).
    exclusive_queues: Vec<Arc<Queue>>,
    last_received: Instant,
    /// The outbox's written-bytes counter when we last looked (for heartbeats).
    last_sent_mark: u64,
    last_sent: Instant,
    started: Instant,
    closing_since: Option<Instant>,
    /// Reusable buffer for routing results.
    route_buf: Vec<Arc<Queue>>,
    /// Channels with publisher confirms due ([`ServerChannel::acks_due`]).
    channels_with_acks_due: Vec<ChannelId>,
}

/// A connection that goes away for any reason, a bug that unwinds through its task
/// included, gives back what it held: unacked messages are requeued, its consumers and
/// exclusive queues removed (cleanup does nothing the second time).
impl Drop for ServerConnection {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl ServerConnection {
    /// A connection from `peer` that has not yet sent its protocol header.
    pub fn new(
        broker: Arc<Broker>,
        peer: SocketAddr,
        local: SocketAddr,
        outbox: Arc<Outbox>,
        now: Instant,
    ) -> Self {
        let id = broker.next_connection_id();
        let permit = Permit::new(broker.permissions.clone(), "", "");
        ServerConnection {
            broker,
            id,
            peer,
            local,
            state: ServerState::AwaitingProtocolHeader,
            outbox,
            // Only the table nesting limit matters here: read_frame checks frame sizes.
            limits: Limits::with_frame_max(131_072),
            // Until tune-ok, RabbitMQ reads frames of up to its initial_frame_max, 4096.
            tune: Tune {
                channel_max: 0,
                frame_max: amqp_codec::FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            channels: HashMap::new(),
            user: String::new(),
            vhost: None,
            permit,
            client_properties: FieldTable::new(),
            info: None,
            cancel_notify: false,
            auth_failure_close: false,
            blocked_notify: false,
            has_published: false,
            blocked_sent: false,
            exclusive_queues: Vec::new(),
            last_received: now,
            last_sent_mark: 0,
            last_sent: now,
            started: now,
            closing_since: None,
            route_buf: Vec::new(),
            channels_with_acks_due: Vec::new(),
        }
    }

    /// The broker this connection belongs to.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The registry entry, once open.
    pub fn info(&self) -> Option<&Arc<ConnectionInfo>> {
        self.info.as_ref()
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds bytes read from the socket. Publisher confirms due for what they held go out
    /// at the end, consecutive acks of a channel as one.
    pub fn handle_input(&mut self, input: &mut BytesMut, now: Instant) {
        self.handle_frames(input, now);
        self.send_acks_due();
    }

    fn handle_frames(&mut self, input: &mut BytesMut, now: Instant) {
        if !input.is_empty() {
            self.last_received = now;
        }
        loop {
            match self.state {
                ServerState::Closed => return,
                ServerState::SilentClose => {
                    // RabbitMQ's reader sleeps before it closes: nothing more is read.
                    input.clear();
                    return;
                }
                ServerState::AwaitingProtocolHeader => {
                    // RabbitMQ reads eight octets before it judges the header.
                    let Some(header) = input.first_chunk::<8>().copied() else {
                        return;
                    };
                    let _ = input.split_to(8);
                    self.on_protocol_header(header);
                    continue;
                }
                _ => {}
            }
            match read_frame(input, self.tune.frame_max) {
                Ok(None) => return,
                Ok(Some(frame)) => self.handle_raw_frame(frame, now),
                Err(fault) => {
                    // Out of step with the client (RabbitMQ's fatal_frame_error): say why,
                    // then close the socket after the silent-close delay, reading nothing.
                    input.clear();
                    tracing::warn!(connection = self.id, peer = %self.peer, "{}", fault.text);
                    if matches!(self.state, ServerState::Open | ServerState::AwaitingOpen) {
                        self.connection_error(fault, 0, 0, now);
                    }
                    self.silent_close(now);
                    return;
                }
            }
        }
    }

    /// Sends the publisher confirms due on every channel.
    fn send_acks_due(&mut self) {
        for id in self.channels_with_acks_due.drain(..) {
            if let Some(channel) = self.channels.get_mut(&id) {
                channel.send_acks_due(id, &self.outbox);
            }
        }
    }

    /// The socket closed or failed: clean up as if the client had closed.
    pub fn handle_eof(&mut self) {
        if self.state != ServerState::Closed {
            self.state = ServerState::Closed;
        }
        self.cleanup();
    }

    /// Timers: heartbeats, missed heartbeats, the close and handshake timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ServerState::Closing => {
                if self
                    .closing_since
                    .is_some_and(|since| now.duration_since(since) >= CLOSE_TIMEOUT)
                {
                    self.state = ServerState::Closed;
                }
            }
            ServerState::SilentClose => {
                if self
                    .closing_since
                    .is_some_and(|since| now.duration_since(since) >= SILENT_CLOSE_DELAY)
                {
                    self.state = ServerState::Closed;
                }
            }
            ServerState::Open => {
                if self.tune.heartbeat == 0 {
                    return;
                }
                let interval = Duration::from_secs(u64::from(self.tune.heartbeat));
                if now.duration_since(self.last_received) >= interval * 2 {
                    tracing::warn!(
                        connection = self.id,
                        peer = %self.peer,
                        "missed heartbeats from client, timeout: {}s",
                        self.tune.heartbeat
                    );
                    self.state = ServerState::Closed;
                    return;
                }
                let mark = self.outbox.bytes_written();
                if mark != self.last_sent_mark {
                    self.last_sent_mark = mark;
                    self.last_sent = now;
                }
                if now.duration_since(self.last_sent) >= interval / 2 {
                    self.outbox.send(&Frame::Heartbeat);
                    self.last_sent = now;
                }
            }
            ServerState::Closed => {}
            _ => {
                if now.duration_since(self.started) >= HANDSHAKE_TIMEOUT {
                    tracing::info!(connection = self.id, peer = %self.peer, "handshake timeout");
                    self.state = ServerState::Closed;
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerState::Closing => self.closing_since.map(|since| since + CLOSE_TIMEOUT),
            ServerState::SilentClose => self.closing_since.map(|since| since + SILENT_CLOSE_DELAY),
            ServerState::Open if self.tune.heartbeat > 0 => {
                let interval = Duration::from_secs(u64::from(self.tune.heartbeat));
                Some((self.last_sent + interval / 2).min(self.last_received + interval * 2))
            }
            ServerState::Open | ServerState::Closed => None,
            _ => Some(self.started + HANDSHAKE_TIMEOUT),
        }
    }

    /// A resource alarm changed: tell the client (connection.blocked / unblocked), if it
    /// asked to be told. Returns whether reading from the socket must pause: RabbitMQ stops
    /// reading from connections that publish while the alarm is on.
    pub fn alarm_changed(&mut self, alarm: bool) -> bool {
        if self.state != ServerState::Open {
            return false;
        }
        if self.blocked_notify && alarm != self.blocked_sent {
            if alarm {
                self.outbox.send_method(
                    0,
                    ConnectionBlocked {
                        reason: ShortString::from(self.broker.alarms().blocked_reason()),
                    },
                );
            } else {
                self.outbox.send_method(0, ConnectionUnblocked);
            }
            self.blocked_sent = alarm;
        }
        alarm && self.has_published
    }

    /// Whether the connection has published: while the alarm is on, such a connection is
    /// not read from.
    pub fn has_published(&self) -> bool {
        self.has_published
    }

    /// The reader stopped reading on purpose (a resource alarm): silence is not the client's
    /// fault, so it does not count as missed heartbeats.
    pub fn reading_paused(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// Closes the connection from the broker's side (shutdown, management API): 320.
    pub fn force_close(&mut self, reason: &str, now: Instant) {
        if matches!(
            self.state,
            ServerState::Closed | ServerState::Closing | ServerState::SilentClose
        ) {
            return;
        }
        let error = AmqpError::new(ReplyCode::CONNECTION_FORCED, reason);
        self.connection_error(error, 0, 0, now);
    }

    /// Answers a protocol header we do not speak with the one we do, and hangs up
    /// (spec 4.2.2).
    fn refuse_protocol(&mut self) {
        self.outbox.send(&Frame::ProtocolHeader(
            amqp_codec::ProtocolHeader::AMQP_0_9_1,
        ));
        self.state = ServerState::Closed;
    }

    /// RabbitMQ's answer to a client it does not trust yet (a refused handshake, a frame
    /// error): no close frame; the socket is closed [`SILENT_CLOSE_DELAY`] later, and nothing
    /// more is read meanwhile.
    fn silent_close(&mut self, now: Instant) {
        if self.state != ServerState::Closed {
            self.state = ServerState::SilentClose;
            self.closing_since = Some(now);
        }
        self.cleanup();
    }

    // ---- frames -------------------------------------------------------------------------

    fn on_protocol_header(&mut self, header: [u8; 8]) {
        match header {
            // 0-9-1, and 0-9 (RabbitMQ serves it as 0-9-1; connection.start says 0-9).
            [b'A', b'M', b'Q', b'P', 0, 0, 9, 1] | [b'A', b'M', b'Q', b'P', 1, 1, 0, 9] => {
                self.send_start();
                self.state = ServerState::AwaitingStartOk;
            }
            _ => self.refuse_protocol(),
        }
    }

    /// One frame whose framing is sound, handled as RabbitMQ's reader does: by the state,
    /// the channel and what the frame turns out to be.
    fn handle_raw_frame(&mut self, raw: RawFrame, now: Instant) {
        if matches!(self.state, ServerState::Closing) {
            // Closing: only connection.close and close-ok on channel 0 count.
            if raw.channel == 0 && raw.kind == FrameType::METHOD.0 {
                match decode_payload(FrameType(raw.kind), 0, raw.payload, &self.limits) {
                    Ok(Frame::Method(_, Method::ConnectionClose(_))) => {
                        self.outbox.send_method(0, ConnectionCloseOk);
                    }
                    Ok(Frame::Method(_, Method::ConnectionCloseOk(_))) => {
                        self.state = ServerState::Closed;
                        self.cleanup();
                    }
                    _ => {}
                }
            }
            return;
        }
        let frame = match analyze_frame(&raw, &self.limits) {
            Analyzed::Frame(frame) => frame,
            Analyzed::Unknown => {
                let error = AmqpError::new(
                    ReplyCode::FRAME_ERROR,
                    format!("{}: unknown_frame", frame_description(&raw)),
                );
                return self.fail(error, 0, 0, now);
            }
            Analyzed::UnknownMethod => {
                // RabbitMQ's reader crashes on an unknown class or method id: the socket is
                // closed at once, without a close frame.
                tracing::warn!(connection = self.id, peer = %self.peer, "unknown method in a frame: closing");
                self.state = ServerState::Closed;
                self.cleanup();
                return;
            }
            Analyzed::Undecodable(class_id, method_id, arguments) => {
                let error = AmqpError::new(
                    ReplyCode::FRAME_ERROR,
                    format!("cannot decode {}", erlang_binary_w(&arguments)),
                );
                return self.fail(error, class_id, method_id, now);
            }
            Analyzed::BadProperties(error) => {
                let error = AmqpError::new(error.reply_code(), error.to_string());
                return self.fail(error, BasicPublish::CLASS_ID, BasicPublish::METHOD_ID, now);
            }
        };
        match (raw.channel, frame) {
            (_, ChannelFrame::Heartbeat) if raw.channel == 0 => {}
            (0, ChannelFrame::Method(method)) => {
                self.send_acks_due();
                self.handle_connection_method(method, now)
            }
            (0, _) => self.unexpected_frame(&raw, now),
            (_, _) if self.state != ServerState::Open => self.unexpected_frame(&raw, now),
            (_, ChannelFrame::Heartbeat) => self.unexpected_frame(&raw, now),
            (id, frame) => self.handle_channel_frame(id, frame, now),
        }
    }

    /// RabbitMQ's `unexpected_frame`: 505 `type T, all octets = <<...>>`.
    fn unexpected_frame(&mut self, raw: &RawFrame, now: Instant) {
        let error = AmqpError::new(ReplyCode::UNEXPECTED_FRAME, frame_description(raw));
        self.fail(error, 0, 0, now);
    }

    /// A connection error, answered as RabbitMQ answers it in the current state: with
    /// connection.close once open (and while opening), silently during the handshake.
    fn fail(&mut self, error: AmqpError, class_id: u16, method_id: u16, now: Instant) {
        match self.state {
            ServerState::Open | ServerState::AwaitingOpen => {
                self.connection_error(error, class_id, method_id, now)
            }
            ServerState::Closing | ServerState::SilentClose | ServerState::Closed => {}
            _ => {
                tracing::info!(connection = self.id, peer = %self.peer, "handshake refused: {error}");
                self.silent_close(now);
            }
        }
    }

    fn send_start(&mut self) {
        let mut capabilities = FieldTable::new();
        for capability in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities.insert(capability, true);
        }
        let mut properties = FieldTable::new();
        properties.insert("capabilities", capabilities);
        properties.insert("cluster_name", "mini-broker@localhost");
        properties.insert("copyright", "Copyright (c) the amqp-rs authors");
        properties.insert(
            "information",
            "mini-broker: a single-node AMQP 0-9-1 broker for learning and testing",
        );
        properties.insert("platform", "Rust");
        properties.insert("product", "mini-broker");
        properties.insert("version", env!("CARGO_PKG_VERSION"));
        let start = ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: properties,
            mechanisms: "AMQPLAIN PLAIN".into(),
            locales: "en_US".into(),
        };
        self.outbox.send_method(0, start);
    }

    fn handle_connection_method(&mut self, method: Method, now: Instant) {
        let (class_id, method_id) = (method.class_id(), method.method_id());
        let result = match (self.state, method) {
            (ServerState::AwaitingStartOk, Method::ConnectionStartOk(start_ok)) => {
                self.on_start_ok(start_ok, now)
            }
            (ServerState::AwaitingTuneOk, Method::ConnectionTuneOk(tune_ok)) => {
                self.on_tune_ok(tune_ok)
            }
            (ServerState::AwaitingOpen, Method::ConnectionOpen(open)) => self.on_open(open),
            (ServerState::Open, Method::ConnectionClose(_)) => {
                // Release everything first (exclusive queues, unacked messages), so that
                // whoever hears close-ok sees the connection's effects complete.
                self.state = ServerState::Closed;
                self.cleanup();
                self.outbox.send_method(0, ConnectionCloseOk);
                Ok(())
            }
            (ServerState::Open, Method::ConnectionUpdateSecret(_)) => {
                self.outbox.send_method(0, ConnectionUpdateSecretOk);
                Ok(())
            }
            // RabbitMQ: any other method on channel 0 (channel.open, a second tune-ok, a
            // close during the handshake) is a channel error naming the connection's state.
            (state, _) => Err(AmqpError::channel_error(format!(
                "unexpected method in connection state {}",
                rabbitmq_state_name(state)
            ))),
        };
        if let Err(error) = result {
            self.fail(error, class_id, method_id, now);
        }
    }

    fn on_start_ok(&mut self, start_ok: ConnectionStartOk, now: Instant) -> Result<(), AmqpError> {
        // A copy: the decoded table's strings are slices of the read buffer, and would keep
        // it allocated for as long as the connection lives.
        self.client_properties = start_ok.client_properties.detached();
        if let Some(FieldValue::Table(capabilities)) = self.client_properties.get("capabilities") {
            let enabled = |name| matches!(capabilities.get(name), Some(FieldValue::Bool(true)));
            self.cancel_notify = enabled("consumer_cancel_notify");
            self.auth_failure_close = enabled("authentication_failure_close");
            self.blocked_notify = enabled("connection.blocked");
        }
        let mechanism = start_ok.mechanism.to_str_lossy().into_owned();
        let credentials = match mechanism.as_str() {
            "PLAIN" => amqp_codec::sasl::parse_plain(start_ok.response.as_bytes()),
            "AMQPLAIN" => amqp_codec::sasl::parse_amqplain(start_ok.response.as_bytes()),
            _ => {
                return Err(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{mechanism}'"
                )))
            }
        };
        let Some((user, password)) = credentials else {
            return Err(AmqpError::new(
                ReplyCode::SYNTAX_ERROR,
                format!("{mechanism}: malformed response"),
            ));
        };
        if !self.broker.authenticate(&user, &password) {
            tracing::warn!(
                connection = self.id,
                peer = %self.peer,
                "{mechanism} login refused: user '{user}' - invalid credentials"
            );
            if self.auth_failure_close {
                // The client asked to be told (authentication_failure_close): a close that
                // names no method, then the socket closes when the client answers.
                let error = AmqpError::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ));
                self.connection_error(error, 0, 0, now);
                return Ok(());
            }
            return Err(AmqpError::access_refused(format!(
                "{mechanism} login refused: user '{user}' - invalid credentials"
            )));
        }
        self.user = user;
        let config = &self.broker.config;
        self.outbox.send_method(
            0,
            ConnectionTune {
                channel_max: config.channel_max,
                frame_max: config.frame_max,
                heartbeat: config.heartbeat,
            },
        );
        self.state = ServerState::AwaitingTuneOk;
        Ok(())
    }

    /// connection.tune-ok, checked as RabbitMQ's `validate_negotiated_integer_value` does:
    /// a value below the minimum, or 0 ("no limit") or above what the server offered when
    /// the server offered a limit, is refused (silently, as all handshake errors are).
    fn on_tune_ok(&mut self, tune_ok: ConnectionTuneOk) -> Result<(), AmqpError> {
        let config = &self.broker.config;
        let negotiate = |field: &str, min: u32, server: u32, client: u32| {
            let detail = if client == 0 { " (no limit)" } else { "" };
            if client != 0 && client < min {
                Err(AmqpError::not_allowed(format!(
                    "negotiated {field} = {client}{detail} is lower than the minimum allowed value ({min})"
                )))
            } else if server != 0 && (client == 0 || client > server) {
                Err(AmqpError::not_allowed(format!(
                    "negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
                )))
            } else {
                Ok(())
            }
        };
        negotiate(
            "frame_max",
            amqp_codec::FRAME_MIN_SIZE,
            config.frame_max,
            tune_ok.frame_max,
        )?;
        negotiate(
            "channel_max",
            1,
            u32::from(config.channel_max),
            u32::from(tune_ok.channel_max),
        )?;
        self.tune = Tune {
            channel_max: tune_ok.channel_max,
            frame_max: tune_ok.frame_max,
            heartbeat: tune_ok.heartbeat,
        };
        self.limits = Limits::with_frame_max(tune_ok.frame_max);
        self.outbox.set_frame_max(tune_ok.frame_max);
        self.state = ServerState::AwaitingOpen;
        Ok(())
    }

    fn on_open(&mut self, open: ConnectionOpen) -> Result<(), AmqpError> {
        let name = open.virtual_host.to_str_lossy().into_owned();
        let Some(vhost) = self.broker.vhost(&name) else {
            return Err(AmqpError::not_allowed(format!("vhost {name} not found")));
        };
        if !self.broker.may_access(&self.user, &name) {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{name}' refused for user '{}'",
                self.user
            )));
        }
        self.vhost = Some(vhost);
        self.permit = Permit::new(self.broker.permissions.clone(), &self.user, &name);
        self.outbox.send_method(0, ConnectionOpenOk);
        self.state = ServerState::Open;
        let info = Arc::new(ConnectionInfo {
            id: self.id,
            name: format!("{} -> {}", self.peer, self.local),
            peer: self.peer,
            user: self.user.clone(),
            vhost: name,
            client_properties: self.client_properties.clone(),
            tune: self.tune,
            connected_at: SystemTime::now(),
            channels: Mutex::new(Default::default()),
            force_close: Default::default(),
            force_close_reason: Mutex::new(None),
        });
        self.broker.connections.insert(info.clone());
        self.info = Some(info);
        Ok(())
    }

    /// Sends connection.close and waits (in [`ServerState::Closing`]) for close-ok.
    fn connection_error(&mut self, error: AmqpError, class_id: u16, method_id: u16, now: Instant) {
        if !matches!(error.code, ReplyCode::CONNECTION_FORCED) {
            tracing::info!(connection = self.id, peer = %self.peer, "closing connection: {error}");
        }
        self.send_acks_due();
        self.outbox.send_method(
            0,
            ConnectionClose {
                reply_code: error.code.0,
                reply_text: truncate_reply_text(&error.text),
                class_id,
                method_id,
            },
        );
        self.state = ServerState::Closing;
        self.closing_since = Some(now);
        self.cleanup();
    }

    /// Releases everything the connection holds: unacked messages go back to their queues,
    /// consumers are cancelled, exclusive queues are deleted. Safe to call more than once.
    fn cleanup(&mut self) {
        let channels: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in channels {
            self.release_channel(id);
        }
        if let Some(vhost) = self.vhost.clone() {
            for queue in std::mem::take(&mut self.exclusive_queues) {
                let (_, consumers) = vhost.remove_queue(&queue);
                notify_cancelled(consumers);
            }
        }
        if let Some(info) = self.info.take() {
            self.broker.connections.remove(info.id);
        }
    }

    // ---- channels -----------------------------------------------------------------------

    fn handle_channel_frame(&mut self, id: ChannelId, frame: ChannelFrame, now: Instant) {
        let Some(channel) = self.channels.get_mut(&id) else {
            // RabbitMQ starts a channel on its first frame, counted against channel_max
            // (the count of open channels, not the channel number); only channel.open may
            // come first.
            let open = self.channels.len();
            if self.tune.channel_max != 0 && open >= usize::from(self.tune.channel_max) {
                let error = AmqpError::not_allowed(format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.tune.channel_max
                ));
                return self.connection_error(error, 0, 0, now);
            }
            match frame {
                ChannelFrame::Method(Method::ChannelOpen(_)) => self.open_channel(id),
                ChannelFrame::Method(method) => {
                    let error = AmqpError::channel_error("expected 'channel.open'");
                    self.connection_error(error, method.class_id(), method.method_id(), now);
                }
                _ => {
                    let error = AmqpError::new(
                        ReplyCode::UNEXPECTED_FRAME,
                        "expected method frame, got non method frame instead",
                    );
                    self.connection_error(error, 0, 0, now);
                }
            }
            return;
        };
        if channel.closing {
            // Only close and close-ok count once we closed the channel (spec 1.5.2.5).
            match frame {
                ChannelFrame::Method(Method::ChannelCloseOk(_)) => {
                    self.channels.remove(&id);
                    self.unregister_channel(id);
                }
                ChannelFrame::Method(Method::ChannelClose(_)) => {
                    self.outbox.send_method(id, ChannelCloseOk);
                }
                _ => {}
            }
            return;
        }
        // Content assembly, with rabbit_command_assembler's checks and texts.
        let (expected_class, expected_method) = match channel.expect {
            Expect::Method => (0, 0),
            Expect::Header(class_id, method_id) | Expect::Body(class_id, method_id) => {
                (class_id, method_id)
            }
        };
        let out_of_order = match (channel.expect, &frame) {
            (Expect::Method, ChannelFrame::Method(_)) => None,
            (Expect::Method, _) => Some((
                "expected method frame, got non method frame instead".to_owned(),
                0,
                0,
            )),
            (Expect::Header(..), ChannelFrame::Header(..)) => None,
            (Expect::Header(..), ChannelFrame::OddHeader { class_id, weight: 0 })
                if *class_id != expected_class =>
            {
                Some((
                    format!(
                        "expected content header for class {expected_class}, got one for class {class_id} instead"
                    ),
                    expected_class,
                    expected_method,
                ))
            }
            (Expect::Header(..), _) => Some((
                format!(
                    "expected content header for class {expected_class}, got non content header frame instead"
                ),
                expected_class,
                expected_method,
            )),
            (Expect::Body(..), ChannelFrame::Body(_)) => None,
            (Expect::Body(..), _) => Some((
                "expected content body, got non content body frame instead".to_owned(),
                expected_class,
                expected_method,
            )),
        };
        if let Some((text, class_id, method_id)) = out_of_order {
            let error = AmqpError::new(ReplyCode::UNEXPECTED_FRAME, text);
            return self.connection_error(error, class_id, method_id, now);
        }
        if let ChannelFrame::Method(method) = &frame {
            if !matches!(method, Method::BasicPublish(_)) {
                // Confirms of earlier publishes go out before the answer to anything else.
                channel.send_acks_due(id, &self.outbox);
            }
        }
        let fed = match frame {
            ChannelFrame::Method(method) => {
                if method.has_content() {
                    channel.expect = Expect::Header(method.class_id(), method.method_id());
                }
                channel.assembler.feed_method(method)
            }
            ChannelFrame::Header(header) => {
                channel.expect = Expect::Body(expected_class, expected_method);
                channel.assembler.feed_header(header)
            }
            ChannelFrame::Body(body) => channel.assembler.feed_body(body),
            ChannelFrame::OddHeader { .. } | ChannelFrame::Heartbeat => Ok(None),
        };
        match fed {
            Ok(Some(command)) => {
                channel.expect = Expect::Method;
                let (class_id, method_id) = (command.method.class_id(), command.method.method_id());
                if let Err(error) = self.handle_command(id, command, now) {
                    if error.is_connection_error() {
                        self.connection_error(error, class_id, method_id, now);
                    } else {
                        self.channel_error(id, error, class_id, method_id);
                    }
                }
            }
            Ok(None) => {}
            Err(err) => {
                channel.expect = Expect::Method;
                channel.assembler = ContentAssembler::new(self.broker.config.max_message_size);
                let error = AmqpError::new(err.reply_code(), err.to_string());
                if error.is_connection_error() {
                    self.connection_error(error, expected_class, expected_method, now);
                } else {
                    // A message over max_message_size: 406, the channel closes.
                    self.channel_error(id, error, expected_class, expected_method);
                }
            }
        }
    }

    fn open_channel(&mut self, id: ChannelId) {
        let link = Arc::new(
            ChannelLink::new(id, self.id, self.outbox.clone(), self.cancel_notify)
                .with_stats(self.broker.stats.clone()),
        );
        self.channels.insert(
            id,
            ServerChannel {
                link: link.clone(),
                assembler: ContentAssembler::new(self.broker.config.max_message_size),
                expect: Expect::Method,
                closing: false,
                consumers: HashMap::new(),
                prefetch_count: 0,
                confirm_seq: None,
                confirms_in_store: false,
                confirms_unsent: Arc::new(AtomicU64::new(0)),
                acks_due: None,
                tx: None,
                last_declared_queue: ShortString::default(),
            },
        );
        self.outbox.send_method(id, ChannelOpenOk);
        self.update_channel_info(id);
    }

    fn channel_error(&mut self, id: ChannelId, error: AmqpError, class_id: u16, method_id: u16) {
        tracing::debug!(
            connection = self.id,
            channel = id,
            "closing channel: {error}"
        );
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.send_acks_due(id, &self.outbox);
        }
        self.release_channel(id);
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.closing = true;
        }
        self.outbox.send_method(
            id,
            ChannelClose {
                reply_code: error.code.0,
                reply_text: truncate_reply_text(&error.text),
                class_id,
                method_id,
            },
        );
    }

    /// Requeues a channel's unacked messages and cancels its consumers; the channel entry
    /// stays (a closing channel waits for close-ok).
    fn release_channel(&mut self, id: ChannelId) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let link = channel.link.clone();
        let consumers: Vec<(ShortString, Arc<Queue>)> = channel.consumers.drain().collect();
        channel.tx = None;
        let unacked = link.close();
        let vhost = self.vhost.clone();
        let mut handed_over = Vec::new();
        for (tag, queue) in consumers {
            if queue.remove_consumer(&link, &tag) {
                if let Some(vhost) = &vhost {
                    vhost.remove_queue(&queue);
                }
            }
            if queue.settings.single_active_consumer {
                handed_over.push(queue);
            }
        }
        // A single active consumer taking over from one on this channel: a quorum queue
        // cancels the consumer before the channel's messages come back, so the new one gets
        // what was ready first; a classic queue requeues them first (as RabbitMQ 3.10 does).
        let (quorum, classic): (Vec<_>, Vec<_>) = handed_over
            .into_iter()
            .partition(|q| q.settings.queue_type == QueueType::Quorum);
        kick_queues(quorum, vhost.as_ref());
        requeue(&link, unacked, vhost.as_deref());
        kick_queues(classic, vhost.as_ref());
    }

    fn unregister_channel(&self, id: ChannelId) {
        if let Some(info) = &self.info {
            lock(&info.channels).remove(&id);
        }
    }

    fn update_channel_info(&self, id: ChannelId) {
        let (Some(info), Some(channel)) = (&self.info, self.channels.get(&id)) else {
            return;
        };
        lock(&info.channels).insert(
            id,
            ChannelInfo {
                link: channel.link.clone(),
                prefetch_count: channel.prefetch_count,
                confirm: channel.confirm_seq.is_some(),
                transactional: channel.tx.is_some(),
                consumer_count: channel.consumers.len(),
            },
        );
    }

    fn vhost(&self) -> Result<Arc<VHost>, AmqpError> {
        self.vhost
            .clone()
            .ok_or_else(|| AmqpError::command_invalid("no vhost open"))
    }

    /// The queue a method names: `""` is the channel's last declared queue (404 when it has
    /// declared none), as RabbitMQ expands it.
    fn queue_name(&mut self, id: ChannelId, name: &ShortString) -> Result<ShortString, AmqpError> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        let last = &self.channel(id)?.last_declared_queue;
        if last.is_empty() {
            return Err(AmqpError::not_found("no previously declared queue"));
        }
        Ok(last.clone())
    }

    fn channel(&mut self, id: ChannelId) -> Result<&mut ServerChannel, AmqpError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(|| AmqpError::channel_error(format!("channel {id} is not open")))
    }

    // ---- methods ------------------------------------------------------------------------

    fn handle_command(
        &mut self,
        id: ChannelId,
        command: Command<PublishedHeader>,
        now: Instant,
    ) -> Result<(), AmqpError> {
        let Command { method, content } = command;
        let vhost = self.vhost()?;
        let conn = self.id;
        match method {
            Method::ChannelClose(_) => {
                self.release_channel(id);
                self.channels.remove(&id);
                self.unregister_channel(id);
                self.outbox.send_method(id, ChannelCloseOk);
            }
            Method::ChannelOpen(_) => {
                return Err(AmqpError::channel_error("second 'channel.open' seen"));
            }
            Method::ChannelFlow(flow) => {
                // RabbitMQ 3.10 does not stop deliveries on request: a connection error.
                if !flow.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.channel(id)?;
                self.outbox.send_method(id, ChannelFlowOk { active: true });
            }
            Method::ChannelFlowOk(_) => {}

            Method::ExchangeDeclare(declare) => {
                let flags = ExchangeFlags {
                    passive: declare.passive,
                    durable: declare.durable,
                    auto_delete: declare.auto_delete,
                    internal: declare.internal,
                };
                self.permit.exchange_declare(
                    &vhost,
                    &declare.exchange,
                    &declare.kind,
                    declare.passive,
                    &declare.arguments,
                )?;
                vhost.declare_exchange(
                    &declare.exchange,
                    &declare.kind,
                    flags,
                    &declare.arguments,
                )?;
                if !declare.no_wait {
                    self.outbox.send_method(id, ExchangeDeclareOk);
                }
            }
            Method::ExchangeDelete(delete) => {
                self.permit.exchange_delete(&delete.exchange)?;
                vhost.delete_exchange(&delete.exchange, delete.if_unused)?;
                if !delete.no_wait {
                    self.outbox.send_method(id, ExchangeDeleteOk);
                }
            }
            Method::ExchangeBind(bind) => {
                self.permit.exchange_bind(&bind.destination, &bind.source)?;
                vhost.bind_exchange(
                    &bind.destination,
                    &bind.source,
                    &bind.routing_key,
                    &bind.arguments,
                    true,
                )?;
                if !bind.no_wait {
                    self.outbox.send_method(id, ExchangeBindOk);
                }
            }
            Method::ExchangeUnbind(unbind) => {
                self.permit
                    .exchange_bind(&unbind.destination, &unbind.source)?;
                vhost.bind_exchange(
                    &unbind.destination,
                    &unbind.source,
                    &unbind.routing_key,
                    &unbind.arguments,
                    false,
                )?;
                if !unbind.no_wait {
                    self.outbox.send_method(id, ExchangeUnbindOk);
                }
            }

            Method::QueueDeclare(declare) => {
                let flags = QueueFlags {
                    passive: declare.passive,
                    durable: declare.durable,
                    exclusive: declare.exclusive,
                    auto_delete: declare.auto_delete,
                };
                self.permit.queue_declare(
                    &vhost,
                    &declare.queue,
                    declare.passive,
                    &declare.arguments,
                )?;
                let permit = &mut self.permit;
                let declared = vhost.declare_queue_checked(
                    conn,
                    &declare.queue,
                    flags,
                    &declare.arguments,
                    &mut |name| permit.server_named_queue(name, &declare.arguments),
                )?;
                self.channel(id)?.last_declared_queue = declared.queue.name.clone();
                if declared.queue.exclusive_owner == Some(conn)
                    && !self
                        .exclusive_queues
                        .iter()
                        .any(|q| Arc::ptr_eq(q, &declared.queue))
                {
                    self.exclusive_queues.push(declared.queue.clone());
                }
                if !declare.no_wait {
                    self.outbox.send_method(
                        id,
                        QueueDeclareOk {
                            queue: declared.queue.name.clone(),
                            message_count: declared.message_count,
                            consumer_count: declared.consumer_count,
                        },
                    );
                }
            }
            Method::QueueBind(bind) => {
                // "" and "" mean the last declared queue, bound by its own name.
                let routing_key = if bind.queue.is_empty() && bind.routing_key.is_empty() {
                    self.channel(id)?.last_declared_queue.clone()
                } else {
                    bind.routing_key.clone()
                };
                let queue = self.queue_name(id, &bind.queue)?;
                self.permit.queue_bind(&queue, &bind.exchange)?;
                vhost.bind_queue(conn, &queue, &bind.exchange, &routing_key, &bind.arguments)?;
                if !bind.no_wait {
                    self.outbox.send_method(id, QueueBindOk);
                }
            }
            Method::QueueUnbind(unbind) => {
                let queue = self.queue_name(id, &unbind.queue)?;
                self.permit.queue_bind(&queue, &unbind.exchange)?;
                vhost.unbind_queue(
                    conn,
                    &queue,
                    &unbind.exchange,
                    &unbind.routing_key,
                    &unbind.arguments,
                )?;
                self.outbox.send_method(id, QueueUnbindOk);
            }
            Method::QueuePurge(purge) => {
                let queue = self.queue_name(id, &purge.queue)?;
                self.permit.read_queue(&queue)?;
                let message_count = vhost.purge_queue(conn, &queue)?;
                if !purge.no_wait {
                    self.outbox.send_method(id, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(delete) => {
                let queue = self.queue_name(id, &delete.queue)?;
                self.permit.queue_delete(&queue)?;
                let (message_count, consumers) =
                    vhost.delete_queue(conn, &queue, delete.if_unused, delete.if_empty)?;
                self.exclusive_queues.retain(|q| q.name != queue);
                self.forget_consumers_of(&queue);
                notify_cancelled(consumers);
                if !delete.no_wait {
                    self.outbox.send_method(id, QueueDeleteOk { message_count });
                }
            }

            Method::BasicQos(qos) => {
                if qos.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!(
                        "prefetch_size!=0 ({})",
                        qos.prefetch_size
                    )));
                }
                let channel = self.channel(id)?;
                if qos.global {
                    lock(&channel.link.state).global_prefetch = qos.prefetch_count;
                } else {
                    channel.prefetch_count = qos.prefetch_count;
                }
                self.outbox.send_method(id, BasicQosOk);
                self.update_channel_info(id);
                self.kick_channel_queues(id);
            }
            Method::BasicConsume(consume) => self.consume(id, consume, &vhost)?,
            Method::BasicCancel(cancel) => {
                let channel = self.channel(id)?;
                let link = channel.link.clone();
                if let Some(queue) = channel.consumers.remove(&cancel.consumer_tag) {
                    if queue.remove_consumer(&link, &cancel.consumer_tag) {
                        vhost.remove_queue(&queue);
                    }
                    if queue.settings.single_active_consumer {
                        // The consumer that took over, if any, gets what is ready.
                        kick_queues([queue], Some(&vhost));
                    }
                }
                if !cancel.no_wait {
                    self.outbox.send_method(
                        id,
                        BasicCancelOk {
                            consumer_tag: cancel.consumer_tag,
                        },
                    );
                }
                self.update_channel_info(id);
            }
            Method::BasicPublish(publish) => {
                let content = content
                    .ok_or_else(|| AmqpError::command_invalid("basic.publish without content"))?;
                if publish.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.permit.publish(&publish.exchange)?;
                self.has_published = true;
                let channel = self.channel(id)?;
                let transactional = channel.tx.is_some();
                if transactional {
                    // Checked now, as RabbitMQ checks, applied on commit.
                    vhost.check_publish(&publish.exchange)?;
                    check_properties(&content.header, &self.user)?;
                    let tx = self
                        .channel(id)?
                        .tx
                        .get_or_insert_with(Transaction::default);
                    tx.publishes.push(Command {
                        method: publish.into(),
                        content: Some(content),
                    });
                    return Ok(());
                }
                self.publish(id, publish, content, &vhost, now)?;
            }
            Method::BasicGet(get) => self.get(id, get, &vhost)?,
            Method::BasicAck(ack) => {
                if let Some(tx) = &mut self.channel(id)?.tx {
                    tx.acks.push(TxAck::Ack {
                        tag: ack.delivery_tag,
                        multiple: ack.multiple,
                    });
                } else {
                    self.ack(id, ack.delivery_tag, ack.multiple)?;
                }
            }
            Method::BasicNack(nack) => {
                if let Some(tx) = &mut self.channel(id)?.tx {
                    tx.acks.push(TxAck::Nack {
                        tag: nack.delivery_tag,
                        multiple: nack.multiple,
                        requeue: nack.requeue,
                    });
                } else {
                    self.reject(id, nack.delivery_tag, nack.multiple, nack.requeue)?;
                }
            }
            Method::BasicReject(reject) => {
                if let Some(tx) = &mut self.channel(id)?.tx {
                    tx.acks.push(TxAck::Nack {
                        tag: reject.delivery_tag,
                        multiple: false,
                        requeue: reject.requeue,
                    });
                } else {
                    self.reject(id, reject.delivery_tag, false, reject.requeue)?;
                }
            }
            Method::BasicRecover(BasicRecover { requeue: false })
            | Method::BasicRecoverAsync(BasicRecoverAsync { requeue: false }) => {
                return Err(AmqpError::not_implemented("requeue=false"));
            }
            Method::BasicRecover(_) | Method::BasicRecoverAsync(_) => {
                let link = self.channel(id)?.link.clone();
                let unacked = std::mem::take(&mut lock(&link.state).unacked);
                return_to_queues(&link, unacked.into_values().collect(), Some(&vhost));
                if matches!(method, Method::BasicRecover(_)) {
                    self.outbox.send_method(id, BasicRecoverOk);
                }
            }

            Method::ConfirmSelect(select) => {
                let channel = self.channel(id)?;
                if channel.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                channel.confirm_seq.get_or_insert(1);
                if !select.nowait {
                    self.outbox.send_method(id, ConfirmSelectOk);
                }
                self.update_channel_info(id);
            }
            Method::TxSelect(_) => {
                let channel = self.channel(id)?;
                if channel.confirm_seq.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                channel.tx.get_or_insert_with(Transaction::default);
                self.outbox.send_method(id, TxSelectOk);
                self.update_channel_info(id);
            }
            Method::TxCommit(_) => {
                let channel = self.channel(id)?;
                let tx = channel.tx.as_mut().ok_or_else(|| {
                    AmqpError::precondition_failed("channel is not transactional")
                })?;
                let work = std::mem::take(tx);
                for command in work.publishes {
                    if let (Method::BasicPublish(publish), Some(content)) =
                        (command.method, command.content)
                    {
                        self.publish(id, publish, content, &vhost, now)?;
                    }
                }
                for ack in work.acks {
                    match ack {
                        TxAck::Ack { tag, multiple } => self.ack(id, tag, multiple)?,
                        TxAck::Nack {
                            tag,
                            multiple,
                            requeue,
                        } => self.reject(id, tag, multiple, requeue)?,
                    }
                }
                self.outbox.send_method(id, TxCommitOk);
            }
            Method::TxRollback(_) => {
                let channel = self.channel(id)?;
                let tx = channel.tx.as_mut().ok_or_else(|| {
                    AmqpError::precondition_failed("channel is not transactional")
                })?;
                *tx = Transaction::default();
                self.outbox.send_method(id, TxRollbackOk);
            }
            // What a client has no business sending on a channel (RabbitMQ's catch-all).
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        }
        Ok(())
    }

    fn consume(
        &mut self,
        id: ChannelId,
        consume: BasicConsume,
        vhost: &Arc<VHost>,
    ) -> Result<(), AmqpError> {
        // A tag in use on the channel is refused first, before the queue is looked up or
        // the read permission checked, as RabbitMQ's channel does. (A generated tag is new.)
        let tag = &consume.consumer_tag;
        if !tag.is_empty() && self.channel(id)?.consumers.contains_key(tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let name = self.queue_name(id, &consume.queue)?;
        self.permit.read_queue(&name)?;
        let queue = vhost.usable_queue(&name, self.id)?;
        let resource = queue_resource(&queue.name.to_str_lossy(), &vhost.name);
        let priority = consumer_priority(&consume.arguments, &resource)?;
        if queue.consumer_conflict(consume.exclusive) {
            return Err(AmqpError::access_refused(format!(
                "{resource} in exclusive use"
            )));
        }
        let channel = self.channel(id)?;
        let global_prefetch = lock(&channel.link.state).global_prefetch;
        if queue.settings.queue_type == QueueType::Quorum && global_prefetch > 0 {
            return Err(AmqpError::not_implemented(format!(
                "{resource} does not support global qos"
            )));
        }
        // The tag and the arguments outlive the frame: detached, so that they do not keep
        // the read buffer it is a slice of alive.
        let tag = if consume.consumer_tag.is_empty() {
            generated_consumer_tag()
        } else {
            consume.consumer_tag.detached()
        };
        channel.consumers.insert(tag.clone(), queue.clone());
        let consumer = QueueConsumer {
            tag: tag.clone(),
            link: channel.link.clone(),
            no_ack: consume.no_ack,
            exclusive: consume.exclusive,
            prefetch: channel.prefetch_count,
            unacked: 0,
            priority,
            arguments: consume.arguments.detached(),
            active: true,
            served: 0,
        };
        // consume-ok goes out before the first delivery.
        if !consume.no_wait {
            self.outbox
                .send_method(id, BasicConsumeOk { consumer_tag: tag });
        }
        let mut dead = DeadLetters::new();
        queue.add_consumer(consumer, &mut dead);
        dead_letter(vhost, &queue, dead);
        self.update_channel_info(id);
        Ok(())
    }

    fn publish(
        &mut self,
        id: ChannelId,
        publish: BasicPublish,
        content: amqp_codec::Content<PublishedHeader>,
        vhost: &Arc<VHost>,
        now: Instant,
    ) -> Result<(), AmqpError> {
        let amqp_codec::Content { mut header, body } = content;
        // RabbitMQ checks the exchange (404, 403) before the properties: when a property
        // is refused, look the exchange up first to give the same answer.
        let per_message_ttl = match check_properties(&header, &self.user) {
            Ok(ttl) => ttl,
            Err(error) => {
                vhost.check_publish(&publish.exchange)?;
                return Err(error);
            }
        };
        // Sender-selected distribution: CC and BCC headers add routing keys; BCC is removed
        // from the message. Without them (nearly always) nothing is allocated here.
        let extra_keys = match routing_headers(header.headers()) {
            Ok(keys) => keys,
            Err(error) => {
                vhost.check_publish(&publish.exchange)?;
                return Err(error);
            }
        };
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        let routed = match &extra_keys {
            None => vhost.route(
                &publish.exchange,
                &publish.routing_key,
                header.headers(),
                true,
                &mut queues,
            ),
            Some(keys) => {
                let mut all = Vec::with_capacity(keys.len() + 1);
                all.push(publish.routing_key.clone());
                all.extend(keys.iter().cloned());
                header.remove_bcc();
                vhost.route_keys(&publish.exchange, &all, header.headers(), true, &mut queues)
            }
        };
        if let Err(error) = routed {
            self.route_buf = queues;
            return Err(error);
        }
        // The properties go on as they came, unless the BCC header was taken out.
        let message = Arc::new(MessageContent::from_wire(
            publish.exchange.as_bytes(),
            publish.routing_key.as_bytes(),
            &header.properties_wire(),
            header.delivery_mode(),
            header.priority(),
            body,
        ));
        let stats = &self.broker.stats;
        MessageStats::add(&stats.published, 1);
        if !queues.is_empty() {
            MessageStats::add(&stats.routed, 1);
        }
        if queues.is_empty() && publish.mandatory {
            MessageStats::add(&stats.returned, 1);
            let method = ContentMethod::Return {
                reply_code: ReplyCode::NO_ROUTE.0,
                reply_text: b"NO_ROUTE",
            };
            self.outbox.send_content(id, &method, &message);
        }
        let mut rejected = false;
        let mut header = None;
        let mut stored_in = None;
        for queue in &queues {
            let ttl = match (queue.settings.message_ttl, per_message_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let persist_id = match persist(queue, &message, &mut header) {
                Ok(persist_id) => persist_id,
                Err(()) => {
                    // The disk failed: refuse (nack) rather than accept what cannot be kept.
                    rejected = true;
                    continue;
                }
            };
            if persist_id.is_some() {
                stored_in = queue.store.clone();
            }
            let queued = QueuedMessage {
                content: message.clone(),
                redelivered: false,
                // A TTL too long to represent never expires.
                expires_at: ttl.and_then(|ttl| now.checked_add(ttl)).map(Deadline::at),
                persist_id,
            };
            let mut dead = DeadLetters::new();
            if queue.publish(queued, &mut dead) == Enqueued::Rejected {
                rejected = true;
                if let (Some(store), Some(id)) = (&queue.store, persist_id) {
                    store.ack(id);
                }
            }
            dead_letter(vhost, queue, dead);
        }
        queues.clear();
        self.route_buf = queues;
        let outbox = self.outbox.clone();
        let mut confirmed = false;
        let channel = self.channel(id)?;
        if let Some(seq) = channel.confirm_seq.as_mut() {
            let delivery_tag = *seq;
            *seq += 1;
            confirmed = true;
            // A nack must not overtake the store's pending confirms of this channel.
            let store = stored_in.or_else(|| {
                (rejected && channel.confirms_in_store)
                    .then(|| vhost.store.clone())
                    .flatten()
            });
            if let Some(store) = store {
                // Confirmed only once on disk: the store's writer sends it after the fsync,
                // after the acks due before it.
                channel.send_acks_due(id, &outbox);
                channel.confirms_in_store = true;
                channel.confirms_unsent.fetch_add(1, Ordering::Relaxed);
                store.confirm(Confirm {
                    outbox,
                    channel: id,
                    delivery_tag,
                    nack: rejected,
                    unsent: channel.confirms_unsent.clone(),
                });
            } else if rejected {
                // RabbitMQ coalesces nacks: with nothing unconfirmed before it, a lone nack
                // goes out with multiple=true (and its nacks always say requeue=true).
                channel.send_acks_due(id, &outbox);
                outbox.send_method(
                    id,
                    BasicNack {
                        delivery_tag,
                        multiple: true,
                        requeue: true,
                    },
                );
            } else if channel.ack_due(delivery_tag) {
                self.channels_with_acks_due.push(id);
            }
        }
        if confirmed {
            MessageStats::add(&self.broker.stats.confirmed, 1);
        }
        Ok(())
    }

    fn get(&mut self, id: ChannelId, get: BasicGet, vhost: &Arc<VHost>) -> Result<(), AmqpError> {
        let name = self.queue_name(id, &get.queue)?;
        self.permit.read_queue(&name)?;
        let queue = vhost.usable_queue(&name, self.id)?;
        let mut dead = DeadLetters::new();
        let fetched = queue.get(&mut dead);
        dead_letter(vhost, &queue, dead);
        let link = self.channel(id)?.link.clone();
        match fetched {
            Some((message, remaining)) => {
                MessageStats::add(&self.broker.stats.delivered, 1);
                if message.redelivered {
                    MessageStats::add(&self.broker.stats.redelivered, 1);
                }
                if let (Some(store), Some(id)) = (&queue.store, message.persist_id) {
                    if get.no_ack {
                        store.ack(id);
                    } else if !message.redelivered {
                        store.delivered(id);
                    }
                }
                let tag = link.record_get(&queue, &message, get.no_ack);
                if !get.no_ack {
                    queue.count_unacked(1);
                }
                let method = ContentMethod::GetOk {
                    delivery_tag: tag,
                    redelivered: message.redelivered,
                    message_count: remaining as u32,
                };
                self.outbox.send_content(id, &method, &message.content);
            }
            None => self.outbox.send_method(id, BasicGetEmpty),
        }
        Ok(())
    }

    fn ack(&mut self, id: ChannelId, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        let link = self.channel(id)?.link.clone();
        let acked = link
            .take_unacked(tag, multiple)
            .ok_or_else(|| AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))?;
        MessageStats::add(&self.broker.stats.acknowledged, acked.len() as u64);
        settle(&link, acked, self.vhost.as_deref(), None);
        Ok(())
    }

    fn reject(
        &mut self,
        id: ChannelId,
        tag: u64,
        multiple: bool,
        requeue_them: bool,
    ) -> Result<(), AmqpError> {
        let link = self.channel(id)?.link.clone();
        let rejected = link
            .take_unacked(tag, multiple)
            .ok_or_else(|| AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))?;
        if requeue_them {
            return_to_queues(&link, rejected, self.vhost.as_deref());
        } else {
            settle(&link, rejected, self.vhost.as_deref(), Some("rejected"));
        }
        Ok(())
    }

    /// Lets the queues this channel consumes from dispatch again (after qos or flow changed).
    fn kick_channel_queues(&mut self, id: ChannelId) {
        let Some(channel) = self.channels.get(&id) else {
            return;
        };
        let queues: Vec<Arc<Queue>> = channel.consumers.values().cloned().collect();
        kick_queues(queues, self.vhost.as_ref());
    }

    /// Forgets this connection's consumers of a deleted queue.
    fn forget_consumers_of(&mut self, queue: &ShortString) {
        for channel in self.channels.values_mut() {
            channel.consumers.retain(|_, q| &q.name != queue);
        }
    }
}

/// Settles deliveries: acked (`dead_reason` None), or rejected without requeue and then
/// dead-lettered with `dead_reason`. Runs of the same queue and consumer are settled at once.
fn settle(
    link: &Arc<ChannelLink>,
    deliveries: Vec<Unacked>,
    vhost: Option<&VHost>,
    dead_reason: Option<&'static str>,
) {
    let mut index = 0;
    while index < deliveries.len() {
        let first = &deliveries[index];
        let run = deliveries[index..]
            .iter()
            .take_while(|d| {
                Arc::ptr_eq(&d.queue, &first.queue) && d.consumer_tag == first.consumer_tag
            })
            .count();
        let queue = first.queue.clone();
        if dead_reason.is_none() {
            queue.forget_stored(deliveries[index..index + run].iter().map(|d| &d.message));
        }
        let mut dead = DeadLetters::new();
        if let Some(reason) = dead_reason {
            for d in &deliveries[index..index + run] {
                dead.push((d.message.clone(), reason));
            }
        }
        queue.settle(link, first.consumer_tag.as_ref(), run, &mut dead);
        if let Some(vhost) = vhost {
            dead_letter(vhost, &queue, dead);
        }
        index += run;
    }
}

/// Puts deliveries back in their queues, in order, redelivered: what a closing channel does.
fn requeue(link: &Arc<ChannelLink>, deliveries: Vec<Unacked>, vhost: Option<&VHost>) {
    put_back(link, deliveries, vhost, false);
}

/// Returns rejected or nacked deliveries (requeue=true) and basic.recover's to their queues:
/// quorum queues take them at the back.
fn return_to_queues(link: &Arc<ChannelLink>, deliveries: Vec<Unacked>, vhost: Option<&VHost>) {
    put_back(link, deliveries, vhost, true);
}

fn put_back(
    link: &Arc<ChannelLink>,
    deliveries: Vec<Unacked>,
    vhost: Option<&VHost>,
    returned: bool,
) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<Unacked>)> = Vec::new();
    for delivery in deliveries {
        match by_queue
            .iter_mut()
            .find(|(q, _)| Arc::ptr_eq(q, &delivery.queue))
        {
            Some((_, list)) => list.push(delivery),
            None => by_queue.push((delivery.queue.clone(), vec![delivery])),
        }
    }
    for (queue, list) in by_queue {
        let mut dead = DeadLetters::new();
        if returned {
            queue.return_messages(link, list, &mut dead);
        } else {
            queue.requeue(link, list, &mut dead);
        }
        if let Some(vhost) = vhost {
            dead_letter(vhost, &queue, dead);
        }
    }
}

/// Routes messages a queue gave up to its dead-letter exchange, with RabbitMQ's `x-death`
/// header; without a dead-letter exchange they are dropped.
pub fn dead_letter(vhost: &VHost, queue: &Queue, dead: DeadLetters) {
    if dead.is_empty() {
        return;
    }
    queue.forget_stored(dead.iter().map(|(message, _)| message));
    let Some(exchange) = queue.settings.dead_letter_exchange.clone() else {
        return;
    };
    let now = Instant::now();
    let mut targets = Vec::new();
    for (message, reason) in dead {
        let content = &message.content;
        let mut properties = content.properties();
        let mut headers = properties.headers.take().unwrap_or_default();
        if queue.settings.queue_type == QueueType::Quorum {
            // The delivery count is a quorum queue's view of a delivery, not the message's.
            headers.remove("x-delivery-count");
        }
        // The message's routing keys: its own and its CC header's.
        let mut original_keys = vec![ShortString::new(Bytes::copy_from_slice(
            content.routing_key(),
        ))];
        if let Ok(Some(cc)) = routing_headers(Some(&headers)) {
            original_keys.extend(cc);
        }
        let routing_keys = match &queue.settings.dead_letter_routing_key {
            Some(key) => vec![key.clone()],
            None => original_keys.clone(),
        };
        add_x_death(
            &mut headers,
            queue,
            reason,
            content.exchange(),
            properties.expiration.as_ref(),
            &original_keys,
        );
        properties.headers = Some(sorted_table(&headers));
        if reason == "expired" {
            // The per-message TTL is what expired it; RabbitMQ removes it.
            properties.expiration = None;
        }
        let routing_key = routing_keys.first().cloned().unwrap_or_default();
        let dead_content = Arc::new(MessageContent::with_properties(
            exchange.as_bytes(),
            routing_key.as_bytes(),
            &properties,
            content.body_bytes(),
        ));
        targets.clear();
        if vhost
            .route_keys(
                &exchange,
                &routing_keys,
                properties.headers.as_ref(),
                false,
                &mut targets,
            )
            .is_err()
        {
            continue;
        }
        let deaths = match properties.headers.as_ref().and_then(|h| h.get("x-death")) {
            Some(FieldValue::Array(deaths)) => Some(deaths),
            _ => None,
        };
        for target in &targets {
            if reason != "rejected" && deaths.is_some_and(|d| is_cycle(&target.name, d)) {
                // A message that would die again in a queue it died in, with no client
                // rejection on the way, would cycle forever: RabbitMQ drops it.
                continue;
            }
            let mut header = None;
            let Ok(persist_id) = persist(target, &dead_content, &mut header) else {
                continue;
            };
            let queued = QueuedMessage {
                content: dead_content.clone(),
                redelivered: false,
                expires_at: target
                    .settings
                    .message_ttl
                    .and_then(|ttl| now.checked_add(ttl))
                    .map(Deadline::at),
                persist_id,
            };
            let mut more = DeadLetters::new();
            target.publish(queued, &mut more);
        }
    }
}

/// RabbitMQ's `is_cycle`: the message already died in `queue` (an entry of `x-death`, which
/// lists the newest first) and no death since then, that one included, was a rejection.
fn is_cycle(queue: &ShortString, deaths: &FieldArray) -> bool {
    let mut since = Vec::new();
    for death in deaths.iter() {
        let FieldValue::Table(entry) = death else {
            return false;
        };
        since.push(entry);
        let same_queue = matches!(entry.get("queue"), Some(FieldValue::LongString(q)) if q.as_bytes() == queue.as_bytes());
        if same_queue {
            return since.iter().all(|entry| {
                !matches!(entry.get("reason"), Some(FieldValue::LongString(r)) if r.as_bytes() == b"rejected")
            });
        }
    }
    false
}

/// A field table with its entries sorted by name, as RabbitMQ leaves a table it has set a
/// value in (`rabbit_misc:set_table_value`).
fn sorted_table(table: &FieldTable) -> FieldTable {
    let mut entries: Vec<(&ShortString, &FieldValue)> = table.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    entries
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Logs a persistent message entering a durable queue; returns its store id (None when
/// nothing needs storing), or Err when the store has failed. `header` caches the encoded
/// content header across the queues of one publish.
pub(crate) fn persist(
    queue: &Queue,
    content: &MessageContent,
    header: &mut Option<bytes::Bytes>,
) -> Result<Option<u64>, ()> {
    let Some(store) = &queue.store else {
        return Ok(None);
    };
    if !content.is_persistent() {
        return Ok(None);
    }
    if store.has_failed() {
        return Err(());
    }
    let header = header.get_or_insert_with(|| content.header_frame()).clone();
    let id = store.next_id();
    store.publish(PublishRecord {
        id,
        delivered: false,
        vhost: bytes::Bytes::copy_from_slice(queue.vhost.as_bytes()),
        queue: queue.name.bytes().clone(),
        exchange: Bytes::copy_from_slice(content.exchange()),
        routing_key: Bytes::copy_from_slice(content.routing_key()),
        header,
        body: content.body_bytes(),
    });
    Ok(Some(id))
}

/// Adds (or counts up) the `x-death` entry for this queue and reason, and the
/// `x-first-death-*` headers, as RabbitMQ records dead-lettering: the entry of this death
/// goes first; a first entry has RabbitMQ's field order (count, reason, queue, time,
/// exchange, routing-keys, original-expiration), later ones are sorted by name, as
/// RabbitMQ sorts them; counting up keeps the entry's first time.
fn add_x_death(
    headers: &mut FieldTable,
    queue: &Queue,
    reason: &'static str,
    exchange: &[u8],
    expiration: Option<&ShortString>,
    routing_keys: &[ShortString],
) {
    let exchange = String::from_utf8_lossy(exchange);
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(array)) => Some(array.0),
        _ => None,
    };
    let queue_name = queue.name.to_str_lossy();
    let matches = |entry: &FieldValue| match entry {
        FieldValue::Table(t) => {
            t.get("queue") == Some(&FieldValue::from(&*queue_name))
                && t.get("reason") == Some(&FieldValue::from(reason))
        }
        _ => false,
    };
    let entry = match deaths
        .as_mut()
        .and_then(|d| d.iter().position(matches).map(|at| d.remove(at)))
    {
        Some(FieldValue::Table(mut entry)) => {
            let count = match entry.get("count") {
                Some(FieldValue::I32(n)) => FieldValue::I32(n.saturating_add(1)),
                Some(FieldValue::I64(n)) => FieldValue::I64(n.saturating_add(1)),
                _ => FieldValue::I64(1),
            };
            entry.insert("count", count);
            sorted_table(&entry)
        }
        _ => {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut entry = FieldTable::new();
            entry.insert("count", FieldValue::I64(1));
            entry.insert("reason", reason);
            entry.insert("queue", &*queue_name);
            entry.insert("time", FieldValue::Timestamp(timestamp));
            entry.insert("exchange", &*exchange);
            let keys = routing_keys
                .iter()
                .map(|k| FieldValue::from(&*k.to_str_lossy()))
                .collect();
            entry.insert("routing-keys", FieldValue::Array(FieldArray(keys)));
            if let Some(expiration) = expiration {
                entry.insert("original-expiration", &*expiration.to_str_lossy());
            }
            if deaths.is_some() {
                sorted_table(&entry)
            } else {
                entry
            }
        }
    };
    let mut deaths = deaths.unwrap_or_default();
    deaths.insert(0, FieldValue::Table(entry));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-exchange", &*exchange);
        headers.insert("x-first-death-queue", &*queue_name);
        headers.insert("x-first-death-reason", reason);
    }
    headers.insert("x-death", FieldValue::Array(FieldArray(deaths)));
}

/// Lets queues dispatch again, dead-lettering what expired meanwhile.
fn kick_queues(queues: impl IntoIterator<Item = Arc<Queue>>, vhost: Option<&Arc<VHost>>) {
    for queue in queues {
        let mut dead = DeadLetters::new();
        queue.kick(&mut dead);
        if let Some(vhost) = vhost {
            dead_letter(vhost, &queue, dead);
        }
    }
}

/// A consumer's priority: its `x-priority` argument (any integer type), 0 without one. Any
/// other type is refused as RabbitMQ 3.10 refuses it: 406 `invalid arg 'x-priority' for
/// queue 'q' in vhost '/': "expected integer, got longstr"`.
fn consumer_priority(arguments: &FieldTable, resource: &str) -> Result<i64, AmqpError> {
    match arguments.get("x-priority") {
        None => Ok(0),
        Some(value) => integer_argument(value).ok_or_else(|| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-priority' for {resource}: \"expected integer, got {}\"",
                crate::error::field_type_name(value)
            ))
        }),
    }
}

/// Tells consumers of a deleted queue that they are gone (basic.cancel, RabbitMQ's consumer
/// cancel notification), if their client asked for it.
pub fn notify_cancelled(consumers: Vec<QueueConsumer>) {
    for consumer in consumers {
        if consumer.link.cancel_notify && !lock(&consumer.link.state).closed {
            consumer.link.outbox.send_method(
                consumer.link.id,
                BasicCancel {
                    consumer_tag: consumer.tag,
                    no_wait: true,
                },
            );
        }
    }
}

/// A server-generated consumer tag: `amq.ctag-` and 22 random characters, as RabbitMQ's.
fn generated_consumer_tag() -> ShortString {
    let name = generated_queue_name();
    let suffix = name
        .as_str()
        .and_then(|n| n.strip_prefix("amq.gen-"))
        .unwrap_or("");
    format!("amq.ctag-{suffix}").into()
}

/// Reply texts are short strings: cut at 255 bytes on a character boundary.
fn truncate_reply_text(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

// ---- framing --------------------------------------------------------------------------------

/// A frame as it came off the wire, its framing checked (size, end octet), its payload not
/// yet parsed.
struct RawFrame {
    kind: u8,
    channel: ChannelId,
    payload: Bytes,
}

/// Splits the next frame off `input`, checking its framing as RabbitMQ's reader does: a
/// payload larger than `frame_max` (RabbitMQ tolerates the 8 octets clients often get
/// wrong, its `FRAME_SIZE_FUDGE`, but names frame_max - 8 as the limit) or a bad end octet
/// is a 501 with RabbitMQ's text. Ok(None): more bytes are needed.
fn read_frame(input: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame>, AmqpError> {
    let Some(&[kind, c0, c1, s0, s1, s2, s3]) = input.first_chunk::<7>() else {
        return Ok(None);
    };
    let channel = u16::from_be_bytes([c0, c1]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if frame_max != 0 && size > frame_max {
        return Err(AmqpError::new(
            ReplyCode::FRAME_ERROR,
            format!(
                "type {kind}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                frame_max.saturating_sub(8)
            ),
        ));
    }
    let frame_len = usize::try_from(size)
        .ok()
        .and_then(|len| len.checked_add(8))
        .ok_or_else(|| {
            AmqpError::new(
                ReplyCode::FRAME_ERROR,
                format!("type {kind}, all octets = <<>>: {{frame_too_large,{size},0}}"),
            )
        })?;
    if input.len() < frame_len {
        // The reader makes room for the rest of the frame (crate::server).
        return Ok(None);
    }
    let end = input.get(frame_len - 1).copied().unwrap_or(0);
    if end != amqp_codec::FRAME_END {
        let payload = input.get(7..frame_len - 1).unwrap_or_default();
        return Err(AmqpError::new(
            ReplyCode::FRAME_ERROR,
            format!(
                "{}: {{invalid_frame_end_marker,{end}}}",
                describe_octets(kind, payload)
            ),
        ));
    }
    let mut frame = input.split_to(frame_len);
    frame.advance(7);
    frame.truncate(frame_len - 8);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload: frame.freeze(),
    }))
}

/// RabbitMQ's description of a frame in error texts: `type 1, all octets = <<0,20,0,10>>`,
/// or `first 16 octets` of a longer payload.
fn describe_octets(kind: u8, payload: &[u8]) -> String {
    match payload.get(..16) {
        Some(first) if payload.len() > 16 => {
            format!("type {kind}, first 16 octets = {}", erlang_binary_p(first))
        }
        _ => format!("type {kind}, all octets = {}", erlang_binary_p(payload)),
    }
}

fn frame_description(raw: &RawFrame) -> String {
    describe_octets(raw.kind, &raw.payload)
}

/// A channel frame, parsed. (Large, like the codec's `Frame`: it is moved once per frame;
/// boxing the content header would cost an allocation per message.)
#[allow(clippy::large_enum_variant)]
enum ChannelFrame {
    Method(Method),
    /// A basic content header, its properties kept as they came.
    Header(PublishedHeader),
    /// A content header of another class than basic, or with a weight: RabbitMQ's content
    /// assembly refuses it with a text that depends on what it expected.
    OddHeader {
        class_id: u16,
        weight: u16,
    },
    Body(Bytes),
    Heartbeat,
}

/// What RabbitMQ's `analyze_frame` (and the method decoder) make of a frame.
#[allow(clippy::large_enum_variant)]
enum Analyzed {
    Frame(ChannelFrame),
    /// Not a frame RabbitMQ knows: an unknown type, a heartbeat with a payload, a method
    /// or header frame too short for its ids.
    Unknown,
    /// A method frame naming a class or method that does not exist.
    UnknownMethod,
    /// A method whose arguments cannot be decoded: its class and method ids, and the
    /// argument octets (for `cannot decode <<...>>`).
    Undecodable(u16, u16, Bytes),
    /// A content header whose properties cannot be decoded.
    BadProperties(DecodeError),
}

fn analyze_frame(raw: &RawFrame, limits: &Limits) -> Analyzed {
    let payload = &raw.payload;
    match FrameType(raw.kind) {
        FrameType::METHOD => {
            let Some(&[c0, c1, m0, m1]) = payload.first_chunk::<4>() else {
                return Analyzed::Unknown;
            };
            let (class_id, method_id) =
                (u16::from_be_bytes([c0, c1]), u16::from_be_bytes([m0, m1]));
            match decode_payload(FrameType::METHOD, raw.channel, payload.clone(), limits) {
                Ok(Frame::Method(_, method)) => Analyzed::Frame(ChannelFrame::Method(method)),
                Err(DecodeError::UnknownMethod { .. }) => Analyzed::UnknownMethod,
                _ => Analyzed::Undecodable(class_id, method_id, payload.slice(4..)),
            }
        }
        FrameType::HEADER => {
            let Some(&[c0, c1, w0, w1]) = payload.first_chunk::<4>() else {
                return Analyzed::Unknown;
            };
            if payload.len() < 14 {
                return Analyzed::Unknown;
            }
            let (class_id, weight) = (u16::from_be_bytes([c0, c1]), u16::from_be_bytes([w0, w1]));
            if class_id != ContentHeader::BASIC_CLASS_ID || weight != 0 {
                return Analyzed::Frame(ChannelFrame::OddHeader { class_id, weight });
            }
            if let Some(header) = PublishedHeader::scan(payload) {
                return Analyzed::Frame(ChannelFrame::Header(header));
            }
            match decode_payload(FrameType::HEADER, raw.channel, payload.clone(), limits) {
                Ok(Frame::Header(_, header)) => Analyzed::Frame(ChannelFrame::Header(
                    PublishedHeader::from_decoded(header, payload),
                )),
                Ok(_) => Analyzed::Unknown,
                Err(err) => Analyzed::BadProperties(err),
            }
        }
        FrameType::BODY => Analyzed::Frame(ChannelFrame::Body(payload.clone())),
        FrameType::HEARTBEAT if payload.is_empty() => Analyzed::Frame(ChannelFrame::Heartbeat),
        _ => Analyzed::Unknown,
    }
}

/// The connection state as RabbitMQ names it in "unexpected method in connection state".
fn rabbitmq_state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::AwaitingProtocolHeader => "pre_init",
        ServerState::AwaitingStartOk => "starting",
        ServerState::AwaitingTuneOk => "tuning",
        ServerState::AwaitingOpen => "opening",
        ServerState::Open => "running",
        ServerState::Closing | ServerState::SilentClose => "closing",
        ServerState::Closed => "closed",
    }
}

// ---- publishing ---------------------------------------------------------------------------

/// RabbitMQ's checks of a published message's properties, in its order: `user_id` must be
/// the authenticated user, `expiration` a number of milliseconds. Returns the per-message
/// TTL.
fn check_properties(header: &PublishedHeader, user: &str) -> Result<Option<Duration>, AmqpError> {
    if let Some(claimed) = header.user_id() {
        if claimed != user.as_bytes() {
            let claimed = String::from_utf8_lossy(claimed);
            return Err(AmqpError::precondition_failed(format!(
                "user_id property set to '{claimed}' but authenticated user was '{user}'"
            )));
        }
    }
    match header.expiration() {
        None => Ok(None),
        Some(expiration) => match parse_expiration(expiration) {
            Ok(ms) => Ok(Some(Duration::from_millis(ms))),
            Err(reason) => Err(AmqpError::precondition_failed(format!(
                "invalid expiration '{}': {reason}",
                String::from_utf8_lossy(expiration)
            ))),
        },
    }
}

/// The `expiration` property as RabbitMQ reads it (Erlang's `string:to_integer`, then
/// `check_expiry`, which in 3.10 has no upper bound); Err is the reason as RabbitMQ prints
/// it: `no_integer`, `{value_negative,-1}`, `{leftover_string,"abc"}`.
fn parse_expiration(text: &[u8]) -> Result<u64, String> {
    let (negative, unsigned) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let count = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, leftover) = unsigned.split_at(count);
    if digits.is_empty() {
        return Err("no_integer".to_owned());
    }
    if !leftover.is_empty() {
        return Err(format!(
            "{{leftover_string,\"{}\"}}",
            String::from_utf8_lossy(leftover)
        ));
    }
    let value = digits.iter().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    if negative && value != 0 {
        let shown = String::from_utf8_lossy(digits);
        return Err(format!(
            "{{value_negative,-{}}}",
            shown.trim_start_matches('0')
        ));
    }
    Ok(u64::try_from(value).unwrap_or(u64::MAX))
}

/// The extra routing keys of the `CC` and `BCC` headers (arrays of long strings; other
/// elements are skipped), or None when neither header is there. Another type for either
/// header is refused, as RabbitMQ refuses it.
fn routing_headers(headers: Option<&FieldTable>) -> Result<Option<Vec<ShortString>>, AmqpError> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    let mut keys: Option<Vec<ShortString>> = None;
    for name in ["CC", "BCC"] {
        match headers.get(name) {
            None => {}
            Some(FieldValue::Array(routes)) => {
                let keys = keys.get_or_insert_with(Vec::new);
                keys.extend(routes.iter().filter_map(|route| match route {
                    FieldValue::LongString(s) => Some(ShortString::new(s.bytes().clone())),
                    _ => None,
                }));
            }
            Some(other) => {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    crate::error::field_type_name(other)
                )));
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_dropped_without_closing_requeues_what_it_held() {
        let broker = Broker::new(crate::config::BrokerConfig::default());
        let outbox = Arc::new(Outbox::new(131_072));
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let now = Instant::now();
        let mut connection = ServerConnection::new(broker.clone(), address, address, outbox, now);
        let mut input = BytesMut::from(&b"AMQP\0\0\x09\x01"[..]);
        let mut frame = |frame: Frame| frame.encode(&mut input, 131_072).unwrap();
        frame(Frame::Method(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            }
            .into(),
        ));
        frame(Frame::Method(
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            }
            .into(),
        ));
        frame(Frame::Method(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
        ));
        frame(Frame::Method(1, ChannelOpen.into()));
        frame(Frame::Method(
            1,
            QueueDeclare {
                queue: "held".into(),
                ..Default::default()
            }
            .into(),
        ));
        frame(Frame::Method(
            1,
            BasicPublish {
                routing_key: "held".into(),
                ..Default::default()
            }
            .into(),
        ));
        frame(Frame::Header(
            1,
            ContentHeader {
                class_id: ContentHeader::BASIC_CLASS_ID,
                body_size: 2,
                properties: BasicProperties::default(),
            },
        ));
        frame(Frame::Body(1, Bytes::from_static(b"hi")));
        frame(Frame::Method(
            1,
            BasicConsume {
                queue: "held".into(),
                ..Default::default()
            }
            .into(),
        ));
        connection.handle_input(&mut input, now);

        let queue = broker.vhost("/").unwrap().queue(&"held".into()).unwrap();
        {
            let state = queue.state();
            assert_eq!(
                (state.ready.len(), state.unacked, state.consumers.len()),
                (0, 1, 1)
            );
        }
        // No handle_eof: the connection's task went away some other way (a bug unwinding
        // through it).
        drop(connection);
        let state = queue.state();
        assert_eq!(
            (state.ready.len(), state.unacked, state.consumers.len()),
            (1, 0, 0)
        );
    }

    #[test]
    fn expiration_is_read_as_rabbitmq_reads_it() {
        assert_eq!(parse_expiration(b"60000"), Ok(60_000));
        assert_eq!(parse_expiration(b"+5"), Ok(5));
        assert_eq!(parse_expiration(b"0"), Ok(0));
        assert_eq!(parse_expiration(b"99999999999"), Ok(99_999_999_999));
        assert_eq!(parse_expiration(b"abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b""), Err("no_integer".into()));
        assert_eq!(parse_expiration(b"-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration(b"12abc"),
            Err("{leftover_string,\"abc\"}".into())
        );
    }

    #[test]
    fn read_frame_tolerates_frame_max_octets_of_payload_and_refuses_more() {
        // A body frame: type 3, channel 1, payload size 4096, payload, frame end.
        let mut input = BytesMut::from(&[0x03, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00][..]);
        input.extend_from_slice(&[b'x'; 4096]);
        input.extend_from_slice(&[0xce]);
        let frame = read_frame(&mut input, 4096).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.channel, frame.payload.len()),
            (3, 1, 4096)
        );
        assert!(input.is_empty());
        // The same with 4097 octets announced: RabbitMQ's text names frame_max - 8.
        let mut input = BytesMut::from(&[0x03, 0x00, 0x01, 0x00, 0x00, 0x10, 0x01][..]);
        let error = read_frame(&mut input, 4096).err().unwrap();
        assert_eq!(
            error.text,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
        );
    }

    #[test]
    fn read_frame_waits_for_the_whole_frame() {
        // A method frame announcing 4 payload octets, of which 2 have come.
        let mut input = BytesMut::from(&[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x14][..]);
        assert!(read_frame(&mut input, 4096).unwrap().is_none());
        assert_eq!(input.len(), 9, "nothing consumed");
    }

    #[test]
    fn long_payloads_are_described_by_their_first_16_octets() {
        assert_eq!(
            describe_octets(1, &[7; 20]),
            "type 1, first 16 octets = <<7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7>>"
        );
        assert_eq!(
            describe_octets(2, b"abc"),
            "type 2, all octets = <<\"abc\">>"
        );
    }
}
