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
//!                    any error: connection.close sent ─► Closing ─close-ok or timeout─► Closed
//! ```
//!
//! Errors follow the spec's classes: a soft error (403, 404, 405, 406) closes the channel
//! (channel.close, then channel.close-ok from the client); a hard error closes the
//! connection. Malformed frames get 501/502/503/505. Nothing a client sends can panic the
//! broker or disturb another connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use amqp_codec::methods::*;
use amqp_codec::tune::Tune;
use amqp_codec::{
    decode, ChannelId, Command, ContentAssembler, FieldTable, FieldValue, Frame, Limits, Method,
    ReplyCode, ShortString,
};
use bytes::BytesMut;

use crate::broker::{generated_queue_name, Broker, ExchangeFlags, QueueFlags, VHost};
use crate::delivery::{lock, ChannelLink, Outbox, Unacked};
use crate::error::{queue_resource, AmqpError};
use crate::message::{MessageContent, QueuedMessage};
use crate::queue::{DeadLetters, Enqueued, Queue, QueueConsumer, QueueType};
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
    /// Done: the socket should be closed once the outbox is flushed.
    Closed,
}

/// How long a client has to answer our connection.close before the socket is closed.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel's transaction buffer: what tx.commit applies.
#[derive(Default)]
struct Transaction {
    publishes: Vec<Command>,
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

/// One open channel.
struct ServerChannel {
    link: Arc<ChannelLink>,
    assembler: ContentAssembler,
    /// We sent channel.close and wait for close-ok.
    closing: bool,
    /// Consumers on this channel: tag to queue.
    consumers: HashMap<ShortString, Arc<Queue>>,
    /// basic.qos prefetch for consumers started after it (per consumer).
    prefetch_count: u16,
    /// Publisher confirms: the sequence number of the next publish.
    confirm_seq: Option<u64>,
    /// Transaction mode and its buffer.
    tx: Option<Transaction>,
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
        ServerConnection {
            broker,
            id,
            peer,
            local,
            state: ServerState::AwaitingProtocolHeader,
            outbox,
            // Before tune-ok, accept frames up to the size we will offer.
            limits: Limits::with_frame_max(131_072),
            tune: Tune {
                channel_max: 0,
                frame_max: 0,
                heartbeat: 0,
            },
            channels: HashMap::new(),
            user: String::new(),
            vhost: None,
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

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, input: &mut BytesMut, now: Instant) {
        if !input.is_empty() {
            self.last_received = now;
        }
        while !matches!(self.state, ServerState::Closed) {
            if self.state == ServerState::AwaitingProtocolHeader
                && !input.is_empty()
                && input.first() != Some(&b'A')
            {
                // Not AMQP at all: answer with the header we speak and hang up (spec 4.2.2).
                self.refuse_protocol();
                return;
            }
            match decode(input, &self.limits) {
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Ok(None) => break,
                Err(err) => {
                    if self.state == ServerState::AwaitingProtocolHeader {
                        self.refuse_protocol();
                        return;
                    }
                    tracing::warn!(connection = self.id, peer = %self.peer, "malformed frame: {err}");
                    self.connection_error(
                        AmqpError::new(err.reply_code(), err.to_string()),
                        0,
                        0,
                        now,
                    );
                    // The stream is out of step: nothing more can be read from it.
                    input.clear();
                    self.state = ServerState::Closed;
                    break;
                }
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
            ServerState::Open if self.tune.heartbeat > 0 => {
                let interval = Duration::from_secs(u64::from(self.tune.heartbeat));
                Some((self.last_sent + interval / 2).min(self.last_received + interval * 2))
            }
            ServerState::Open | ServerState::Closed => None,
            _ => Some(self.started + HANDSHAKE_TIMEOUT),
        }
    }

    /// The memory alarm changed: tell the client (connection.blocked / unblocked), if it
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
                        reason: ShortString::from_static("low on memory"),
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

    /// The reader stopped reading on purpose (memory alarm): silence is not the client's
    /// fault, so it does not count as missed heartbeats.
    pub fn reading_paused(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// Closes the connection from the broker's side (shutdown, management API): 320.
    pub fn force_close(&mut self, reason: &str, now: Instant) {
        if matches!(self.state, ServerState::Closed | ServerState::Closing) {
            return;
        }
        let error = AmqpError::new(ReplyCode::CONNECTION_FORCED, reason);
        self.connection_error(error, 0, 0, now);
    }

    fn refuse_protocol(&mut self) {
        self.outbox.send(&Frame::ProtocolHeader(
            amqp_codec::ProtocolHeader::AMQP_0_9_1,
        ));
        self.state = ServerState::Closed;
    }

    // ---- frames -------------------------------------------------------------------------

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        match (self.state, frame) {
            (ServerState::AwaitingProtocolHeader, Frame::ProtocolHeader(header)) => {
                if header.is_0_9_1() {
                    self.send_start();
                    self.state = ServerState::AwaitingStartOk;
                } else {
                    self.refuse_protocol();
                }
            }
            (_, Frame::ProtocolHeader(_)) => self.connection_error(
                AmqpError::command_invalid("protocol header inside a connection"),
                0,
                0,
                now,
            ),
            (_, Frame::Heartbeat) => {}
            (
                ServerState::Closing,
                Frame::Method(0, Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)),
            ) => {
                // Either the answer to our close, or a close that crossed it: done.
                self.state = ServerState::Closed;
                self.cleanup();
            }
            (ServerState::Closing, _) => {}
            (_, Frame::Method(0, method)) => self.handle_connection_method(method, now),
            (ServerState::Open, frame) => self.handle_channel_frame(frame, now),
            (_, frame) => {
                let what = match &frame {
                    Frame::Method(_, m) => m.name(),
                    _ => "a content frame",
                };
                self.connection_error(
                    AmqpError::new(
                        ReplyCode::UNEXPECTED_FRAME,
                        format!("{what} before the connection is open"),
                    ),
                    0,
                    0,
                    now,
                );
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
            (_, Method::ConnectionClose(_)) => {
                self.outbox.send_method(0, ConnectionCloseOk);
                self.state = ServerState::Closed;
                self.cleanup();
                Ok(())
            }
            (ServerState::Open, Method::ConnectionUpdateSecret(_)) => {
                self.outbox.send_method(0, ConnectionUpdateSecretOk);
                Ok(())
            }
            (ServerState::Open, Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_)) => {
                Err(AmqpError::command_invalid(
                    "connection.blocked is sent by the server, not the client",
                ))
            }
            (_, method) => Err(AmqpError::command_invalid(format!(
                "unexpected {} on channel 0",
                method.name()
            ))),
        };
        if let Err(error) = result {
            self.connection_error(error, class_id, method_id, now);
        }
    }

