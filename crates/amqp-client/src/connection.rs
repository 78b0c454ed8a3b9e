//! The async layer: one tokio task per connection owns the socket and the protocol core;
//! cheap cloneable [`Connection`] and [`Channel`] handles talk to it over a bounded queue.
//!
//! ```text
//!  Channel ─┐  Request (bounded queue)  ┌──────────── connection task ────────────┐
//!  Channel ─┼──────────────────────────►│ ConnectionCore (sans-IO)                │◄──► TCP
//!  Connection┘  oneshot replies,        │ read ► handle_input   take_output ► write│
//!               delivery streams ◄──────│ events ► replies, consumers, confirms    │
//!                                       └──────────────────────────────────────────┘
//! ```
//!
//! The task only moves bytes, requests and events; every protocol decision is the core's.
//! When the task ends, for whatever reason, every pending reply, confirm and consumer is
//! ended with the error that ended the connection: nothing waits forever.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use amqp_codec::methods::{BasicAck, BasicDeliver, BasicNack, BasicReject};
use amqp_codec::trace::Tracer;
use amqp_codec::tune::Tune;
use amqp_codec::{
    BasicProperties, ChannelId, Command, FieldTable, LongString, Method, ShortString,
};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::{Channel, ChannelShared};
use crate::consumer::{Consumer, DeliveryItem, Returned};
use crate::core::{ConnectionConfig, ConnectionCore, ConnectionState, Event, Message, Output};
use crate::error::Error;
use crate::queue::{self, TrySendError};
use crate::uri::AmqpUri;

/// How many requests may queue up for the connection task before callers wait.
const REQUEST_QUEUE: usize = 1024;
/// How many deliveries a consumer buffers before the connection stops reading the socket.
pub const DEFAULT_CONSUMER_BUFFER: usize = 1024;

/// The longest acks are held back for more to join them.
const ACK_HOLD_MAX: Duration = Duration::from_millis(1);
/// The read buffer's size: what one read may bring in. Frames are split off it and handed
/// up without a copy (bodies stay slices of it), so it is only reused once they are all gone;
/// until then a fresh one is taken, and the unfinished frame at its end is copied over. The
/// larger it is, the rarer that copy: once per this many octets read.
const READ_BUFFER: usize = 256 * 1024;
/// A read needs at least this much free room; with less, a fresh read buffer is taken.
const READ_MIN_ROOM: usize = 16 * 1024;
/// At most this many pieces of output go into one vectored write (a large message is three:
/// its frames before the body, the body, and what follows).
const MAX_WRITE_SLICES: usize = 64;
/// How long the TCP connect plus handshake may take unless the URI says otherwise.
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of a publish in confirm mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// basic.ack: the broker took responsibility for the message (for a persistent message
    /// to a durable queue: it is on disk).
    Ack,
    /// basic.nack: the broker could not take the message.
    Nack,
    /// The channel is not in confirm mode: nothing was asked.
    NotRequested,
}

/// A request from a handle to the connection task.
///
/// Requests are kept small (about 130 octets) because every one is moved into the request
/// queue and out again: the frequent ones (publishes, acks) carry their fields inline, with a
/// publish's properties boxed only when it has any; the rare ones box their method.
pub(crate) enum Request {
    OpenChannel {
        shared: Arc<ChannelShared>,
        reply: oneshot::Sender<Result<ChannelId, Error>>,
    },
    Call {
        channel: ChannelId,
        method: Box<Method>,
        reply: oneshot::Sender<Result<Command, Error>>,
    },
    Consume {
        channel: ChannelId,
        method: Box<Method>,
        buffer: usize,
        reply: oneshot::Sender<Result<Consumer, Error>>,
    },
    Acknowledge {
        channel: ChannelId,
        ack: Acknowledgement,
    },
    Publish {
        channel: ChannelId,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        properties: Option<Box<BasicProperties>>,
        body: Bytes,
        confirm: Option<oneshot::Sender<Result<Confirmation, Error>>>,
    },
    WaitForConfirms {
        channel: ChannelId,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    Returns {
        channel: ChannelId,
        sender: mpsc::Sender<Returned>,
    },
    CloseChannel {
        channel: ChannelId,
        reply: oneshot::Sender<Result<Command, Error>>,
    },
    UpdateSecret {
        secret: LongString,
        reason: String,
        reply: oneshot::Sender<Result<Command, Error>>,
    },
    Close {
        reply: oneshot::Sender<Result<Command, Error>>,
    },
}

/// What a consumer says about a delivery: basic.ack, basic.nack or basic.reject. None of them
/// gets a reply.
#[derive(Debug, Clone)]
pub(crate) enum Acknowledgement {
    Ack(BasicAck),
    Nack(BasicNack),
    Reject(BasicReject),
}

impl From<Acknowledgement> for Method {
    fn from(ack: Acknowledgement) -> Method {
        match ack {
            Acknowledgement::Ack(ack) => ack.into(),
            Acknowledgement::Nack(nack) => nack.into(),
            Acknowledgement::Reject(reject) => reject.into(),
        }
    }
}

/// What the core hands back with a reply: where the reply goes.
pub(crate) enum Token {
    Reply(oneshot::Sender<Result<Command, Error>>),
    OpenChannel {
        id: ChannelId,
        shared: Arc<ChannelShared>,
        reply: oneshot::Sender<Result<ChannelId, Error>>,
    },
    /// basic.cancel: its cancel-ok ends the consumer's stream.
    Cancel {
        channel: ChannelId,
        reply: oneshot::Sender<Result<Command, Error>>,
    },
    Consume {
        channel: ChannelId,
        buffer: usize,
        reply: oneshot::Sender<Result<Consumer, Error>>,
    },
}

/// State shared by the task and every handle.
pub(crate) struct Shared {
    /// Why the connection ended, once it has.
    pub(crate) close_reason: Mutex<Option<Error>>,
    /// Whether the server blocked publishers (connection.blocked): read by every publish,
    /// so a plain flag rather than the watch's lock.
    pub(crate) blocked_now: AtomicBool,
    /// The same, for those who wait for a change.
    pub(crate) blocked: watch::Receiver<bool>,
    pub(crate) server_properties: FieldTable,
    pub(crate) tune: Tune,
}

impl Shared {
    /// The error to report for a call that found the connection gone.
    pub(crate) fn closed_error(&self) -> Error {
        self.close_reason
            .lock()
            .ok()
            .and_then(|reason| reason.clone())
            .unwrap_or(Error::ConnectionClosedLocally)
    }
}

/// A connection to an AMQP 0-9-1 broker. Cheap to clone; the connection lives until it is
/// closed or every handle (connections and channels) is dropped.
#[derive(Clone)]
pub struct Connection {
    pub(crate) requests: queue::Sender<Request>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tune", &self.shared.tune)
            .finish()
    }
}

