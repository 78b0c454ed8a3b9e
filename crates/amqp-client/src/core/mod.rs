//! The sans-IO protocol core: connection and channel state machines with no sockets, no
//! tasks and no clock of their own.
//!
//! Inputs are bytes read from the socket ([`ConnectionCore::handle_input`]), the user's
//! requests ([`ConnectionCore::call`], [`ConnectionCore::publish`], ...) and the time
//! ([`ConnectionCore::handle_timeout`]). Outputs are bytes to write
//! ([`ConnectionCore::take_output`]), [`Event`]s to hand up ([`ConnectionCore::poll_event`]) and
//! the next deadline ([`ConnectionCore::poll_timeout`]). The async layer in
//! [`crate::connection`] only shuttles between these and a socket; the tests in
//! `tests.rs` drive the core against frames in memory with a fake clock.
//!
//! Requests carry a *token* of the caller's choosing (`T`): the core gives it back in
//! [`Event::Reply`] with the reply or the error that ended the wait. The async layer uses a
//! oneshot sender as the token; tests use numbers.
//!
//! ```text
//!  AwaitingStart ─start/start-ok─► AwaitingTune ─tune/tune-ok+open─► AwaitingOpenOk
//!        ─open-ok─► Open ─close/close-ok─► Closing ─close-ok─► Closed
//! ```

mod channel;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use amqp_codec::content::{encode_content_head, OutputBuffer};
use amqp_codec::methods::*;
use amqp_codec::tune::{client_tune_ok, Tune};
use amqp_codec::{
    decode, encode_content, BasicProperties, ChannelId, Command, Content, FieldTable, FieldValue,
    Frame, Limits, LongString, Method, ReplyCode, ShortString,
};
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, ServerClose};
use crate::uri::{AmqpUri, AuthMechanism};
use channel::{responses, ChannelCore, ChannelState};

pub use amqp_codec::content::Output;

/// What the client asks of the server, from the URI and the program.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Credentials, vhost and requested limits.
    pub uri: AmqpUri,
    /// Shown in the management UI and `rabbitmqctl list_connections client_properties`.
    pub connection_name: Option<String>,
}

impl ConnectionConfig {
    /// A configuration for `uri`.
    pub fn new(uri: AmqpUri) -> Self {
        ConnectionConfig {
            uri,
            connection_name: None,
        }
    }

    /// The client-properties table of connection.start-ok, with the capabilities this client
    /// implements (RabbitMQ's "Client Capabilities" list).
    pub fn client_properties(&self) -> FieldTable {
        let mut capabilities = FieldTable::new();
        for capability in [
            "publisher_confirms",
            "consumer_cancel_notify",
            "connection.blocked",
            "basic.nack",
            "exchange_exchange_bindings",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            capabilities.insert(capability, true);
        }
        let mut properties = FieldTable::new();
        properties.insert("product", "amqp-client (amqp-rs)");
        properties.insert("version", env!("CARGO_PKG_VERSION"));
        properties.insert("platform", "Rust");
        properties.insert("information", "https://crates.io/crates/amqp-client");
        properties.insert("capabilities", capabilities);
        if let Some(name) = &self.connection_name {
            properties.insert("connection_name", name.as_str());
        }
        properties
    }

    /// The SASL response for the configured mechanism (RabbitMQ's access control guide).
    fn sasl_response(&self) -> LongString {
        let uri = &self.uri;
        match uri.auth_mechanism {
            AuthMechanism::Plain => {
                let mut response = Vec::with_capacity(uri.username.len() + uri.password.len() + 2);
                response.push(0);
                response.extend_from_slice(uri.username.as_bytes());
                response.push(0);
                response.extend_from_slice(uri.password.as_bytes());
                LongString::new(response)
            }
            AuthMechanism::AmqPlain => {
                // A field table's entries without the table's own length prefix.
                let mut table = FieldTable::new();
                table.insert("LOGIN", uri.username.as_str());
                table.insert("PASSWORD", uri.password.as_str());
                let mut buf = BytesMut::new();
                let header = ConnectionStartOk {
                    client_properties: table,
                    ..Default::default()
                };
                // Encode the table through a start-ok and cut it out: the table is the first
                // field, after the four octets of class and method id and its own length.
                let _ = Frame::Method(0, header.into()).encode(&mut buf, 0);
                let table_len = buf
                    .get(11..15)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0) as usize;
                LongString::new(buf.get(15..15 + table_len).unwrap_or_default().to_vec())
            }
        }
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Protocol header sent; waiting for connection.start.
    AwaitingStart,
    /// start-ok sent; waiting for connection.tune (or connection.secure).
    AwaitingTune,
    /// tune-ok and open sent; waiting for connection.open-ok.
    AwaitingOpenOk,
    /// Open: channels may be used.
    Open,
    /// connection.close sent; waiting for connection.close-ok.
    Closing,
    /// Done; see [`ConnectionCore::close_reason`].
    Closed,
}