    fn on_start_ok(&mut self, start_ok: ConnectionStartOk, now: Instant) -> Result<(), AmqpError> {
        self.client_properties = start_ok.client_properties;
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
            _ => None,
        };
        let authenticated = credentials
            .as_ref()
            .is_some_and(|(user, password)| self.broker.authenticate(user, password));
        if !authenticated {
            tracing::warn!(
                connection = self.id,
                peer = %self.peer,
                "login refused using authentication mechanism {mechanism}"
            );
            if self.auth_failure_close {
                let error = AmqpError::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ));
                self.connection_error(
                    error,
                    ConnectionStartOk::CLASS_ID,
                    ConnectionStartOk::METHOD_ID,
                    now,
                );
            } else {
                self.state = ServerState::Closed;
            }
            return Ok(());
        }
        self.user = credentials.map(|(user, _)| user).unwrap_or_default();
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

    fn on_tune_ok(&mut self, tune_ok: ConnectionTuneOk) -> Result<(), AmqpError> {
        let config = &self.broker.config;
        let offered_frame_max = config.frame_max;
        if tune_ok.frame_max != 0 && tune_ok.frame_max < amqp_codec::FRAME_MIN_SIZE {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} < {} min size",
                tune_ok.frame_max,
                amqp_codec::FRAME_MIN_SIZE
            )));
        }
        if offered_frame_max != 0
            && (tune_ok.frame_max == 0 || tune_ok.frame_max > offered_frame_max)
        {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} > {} max size",
                tune_ok.frame_max, offered_frame_max
            )));
        }
        if config.channel_max != 0
            && (tune_ok.channel_max == 0 || tune_ok.channel_max > config.channel_max)
        {
            return Err(AmqpError::not_allowed(format!(
                "channel_max={} > {} max size",
                tune_ok.channel_max, config.channel_max
            )));
        }
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

    fn handle_channel_frame(&mut self, frame: Frame, now: Instant) {
        let id = frame.channel();
        if let Frame::Method(_, Method::ChannelOpen(_)) = &frame {
            self.open_channel(id, now);
            return;
        }
        let Some(channel) = self.channels.get_mut(&id) else {
            let error =
                AmqpError::channel_error(format!("expected 'channel.open' on channel {id}"));
            let (class_id, method_id) = match &frame {
                Frame::Method(_, m) => (m.class_id(), m.method_id()),
                _ => (0, 0),
            };
            self.connection_error(error, class_id, method_id, now);
            return;
        };
        if channel.closing {
            // Only close and close-ok count once we closed the channel (spec 1.5.2.5).
            match frame {
                Frame::Method(_, Method::ChannelCloseOk(_)) => {
                    self.channels.remove(&id);
                    self.unregister_channel(id);
                }
                Frame::Method(_, Method::ChannelClose(_)) => {
                    self.outbox.send_method(id, ChannelCloseOk);
                }
                _ => {}
            }
            return;
        }
        match channel.assembler.feed(frame) {
            Ok(Some(command)) => {
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
                let error = AmqpError::new(err.reply_code(), err.to_string());
                if error.is_connection_error() {
                    self.connection_error(
                        error,
                        BasicPublish::CLASS_ID,
                        BasicPublish::METHOD_ID,
                        now,
                    );
                } else {
                    channel.assembler = ContentAssembler::new(self.broker.config.max_message_size);
                    self.channel_error(id, error, BasicPublish::CLASS_ID, BasicPublish::METHOD_ID);
                }
            }
        }
    }

    fn open_channel(&mut self, id: ChannelId, now: Instant) {
        let method = (ChannelOpen::CLASS_ID, ChannelOpen::METHOD_ID);
        if id == 0 || id > self.tune.max_channel() {
            let error = AmqpError::not_allowed(format!(
                "channel number {id} is out of range: the negotiated channel_max is {}",
                self.tune.channel_max
            ));
            self.connection_error(error, method.0, method.1, now);
            return;
        }
        if self.channels.contains_key(&id) {
            let error = AmqpError::channel_error("second 'channel.open' seen");
            self.connection_error(error, method.0, method.1, now);
            return;
        }
        let link = Arc::new(ChannelLink::new(
            id,
            self.id,
            self.outbox.clone(),
            self.cancel_notify,
        ));
        self.channels.insert(
            id,
            ServerChannel {
                link: link.clone(),
                assembler: ContentAssembler::new(self.broker.config.max_message_size),
                closing: false,
                consumers: HashMap::new(),
                prefetch_count: 0,
                confirm_seq: None,
                tx: None,
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
        for (tag, queue) in consumers {
            if queue.remove_consumer(&link, &tag) {
                if let Some(vhost) = &vhost {
                    vhost.remove_queue(&queue);
                }
            }
        }
        requeue(&link, unacked, vhost.as_deref());
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

    fn channel(&mut self, id: ChannelId) -> Result<&mut ServerChannel, AmqpError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(|| AmqpError::channel_error(format!("channel {id} is not open")))
    }

    // ---- methods ------------------------------------------------------------------------

    fn handle_command(
        &mut self,
        id: ChannelId,
        command: Command,
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
            Method::ChannelCloseOk(_) => {}
            Method::ChannelFlow(flow) => {
                lock(&self.channel(id)?.link.state).flow_active = flow.active;
                self.outbox.send_method(
                    id,
                    ChannelFlowOk {
                        active: flow.active,
                    },
                );
                if flow.active {
                    self.kick_channel_queues(id);
                }
            }
            Method::ChannelFlowOk(_) => {}

            Method::ExchangeDeclare(declare) => {
                let flags = ExchangeFlags {
                    passive: declare.passive,
                    durable: declare.durable,
                    auto_delete: declare.auto_delete,
                    internal: declare.internal,
                };
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
                vhost.delete_exchange(&delete.exchange, delete.if_unused)?;
                if !delete.no_wait {
                    self.outbox.send_method(id, ExchangeDeleteOk);
                }
            }
            Method::ExchangeBind(bind) => {
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
                let declared =
                    vhost.declare_queue(conn, &declare.queue, flags, &declare.arguments)?;
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
                vhost.bind_queue(
                    conn,
                    &bind.queue,
                    &bind.exchange,
                    &bind.routing_key,
                    &bind.arguments,
                )?;
                if !bind.no_wait {
                    self.outbox.send_method(id, QueueBindOk);
                }
            }
            Method::QueueUnbind(unbind) => {
                vhost.unbind_queue(
                    conn,
                    &unbind.queue,
                    &unbind.exchange,
                    &unbind.routing_key,
                    &unbind.arguments,
                )?;
                self.outbox.send_method(id, QueueUnbindOk);
            }
            Method::QueuePurge(purge) => {
                let message_count = vhost.purge_queue(conn, &purge.queue)?;
                if !purge.no_wait {
                    self.outbox.send_method(id, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(delete) => {
                let (message_count, consumers) =
                    vhost.delete_queue(conn, &delete.queue, delete.if_unused, delete.if_empty)?;
                self.exclusive_queues.retain(|q| q.name != delete.queue);
                self.forget_consumers_of(&delete.queue);
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
                self.has_published = true;
                let channel = self.channel(id)?;
                if let Some(tx) = &mut channel.tx {
                    // Checked now, applied on commit.
                    if !publish.exchange.is_empty() && !vhost.has_exchange(&publish.exchange) {
                        return Err(AmqpError::not_found(format!(
                            "no exchange '{}' in vhost '{}'",
                            publish.exchange, vhost.name
                        )));
                    }
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
            Method::BasicRecover(_) | Method::BasicRecoverAsync(_) => {
                let link = self.channel(id)?.link.clone();
                let unacked = std::mem::take(&mut lock(&link.state).unacked);
                requeue(&link, unacked.into_values().collect(), Some(&vhost));
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
            other => {
                let info = other.info();
                let text = if info.sent_by_client {
                    format!("{} is not valid here", info.name)
                } else {
                    format!("{} is sent by the server, not the client", info.name)
                };
                return Err(AmqpError::command_invalid(text));
            }
        }
        Ok(())
    }

    fn consume(
        &mut self,
        id: ChannelId,
        consume: BasicConsume,
        vhost: &Arc<VHost>,
    ) -> Result<(), AmqpError> {
        let queue = vhost.usable_queue(&consume.queue, self.id)?;
        let resource = queue_resource(&queue.name.to_str_lossy(), &vhost.name);
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
        let tag = if consume.consumer_tag.is_empty() {
            generated_consumer_tag()
        } else {
            consume.consumer_tag.clone()
        };
        if channel.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        channel.consumers.insert(tag.clone(), queue.clone());
        let consumer = QueueConsumer {
            tag: tag.clone(),
            link: channel.link.clone(),
            no_ack: consume.no_ack,
            exclusive: consume.exclusive,
            prefetch: channel.prefetch_count,
            unacked: 0,
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
        content: amqp_codec::Content,
        vhost: &Arc<VHost>,
        now: Instant,
    ) -> Result<(), AmqpError> {
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        let routed = vhost.route(
            &publish.exchange,
            &publish.routing_key,
            content.header.properties.headers.as_ref(),
            true,
            &mut queues,
        );
        if let Err(error) = routed {
            self.route_buf = queues;
            return Err(error);
        }
        let per_message_ttl = content
            .header
            .properties
            .expiration
            .as_ref()
            .and_then(|e| e.as_str()?.parse::<u64>().ok())
            .map(Duration::from_millis);
        let message = Arc::new(MessageContent {
            exchange: publish.exchange.clone(),
            routing_key: publish.routing_key.clone(),
            properties: content.header.properties,
            body: content.body,
        });
        if queues.is_empty() && publish.mandatory {
            let returned = QueuedMessage {
                content: message.clone(),
                redelivered: false,
                expires_at: None,
                persist_id: None,
            };
            let method = Method::BasicReturn(BasicReturn {
                reply_code: ReplyCode::NO_ROUTE.0,
                reply_text: ShortString::from_static("NO_ROUTE"),
                exchange: publish.exchange.clone(),
                routing_key: publish.routing_key.clone(),
            });
            self.outbox.send_content(id, &method, &returned);
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
                expires_at: ttl.map(|ttl| now + ttl),
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
        let channel = self.channel(id)?;
        if let Some(seq) = channel.confirm_seq.as_mut() {
            let delivery_tag = *seq;
            *seq += 1;
            if let Some(store) = stored_in {
                // Confirmed only once on disk: the store's writer sends it after the fsync.
                store.confirm(Confirm {
                    outbox,
                    channel: id,
                    delivery_tag,
                    nack: rejected,
                });
            } else if rejected {
                self.outbox.send_method(
                    id,
                    BasicNack {
                        delivery_tag,
                        multiple: false,
                        requeue: false,
                    },
                );
            } else {
                self.outbox.send_method(
                    id,
                    BasicAck {
                        delivery_tag,
                        multiple: false,
                    },
                );
            }
        }
        Ok(())
    }

    fn get(&mut self, id: ChannelId, get: BasicGet, vhost: &Arc<VHost>) -> Result<(), AmqpError> {
        let queue = vhost.usable_queue(&get.queue, self.id)?;
        let mut dead = DeadLetters::new();
        let fetched = queue.get(&mut dead);
        dead_letter(vhost, &queue, dead);
        let link = self.channel(id)?.link.clone();
        match fetched {
            Some((message, remaining)) => {
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
                let method = Method::BasicGetOk(BasicGetOk {
                    delivery_tag: tag,
                    redelivered: message.redelivered,
                    exchange: message.content.exchange.clone(),
                    routing_key: message.content.routing_key.clone(),
                    message_count: remaining as u32,
                });
                self.outbox.send_content(id, &method, &message);
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
            requeue(&link, rejected, self.vhost.as_deref());
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
        for queue in queues {
            let mut dead = DeadLetters::new();
            queue.kick(&mut dead);
            if let Some(vhost) = &self.vhost {
                dead_letter(vhost, &queue, dead);
            }
        }
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

/// Puts deliveries back in their queues, in order, redelivered.
fn requeue(link: &Arc<ChannelLink>, deliveries: Vec<Unacked>, vhost: Option<&VHost>) {
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
        queue.requeue(link, list, &mut dead);
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
        let routing_key = queue
            .settings
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| content.routing_key.clone());
        let mut properties = content.properties.clone();
        let mut headers = properties.headers.take().unwrap_or_default();
        add_x_death(&mut headers, queue, reason, content);
        properties.headers = Some(headers);
        if reason == "expired" {
            // The per-message TTL is what expired it; RabbitMQ removes it.
            properties.expiration = None;
        }
        let dead_content = Arc::new(MessageContent {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            properties,
            body: content.body.clone(),
        });
        targets.clear();
        if vhost
            .route(
                &exchange,
                &routing_key,
                dead_content.properties.headers.as_ref(),
                false,
                &mut targets,
            )
            .is_err()
        {
            continue;
        }
        for target in &targets {
            if Arc::ptr_eq(target, &targets[0])
                && std::ptr::eq(Arc::as_ptr(target), queue)
                && reason == "expired"
            {
                // A message expiring back into its own queue would cycle forever.
                continue;
            }
            let mut header = None;
            let Ok(persist_id) = persist(target, &dead_content, &mut header) else {
                continue;
            };
            let queued = QueuedMessage {
                content: dead_content.clone(),
                redelivered: false,
                expires_at: target.settings.message_ttl.map(|ttl| now + ttl),
                persist_id,
            };
            let mut more = DeadLetters::new();
            target.publish(queued, &mut more);
        }
    }
}

/// Logs a persistent message entering a durable queue; returns its store id (None when
/// nothing needs storing), or Err when the store has failed. `header` caches the encoded
/// content header across the queues of one publish.
fn persist(
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
    let header = header
        .get_or_insert_with(|| {
            let mut buf = BytesMut::new();
            let frame = Frame::Header(
                0,
                amqp_codec::ContentHeader::basic(
                    content.body.len() as u64,
                    content.properties.clone(),
                ),
            );
            if let Err(err) = frame.encode(&mut buf, 0) {
                tracing::error!("cannot encode a content header for the store: {err}");
            }
            buf.freeze()
        })
        .clone();
    let id = store.next_id();
    store.publish(PublishRecord {
        id,
        delivered: false,
        vhost: bytes::Bytes::copy_from_slice(queue.vhost.as_bytes()),
        queue: queue.name.bytes().clone(),
        exchange: content.exchange.bytes().clone(),
        routing_key: content.routing_key.bytes().clone(),
        header,
        body: content.body.clone(),
    });
    Ok(Some(id))
}

/// Adds (or counts up) the `x-death` entry for this queue and reason, and the
/// `x-first-death-*` headers, as RabbitMQ records dead-lettering.
fn add_x_death(
    headers: &mut FieldTable,
    queue: &Queue,
    reason: &'static str,
    content: &MessageContent,
) {
    use amqp_codec::FieldArray;
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(array)) => array.0,
        _ => Vec::new(),
    };
    let matches = |entry: &FieldValue| match entry {
        FieldValue::Table(t) => {
            t.get("queue") == Some(&FieldValue::from(&*queue.name.to_str_lossy()))
                && t.get("reason") == Some(&FieldValue::from(reason))
        }
        _ => false,
    };
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Some(position) = deaths.iter().position(matches) {
        let mut entry = deaths.remove(position);
        if let FieldValue::Table(t) = &mut entry {
            let count = match t.get("count") {
                Some(FieldValue::I64(n)) => *n + 1,
                _ => 1,
            };
            t.insert("count", FieldValue::I64(count));
            t.insert("time", FieldValue::Timestamp(timestamp));
        }
        deaths.insert(0, entry);
    } else {
        let mut entry = FieldTable::new();
        entry.insert("count", FieldValue::I64(1));
        entry.insert("reason", reason);
        entry.insert("queue", &*queue.name.to_str_lossy());
        entry.insert("time", FieldValue::Timestamp(timestamp));
        entry.insert("exchange", &*content.exchange.to_str_lossy());
        entry.insert(
            "routing-keys",
            FieldValue::Array(FieldArray(vec![FieldValue::from(
                &*content.routing_key.to_str_lossy(),
            )])),
        );
        if let Some(expiration) = &content.properties.expiration {
            entry.insert("original-expiration", &*expiration.to_str_lossy());
        }
        deaths.insert(0, FieldValue::Table(entry));
    }
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-exchange", &*content.exchange.to_str_lossy());
        headers.insert("x-first-death-queue", &*queue.name.to_str_lossy());
        headers.insert("x-first-death-reason", reason);
    }
    headers.insert("x-death", FieldValue::Array(FieldArray(deaths)));
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