impl Connection {
    /// Connects to the broker at an `amqp://` URI (see [`AmqpUri`]) and completes the AMQP
    /// handshake: protocol header, start/start-ok (SASL), tune/tune-ok, open/open-ok.
    pub async fn open(uri: &str) -> Result<Connection, Error> {
        Connection::open_with(ConnectionConfig::new(AmqpUri::parse(uri)?)).await
    }

    /// Connects with a full configuration (connection name and so on).
    pub async fn open_with(config: ConnectionConfig) -> Result<Connection, Error> {
        let timeout = config
            .uri
            .connection_timeout
            .unwrap_or(DEFAULT_CONNECTION_TIMEOUT);
        match tokio::time::timeout(timeout, Connection::connect(config)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(
                "connecting and completing the AMQP handshake",
            )),
        }
    }

    async fn connect(config: ConnectionConfig) -> Result<Connection, Error> {
        let socket = TcpStream::connect(config.uri.socket_address()).await?;
        socket.set_nodelay(true)?;
        // AMQP_TRACE=1: every frame on stderr. Off, it is an empty Option.
        let tracer = match socket.peer_addr() {
            Ok(peer) => Tracer::new("client", peer),
            Err(_) => Tracer::new("client", config.uri.socket_address()),
        };
        let (requests, request_rx) = queue::bounded(REQUEST_QUEUE);
        let (blocked_tx, blocked_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = ConnectionTask {
            core: ConnectionCore::new(config, Instant::now()),
            socket,
            tracer,
            read_buf: BytesMut::with_capacity(READ_BUFFER),
            requests: request_rx,
            blocked: blocked_tx,
            blocked_rx,
            ready: Some(ready_tx),
            shared: None,
            consumers: Consumers::default(),
            confirms: BTreeMap::new(),
            returns: HashMap::new(),
            channels: HashMap::new(),
            stalled: None,
            to_wake: Vec::new(),
            acks_held_until: None,
        };
        tokio::spawn(task.run());
        let shared = ready_rx
            .await
            .map_err(|_| Error::ConnectionClosedLocally)??;
        Ok(Connection { requests, shared })
    }

    /// Opens a new channel (channel.open).
    pub async fn create_channel(&self) -> Result<Channel, Error> {
        let (reply, rx) = oneshot::channel();
        let shared = ChannelShared::new();
        self.send(Request::OpenChannel {
            shared: shared.clone(),
            reply,
        })
        .await?;
        let id = rx.await.map_err(|_| self.shared.closed_error())??;
        Ok(Channel::new(id, self.clone(), shared))
    }

    /// Closes the connection (connection.close 200, waiting for close-ok). Every channel
    /// closes with it; their pending calls fail with [`Error::ConnectionClosedLocally`].
    /// Closing a connection this side already closed is a no-op; one the server closed (or
    /// lost) answers with why it ended.
    pub async fn close(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        match self.send(Request::Close { reply }).await {
            Ok(()) | Err(Error::ConnectionClosedLocally) => {}
            Err(err) => return Err(err),
        }
        match rx.await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(Error::ConnectionClosedLocally)) => Ok(()),
            Ok(Err(err)) => Err(err),
        }
    }

    /// Sends connection.update-secret with a new secret (an OAuth 2 token), waiting for
    /// update-secret-ok.
    pub async fn update_secret(&self, secret: &str, reason: &str) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::UpdateSecret {
            secret: secret.into(),
            reason: reason.into(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| self.shared.closed_error())??;
        Ok(())
    }

    /// The negotiated channel_max, frame_max and heartbeat.
    pub fn tune(&self) -> Tune {
        self.shared.tune
    }

    /// The server's properties from connection.start (product, version, capabilities).
    pub fn server_properties(&self) -> &FieldTable {
        &self.shared.server_properties
    }

    /// Whether the server currently blocks publishers (connection.blocked).
    pub fn is_blocked(&self) -> bool {
        self.shared.blocked_now.load(Ordering::Acquire)
    }

    /// A watch on the blocked state: changes on connection.blocked / unblocked.
    pub fn blocked_watch(&self) -> watch::Receiver<bool> {
        self.shared.blocked.clone()
    }

    /// Why the connection ended, or None while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.close_reason.lock().ok().and_then(|r| r.clone())
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        !self.requests.is_closed() && self.close_reason().is_none()
    }

    pub(crate) async fn send(&self, request: Request) -> Result<(), Error> {
        self.requests
            .send(request)
            .await
            .map_err(|_| self.shared.closed_error())
    }
}