/// What the core hands up to the layer above.
#[derive(Debug)]
pub enum Event<T> {
    /// The handshake finished: the connection is open.
    Connected {
        /// The server's connection.start properties (product, version, capabilities).
        server_properties: FieldTable,
        /// The negotiated limits.
        tune: Tune,
    },
    /// A request finished: its reply, or the error that ended it. (Boxed: replies are rare,
    /// and a [`Command`] is over 500 octets, which every event would otherwise occupy.)
    Reply {
        /// The token the request was made with.
        token: T,
        /// The reply command, or why there is none.
        result: Result<Box<Command>, Error>,
    },
    /// A message for a consumer (basic.deliver with its content).
    Delivery {
        /// The channel it came on.
        channel: ChannelId,
        /// basic.deliver and its content.
        message: Message<BasicDeliver>,
    },
    /// A mandatory message the server could not route (basic.return with its content).
    Return {
        /// The channel it came on.
        channel: ChannelId,
        /// basic.return and its content.
        message: Message<BasicReturn>,
    },
    /// A publisher confirm (basic.ack or basic.nack from the server in confirm mode).
    Confirm {
        /// The channel.
        channel: ChannelId,
        /// The publish sequence number confirmed (all up to it when `multiple`).
        delivery_tag: u64,
        /// Whether every unconfirmed number up to `delivery_tag` is confirmed.
        multiple: bool,
        /// true for basic.ack (the broker took responsibility), false for basic.nack.
        ack: bool,
    },
    /// The server cancelled a consumer (queue deleted, node failure): consumer_cancel_notify.
    ConsumerCancelled {
        /// The channel.
        channel: ChannelId,
        /// The cancelled consumer's tag.
        consumer_tag: ShortString,
    },
    /// A channel is gone: closed by the server (`error` is set), or by us.
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
        /// Why, when it was not our own close.
        error: Option<Error>,
    },
    /// connection.blocked: the server stopped reading from publishers (memory or disk alarm).
    Blocked {
        /// The server's reason, e.g. "low on memory".
        reason: ShortString,
    },
    /// connection.unblocked.
    Unblocked,
    /// The connection is gone; every pending request has already been failed.
    Closed(Error),
}

/// A method that carried content (basic.deliver, basic.return, basic.get-ok) with that
/// content, in the form the core hands it up: about 150 octets instead of a [`Command`]'s
/// 550, because the properties, absent from most messages, are boxed only when present.
/// Every queue a delivery passes through on its way to the application moves it, so its size
/// is paid several times per message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<M> {
    /// The method's fields (consumer tag, delivery tag, exchange, routing key, ...).
    pub method: M,
    /// The content properties; None when the message has none at all.
    pub properties: Option<Box<BasicProperties>>,
    /// The body.
    pub body: Bytes,
}

impl<M> Message<M> {
    /// Pairs `method` with its content; None if it came without one (the assembler always
    /// gives a content-carrying method its content, so this does not happen).
    pub fn new(method: M, content: Option<Content>) -> Option<Message<M>> {
        let Content { header, body } = content?;
        let properties = if header.properties.flags() == 0 {
            None
        } else {
            Some(Box::new(header.properties))
        };
        Some(Message {
            method,
            properties,
            body,
        })
    }

    /// The properties, unboxed (all absent when there were none).
    pub fn take_properties(&mut self) -> BasicProperties {
        self.properties.take().map(|p| *p).unwrap_or_default()
    }
}

/// The largest body [`ConnectionCore::publish`] copies into the output. Larger bodies go out
/// as they are, in pieces of their own: a copy costs more than one more slice of a vectored
/// write from about this size on (the broker draws the same line for deliveries).
pub const COPY_BODY_MAX: usize = 4096;

/// The most acks a run held back for more to join it stands for (see
/// [`ConnectionCore::ack_run_may_wait`]).
pub const ACK_RUN_MAX: u32 = 64;

/// Acks of consecutive oldest deliveries on one channel, written as one.
#[derive(Debug, Clone, Copy)]
struct AckRun {
    channel: ChannelId,
    /// The last (highest) tag acked.
    upto: u64,
    /// How many acks it stands for.
    count: u32,
}

/// One connection's protocol state. See the module docs.
pub struct ConnectionCore<T> {
    config: ConnectionConfig,
    state: ConnectionState,
    tune: Tune,
    limits: Limits,
    /// Bytes to write. Written through [`output`](Self::output), which first writes the
    /// pending ack run, so frames keep the order they were made in.
    out: OutputBuffer,
    /// Acks of the oldest unacked deliveries of one channel, made one by one and not written
    /// yet: they go out as one basic.ack (see `channel::Unacked`).
    pending_ack: Option<AckRun>,
    events: VecDeque<Event<T>>,
    channels: BTreeMap<ChannelId, ChannelCore<T>>,
    /// Channels the server closed, with its reason: requests that were already on their way
    /// fail with it rather than a vague "closed". The numbers are reused last.
    closed_channels: BTreeMap<ChannelId, Error>,
    /// Requests on channel 0 (connection.close, connection.update-secret) and their tokens.
    connection_pending: VecDeque<(u16, T)>,
    last_received: Instant,
    last_sent: Instant,
    close_reason: Option<Error>,
    blocked: bool,
    /// connection.start's server properties, handed up with [`Event::Connected`].
    server_properties: FieldTable,
}

