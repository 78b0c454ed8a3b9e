//! The path from a queue to a consumer's socket.
//!
//! A queue hands a message to a consumer by writing basic.deliver, its content header and its
//! body frames straight into the consumer connection's [`Outbox`], and by recording the
//! delivery in the channel's [`ChannelLink`] until it is acked. The connection's writer task
//! drains the outbox into the socket, many frames per write. Bodies are [`Bytes`] shared with
//! the publisher's frame: nothing is copied between publish and deliver except into the
//! socket buffer.
//!
//! Lock order, always: queue, then channel link, then outbox. Nobody takes a queue while
//! holding a link or an outbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use amqp_codec::methods::BasicDeliver;
use amqp_codec::{encode_content, ChannelId, Frame, Method, ShortString};
use bytes::BytesMut;
use tokio::sync::Notify;

use crate::message::QueuedMessage;
use crate::queue::Queue;

/// Above this many buffered bytes a connection gets no more deliveries until its writer
/// catches up: memory stays bounded for no-ack consumers too.
pub const OUTBOX_HIGH_WATER: usize = 4 * 1024 * 1024;

/// Locks a mutex, recovering the data if another thread panicked while holding it: one
/// connection's bug must not take the broker down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bytes waiting to be written to one connection's socket.
pub struct Outbox {
    buf: Mutex<BytesMut>,
    notify: Notify,
    frame_max: AtomicU32,
    closed: AtomicBool,
    /// Bytes the writer has written so far (heartbeats are only needed when this stalls).
    written: AtomicU64,
    /// Queues that skipped this connection's consumers because the outbox was full.
    paused: Mutex<Vec<Weak<Queue>>>,
}

impl Outbox {
    /// An empty outbox; frames are split for `frame_max` (updated after tune).
    pub fn new(frame_max: u32) -> Outbox {
        Outbox {
            buf: Mutex::new(BytesMut::with_capacity(64 * 1024)),
            notify: Notify::new(),
            frame_max: AtomicU32::new(frame_max),
            closed: AtomicBool::new(false),
            written: AtomicU64::new(0),
            paused: Mutex::new(Vec::new()),
        }
    }

    /// Sets the negotiated frame_max.
    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// Appends one frame and wakes the writer.
    pub fn send(&self, frame: &Frame) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = lock(&self.buf);
        // A method the broker itself builds always encodes; a failure here is a bug, logged.
        if let Err(err) = frame.encode(&mut buf, 0) {
            tracing::error!("cannot encode {frame:?}: {err}");
        }
        drop(buf);
        self.notify.notify_one();
    }

    /// Appends a method frame.
    pub fn send_method(&self, channel: ChannelId, method: impl Into<Method>) {
        self.send(&Frame::Method(channel, method.into()));
    }

    /// Appends a method with content (deliver, get-ok, return) and wakes the writer.
    pub fn send_content(&self, channel: ChannelId, method: &Method, message: &QueuedMessage) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let content = &message.content;
        let mut buf = lock(&self.buf);
        if let Err(err) = encode_content(
            &mut buf,
            channel,
            method,
            &content.properties,
            &content.body,
            self.frame_max(),
        ) {
            tracing::error!("cannot encode a delivery: {err}");
        }
        drop(buf);
        self.notify.notify_one();
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        lock(&self.buf).len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the outbox is over its high-water mark.
    pub fn is_full(&self) -> bool {
        self.len() >= OUTBOX_HIGH_WATER
    }

    /// Records that the writer wrote `n` bytes.
    pub fn record_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Takes everything waiting (for the writer).
    pub fn take(&self) -> BytesMut {
        lock(&self.buf).split()
    }

    /// Waits until something is appended (or the outbox is closed).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops accepting frames and wakes the writer so it can finish.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Remembers a queue to kick once the writer drained the outbox.
    pub fn pause(&self, queue: &Arc<Queue>) {
        let mut paused = lock(&self.paused);
        if !paused.iter().any(|q| q.as_ptr() == Arc::as_ptr(queue)) {
            paused.push(Arc::downgrade(queue));
        }
    }

    /// The queues paused on this outbox, forgetting them.
    pub fn take_paused(&self) -> Vec<Arc<Queue>> {
        std::mem::take(&mut *lock(&self.paused))
            .into_iter()
            .filter_map(|q| q.upgrade())
            .collect()
    }
}