/// A wait_for_confirms caller: the highest sequence number it waits for, whether every
/// confirm up to it so far was an ack, and where the answer goes.
struct ConfirmWaiter {
    upto: u64,
    all_acked: bool,
    reply: oneshot::Sender<Result<bool, Error>>,
}

/// Whoever waits for one publish's confirm, if anyone.
type ConfirmSender = Option<oneshot::Sender<Result<Confirmation, Error>>>;

/// Per-channel publisher-confirm bookkeeping.
#[derive(Default)]
struct ConfirmState {
    /// Unconfirmed publish sequence numbers in ascending order (they are handed out in
    /// order), with whoever waits for each. The broker confirms mostly from the front.
    pending: VecDeque<(u64, ConfirmSender)>,
    /// wait_for_confirms callers.
    waiters: Vec<ConfirmWaiter>,
    last_seq: u64,
}

impl ConfirmState {
    fn confirm(&mut self, delivery_tag: u64, multiple: bool, ack: bool) {
        let outcome = if ack {
            Confirmation::Ack
        } else {
            Confirmation::Nack
        };
        if multiple {
            while let Some(&(seq, _)) = self.pending.front() {
                if seq > delivery_tag {
                    break;
                }
                if let Some((seq, waiter)) = self.pending.pop_front() {
                    self.settle(seq, waiter, outcome);
                }
            }
        } else if self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq == delivery_tag)
        {
            // The usual case: confirms come in publish order.
            if let Some((seq, waiter)) = self.pending.pop_front() {
                self.settle(seq, waiter, outcome);
            }
        } else if let Ok(at) = self
            .pending
            .binary_search_by_key(&delivery_tag, |(seq, _)| *seq)
        {
            if let Some((seq, waiter)) = self.pending.remove(at) {
                self.settle(seq, waiter, outcome);
            }
        }
        if !self.waiters.is_empty() {
            self.resolve_waiters();
        }
    }

    /// Tells publish `seq`'s waiter, and the wait_for_confirms callers, how it went.
    fn settle(&mut self, seq: u64, waiter: ConfirmSender, outcome: Confirmation) {
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(outcome));
        }
        if outcome == Confirmation::Nack {
            for waiter in &mut self.waiters {
                if seq <= waiter.upto {
                    waiter.all_acked = false;
                }
            }
        }
    }

    fn resolve_waiters(&mut self) {
        let oldest = self.pending.front().map_or(u64::MAX, |(seq, _)| *seq);
        let mut at = 0;
        while at < self.waiters.len() {
            if self.waiters[at].upto < oldest {
                let waiter = self.waiters.swap_remove(at);
                let _ = waiter.reply.send(Ok(waiter.all_acked));
            } else {
                at += 1;
            }
        }
    }

    fn fail(&mut self, err: &Error) {
        for (_, waiter) in std::mem::take(&mut self.pending) {
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(err.clone()));
            }
        }
        for waiter in std::mem::take(&mut self.waiters) {
            let _ = waiter.reply.send(Err(err.clone()));
        }
    }
}

/// A delivery that could not be handed to its consumer because its buffer is full.
struct Stalled {
    sender: queue::Sender<DeliveryItem>,
    delivery: Message<BasicDeliver>,
}

/// The consumers' delivery queues, by channel and consumer tag: every delivery looks its
/// consumer up here. A channel rarely has more than a few consumers, so each channel's are
/// a short list compared by tag, which is cheaper than hashing the tag.
#[derive(Default)]
struct Consumers {
    by_channel: BTreeMap<ChannelId, Vec<(ShortString, queue::Sender<DeliveryItem>)>>,
}

impl Consumers {
    fn insert(
        &mut self,
        channel: ChannelId,
        tag: ShortString,
        sender: queue::Sender<DeliveryItem>,
    ) {
        let consumers = self.by_channel.entry(channel).or_default();
        consumers.retain(|(t, _)| *t != tag);
        consumers.push((tag, sender));
    }

    fn get(&self, channel: ChannelId, tag: &ShortString) -> Option<&queue::Sender<DeliveryItem>> {
        let consumers = self.by_channel.get(&channel)?;
        consumers.iter().find(|(t, _)| t == tag).map(|(_, s)| s)
    }