impl<T> ConnectionCore<T> {
    /// Starts a connection: the protocol header is the first output.
    pub fn new(config: ConnectionConfig, now: Instant) -> Self {
        let mut output = OutputBuffer::with_capacity(8192);
        output.encoded_mut().put_slice(&amqp_codec::PROTOCOL_HEADER);
        ConnectionCore {
            config,
            state: ConnectionState::AwaitingStart,
            // Until tune settles it, accept frames up to RabbitMQ's largest offer.
            tune: Tune {
                channel_max: 0,
                frame_max: amqp_codec::constants::RABBITMQ_FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            limits: Limits::with_frame_max(131_072),
            out: output,
            pending_ack: None,
            events: VecDeque::new(),
            channels: BTreeMap::new(),
            closed_channels: BTreeMap::new(),
            connection_pending: VecDeque::new(),
            last_received: now,
            last_sent: now,
            close_reason: None,
            blocked: false,
            server_properties: FieldTable::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The negotiated limits (meaningful once open).
    pub fn tune(&self) -> Tune {
        self.tune
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<&Error> {
        self.close_reason.as_ref()
    }

    /// Whether the server has blocked publishers (connection.blocked).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether `channel` is open and usable.
    pub fn is_channel_open(&self, channel: ChannelId) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|c| c.state == ChannelState::Open)
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds bytes read from the socket; decoded frames are consumed from `input`.
    pub fn handle_input(&mut self, input: &mut BytesMut, now: Instant) {
        while self.state != ConnectionState::Closed {
            match decode(input, &self.limits) {
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Ok(None) => break,
                Err(err) => {
                    // The stream is out of step: say why, and give up on it.
                    self.send_connection_close(err.reply_code(), &err.to_string());
                    self.terminate(Error::Protocol(err));
                    break;
                }
            }
        }
    }

    /// The socket reached end of file (or failed): the server is gone.
    pub fn handle_eof(&mut self, io_error: Option<std::io::Error>) {
        if self.state == ConnectionState::Closed {
            return;
        }
        let err = match (self.state, io_error) {
            (ConnectionState::AwaitingTune, None) => Error::AuthenticationFailed(
                "the server closed the socket after connection.start-ok (bad credentials?)".into(),
            ),
            (_, Some(err)) => Error::from(err),
            (_, None) => Error::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the socket without connection.close",
            )),
        };
        self.terminate(err);
    }

    /// Advances timers: sends a heartbeat when due, and declares the server dead after two
    /// silent heartbeat intervals.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(interval) = self.heartbeat_interval() else {
            return;
        };
        if now.saturating_duration_since(self.last_received) >= interval * 2 {
            self.terminate(Error::HeartbeatTimeout(interval.as_secs() * 2));
            return;
        }
        if now.saturating_duration_since(self.last_sent) >= interval / 2 && !self.has_output() {
            let _ = Frame::Heartbeat.encode(self.output(), 0);
        }
    }

    /// Tells the core that the layer above stopped reading the socket on purpose (a consumer
    /// is not keeping up), so silence from the server is not its fault.
    pub fn reading_paused(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must run, if any. While output
    /// waits to be taken, no heartbeat is due (the output goes first), only the silence check.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let interval = self.heartbeat_interval()?;
        let silence = self.last_received + interval * 2;
        if !self.has_output() {
            Some((self.last_sent + interval / 2).min(silence))
        } else {
            Some(silence)
        }
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        match self.state {
            ConnectionState::Open | ConnectionState::Closing if self.tune.heartbeat > 0 => {
                Some(Duration::from_secs(u64::from(self.tune.heartbeat)))
            }
            _ => None,
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Takes the bytes to write, if any; `now` records when traffic last went out.
    pub fn take_output(&mut self, now: Instant) -> Option<Output> {
        self.flush_pending_ack();
        if self.out.is_empty() {
            return None;
        }
        self.last_sent = now;
        Some(self.out.take())
    }

    /// When the only thing waiting to be written is a run of acks (see [`send`](Self::send)):
    /// its channel and how many acks it stands for. A driver may wait for more acks to join
    /// it before taking the output.
    pub fn ack_run_alone(&self) -> Option<(ChannelId, u32)> {
        match &self.pending_ack {
            Some(run) if self.out.is_empty() => Some((run.channel, run.count)),
            _ => None,
        }
    }

    /// Whether the run of acks waiting alone to be written (see
    /// [`ack_run_alone`](Self::ack_run_alone)) may wait for more acks to join it, so that the
    /// server settles many deliveries from one `basic.ack multiple=true` (RabbitMQ's cost is
    /// per ack frame, not per delivery acked). It may wait while it stands for fewer than
    /// [`ACK_RUN_MAX`] acks and a consumer of the channel still has deliveries its
    /// application has not taken (`consumer_has_more`, which only the driver knows): its
    /// next acks are coming.
    ///
    /// With nothing more in hand, the run never waits, however small it is next to the
    /// prefetch window: the client cannot see the deliveries still on their way, so the
    /// server may have used up its window and wait for exactly these acks (measured against
    /// RabbitMQ 3.10, holding them up to 1 ms while under a quarter of a window of 1000 gave
    /// no gain). Nor without a window: an ack the application made is the broker's soon,
    /// whatever happens to the process next. So a consumer with prefetch 1 never waits. The
    /// driver bounds the wait in time; taking the output, or writing any other frame, ends
    /// it.
    pub fn ack_run_may_wait(&self, consumer_has_more: impl FnOnce(ChannelId) -> bool) -> bool {
        let Some((channel, count)) = self.ack_run_alone() else {
            return false;
        };
        self.channels.contains_key(&channel) && count < ACK_RUN_MAX && consumer_has_more(channel)
    }

    /// Whether bytes are waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.pending_ack.is_some()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    // ---- requests -----------------------------------------------------------------------

    /// Opens a channel on the lowest free number, preferring numbers the server did not just
    /// close (a request still on its way to a closed channel must not reach its successor).
    /// `token` is made from the number chosen and comes back with channel.open-ok (or with
    /// the error, if no channel could be opened).
    pub fn open_channel(&mut self, token: impl FnOnce(ChannelId) -> T) -> Result<ChannelId, Error> {
        let max = self.tune.max_channel();
        let free = self.check_open().and_then(|()| {
            let mut free = (1..=max).filter(|id| !self.channels.contains_key(id));
            let lowest = free.next().ok_or(Error::NoFreeChannel(max))?;
            Ok(std::iter::once(lowest)
                .chain(free)
                .find(|id| !self.closed_channels.contains_key(id))
                .unwrap_or(lowest))
        });
        let id = match free.and_then(|id| self.write_method(id, ChannelOpen.into()).map(|()| id)) {
            Ok(id) => id,
            Err(err) => return self.reject(token(0), err),
        };
        self.closed_channels.remove(&id);
        let mut channel = ChannelCore::new();
        channel.expect_reply(&Method::ChannelOpen(ChannelOpen), token(id));
        self.channels.insert(id, channel);
        Ok(id)
    }

    /// Hands `token` back with `err` (as an [`Event::Reply`]) and returns the error too.
    /// Requests never lose their token: whoever waits on it always hears back.
    fn reject<R>(&mut self, token: T, err: Error) -> Result<R, Error> {
        self.events.push_back(Event::Reply {
            token,
            result: Err(err.clone()),
        });
        Err(err)
    }

    /// Sends a synchronous method on an open channel; `token` comes back with its reply.
    /// Methods with no reply (basic.ack, no-wait variants) should go through
    /// [`send`](Self::send) instead.
    pub fn call(&mut self, channel: ChannelId, method: Method, token: T) -> Result<(), Error> {
        if let Err(err) = self.check_channel(channel) {
            return self.reject(token, err);
        }
        self.note_outgoing(channel, &method);
        let expects_reply = !responses(&method).is_empty() && !has_no_wait(&method);
        let key = Method::clone(&method);
        if let Err(err) = self.write_method(channel, method) {
            return self.reject(token, err);
        }
        if let Some(c) = self.channels.get_mut(&channel) {
            if expects_reply {
                c.expect_reply(&key, token);
            } else {
                self.events.push_back(Event::Reply {
                    token,
                    result: Ok(Box::new(Command {
                        method: key,
                        content: None,
                    })),
                });
            }
        }
        Ok(())
    }

    /// Sends a method that gets no reply (basic.ack, basic.nack, basic.reject, a no-wait
    /// method). Nothing waits for the socket.
    ///
    /// Single acks of a channel's oldest unacked deliveries, sent one after the other, are
    /// written as one basic.ack with `multiple` set when the output is taken (or when any
    /// other frame is written first): the server settles exactly the same deliveries, from
    /// one frame instead of many.
    pub fn send(&mut self, channel: ChannelId, method: Method) -> Result<(), Error> {
        self.check_channel(channel)?;
        if let Method::BasicAck(BasicAck {
            delivery_tag,
            multiple: false,
        }) = method
        {
            if self.join_ack_run(channel, delivery_tag) {
                return Ok(());
            }
        }
        self.note_outgoing(channel, &method);
        self.write_method(channel, method)
    }

    /// Adds an ack to the pending run if it acks the channel's oldest unacked delivery.
    fn join_ack_run(&mut self, channel: ChannelId, delivery_tag: u64) -> bool {
        let Some(c) = self.channels.get_mut(&channel) else {
            return false;
        };
        if !c.unacked.take_oldest(delivery_tag) {
            return false;
        }
        match &mut self.pending_ack {
            Some(run) if run.channel == channel => {
                run.upto = delivery_tag;
                run.count += 1;
            }
            _ => {
                self.flush_pending_ack();
                self.pending_ack = Some(AckRun {
                    channel,
                    upto: delivery_tag,
                    count: 1,
                });
            }
        }
        true
    }

    /// Writes the pending ack run: one basic.ack, `multiple` if it stands for several.
    fn flush_pending_ack(&mut self) {
        if let Some(run) = self.pending_ack.take() {
            let ack = BasicAck {
                delivery_tag: run.upto,
                multiple: run.count > 1,
            };
            let _ = Frame::Method(run.channel, ack.into()).encode(self.out.encoded_mut(), 0);
        }
    }

    /// Where frames are written: after the pending ack run, which was made before them.
    fn output(&mut self) -> &mut BytesMut {
        self.flush_pending_ack();
        self.out.encoded_mut()
    }

    /// Publishes a message: basic.publish, its content header and body frames. Returns the
    /// publish sequence number when the channel is in confirm mode.
    ///
    /// A body of up to [`COPY_BODY_MAX`] octets is copied into the output with its frames
    /// (one contiguous write for many small messages); a larger one is not copied at all: its
    /// body frames' payloads go out as slices of `body`, between their headers and end octets.
    pub fn publish(
        &mut self,
        channel: ChannelId,
        publish: BasicPublish,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<Option<u64>, Error> {
        self.check_channel(channel)?;
        let method = Method::BasicPublish(publish);
        let frame_max = self.tune.frame_max;
        if body.len() <= COPY_BODY_MAX {
            encode_content(
                self.output(),
                channel,
                &method,
                properties,
                &body,
                frame_max,
            )?;
        } else {
            let size = body.len() as u64;
            encode_content_head(self.output(), channel, &method, properties, size, frame_max)?;
            self.out.put_body_frames(channel, &body, frame_max);
        }
        Ok(self
            .channels
            .get_mut(&channel)
            .and_then(ChannelCore::next_publish_seq))
    }

    /// Closes a channel (channel.close 200); `token` comes back with close-ok. Requests still
    /// waiting on it fail now: the server's replies to them will be discarded (spec 1.5.2.5).
    pub fn close_channel(&mut self, channel: ChannelId, token: T) -> Result<(), Error> {
        if let Err(err) = self.check_channel(channel) {
            return self.reject(token, err);
        }
        let close = ChannelClose {
            reply_code: ReplyCode::REPLY_SUCCESS.0,
            reply_text: ShortString::from_static("Goodbye"),
            class_id: 0,
            method_id: 0,
        };
        if let Err(err) = self.write_method(channel, close.into()) {
            return self.reject(token, err);
        }
        if let Some(c) = self.channels.get_mut(&channel) {
            c.state = ChannelState::Closing;
            for token in c.take_pending() {
                self.events.push_back(Event::Reply {
                    token,
                    result: Err(Error::ChannelClosedLocally),
                });
            }
            c.close_token = Some(token);
        }
        Ok(())
    }

    /// Closes the connection (connection.close 200); `token` comes back with close-ok.
    pub fn close(&mut self, token: T) -> Result<(), Error> {
        if matches!(
            self.state,
            ConnectionState::Closing | ConnectionState::Closed
        ) {
            let err = self
                .close_reason
                .clone()
                .unwrap_or(Error::ConnectionClosedLocally);
            return self.reject(token, err);
        }
        self.send_connection_close(ReplyCode::REPLY_SUCCESS, "Goodbye");
        self.fail_channels(&Error::ConnectionClosedLocally);
        self.connection_pending
            .push_back((ConnectionCloseOk::METHOD_ID, token));
        Ok(())
    }

    /// Sends connection.update-secret (a refreshed OAuth 2 token); `token` comes back with
    /// update-secret-ok.
    pub fn update_secret(
        &mut self,
        secret: LongString,
        reason: &str,
        token: T,
    ) -> Result<(), Error> {
        let method = ConnectionUpdateSecret {
            new_secret: secret,
            reason: reason.into(),
        };
        if let Err(err) = self
            .check_open()
            .and_then(|()| self.write_method(0, method.into()))
        {
            return self.reject(token, err);
        }
        self.connection_pending
            .push_back((ConnectionUpdateSecretOk::METHOD_ID, token));
        Ok(())
    }

    // ---- internals ----------------------------------------------------------------------

    fn check_open(&self) -> Result<(), Error> {
        match self.state {
            ConnectionState::Open => Ok(()),
            ConnectionState::Closing | ConnectionState::Closed => Err(self
                .close_reason
                .clone()
                .unwrap_or(Error::ConnectionClosedLocally)),
            _ => Err(Error::UnexpectedFrame(
                "the connection is not open yet".into(),
            )),
        }
    }

    fn check_channel(&self, channel: ChannelId) -> Result<(), Error> {
        self.check_open()?;
        match self.channels.get(&channel) {
            Some(c) if c.state == ChannelState::Open => Ok(()),
            Some(_) => Err(Error::ChannelClosedLocally),
            None => Err(self
                .closed_channels
                .get(&channel)
                .cloned()
                .unwrap_or(Error::ChannelClosedLocally)),
        }
    }

    /// Bookkeeping for methods that change the channel's mode or its unacked deliveries.
    fn note_outgoing(&mut self, channel: ChannelId, method: &Method) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if let Method::ConfirmSelect(_) = method {
            c.enter_confirm_mode();
        }
        c.unacked.sent(method);
    }

    fn write_method(&mut self, channel: ChannelId, method: Method) -> Result<(), Error> {
        let frame_max = self.tune.frame_max;
        Frame::Method(channel, method).encode(self.output(), frame_max)?;
        Ok(())
    }

    fn send_connection_close(&mut self, code: ReplyCode, text: &str) {
        let mut text = text.to_owned();
        text.truncate(255);
        while !text.is_char_boundary(text.len()) {
            text.pop();
        }
        let close = ConnectionClose {
            reply_code: code.0,
            reply_text: text.into(),
            class_id: 0,
            method_id: 0,
        };
        let _ = Frame::Method(0, close.into()).encode(self.output(), 0);
        if self.state != ConnectionState::Closed {
            self.state = ConnectionState::Closing;
        }
    }

    /// Ends every channel's pending requests with `err`, and the channels with them.
    fn fail_channels(&mut self, err: &Error) {
        for (id, mut channel) in std::mem::take(&mut self.channels) {
            for token in channel.take_pending() {
                self.events.push_back(Event::Reply {
                    token,
                    result: Err(err.clone()),
                });
            }
            if let Some(token) = channel.close_token.take() {
                self.events.push_back(Event::Reply {
                    token,
                    result: Err(err.clone()),
                });
            }
            self.events.push_back(Event::ChannelClosed {
                channel: id,
                error: Some(err.clone()),
            });
        }
    }

    /// The connection is over: fail everything still waiting, and say so once.
    fn terminate(&mut self, err: Error) {
        if self.state == ConnectionState::Closed {
            return;
        }
        self.fail_channels(&err);
        for (_, token) in std::mem::take(&mut self.connection_pending) {
            self.events.push_back(Event::Reply {
                token,
                result: Err(err.clone()),
            });
        }
        self.state = ConnectionState::Closed;
        self.close_reason = Some(err.clone());
        self.events.push_back(Event::Closed(err));
    }

    /// A well-formed frame that breaks the protocol: close with `code` and give up.
    fn protocol_violation(&mut self, code: ReplyCode, text: String) {
        self.send_connection_close(code, &text);
        self.terminate(Error::UnexpectedFrame(text));
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        self.last_received = now;
        if self.state == ConnectionState::Closing && frame.channel() != 0 {
            // After connection.close only close and close-ok count (spec 1.4.2.9).
            return;
        }
        match frame {
            Frame::Heartbeat => {}
            Frame::ProtocolHeader(header) => {
                let [_, major, minor, revision] = header.version;
                // A server answers a protocol header with its own only to refuse the
                // connection (spec 4.2.2): it does not take ours, whatever it speaks.
                self.terminate(Error::UnexpectedFrame(format!(
                    "the server refused the connection, answering with its own protocol header (AMQP {major}-{minor}-{revision})"
                )));
            }
            Frame::Method(0, method) => self.handle_connection_method(method),
            Frame::Header(0, _) | Frame::Body(0, _) => self.protocol_violation(
                ReplyCode::UNEXPECTED_FRAME,
                "content frame on channel 0".into(),
            ),
            frame => self.handle_channel_frame(frame),
        }
    }

    fn handle_connection_method(&mut self, method: Method) {
        match (self.state, method) {
            (ConnectionState::AwaitingStart, Method::ConnectionStart(start)) => {
                self.on_start(start)
            }
            (ConnectionState::AwaitingTune, Method::ConnectionTune(tune)) => self.on_tune(tune),
            (ConnectionState::AwaitingOpenOk, Method::ConnectionOpenOk(_)) => {
                self.state = ConnectionState::Open;
                self.events.push_back(Event::Connected {
                    server_properties: std::mem::take(&mut self.server_properties),
                    tune: self.tune,
                });
            }
            (_, Method::ConnectionClose(close)) => {
                let _ = Frame::Method(0, ConnectionCloseOk.into()).encode(self.output(), 0);
                let server_close = ServerClose {
                    code: ReplyCode(close.reply_code),
                    text: close.reply_text,
                    class_id: close.class_id,
                    method_id: close.method_id,
                };
                let err = match self.state {
                    ConnectionState::AwaitingStart
                    | ConnectionState::AwaitingTune
                    | ConnectionState::AwaitingOpenOk
                        if server_close.code == ReplyCode::ACCESS_REFUSED =>
                    {
                        Error::AuthenticationFailed(server_close.text.to_string())
                    }
                    _ => Error::ConnectionClosed(server_close),
                };
                self.terminate(err);
            }
            (ConnectionState::Closing, Method::ConnectionCloseOk(_)) => {
                let token = self
                    .connection_pending
                    .iter()
                    .position(|(id, _)| *id == ConnectionCloseOk::METHOD_ID)
                    .and_then(|at| self.connection_pending.remove(at));
                if let Some((_, token)) = token {
                    self.events.push_back(Event::Reply {
                        token,
                        result: Ok(Box::new(Command {
                            method: ConnectionCloseOk.into(),
                            content: None,
                        })),
                    });
                }
                self.terminate(Error::ConnectionClosedLocally);
            }
            // After we sent connection.close, everything else is discarded (spec 1.4.2.9).
            (ConnectionState::Closing, _) => {}
            (ConnectionState::Open, Method::ConnectionBlocked(blocked)) => {
                self.blocked = true;
                self.events.push_back(Event::Blocked {
                    reason: blocked.reason,
                });
            }
            (ConnectionState::Open, Method::ConnectionUnblocked(_)) => {
                self.blocked = false;
                self.events.push_back(Event::Unblocked);
            }
            (ConnectionState::Open, Method::ConnectionUpdateSecretOk(ok)) => {
                match self
                    .connection_pending
                    .iter()
                    .position(|(id, _)| *id == ConnectionUpdateSecretOk::METHOD_ID)
                    .and_then(|at| self.connection_pending.remove(at))
                {
                    Some((_, token)) => self.events.push_back(Event::Reply {
                        token,
                        result: Ok(Box::new(Command {
                            method: ok.into(),
                            content: None,
                        })),
                    }),
                    None => self.protocol_violation(
                        ReplyCode::COMMAND_INVALID,
                        "connection.update-secret-ok without update-secret".into(),
                    ),
                }
            }
            (state, method) => self.protocol_violation(
                ReplyCode::COMMAND_INVALID,
                format!("unexpected {} in state {state:?}", method.name()),
            ),
        }
    }

    fn on_start(&mut self, start: ConnectionStart) {
        if (start.version_major, start.version_minor) != (0, 9) {
            self.terminate(Error::UnexpectedFrame(format!(
                "server speaks AMQP {}-{}, not 0-9",
                start.version_major, start.version_minor
            )));
            return;
        }
        let mechanism = self.config.uri.auth_mechanism.name();
        let offered = start.mechanisms.to_str_lossy();
        if !offered.split(' ').any(|m| m == mechanism) {
            self.terminate(Error::AuthenticationFailed(format!(
                "the server offers {offered:?}, not {mechanism}"
            )));
            return;
        }
        self.server_properties = start.server_properties;
        let start_ok = ConnectionStartOk {
            client_properties: self.config.client_properties(),
            mechanism: ShortString::from_static(mechanism),
            response: self.config.sasl_response(),
            locale: ShortString::from_static("en_US"),
        };
        if let Err(err) = self.write_method(0, start_ok.into()) {
            self.terminate(err);
            return;
        }
        self.state = ConnectionState::AwaitingTune;
    }

    fn on_tune(&mut self, offer: ConnectionTune) {
        let uri = &self.config.uri;
        let offer = Tune {
            channel_max: offer.channel_max,
            frame_max: offer.frame_max,
            heartbeat: offer.heartbeat,
        };
        let tune = client_tune_ok(offer, uri.channel_max, uri.frame_max, uri.heartbeat);
        let tune_ok = ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: tune.heartbeat,
        };
        let open = ConnectionOpen {
            virtual_host: uri.vhost.as_str().into(),
        };
        self.tune = tune;
        self.limits = Limits::with_frame_max(tune.frame_max);
        let written = self
            .write_method(0, tune_ok.into())
            .and_then(|()| self.write_method(0, open.into()));
        match written {
            Ok(()) => self.state = ConnectionState::AwaitingOpenOk,
            Err(err) => self.terminate(err),
        }
    }

    fn handle_channel_frame(&mut self, frame: Frame) {
        let id = frame.channel();
        let Some(channel) = self.channels.get_mut(&id) else {
            // A close-ok for a channel whose close raced with the server's is harmless.
            if matches!(&frame, Frame::Method(_, Method::ChannelCloseOk(_))) {
                return;
            }
            self.protocol_violation(
                ReplyCode::CHANNEL_ERROR,
                format!("frame on channel {id}, which is not open"),
            );
            return;
        };
        match channel.assembler.feed(frame) {
            Ok(Some(command)) => self.handle_channel_command(id, command),
            Ok(None) => {}
            Err(err) if !err.reply_code().is_hard_error() => {
                // A body over the size limit: a channel error, as RabbitMQ makes it.
                self.protocol_violation(err.reply_code(), err.to_string());
            }
            Err(err) => {
                self.send_connection_close(err.reply_code(), &err.to_string());
                self.terminate(Error::Protocol(err));
            }
        }
    }

    fn handle_channel_command(&mut self, id: ChannelId, command: Command) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        if channel.state == ChannelState::Closing {
            // Only close and close-ok matter once we sent channel.close (spec 1.5.2.5).
            match command.method {
                Method::ChannelCloseOk(_) => {
                    if let Some(mut channel) = self.channels.remove(&id) {
                        if let Some(token) = channel.close_token.take() {
                            self.events.push_back(Event::Reply {
                                token,
                                result: Ok(Box::new(command)),
                            });
                        }
                    }
                    self.events.push_back(Event::ChannelClosed {
                        channel: id,
                        error: None,
                    });
                }
                Method::ChannelClose(_) => {
                    let _ = Frame::Method(id, ChannelCloseOk.into()).encode(self.output(), 0);
                    if let Some(mut channel) = self.channels.remove(&id) {
                        if let Some(token) = channel.close_token.take() {
                            self.events.push_back(Event::Reply {
                                token,
                                result: Ok(Box::new(command)),
                            });
                        }
                    }
                    self.events.push_back(Event::ChannelClosed {
                        channel: id,
                        error: None,
                    });
                }
                _ => {}
            }
            return;
        }
        match command.method {
            Method::BasicDeliver(deliver) => {
                channel
                    .unacked
                    .delivered_to(&deliver.consumer_tag, deliver.delivery_tag);
                if let Some(message) = Message::new(deliver, command.content) {
                    self.events.push_back(Event::Delivery {
                        channel: id,
                        message,
                    });
                }
            }
            Method::BasicReturn(ret) => {
                if let Some(message) = Message::new(ret, command.content) {
                    self.events.push_back(Event::Return {
                        channel: id,
                        message,
                    });
                }
            }
            Method::BasicAck(ack) if channel.in_confirm_mode() => {
                self.events.push_back(Event::Confirm {
                    channel: id,
                    delivery_tag: ack.delivery_tag,
                    multiple: ack.multiple,
                    ack: true,
                })
            }
            Method::BasicNack(nack) if channel.in_confirm_mode() => {
                self.events.push_back(Event::Confirm {
                    channel: id,
                    delivery_tag: nack.delivery_tag,
                    multiple: nack.multiple,
                    ack: false,
                })
            }
            Method::BasicCancel(cancel) => {
                channel.unacked.consumer_ended(&cancel.consumer_tag);
                if !cancel.no_wait {
                    let ok = BasicCancelOk {
                        consumer_tag: cancel.consumer_tag.clone(),
                    };
                    let _ = Frame::Method(id, ok.into()).encode(self.output(), 0);
                }
                self.events.push_back(Event::ConsumerCancelled {
                    channel: id,
                    consumer_tag: cancel.consumer_tag,
                });
            }
            Method::ChannelFlow(flow) => {
                let ok = ChannelFlowOk {
                    active: flow.active,
                };
                let _ = Frame::Method(id, ok.into()).encode(self.output(), 0);
            }
            Method::ChannelClose(close) => {
                let _ = Frame::Method(id, ChannelCloseOk.into()).encode(self.output(), 0);
                let err = Error::ChannelClosed(ServerClose {
                    code: ReplyCode(close.reply_code),
                    text: close.reply_text,
                    class_id: close.class_id,
                    method_id: close.method_id,
                });
                if let Some(mut channel) = self.channels.remove(&id) {
                    for token in channel.take_pending() {
                        self.events.push_back(Event::Reply {
                            token,
                            result: Err(err.clone()),
                        });
                    }
                }
                self.closed_channels.insert(id, err.clone());
                self.events.push_back(Event::ChannelClosed {
                    channel: id,
                    error: Some(err),
                });
            }
            _ => match channel.take_reply_token(&command.method) {
                Some(token) => {
                    if matches!(command.method, Method::ChannelOpenOk(_)) {
                        channel.state = ChannelState::Open;
                    }
                    self.events.push_back(Event::Reply {
                        token,
                        result: Ok(Box::new(command)),
                    });
                }
                None => self.protocol_violation(
                    ReplyCode::COMMAND_INVALID,
                    format!("unexpected {} on channel {id}", command.method.name()),
                ),
            },
        }
    }
}

/// Whether a method's no-wait bit is set: then the server sends no reply.
fn has_no_wait(method: &Method) -> bool {
    let mut no_wait = false;
    method.for_each_field(&mut |name, value| {
        if let ("no-wait" | "nowait", amqp_codec::spec::FieldRef::Bit(true)) = (name, value) {
            no_wait = true;
        }
    });
    no_wait
}

/// Reads a boolean capability from a server-properties table.
pub fn server_capability(server_properties: &FieldTable, name: &str) -> bool {
    match server_properties.get("capabilities") {
        Some(FieldValue::Table(capabilities)) => {
            matches!(capabilities.get(name), Some(FieldValue::Bool(true)))
        }
        _ => false,
    }
}