/// A delivery awaiting its ack.
pub struct Unacked {
    /// The queue it came from (requeued there on reject or channel close).
    pub queue: Arc<Queue>,
    /// The consumer it went to; None for basic.get.
    pub consumer_tag: Option<ShortString>,
    /// The message.
    pub message: QueuedMessage,
}

/// What a channel shares with the queues that deliver to it.
pub struct ChannelLink {
    /// The channel number.
    pub id: ChannelId,
    /// The connection's id.
    pub connection_id: u64,
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The client wants basic.cancel when a queue goes away under its consumer.
    pub cancel_notify: bool,
    /// Delivery tags and unacked messages.
    pub state: Mutex<LinkState>,
}

/// The part of a channel the queues change.
pub struct LinkState {
    /// The next delivery tag (they start at 1, per channel).
    pub next_tag: u64,
    /// Deliveries not yet acked, by tag.
    pub unacked: BTreeMap<u64, Unacked>,
    /// basic.qos global: unacked limit across the channel's consumers (0: none).
    pub global_prefetch: u16,
    /// Whether the channel is closed (no more deliveries).
    pub closed: bool,
    /// channel.flow: whether the client accepts deliveries.
    pub flow_active: bool,
}

impl ChannelLink {
    /// A link for channel `id` of a connection.
    pub fn new(
        id: ChannelId,
        connection_id: u64,
        outbox: Arc<Outbox>,
        cancel_notify: bool,
    ) -> ChannelLink {
        ChannelLink {
            id,
            connection_id,
            outbox,
            cancel_notify,
            state: Mutex::new(LinkState {
                next_tag: 1,
                unacked: BTreeMap::new(),
                global_prefetch: 0,
                closed: false,
                flow_active: true,
            }),
        }
    }

    /// Tries to deliver `message` from `queue` to the consumer `consumer_tag`. Returns the
    /// message back when the channel cannot take it now.
    pub fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &ShortString,
        no_ack: bool,
        message: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut state = lock(&self.state);
        if state.closed || !state.flow_active {
            return Err(message);
        }
        if !no_ack
            && state.global_prefetch > 0
            && state.unacked.len() >= usize::from(state.global_prefetch)
        {
            return Err(message);
        }
        if self.outbox.is_full() {
            self.outbox.pause(queue);
            return Err(message);
        }
        let tag = state.next_tag;
        state.next_tag += 1;
        let deliver = Method::BasicDeliver(BasicDeliver {
            consumer_tag: consumer_tag.clone(),
            delivery_tag: tag,
            redelivered: message.redelivered,
            exchange: message.content.exchange.clone(),
            routing_key: message.content.routing_key.clone(),
        });
        self.outbox.send_content(self.id, &deliver, &message);
        if !no_ack {
            state.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    consumer_tag: Some(consumer_tag.clone()),
                    message,
                },
            );
        }
        Ok(())
    }

    /// Records a basic.get delivery and returns its tag.
    pub fn record_get(&self, queue: &Arc<Queue>, message: &QueuedMessage, no_ack: bool) -> u64 {
        let mut state = lock(&self.state);
        let tag = state.next_tag;
        state.next_tag += 1;
        if !no_ack {
            state.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    consumer_tag: None,
                    message: message.clone(),
                },
            );
        }
        tag
    }

    /// Takes the unacked deliveries an ack, nack or reject names: `tag` alone, or every tag up
    /// to it with `multiple` (tag 0 with multiple: all). None if `tag` is unknown.
    pub fn take_unacked(&self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        let mut state = lock(&self.state);
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            if tag != 0 && !state.unacked.contains_key(&tag) {
                return None;
            }
            let rest = state.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut state.unacked, rest);
            Some(taken.into_values().collect())
        } else {
            state.unacked.remove(&tag).map(|u| vec![u])
        }
    }

    /// Closes the link and takes every unacked delivery (to requeue them).
    pub fn close(&self) -> Vec<Unacked> {
        let mut state = lock(&self.state);
        state.closed = true;
        std::mem::take(&mut state.unacked).into_values().collect()
    }
}