    fn remove(
        &mut self,
        channel: ChannelId,
        tag: &ShortString,
    ) -> Option<queue::Sender<DeliveryItem>> {
        let consumers = self.by_channel.get_mut(&channel)?;
        let at = consumers.iter().position(|(t, _)| t == tag)?;
        let (_, sender) = consumers.swap_remove(at);
        if consumers.is_empty() {
            self.by_channel.remove(&channel);
        }
        Some(sender)
    }

    /// Every consumer of `channel`, leaving none.
    fn remove_channel(&mut self, channel: ChannelId) -> Vec<queue::Sender<DeliveryItem>> {
        let consumers = self.by_channel.remove(&channel).unwrap_or_default();
        consumers.into_iter().map(|(_, sender)| sender).collect()
    }

    /// Whether a consumer of `channel` has deliveries its application has not taken yet.
    fn has_unreceived(&self, channel: ChannelId) -> bool {
        self.by_channel
            .get(&channel)
            .is_some_and(|consumers| consumers.iter().any(|(_, s)| s.unreceived() > 0))
    }

    /// Every consumer, leaving none.
    fn drain(&mut self) -> impl Iterator<Item = queue::Sender<DeliveryItem>> {
        std::mem::take(&mut self.by_channel)
            .into_values()
            .flatten()
            .map(|(_, sender)| sender)
    }
}

/// The task that owns the socket.
struct ConnectionTask {
    core: ConnectionCore<Token>,
    socket: TcpStream,
    /// Prints the frames read and written when `AMQP_TRACE` is set.
    tracer: Tracer,
    read_buf: BytesMut,
    requests: queue::Receiver<Request>,
    blocked: watch::Sender<bool>,
    blocked_rx: watch::Receiver<bool>,
    ready: Option<oneshot::Sender<Result<Arc<Shared>, Error>>>,
    shared: Option<Arc<Shared>>,
    consumers: Consumers,
    confirms: BTreeMap<ChannelId, ConfirmState>,
    returns: HashMap<ChannelId, mpsc::Sender<Returned>>,
    /// The open channels' shared state, to tell their handles when they end.
    channels: HashMap<ChannelId, Arc<ChannelShared>>,
    stalled: Option<Stalled>,
    /// Consumers to wake at the end of [`dispatch_events`](Self::dispatch_events).
    to_wake: Vec<std::task::Waker>,
    /// While acks are held back for more to join them (see [`ConnectionTask::hold_acks`]):
    /// when they go out at the latest.
    acks_held_until: Option<Instant>,
}

impl ConnectionTask {
    async fn run(mut self) {
        loop {
            if !self.dispatch_events() {
                break;
            }
            if !self.hold_acks(Instant::now()) {
                self.acks_held_until = None;
                if let Err(err) = self.flush().await {
                    self.core.handle_eof(Some(err));
                    continue;
                }
            }
            if self.core.state() == ConnectionState::Closed {
                self.dispatch_events();
                break;
            }
            let deadline = match (self.core.poll_timeout(), self.acks_held_until) {
                (Some(core), Some(acks)) => Some(core.min(acks)),
                (core, acks) => core.or(acks),
            };
            let stalled_sender = self.stalled.as_ref().map(|s| s.sender.clone());
            self.make_read_room();
            tokio::select! {
                biased;
                () = poll_ready(stalled_sender.as_ref()), if stalled_sender.is_some() => {
                    if let Some(Stalled { sender, delivery }) = self.stalled.take() {
                        // Fails only when the consumer is gone meanwhile: then it is dropped.
                        if let Err(TrySendError::Full(Ok(delivery))) = sender.try_send(Ok(delivery)) {
                            self.stalled = Some(Stalled { sender, delivery });
                        }
                    }
                }
                read = self.socket.read_buf(&mut self.read_buf), if self.stalled.is_none() => {
                    self.handle_read(read);
                }
                request = self.requests.recv() => {
                    match request {
                        Some(request) => {
                            self.handle_request(request);
                            // Take whatever else is queued, so several frames go out per write.
                            for _ in 0..256 {
                                match self.requests.try_recv() {
                                    Some(request) => self.handle_request(request),
                                    None => break,
                                }
                            }
                        }
                        None => {
                            // Every handle is gone: close politely.
                            let (reply, _rx) = oneshot::channel();
                            if self.core.close(Token::Reply(reply)).is_err() {
                                break;
                            }
                        }
                    }
                }
                _ = sleep_until(deadline) => self.handle_deadline(),
            }
        }
        self.finish();
    }

    /// Whether to hold back the acks waiting to be written, so that more join them: RabbitMQ
    /// settles a `basic.ack multiple=true` for a run of deliveries at the cost of one ack, and
    /// a consumer acking one by one otherwise sends about one frame per handful of acks
    /// (measured against RabbitMQ 3.10: 8 k frames for 200 k acks in a fast run, 26–37 k in
    /// the slow ones, at half the speed). The core says whether the run may wait (its
    /// consumer has more deliveries in hand: see [`ConnectionCore::ack_run_may_wait`]); the
    /// wait lasts at most [`ACK_HOLD_MAX`].
    fn hold_acks(&mut self, now: Instant) -> bool {
        let consumers = &self.consumers;
        if !self
            .core
            .ack_run_may_wait(|channel| consumers.has_unreceived(channel))
        {
            return false;
        }
        let until = *self.acks_held_until.get_or_insert(now + ACK_HOLD_MAX);
        now < until
    }

    /// Makes sure the next read has room for a good part of [`READ_BUFFER`]: without it, a
    /// read buffer whose frames are still held (by deliveries not yet dropped) would be
    /// regrown by a few octets at a time, for small reads and a copy of the unfinished frame
    /// at each.
    fn make_read_room(&mut self) {
        if self.read_buf.capacity() - self.read_buf.len() < READ_MIN_ROOM {
            self.read_buf.reserve(READ_BUFFER);
        }
    }

    /// Feeds what a read brought to the core.
    fn handle_read(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => self.core.handle_eof(None),
            Ok(n) => {
                self.tracer.received(tail(&self.read_buf, n));
                self.core.handle_input(&mut self.read_buf, Instant::now())
            }
            Err(err) => self.core.handle_eof(Some(err)),
        }
    }

    fn handle_deadline(&mut self) {
        if self.stalled.is_some() {
            self.core.reading_paused(Instant::now());
        }
        self.core.handle_timeout(Instant::now());
    }

    /// Writes whatever the core produced. While a write waits for the socket (the server
    /// reads slowly, or not at all), the socket is still read and the timers still run: a
    /// live server's heartbeats keep counting, and a dead one is declared dead instead of
    /// leaving the task stuck in the write forever.
    async fn flush(&mut self) -> std::io::Result<()> {
        while let Some(mut out) = self.core.take_output(Instant::now()) {
            while out.has_remaining() {
                if self.core.state() == ConnectionState::Closed {
                    return Ok(());
                }
                let deadline = self.core.poll_timeout();
                self.make_read_room();
                let (mut reader, mut writer) = self.socket.split();
                tokio::select! {
                    write = write_some(&mut writer, &mut out, &mut self.tracer) => {
                        write?;
                    }
                    read = reader.read_buf(&mut self.read_buf), if self.stalled.is_none() => {
                        self.handle_read(read);
                    }
                    _ = sleep_until(deadline) => self.handle_deadline(),
                }
            }
        }
        Ok(())
    }

    /// Ends everything still waiting with the connection's close reason.
    fn finish(&mut self) {
        let reason = self
            .core
            .close_reason()
            .cloned()
            .unwrap_or(Error::ConnectionClosedLocally);
        if let Some(shared) = &self.shared {
            if let Ok(mut slot) = shared.close_reason.lock() {
                slot.get_or_insert(reason.clone());
            }
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(reason.clone()));
        }
        for sender in self.consumers.drain() {
            end_consumer(sender, reason.clone());
        }
        for (_, mut confirms) in std::mem::take(&mut self.confirms) {
            confirms.fail(&reason);
        }
        for (_, channel) in self.channels.drain() {
            channel.set_closed(reason.clone());
        }
        self.requests.close();
        while let Some(request) = self.requests.try_recv() {
            fail_request(request, &reason);
        }
    }

    /// Hands the core's events to their destinations. Returns false when the task must end.
    ///
    /// The consumers that were waiting are woken once, when everything the core had for them
    /// is in their queues: a consumer wakes to a batch (all the deliveries of one socket
    /// read), not once per delivery.
    fn dispatch_events(&mut self) -> bool {
        let go_on = self.dispatch_events_to_queues();
        for waker in self.to_wake.drain(..) {
            waker.wake();
        }
        go_on
    }

    fn dispatch_events_to_queues(&mut self) -> bool {
        while self.stalled.is_none() {
            let Some(event) = self.core.poll_event() else {
                break;
            };
            match event {
                Event::Connected {
                    server_properties,
                    tune,
                } => {
                    let shared = Arc::new(Shared {
                        close_reason: Mutex::new(None),
                        blocked_now: AtomicBool::new(false),
                        blocked: self.blocked_rx.clone(),
                        server_properties,
                        tune,
                    });
                    self.shared = Some(shared.clone());
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(shared));
                    }
                }
                Event::Reply { token, result } => self.reply(token, result.map(|reply| *reply)),
                Event::Delivery { channel, message } => {
                    let Some(sender) = self.consumers.get(channel, &message.method.consumer_tag)
                    else {
                        continue;
                    };
                    match sender.try_send_deferred(Ok(message)) {
                        Ok(None) => {}
                        Ok(Some(waker)) => {
                            if !self.to_wake.iter().any(|w| w.will_wake(&waker)) {
                                self.to_wake.push(waker);
                            }
                        }
                        Err(TrySendError::Full(Ok(delivery))) => {
                            self.stalled = Some(Stalled {
                                sender: sender.clone(),
                                delivery,
                            });
                        }
                        Err(TrySendError::Full(Err(_))) => {}
                        Err(TrySendError::Closed(item)) => {
                            // The consumer was dropped; its messages stay unacked until
                            // the channel closes and RabbitMQ requeues them.
                            if let Ok(message) = item {
                                self.consumers.remove(channel, &message.method.consumer_tag);
                            }
                        }
                    }
                }
                Event::Return { channel, message } => {
                    if let Some(sender) = self.returns.get(&channel) {
                        let _ = sender.try_send(Returned::from_message(message));
                    }
                }
                Event::Confirm {
                    channel,
                    delivery_tag,
                    multiple,
                    ack,
                } => {
                    if let Some(confirms) = self.confirms.get_mut(&channel) {
                        confirms.confirm(delivery_tag, multiple, ack);
                    }
                }
                Event::ConsumerCancelled {
                    channel,
                    consumer_tag,
                } => {
                    if let Some(sender) = self.consumers.remove(channel, &consumer_tag) {
                        end_consumer(sender, Error::ConsumerCancelled(consumer_tag.to_string()));
                    }
                }
                Event::ChannelClosed { channel, error } => {
                    let err = error.unwrap_or(Error::ChannelClosedLocally);
                    for sender in self.consumers.remove_channel(channel) {
                        end_consumer(sender, err.clone());
                    }
                    if let Some(mut confirms) = self.confirms.remove(&channel) {
                        confirms.fail(&err);
                    }
                    self.returns.remove(&channel);
                    if let Some(shared) = self.channels.remove(&channel) {
                        shared.set_closed(err);
                    }
                }
                Event::Blocked { .. } => self.set_blocked(true),
                Event::Unblocked => self.set_blocked(false),
                Event::Closed(err) => {
                    if let Some(shared) = &self.shared {
                        if let Ok(mut slot) = shared.close_reason.lock() {
                            *slot = Some(err.clone());
                        }
                    }
                    self.set_blocked(false);
                    return true;
                }
            }
        }
        true
    }

    fn set_blocked(&mut self, blocked: bool) {
        if let Some(shared) = &self.shared {
            shared.blocked_now.store(blocked, Ordering::Release);
        }
        let _ = self.blocked.send(blocked);
    }

    fn reply(&mut self, token: Token, result: Result<Command, Error>) {
        match token {
            Token::Reply(reply) => {
                let _ = reply.send(result);
            }
            Token::OpenChannel { id, shared, reply } => {
                if result.is_ok() {
                    self.channels.insert(id, shared);
                }
                let _ = reply.send(result.map(|_| id));
            }
            Token::Cancel { channel, reply } => {
                if let Ok(Command {
                    method: Method::BasicCancelOk(ok),
                    ..
                }) = &result
                {
                    // Dropping the sender ends the stream after the deliveries before it.
                    self.consumers.remove(channel, &ok.consumer_tag);
                }
                let _ = reply.send(result);
            }
            Token::Consume {
                channel,
                buffer,
                reply,
            } => match result {
                Ok(Command {
                    method: Method::BasicConsumeOk(ok),
                    ..
                }) => {
                    let (sender, receiver) = queue::bounded(buffer);
                    self.consumers
                        .insert(channel, ok.consumer_tag.clone(), sender);
                    let _ = reply.send(Ok(Consumer::new(channel, ok.consumer_tag, receiver)));
                }
                Ok(other) => {
                    let _ = reply.send(Err(Error::UnexpectedFrame(format!(
                        "{} in reply to basic.consume",
                        other.method.name()
                    ))));
                }
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
        }
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::OpenChannel { shared, reply } => {
                let _ = self
                    .core
                    .open_channel(|id| Token::OpenChannel { id, shared, reply });
            }
            Request::Call {
                channel,
                method,
                reply,
            } => {
                let token = match *method {
                    Method::BasicCancel(_) => Token::Cancel { channel, reply },
                    _ => Token::Reply(reply),
                };
                // A refusal comes back as an event with the token, like any reply.
                let _ = self.core.call(channel, *method, token);
            }
            Request::Consume {
                channel,
                method,
                buffer,
                reply,
            } => {
                let token = Token::Consume {
                    channel,
                    buffer,
                    reply,
                };
                let _ = self.core.call(channel, *method, token);
            }
            Request::Acknowledge { channel, ack } => {
                let _ = self.core.send(channel, ack.into());
            }
            Request::Publish {
                channel,
                exchange,
                routing_key,
                mandatory,
                properties,
                body,
                confirm,
            } => {
                let publish = amqp_codec::methods::BasicPublish {
                    exchange,
                    routing_key,
                    mandatory,
                    immediate: false,
                };
                let properties = properties.as_deref().unwrap_or(&NO_PROPERTIES);
                match self.core.publish(channel, publish, properties, body) {
                    Ok(Some(seq)) => {
                        let state = self.confirms.entry(channel).or_default();
                        state.last_seq = seq;
                        state.pending.push_back((seq, confirm));
                    }
                    Ok(None) => {
                        if let Some(confirm) = confirm {
                            let _ = confirm.send(Ok(Confirmation::NotRequested));
                        }
                    }
                    Err(err) => {
                        if let Some(confirm) = confirm {
                            let _ = confirm.send(Err(err));
                        }
                    }
                }
            }
            Request::WaitForConfirms { channel, reply } => {
                let state = self.confirms.entry(channel).or_default();
                let upto = state.last_seq;
                state.waiters.push(ConfirmWaiter {
                    upto,
                    all_acked: true,
                    reply,
                });
                state.resolve_waiters();
            }
            Request::Returns { channel, sender } => {
                self.returns.insert(channel, sender);
            }
            Request::CloseChannel { channel, reply } => {
                let _ = self.core.close_channel(channel, Token::Reply(reply));
            }
            Request::UpdateSecret {
                secret,
                reason,
                reply,
            } => {
                let _ = self
                    .core
                    .update_secret(secret, &reason, Token::Reply(reply));
            }
            Request::Close { reply } => {
                let _ = self.core.close(Token::Reply(reply));
            }
        }
    }
}

/// One vectored write of what `out` holds (at most [`MAX_WRITE_SLICES`] pieces of it);
/// advances `out` past the octets the writer took, which may be fewer than offered.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut Output,
    tracer: &mut Tracer,
) -> std::io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
    let count = out.chunks_vectored(&mut slices);
    let slices = slices.get(..count).unwrap_or_default();
    match writer.write_vectored(slices).await? {
        0 => Err(std::io::ErrorKind::WriteZero.into()),
        n => {
            out.for_each_prefix(n, |part| tracer.sent(part));
            out.advance(n);
            Ok(n)
        }
    }
}

/// Ends a consumer's stream with `err` as its last item, after the deliveries ahead of it,
/// even when its buffer is full: the connection task never waits for a consumer, and the
/// error is not lost.
fn end_consumer(sender: queue::Sender<DeliveryItem>, err: Error) {
    let _ = sender.send_last(Err(err));
}

/// Ends a request that never reached the core.
fn fail_request(request: Request, err: &Error) {
    match request {
        Request::OpenChannel { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Request::Call { reply, .. }
        | Request::CloseChannel { reply, .. }
        | Request::UpdateSecret { reply, .. }
        | Request::Close { reply } => {
            let _ = reply.send(Err(err.clone()));
        }
        Request::Consume { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Request::Publish { confirm, .. } => {
            if let Some(confirm) = confirm {
                let _ = confirm.send(Err(err.clone()));
            }
        }
        Request::WaitForConfirms { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Request::Acknowledge { .. } | Request::Returns { .. } => {}
    }
}

/// The properties of a publish that has none.
static NO_PROPERTIES: LazyLock<BasicProperties> = LazyLock::new(BasicProperties::default);

/// The last `n` octets of `buf`: those a read just appended.
fn tail(buf: &[u8], n: usize) -> &[u8] {
    buf.get(buf.len().saturating_sub(n)..).unwrap_or_default()
}

/// Ready when `sender` has room (never, without a sender).
async fn poll_ready<T>(sender: Option<&queue::Sender<T>>) {
    match sender {
        Some(sender) => std::future::poll_fn(|cx| sender.poll_ready(cx)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type ConfirmReceiver = oneshot::Receiver<Result<Confirmation, Error>>;

    /// A channel with publishes 1..=n sent, each with a waiter.
    fn published(n: u64) -> (ConfirmState, Vec<ConfirmReceiver>) {
        let mut state = ConfirmState::default();
        let mut receivers = Vec::new();
        for seq in 1..=n {
            let (tx, rx) = oneshot::channel();
            state.pending.push_back((seq, Some(tx)));
            state.last_seq = seq;
            receivers.push(rx);
        }
        (state, receivers)
    }

    fn outcome(rx: &mut ConfirmReceiver) -> Option<Confirmation> {
        rx.try_recv().ok().and_then(Result::ok)
    }

    fn wait_for_confirms(state: &mut ConfirmState) -> oneshot::Receiver<Result<bool, Error>> {
        let (reply, rx) = oneshot::channel();
        state.waiters.push(ConfirmWaiter {
            upto: state.last_seq,
            all_acked: true,
            reply,
        });
        state.resolve_waiters();
        rx
    }

    #[test]
    fn multiple_ack_confirms_every_publish_up_to_the_tag_and_no_further() {
        let (mut state, mut rx) = published(4);
        state.confirm(3, true, true);
        let outcomes: Vec<_> = rx.iter_mut().map(outcome).collect();
        let ack = Some(Confirmation::Ack);
        assert_eq!(outcomes, vec![ack, ack, ack, None]);
        assert_eq!(state.pending.len(), 1);
    }

    #[test]
    fn single_confirms_out_of_order_settle_exactly_their_publish() {
        let (mut state, mut rx) = published(3);
        state.confirm(2, false, false);
        state.confirm(3, false, true);
        state.confirm(1, false, true);
        let outcomes: Vec<_> = rx.iter_mut().map(outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Some(Confirmation::Ack),
                Some(Confirmation::Nack),
                Some(Confirmation::Ack)
            ]
        );
        assert!(state.pending.is_empty());
    }

    #[test]
    fn confirm_of_an_unknown_or_repeated_tag_changes_nothing() {
        let (mut state, mut rx) = published(2);
        state.confirm(1, false, true);
        state.confirm(1, false, false);
        state.confirm(7, false, true);
        assert_eq!(outcome(&mut rx[0]), Some(Confirmation::Ack));
        assert_eq!(outcome(&mut rx[1]), None);
        assert_eq!(state.pending.len(), 1);
    }

    #[test]
    fn wait_for_confirms_answers_once_everything_before_it_is_confirmed() {
        let (mut state, _rx) = published(3);
        let mut waiter = wait_for_confirms(&mut state);
        state.confirm(2, true, true);
        assert!(waiter.try_recv().is_err(), "publish 3 is still unconfirmed");
        state.confirm(3, false, true);
        assert!(matches!(waiter.try_recv(), Ok(Ok(true))));
    }

    #[test]
    fn wait_for_confirms_answers_false_when_a_publish_before_it_was_nacked() {
        let (mut state, _rx) = published(2);
        let mut waiter = wait_for_confirms(&mut state);
        state.confirm(1, false, false);
        state.confirm(2, false, true);
        assert!(matches!(waiter.try_recv(), Ok(Ok(false))));
    }

    #[test]
    fn wait_for_confirms_with_nothing_pending_answers_at_once() {
        let mut state = ConfirmState::default();
        let mut waiter = wait_for_confirms(&mut state);
        assert!(matches!(waiter.try_recv(), Ok(Ok(true))));
    }

    #[test]
    fn failing_the_channel_ends_every_pending_confirm_and_waiter_with_the_error() {
        let (mut state, mut rx) = published(2);
        let mut waiter = wait_for_confirms(&mut state);
        state.fail(&Error::ChannelClosedLocally);
        for rx in &mut rx {
            assert!(matches!(
                rx.try_recv(),
                Ok(Err(Error::ChannelClosedLocally))
            ));
        }
        assert!(matches!(
            waiter.try_recv(),
            Ok(Err(Error::ChannelClosedLocally))
        ));
    }

    /// A socket that takes at most `per_write` octets per write, of the first slice only, and
    /// says "not now" before every other write.
    struct Trickle {
        written: Vec<u8>,
        per_write: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            if this.writes % 2 == 1 {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(this.per_write);
            this.written.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// An open connection core with one open channel, 1.
    fn open_core() -> ConnectionCore<u32> {
        use amqp_codec::methods::{ChannelOpenOk, ConnectionOpenOk, ConnectionTune};
        let now = Instant::now();
        let uri = AmqpUri::parse("amqp://localhost?frame_max=8192").unwrap();
        let mut core = ConnectionCore::new(ConnectionConfig::new(uri), now);
        let mut start = amqp_codec::methods::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            ..Default::default()
        };
        start.mechanisms = LongString::from("PLAIN");
        let tune = ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        };
        for method in [start.into(), tune.into(), ConnectionOpenOk.into()] {
            let mut bytes = BytesMut::new();
            amqp_codec::Frame::Method(0, method)
                .encode(&mut bytes, 0)
                .unwrap();
            core.handle_input(&mut bytes, now);
        }
        core.open_channel(|_| 1).unwrap();
        let mut bytes = BytesMut::new();
        amqp_codec::Frame::Method(1, ChannelOpenOk.into())
            .encode(&mut bytes, 0)
            .unwrap();
        core.handle_input(&mut bytes, now);
        while core.poll_event().is_some() {}
        let _ = core.take_output(now);
        core
    }

    #[tokio::test]
    async fn output_written_a_few_octets_at_a_time_arrives_whole_and_in_order() {
        let mut core = open_core();
        // Small and large bodies, the large ones over several 8 KiB frames: the output is
        // encoded frames and body slices in turn.
        let bodies: Vec<Bytes> = [16usize, 20_000, 5, 8184, 70_000]
            .iter()
            .map(|&len| {
                (0..len)
                    .map(|i| (i % 253) as u8)
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        for body in &bodies {
            let publish = amqp_codec::methods::BasicPublish {
                routing_key: "q".into(),
                ..Default::default()
            };
            core.publish(1, publish, &NO_PROPERTIES, body.clone())
                .unwrap();
        }
        let mut out = core.take_output(Instant::now()).unwrap();
        let total = out.len();
        let mut expected = BytesMut::new();
        for part in out.parts() {
            expected.extend_from_slice(part);
        }
        let mut socket = Trickle {
            written: Vec::new(),
            per_write: 7,
            writes: 0,
        };
        let mut tracer = Tracer::new("client", "127.0.0.1:5672");
        let mut written = 0;
        while !out.is_empty() {
            written += write_some(&mut socket, &mut out, &mut tracer)
                .await
                .unwrap();
        }
        assert_eq!(written, total);
        assert_eq!(socket.written, expected);

        // What arrived is the five messages, bodies intact.
        let mut wire = BytesMut::from(&socket.written[..]);
        let mut assembler = amqp_codec::ContentAssembler::default();
        let mut received = Vec::new();
        let limits = amqp_codec::Limits::with_frame_max(8192);
        while let Some(frame) = amqp_codec::decode(&mut wire, &limits).unwrap() {
            if let Some(command) = assembler.feed(frame).unwrap() {
                received.push(command.content.unwrap().body);
            }
        }
        assert!(wire.is_empty());
        assert_eq!(received, bodies);
    }

    #[test]
    fn requests_and_events_stay_small() {
        // They are moved through queues once or more per message; see Request's docs. The
        // budget is 192 octets: a delivery event holds basic.deliver's three short strings,
        // which the codec keeps inline (40 octets each) instead of as references into the
        // read buffer; the boxed properties and the body are pointers.
        let sizes = [
            ("Request", std::mem::size_of::<Request>()),
            ("Event", std::mem::size_of::<Event<Token>>()),
            ("DeliveryItem", std::mem::size_of::<DeliveryItem>()),
        ];
        for (name, size) in sizes {
            assert!(size <= 192, "{name} is {size} bytes");
        }
    }
}
