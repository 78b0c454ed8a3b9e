//! Queues: messages waiting in order, and the consumers they are dispatched to.
//!
//! Dispatch is round-robin over the consumers that have room (spec 3.1.6): a consumer with
//! `prefetch_count` unacked messages gets nothing more until it acks, which is what makes the
//! work-queues tutorial's fair dispatch work. Requeued messages (reject, nack, a channel that
//! closed with unacked messages) go back to the head of the queue, in their original order,
//! with `redelivered` set, as RabbitMQ does.
//!
//! Two RabbitMQ extensions choose among the consumers (RabbitMQ's "Consumer Priorities" and
//! "Single Active Consumer" guides, checked against RabbitMQ 3.10):
//! - consumer priorities (basic.consume argument `x-priority`, default 0): a message goes to
//!   the highest-priority consumers that can take one, round-robin among equals; a lower one
//!   gets messages only while every higher one is blocked (prefetch reached, channel.flow
//!   off, connection congested);
//! - a single active consumer (queue argument `x-single-active-consumer`): only one consumer
//!   receives, the first registered. When it goes, a classic queue hands over to the
//!   highest-priority waiting consumer (the earliest registered among equals), a quorum queue
//!   to the earliest registered whatever its priority.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amqp_codec::{FieldTable, FieldValue, ShortString};

use crate::delivery::{lock, ChannelLink, Unacked};
use crate::message::{Deadline, MessageContent, QueuedMessage, ReadyMessage};
use crate::store::log::PublishRecord;
use crate::store::paging::{PagedIn, ReadError};
use crate::store::{RecoveredMessage, Store};

/// Paged-out messages near the head are read back this many at most at a time...
const READ_AHEAD_MESSAGES: usize = 2048;
/// ... and up to this many octets of log.
const READ_AHEAD_BYTES: usize = 2 * 1024 * 1024;
/// A publish looks for messages to page out once this many came in since the last look
/// (the broker's housekeeping also looks, ten times a second).
const PAGE_OUT_BATCH: usize = 4096;
/// Read-back messages are put in place among this many at the head at most: the rest of
/// what was read is dropped (the head changed much meanwhile) and read again when wanted.
const PUT_BACK_WINDOW: usize = 2 * READ_AHEAD_MESSAGES;
/// While the paged-out messages of a queue cannot be read back, it says so again at most
/// this often ([`ReadFailures`]).
const READ_FAILURE_REMINDER: Duration = Duration::from_secs(60);

/// RabbitMQ's queue types. Quorum queues are accepted with their restrictions (durable, not
/// exclusive, no global qos) and keep the two differences a client can see on a single node:
/// a message rejected or nacked with requeue goes to the back of the queue (a channel that
/// closes still returns its messages to the front), and every delivery carries the
/// `x-delivery-count` header (a long: how often the message was returned before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// The default.
    Classic,
    /// Raft-replicated in RabbitMQ.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// What `x-overflow` says to do when `x-max-length` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    DropHead,
    /// Refuse the new message (nacked in confirm mode).
    RejectPublish,
}

/// The queue arguments the broker acts on, parsed once at declare time.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-message-ttl`: how long a message may wait.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: how long the queue may stay unused.
    pub expires: Option<Duration>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<usize>,
    /// `x-max-length-bytes`: most ready body bytes.
    pub max_length_bytes: Option<usize>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<ShortString>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortString>,
    /// `x-max-priority` (classic queues): deliver higher `priority` messages first.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: one consumer at a time receives.
    pub single_active_consumer: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            queue_type: QueueType::Classic,
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
        }
    }
}

/// An integer argument of any of the integer field types.
pub fn integer_argument(value: &FieldValue) -> Option<i64> {
    match *value {
        FieldValue::I8(v) => Some(v.into()),
        FieldValue::U8(v) => Some(v.into()),
        FieldValue::I16(v) => Some(v.into()),
        FieldValue::U16(v) => Some(v.into()),
        FieldValue::I32(v) => Some(v.into()),
        FieldValue::U32(v) => Some(v.into()),
        FieldValue::I64(v) => Some(v),
        FieldValue::U64(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

/// A string argument (long string or byte array).
pub fn string_argument(value: &FieldValue) -> Option<ShortString> {
    match value {
        FieldValue::LongString(s) => Some(ShortString::new(s.bytes().clone())),
        FieldValue::ByteArray(b) => Some(ShortString::new(b.clone())),
        _ => None,
    }
}

/// One consumer of a queue.
pub struct QueueConsumer {
    /// Its tag, unique on its channel.
    pub tag: ShortString,
    /// The channel it consumes on.
    pub link: Arc<ChannelLink>,
    /// Messages count as acked when sent.
    pub no_ack: bool,
    /// It asked for exclusive use of the queue.
    pub exclusive: bool,
    /// Unacked messages it may hold (0: no limit).
    pub prefetch: u16,
    /// Unacked messages it holds.
    pub unacked: u32,
    /// Its `x-priority` (RabbitMQ takes any integer; 0 when absent).
    pub priority: i64,
    /// The basic.consume arguments, as given (for listings).
    pub arguments: FieldTable,
    /// Whether it may receive: always, except while it waits its turn on a
    /// single-active-consumer queue. Set by the queue.
    pub active: bool,
    /// The queue's serial when it registered or last received a message: among consumers of
    /// one priority the least recently served goes first, which is round-robin. Set by the
    /// queue.
    pub served: u64,
}

impl QueueConsumer {
    fn has_room(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked < u32::from(self.prefetch)
    }

    /// Whether dispatch may offer it a message now.
    fn can_take(&self) -> bool {
        self.active && self.has_room()
    }
}

/// Whether consumer `a` is offered a message before `b`: higher priority first, then the
/// one served longest ago.
fn goes_before(a: &QueueConsumer, b: &QueueConsumer) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.served.cmp(&b.served))
}

/// Which waiting consumer becomes the single active one when the active one goes: for a
/// classic queue the highest priority, the earliest registered among equals; for a quorum
/// queue the earliest registered. `consumers` are in registration order.
fn next_single_active(consumers: &[QueueConsumer], queue_type: QueueType) -> Option<usize> {
    match queue_type {
        QueueType::Classic => consumers
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.priority.cmp(&b.priority).then_with(|| j.cmp(i)))
            .map(|(i, _)| i),
        QueueType::Quorum => (!consumers.is_empty()).then_some(0),
    }
}

/// The mutable part of a queue.
pub struct QueueState {
    /// Messages ready for delivery, oldest first.
    pub ready: VecDeque<ReadyMessage>,
    /// Body bytes of the ready messages.
    pub ready_bytes: usize,
    /// Ready messages paged out (see [`crate::store::paging`]).
    pub paged_out: usize,
    /// Their body bytes.
    pub paged_out_bytes: usize,
    /// Ready messages at the tail that no page-out has looked at yet.
    unscanned: usize,
    /// Messages that came in since the last page-out look: a publish looks again only once
    /// [`PAGE_OUT_BATCH`] more came in, however long the unscanned tail stays (a tail not
    /// yet on disk cannot page out, and is looked at again all the same).
    arrived: usize,
    /// Set when a change found the head paged out: the messages near the head are then read
    /// back with the lock released ([`Queue::with_head_in_memory`]).
    head_paged_out: bool,
    /// A read of messages near the head is under way, the lock released; whoever reads
    /// dispatches after each read and reads on while that dispatch stops at a paged-out head,
    /// so a dispatch that finds the head paged out meanwhile leaves it to them rather than
    /// read the same messages again. Cleared when that read ends, even by a panic
    /// ([`ReadUnderWay`]).
    paging_in: bool,
    /// The last read of the paged-out head brought nothing back (an I/O error, logged): the
    /// head waits on disk, and [`Queue::retry_unread_head`] tries again.
    unread_head: bool,
    /// The reads of paged-out messages that failed since the last that did not.
    read_failures: ReadFailures,
    /// What was logged of the reads of paged-out messages (tests look).
    #[cfg(test)]
    read_reports: Vec<ReadReport>,
    /// The next read of the head panics with the lock released (tests of [`ReadUnderWay`]).
    #[cfg(test)]
    panic_in_next_read: bool,
    /// Page-out looks so far (tests count them).
    #[cfg(test)]
    page_out_looks: usize,
    /// The in-memory body bytes last counted in the store's paging budget.
    counted_resident: usize,
    /// Consumers, in the order they subscribed.
    pub consumers: Vec<QueueConsumer>,
    /// Counts registrations and deliveries, to order consumers by when they were served.
    serial: u64,
    /// Scratch for dispatch: indices of the consumers that may take a message, in the
    /// order they are offered one (kept to reuse its allocation).
    offer_order: Vec<usize>,
    /// Messages delivered and not yet acked.
    pub unacked: usize,
    /// Whether the queue was deleted (late acks and requeues are then dropped).
    pub deleted: bool,
    /// When a consumer, a get or a declare last touched it (for x-expires).
    pub last_used: Instant,
    /// Whether it ever had a consumer (auto-delete applies only then).
    pub had_consumer: bool,
}

/// A queue.
pub struct Queue {
    /// Its name.
    pub name: ShortString,
    /// The vhost it lives in.
    pub vhost: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The connection that owns it, for exclusive queues.
    pub exclusive_owner: Option<u64>,
    /// The declaration arguments, as given.
    pub arguments: FieldTable,
    /// The arguments the broker acts on.
    pub settings: QueueSettings,
    /// Where its persistent messages are logged (durable queues, when the broker has a
    /// data directory).
    pub store: Option<Arc<Store>>,
    state: Mutex<QueueState>,
}

/// What a queue is declared with.
pub struct QueueDeclaration {
    /// Its name.
    pub name: ShortString,
    /// Its vhost.
    pub vhost: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// The arguments as given.
    pub arguments: FieldTable,
    /// The arguments the broker acts on.
    pub settings: QueueSettings,
}

/// Messages a queue gives up: dead-lettered (to be routed to the dead-letter exchange) with
/// the reason RabbitMQ records in `x-death`.
pub type DeadLetters = Vec<(QueuedMessage, &'static str)>;

/// What became of a message offered to a queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Taken.
    Accepted,
    /// Refused: the queue is full and overflows with reject-publish.
    Rejected,
}

impl Queue {
    /// A new queue. Only a durable queue keeps its persistent messages in `store`; one that
    /// the store recovered messages for (at startup) takes them, paged out but for what fits
    /// in the paging budget.
    pub fn new(declaration: QueueDeclaration, store: Option<Arc<Store>>) -> Queue {
        let QueueDeclaration {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            settings,
        } = declaration;
        let queue = Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            settings,
            store: if durable { store } else { None },
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                ready_bytes: 0,
                paged_out: 0,
                paged_out_bytes: 0,
                unscanned: 0,
                arrived: 0,
                head_paged_out: false,
                paging_in: false,
                unread_head: false,
                read_failures: ReadFailures::default(),
                #[cfg(test)]
                read_reports: Vec::new(),
                #[cfg(test)]
                panic_in_next_read: false,
                #[cfg(test)]
                page_out_looks: 0,
                counted_resident: 0,
                consumers: Vec::new(),
                serial: 0,
                offer_order: Vec::new(),
                unacked: 0,
                deleted: false,
                last_used: Instant::now(),
                had_consumer: false,
            }),
        };
        if let Some(store) = &queue.store {
            let recovered = store.take_recovered(&queue.vhost, queue.name.as_bytes());
            if !recovered.is_empty() {
                queue.restore_recovered(store, &recovered);
            }
        }
        queue
    }

    /// Locks the queue's state (for inspection: counts, consumers).
    pub fn state(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    /// Locks the queue's state for a change of its ready messages.
    fn lock_state(&self) -> Locked<'_> {
        Locked {
            queue: self,
            state: self.state(),
        }
    }

    /// Ready messages.
    pub fn message_count(&self) -> usize {
        self.state().ready.len()
    }

    /// Consumers.
    pub fn consumer_count(&self) -> usize {
        self.state().consumers.len()
    }

    /// Offers a message. Returns whether it was taken, and what fell out (x-max-length with
    /// drop-head) for dead-lettering.
    pub fn publish(
        self: &Arc<Self>,
        mut message: QueuedMessage,
        dead: &mut DeadLetters,
    ) -> Enqueued {
        let mut state = self.lock_state();
        if state.deleted {
            return Enqueued::Accepted;
        }
        let size = message.content.size();
        if self.would_overflow(&state, size) && self.settings.overflow == Overflow::RejectPublish {
            return Enqueued::Rejected;
        }
        if self.settings.queue_type == QueueType::Quorum {
            message.content = with_delivery_count(&message.content, 0);
        }
        let expires_at = message.expires_at;
        self.enqueue(&mut state, message);
        // As RabbitMQ does, a message is offered to the consumers before its expiry is
        // looked at: with x-message-ttl 0 a waiting consumer still gets it, while a message
        // nobody takes at once expires.
        let now = Instant::now();
        let expire_before = expires_at.map_or(now, |at| at.instant().min(now));
        // Dropping for x-max-length does not wait for another read of the head.
        let limited =
            self.settings.max_length.is_some() || self.settings.max_length_bytes.is_some();
        let mut state = self.with_head_in_memory(state, dead, limited, |state, dead| {
            while self.would_overflow(state, 0) {
                match self.take_front(state) {
                    Some(dropped) => dead.push((dropped, "maxlen")),
                    None => break,
                }
            }
            if !state.consumers.is_empty() {
                self.dispatch_at(state, dead, expire_before);
            }
            if state.ready.front().is_some_and(|m| m.expires_at.is_some()) {
                self.drop_expired_head(state, Instant::now(), dead);
            }
        });
        if state.arrived >= PAGE_OUT_BATCH {
            self.page_out(&mut state);
        }
        Enqueued::Accepted
    }

    /// Appends a ready message: at the tail, or for a priority queue after every message of
    /// its priority or higher.
    fn enqueue(&self, state: &mut QueueState, message: QueuedMessage) {
        state.ready_bytes += message.content.size();
        let message = ReadyMessage::new(message);
        match self.settings.max_priority {
            None => {
                state.ready.push_back(message);
                state.unscanned += 1;
                state.arrived += 1;
            }
            Some(max) => {
                let priority = message_priority(&message, max);
                let at = state
                    .ready
                    .iter()
                    .rposition(|m| message_priority(m, max) >= priority)
                    .map_or(0, |i| i + 1);
                state.ready.insert(at, message);
            }
        }
    }

    /// Puts a returned message back at the head: before every message of its priority or
    /// lower (for a classic queue without priorities, simply first).
    fn enqueue_front(&self, state: &mut QueueState, message: QueuedMessage) {
        state.ready_bytes += message.content.size();
        let message = ReadyMessage::new(message);
        match self.settings.max_priority {
            None => state.ready.push_front(message),
            Some(max) => {
                let priority = message_priority(&message, max);
                let at = state
                    .ready
                    .iter()
                    .position(|m| message_priority(m, max) <= priority)
                    .unwrap_or(state.ready.len());
                state.ready.insert(at, message);
            }
        }
    }

    fn would_overflow(&self, state: &QueueState, extra_bytes: usize) -> bool {
        let adding = usize::from(extra_bytes > 0);
        let too_many = self
            .settings
            .max_length
            .is_some_and(|max| state.ready.len() + adding > max);
        let too_big = self
            .settings
            .max_length_bytes
            .is_some_and(|max| state.ready_bytes + extra_bytes > max);
        too_many || too_big
    }

    /// Hands ready messages to the consumers that can take them, until one side runs out:
    /// the highest priority first, round-robin among equals (see the module docs).
    fn dispatch(self: &Arc<Self>, state: &mut QueueState, dead: &mut DeadLetters) {
        if state.consumers.is_empty() || state.ready.is_empty() {
            return;
        }
        self.dispatch_at(state, dead, Instant::now());
    }

    /// [`dispatch`](Self::dispatch), dropping messages whose expiry is before `now`.
    fn dispatch_at(self: &Arc<Self>, state: &mut QueueState, dead: &mut DeadLetters, now: Instant) {
        if state.consumers.is_empty() || state.ready.is_empty() {
            return;
        }
        // The consumers that may take a message, in the order they are offered one. A
        // consumer leaves the list when it refuses (its channel is closed, in flow-off, at
        // its global prefetch, or its connection is congested) or fills its prefetch; the one
        // served goes behind the others of its priority.
        let mut order = std::mem::take(&mut state.offer_order);
        order.clear();
        order.extend(
            state
                .consumers
                .iter()
                .enumerate()
                .filter(|(_, c)| c.can_take())
                .map(|(i, _)| i),
        );
        let consumers = &state.consumers;
        order.sort_by(|&a, &b| goes_before(&consumers[a], &consumers[b]));
        loop {
            self.drop_expired_head(state, now, dead);
            if order.is_empty() {
                break;
            }
            let Some(message) = self.take_front(state) else {
                break;
            };
            let mut undelivered = Some(message);
            while let Some(&index) = order.first() {
                let Some(message) = undelivered.take() else {
                    break;
                };
                let Some(consumer) = state.consumers.get_mut(index) else {
                    order.remove(0);
                    undelivered = Some(message);
                    continue;
                };
                let (persist_id, redelivered) = (message.persist_id, message.redelivered);
                match consumer
                    .link
                    .deliver(self, &consumer.tag, consumer.no_ack, message)
                {
                    Ok(()) => {
                        if let (Some(store), Some(id)) = (&self.store, persist_id) {
                            if consumer.no_ack {
                                store.ack(id);
                            } else if !redelivered {
                                store.delivered(id);
                            }
                        }
                        if !consumer.no_ack {
                            consumer.unacked += 1;
                            state.unacked += 1;
                        }
                        state.serial += 1;
                        consumer.served = state.serial;
                        if consumer.can_take() {
                            let priority = consumer.priority;
                            let consumers = &state.consumers;
                            let band = order
                                .iter()
                                .position(|&i| consumers[i].priority != priority)
                                .unwrap_or(order.len());
                            order[..band].rotate_left(1);
                        } else {
                            order.remove(0);
                        }
                    }
                    Err(message) => {
                        order.remove(0);
                        undelivered = Some(message);
                    }
                }
            }
            if let Some(message) = undelivered {
                // Nobody could take it: back to the head (where it was), and stop.
                state.ready_bytes += message.content.size();
                state.ready.push_front(ReadyMessage::new(message));
                break;
            }
        }
        state.offer_order = order;
    }

    /// Drops (dead-letters) messages at the head that expired before `now`.
    fn drop_expired_head(&self, state: &mut QueueState, now: Instant, dead: &mut DeadLetters) {
        while state
            .ready
            .front()
            .is_some_and(|m| m.expires_at.is_some_and(|at| at.is_before(now)))
        {
            match self.take_front(state) {
                Some(expired) => dead.push((expired, "expired")),
                None => break,
            }
        }
    }

    /// Expires messages at the head whose time has come (called periodically).
    pub fn expire(self: &Arc<Self>, now: Instant, dead: &mut DeadLetters) {
        let state = self.lock_state();
        self.with_head_in_memory(state, dead, false, |state, dead| {
            self.drop_expired_head(state, now, dead);
        });
    }

    /// Tries to dispatch again (after acks freed room or a writer drained its outbox).
    pub fn kick(self: &Arc<Self>, dead: &mut DeadLetters) {
        let state = self.lock_state();
        self.dispatch_paging_in(state, dead);
    }

    /// Dispatches again if the last read of the paged-out head failed (the broker's
    /// housekeeping calls it periodically), so that consumers are served once the disk reads
    /// again, even if nothing else happens to the queue.
    pub fn retry_unread_head(self: &Arc<Self>, dead: &mut DeadLetters) {
        let state = self.lock_state();
        if state.unread_head {
            self.dispatch_paging_in(state, dead);
        }
    }

    /// Dispatches, reading paged-out messages at the head back as needed.
    fn dispatch_paging_in(self: &Arc<Self>, state: Locked<'_>, dead: &mut DeadLetters) {
        self.with_head_in_memory(state, dead, false, |state, dead| {
            self.dispatch(state, dead);
        });
    }

    /// Adds a consumer and dispatches to it. On a single-active-consumer queue it becomes the
    /// active one only if there is none yet.
    pub fn add_consumer(self: &Arc<Self>, mut consumer: QueueConsumer, dead: &mut DeadLetters) {
        let mut state = self.lock_state();
        consumer.active = !self.settings.single_active_consumer || state.consumers.is_empty();
        state.serial += 1;
        consumer.served = state.serial;
        state.consumers.push(consumer);
        state.had_consumer = true;
        state.last_used = Instant::now();
        self.dispatch_paging_in(state, dead);
    }

    /// Whether a new consumer is refused as RabbitMQ 3.10 refuses it (403 "in exclusive
    /// use"): on a classic queue, when a consumer holds the queue exclusively, when an
    /// exclusive one is asked for while any consumer exists, and an exclusive one always on
    /// a single-active-consumer queue. A quorum queue ignores the exclusive flag.
    pub fn consumer_conflict(&self, wants_exclusive: bool) -> bool {
        if self.settings.queue_type == QueueType::Quorum {
            return false;
        }
        let state = self.state();
        state.consumers.iter().any(|c| c.exclusive)
            || (wants_exclusive
                && (self.settings.single_active_consumer || !state.consumers.is_empty()))
    }

    /// Removes a consumer; returns whether the queue should now be auto-deleted. When the
    /// single active consumer goes, the next one is made active; it gets messages at the
    /// next dispatch ([`kick`](Self::kick)), which the caller orders against requeueing the
    /// departed consumer's messages.
    pub fn remove_consumer(&self, link: &Arc<ChannelLink>, tag: &ShortString) -> bool {
        let mut state = self.state();
        let mut active_left = false;
        state.consumers.retain(|c| {
            let leaving = Arc::ptr_eq(&c.link, link) && &c.tag == tag;
            active_left |= leaving && c.active;
            !leaving
        });
        if self.settings.single_active_consumer && active_left {
            if let Some(next) = next_single_active(&state.consumers, self.settings.queue_type)
                .and_then(|i| state.consumers.get_mut(i))
            {
                next.active = true;
            }
        }
        state.last_used = Instant::now();
        self.auto_delete && state.had_consumer && state.consumers.is_empty() && !state.deleted
    }

    /// Takes the messages the store recovered for this queue, in publish order, behind any
    /// it holds: as many from the head as the paging budget has room for are read back into
    /// memory, the others stay paged out, their bodies in the log (a priority queue, which
    /// does not page, reads them all back).
    fn restore_recovered(&self, store: &Store, recovered: &[RecoveredMessage]) {
        let mut state = self.lock_state();
        let expires_at = self
            .settings
            .message_ttl
            .and_then(|ttl| Instant::now().checked_add(ttl))
            .map(Deadline::at);
        let mut room = match self.settings.max_priority {
            None => store.pager().room(),
            Some(_) => u64::MAX,
        };
        let in_memory = recovered
            .iter()
            .take_while(|m| match room.checked_sub(u64::from(m.size)) {
                Some(left) => {
                    room = left;
                    true
                }
                None => false,
            })
            .count();
        let head = &recovered[..in_memory];
        state.ready.reserve_exact(recovered.len());
        // How many of the head were read back (or found gone).
        let mut read = 0;
        'reading: for chunk in head.chunks(READ_AHEAD_MESSAGES) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let ids: Vec<u64> = rest.iter().map(|m| m.id).collect();
                let PagedIn { records, failure } = store.page_in(&ids, READ_AHEAD_BYTES);
                self.note_read(&mut state, failure, Instant::now());
                if records.is_empty() {
                    // The log could not be read (an I/O error, logged): what is left stays
                    // on disk.
                    break 'reading;
                }
                let (done, left) = rest.split_at(records.len().min(rest.len()));
                read += done.len();
                for (message, record) in done.iter().zip(records) {
                    match self.content_from_log(record, message.delivered) {
                        Some(content) => self.enqueue(
                            &mut state,
                            QueuedMessage {
                                content,
                                expires_at,
                                persist_id: Some(message.id),
                                redelivered: message.delivered,
                            },
                        ),
                        None => {
                            self.report_lost(message.id);
                            store.ack(message.id);
                        }
                    }
                }
                rest = left;
            }
        }
        if read < head.len() && self.settings.max_priority.is_some() {
            // A priority queue holds no message paged out: the rest waits in the log for
            // the next start.
            tracing::error!(
                "queue '{}': {} messages could not be read back from the log; they stay there",
                self.name,
                recovered.len() - read
            );
            return;
        }
        for message in &recovered[read..] {
            let size = message.size as usize;
            state.ready.push_back(ReadyMessage::paged_out(
                message.id,
                message.size,
                message.delivered,
                expires_at,
            ));
            state.ready_bytes += size;
            state.paged_out += 1;
            state.paged_out_bytes += size;
        }
    }

    /// Takes one ready message for basic.get.
    pub fn get(self: &Arc<Self>, dead: &mut DeadLetters) -> Option<(QueuedMessage, usize)> {
        let mut state = self.lock_state();
        state.last_used = Instant::now();
        let mut taken = None;
        // A get answers now: it reads the head back itself even while another read is
        // under way, rather than answer get-empty.
        let state = self.with_head_in_memory(state, dead, true, |state, dead| {
            if taken.is_none() {
                self.drop_expired_head(state, Instant::now(), dead);
                taken = self.take_front(state);
            }
        });
        Some((taken?, state.ready.len()))
    }

    /// Counts a basic.get delivery as unacked.
    pub fn count_unacked(&self, n: usize) {
        self.state().unacked += n;
    }

    /// Settles acked deliveries of `consumer_tag` on `link` and dispatches more.
    pub fn settle(
        self: &Arc<Self>,
        link: &Arc<ChannelLink>,
        consumer_tag: Option<&ShortString>,
        count: usize,
        dead: &mut DeadLetters,
    ) {
        let mut state = self.lock_state();
        state.unacked = state.unacked.saturating_sub(count);
        if let Some(tag) = consumer_tag {
            if let Some(consumer) = state
                .consumers
                .iter_mut()
                .find(|c| Arc::ptr_eq(&c.link, link) && &c.tag == tag)
            {
                consumer.unacked = consumer.unacked.saturating_sub(count as u32);
            }
        }
        self.dispatch_paging_in(state, dead);
    }

    /// Puts messages back at the head, in their original order, marked redelivered: what
    /// a closing channel or connection does with its unacked messages.
    pub fn requeue(
        self: &Arc<Self>,
        link: &Arc<ChannelLink>,
        messages: Vec<Unacked>,
        dead: &mut DeadLetters,
    ) {
        self.put_back(link, messages, dead, false);
    }

    /// Returns rejected or nacked messages (requeue=true) and basic.recover's: like
    /// [`requeue`](Self::requeue) for a classic queue; a quorum queue appends them at the
    /// back, in the order they are returned.
    pub fn return_messages(
        self: &Arc<Self>,
        link: &Arc<ChannelLink>,
        messages: Vec<Unacked>,
        dead: &mut DeadLetters,
    ) {
        let to_back = self.settings.queue_type == QueueType::Quorum;
        self.put_back(link, messages, dead, to_back);
    }

    fn put_back(
        self: &Arc<Self>,
        link: &Arc<ChannelLink>,
        messages: Vec<Unacked>,
        dead: &mut DeadLetters,
        to_back: bool,
    ) {
        let mut state = self.lock_state();
        if state.deleted {
            self.forget_stored(messages.iter().map(|u| &u.message));
            return;
        }
        let quorum = self.settings.queue_type == QueueType::Quorum;
        let back_up = |state: &mut QueueState, unacked: Unacked| {
            state.unacked = state.unacked.saturating_sub(1);
            if let Some(tag) = &unacked.consumer_tag {
                if let Some(consumer) = state
                    .consumers
                    .iter_mut()
                    .find(|c| Arc::ptr_eq(&c.link, link) && &c.tag == tag)
                {
                    consumer.unacked = consumer.unacked.saturating_sub(1);
                }
            }
            let mut message = unacked.message;
            message.redelivered = true;
            if quorum {
                let count = delivery_count(&message.content) + 1;
                message.content = with_delivery_count(&message.content, count);
            }
            message
        };
        if to_back {
            for unacked in messages {
                let message = back_up(&mut state, unacked);
                self.enqueue(&mut state, message);
            }
        } else {
            for unacked in messages.into_iter().rev() {
                let message = back_up(&mut state, unacked);
                self.enqueue_front(&mut state, message);
            }
        }
        self.dispatch_paging_in(state, dead);
    }

    /// Removes every ready message; returns how many.
    pub fn purge(&self) -> usize {
        let mut state = self.lock_state();
        let count = state.ready.len();
        self.clear_ready(&mut state);
        count
    }

    /// Removes every ready message, telling the store they are gone.
    fn clear_ready(&self, state: &mut QueueState) {
        self.forget_ids(state.ready.iter().map(ReadyMessage::persist_id));
        state.ready.clear();
        state.ready_bytes = 0;
        state.paged_out = 0;
        state.paged_out_bytes = 0;
        state.unscanned = 0;
        state.arrived = 0;
    }

    /// Tells the store these messages are gone for good.
    pub fn forget_stored<'a>(&self, messages: impl Iterator<Item = &'a QueuedMessage>) {
        self.forget_ids(messages.map(|m| m.persist_id));
    }

    fn forget_ids(&self, ids: impl Iterator<Item = Option<u64>>) {
        if let Some(store) = &self.store {
            for id in ids.flatten() {
                store.ack(id);
            }
        }
    }

    /// Marks the queue deleted; returns its ready count and its consumers (to be told with
    /// basic.cancel).
    pub fn delete(&self) -> (usize, Vec<QueueConsumer>) {
        let mut state = self.lock_state();
        state.deleted = true;
        let count = state.ready.len();
        self.clear_ready(&mut state);
        (count, std::mem::take(&mut state.consumers))
    }

    /// Takes the message at the head. None if there is none, or if it is paged out: the
    /// change under way then stops there and [`Queue::with_head_in_memory`] reads it back.
    fn take_front(&self, state: &mut QueueState) -> Option<QueuedMessage> {
        if state.ready.front()?.is_paged_out() {
            state.head_paged_out = true;
            return None;
        }
        let message = state.ready.pop_front()?;
        state.ready_bytes -= message.size();
        state.unscanned = state.unscanned.min(state.ready.len());
        message.into_queued()
    }

    /// Runs `work`, a change that takes messages from the head, on the locked state. While
    /// it stopped at a paged-out head, reads the paged-out messages near the head back from
    /// the store with the lock released (publishers and consumers of the queue do not wait
    /// for the disk), puts back those still waiting, and runs `work` again. After each read
    /// it also dispatches, for consumers that found the head paged out while the read was
    /// under way and left it to this one: it reads on while either `work` or that dispatch
    /// stops at a paged-out head, so the consumers are not left waiting for the next
    /// publish, ack or get. Unless `always_read`, a change that finds another read under
    /// way leaves the head to it. Returns the state, locked again.
    fn with_head_in_memory<'a>(
        self: &'a Arc<Self>,
        mut state: Locked<'a>,
        dead: &mut DeadLetters,
        always_read: bool,
        mut work: impl FnMut(&mut QueueState, &mut DeadLetters),
    ) -> Locked<'a> {
        state.head_paged_out = false;
        work(&mut state, dead);
        while let Some(read) = self.plan_page_in(&mut state, always_read) {
            drop(state);
            #[cfg(test)]
            if read.panics {
                panic!("test fault: the read of the head panicked");
            }
            let (pages, failure) = self.read_pages(&read.wanted);
            state = self.lock_state();
            read.under_way.end(&mut state);
            if !read.wanted.is_empty() {
                self.note_read(&mut state, failure, Instant::now());
            }
            state.unread_head = pages.is_empty() && !read.wanted.is_empty();
            if state.unread_head {
                // Not even the head could be read (an I/O error, logged once an episode:
                // [`ReadFailures`]): it stays paged out, to be read when the queue next
                // changes or at the next retry, not again at once.
                break;
            }
            self.put_back_pages(&mut state, pages);
            work(&mut state, dead);
            self.dispatch(&mut state, dead);
        }
        state
    }

    /// What to read back after a change stopped at a paged-out head: the paged-out messages
    /// among the next [`READ_AHEAD_MESSAGES`] (the head's first). None when no change
    /// stopped there, or when another read is under way and `always_read` is false.
    fn plan_page_in<'a>(&'a self, state: &mut QueueState, always_read: bool) -> Option<PageIn<'a>> {
        if !std::mem::take(&mut state.head_paged_out)
            || !state.ready.front().is_some_and(ReadyMessage::is_paged_out)
            || (state.paging_in && !always_read)
        {
            return None;
        }
        let wanted: Vec<Wanted> = state
            .ready
            .iter()
            .take(READ_AHEAD_MESSAGES)
            .filter(|m| m.is_paged_out())
            .filter_map(|m| {
                Some(Wanted {
                    id: m.persist_id()?,
                    redelivered: m.redelivered(),
                })
            })
            .collect();
        if wanted.is_empty() {
            // A paged-out message without a store id cannot be: drop it rather than spin.
            if let Some(message) = state.ready.pop_front() {
                self.report_lost(0);
                let size = message.size();
                state.ready_bytes -= size;
                state.paged_out -= 1;
                state.paged_out_bytes -= size;
            }
        }
        let under_way = ReadUnderWay {
            queue: self,
            owns_flag: !state.paging_in,
        };
        state.paging_in = true;
        Some(PageIn {
            wanted,
            under_way,
            #[cfg(test)]
            panics: std::mem::take(&mut state.panic_in_next_read),
        })
    }

    /// Reads `wanted` back from the store (as many as [`READ_AHEAD_BYTES`] of log hold, at
    /// least the first unless the disk fails), without the queue's lock; each decoded as
    /// this queue delivers it, or None if its record is gone or damaged; none from the
    /// first a failed read concerns, and that read's failure.
    fn read_pages(&self, wanted: &[Wanted]) -> (Vec<Page>, Option<ReadError>) {
        let ids: Vec<u64> = wanted.iter().map(|w| w.id).collect();
        let read = match (&self.store, ids.is_empty()) {
            (Some(store), false) => store.page_in(&ids, READ_AHEAD_BYTES),
            _ => PagedIn {
                records: Vec::new(),
                failure: None,
            },
        };
        // Fewer records than ids: the rest did not fit in the read.
        let pages = wanted
            .iter()
            .zip(read.records)
            .map(|(w, record)| Page {
                wanted: *w,
                content: self.content_from_log(record, w.redelivered),
            })
            .collect();
        (pages, read.failure)
    }

    /// Puts messages read back in place, among the first [`PUT_BACK_WINDOW`] ready ones:
    /// each that is still there and paged out, as it was when the read was planned. What
    /// left the queue meanwhile (delivered, purged, the queue deleted) is dropped. A message
    /// still waiting whose record could not be read (a damaged log) is dropped from the
    /// queue, with an error logged.
    fn put_back_pages(&self, state: &mut QueueState, pages: Vec<Page>) {
        let mut pages: HashMap<u64, Page> = pages.into_iter().map(|p| (p.wanted.id, p)).collect();
        let mut lost = Vec::new();
        let mut last = None;
        for (at, message) in state.ready.iter_mut().take(PUT_BACK_WINDOW).enumerate() {
            if pages.is_empty() {
                break;
            }
            let Some(id) = message.persist_id().filter(|_| message.is_paged_out()) else {
                continue;
            };
            let Some(page) = pages.remove(&id) else {
                continue;
            };
            if page.wanted.redelivered != message.redelivered() {
                continue;
            }
            last = Some(at);
            match page.content {
                Some(content) => {
                    let size = message.size();
                    message.page_in(content);
                    state.paged_out -= 1;
                    state.paged_out_bytes -= size;
                }
                None => lost.push((at, id)),
            }
        }
        for &(at, id) in lost.iter().rev() {
            let Some(message) = state.ready.remove(at) else {
                continue;
            };
            self.report_lost(id);
            let size = message.size();
            state.ready_bytes -= size;
            state.paged_out -= 1;
            state.paged_out_bytes -= size;
            self.forget_ids(std::iter::once(Some(id)));
        }
        // What was read back is delivered next: no page-out is to look at it again.
        let behind = last.map_or(0, |at| at + 1 - lost.len());
        state.unscanned = state
            .unscanned
            .min(state.ready.len().saturating_sub(behind));
    }

    /// Pages out what came in since the last look, while the durable queues hold more
    /// message bodies than their budget (called periodically: what the last look found not
    /// yet on disk may be now).
    pub fn page_out_now(&self) {
        if self.store.is_some() && self.state().unscanned > 0 {
            let mut state = self.lock_state();
            self.page_out(&mut state);
        }
    }

    /// Pages out the newest messages that came in since the last look and are on disk for
    /// good, while the durable queues hold more message bodies in memory than their budget,
    /// until they are back under three quarters of it. The head stays in memory: it is
    /// delivered next. Priority queues do not page (their messages are not delivered in
    /// arrival order); nor do quorum queue messages that were returned (their delivery
    /// count is not in the log).
    fn page_out(&self, state: &mut QueueState) {
        let Some(store) = &self.store else {
            return;
        };
        state.arrived = 0;
        #[cfg(test)]
        {
            state.page_out_looks += 1;
        }
        let pager = store.pager();
        if state.unscanned == 0 || self.settings.max_priority.is_some() || !pager.over_budget() {
            return;
        }
        let quorum = self.settings.queue_type == QueueType::Quorum;
        let to_free = pager.resident().saturating_sub(pager.low_water()) as usize;
        let len = state.ready.len();
        let from = len - state.unscanned.min(len);
        // From here on, messages were not yet on disk: the next look starts there.
        let mut not_on_disk = len;
        let mut freed = 0;
        let mut at = len;
        let on_disk = store.on_disk();
        while at > from && freed < to_free {
            at -= 1;
            let Some(message) = state.ready.get_mut(at) else {
                break;
            };
            let Some(id) = message.persist_id() else {
                continue;
            };
            if message.is_paged_out() || (quorum && message.redelivered()) {
                continue;
            }
            if !on_disk.contains(id) {
                not_on_disk = at;
                continue;
            }
            if let Some(size) = message.page_out() {
                freed += size;
                state.paged_out += 1;
                state.paged_out_bytes += size;
            }
        }
        drop(on_disk);
        // Stopped early (back under budget): what was not looked at is looked at next time.
        let next_from = if at > from { from } else { not_on_disk };
        state.unscanned = len - next_from;
    }

    /// A message read back from the log, as this queue delivers it: in a quorum queue with
    /// its delivery count (1 for a message delivered before a restart: returned messages
    /// do not page, so a redelivered one read back is a recovered one). None if there is no
    /// record or it does not decode.
    fn content_from_log(
        &self,
        record: Option<PublishRecord>,
        redelivered: bool,
    ) -> Option<Arc<MessageContent>> {
        let record = record?;
        let content = MessageContent::from_stored(
            &record.exchange,
            &record.routing_key,
            &record.header,
            record.body,
        )?;
        let content = Arc::new(content);
        Some(match self.settings.queue_type {
            QueueType::Quorum => with_delivery_count(&content, i64::from(redelivered)),
            QueueType::Classic => content,
        })
    }

    fn report_lost(&self, id: u64) {
        tracing::error!(
            "queue '{}' in vhost '{}': message {id} cannot be read back from the message log; it is lost",
            self.name,
            self.vhost
        );
    }

    /// Counts a read of paged-out messages that ended at `now`, with `failure` if it failed,
    /// and logs what [`ReadFailures`] says to: a disk that keeps failing is reported once,
    /// then reminded of now and then, not at every retry (ten times a second).
    fn note_read(&self, state: &mut QueueState, failure: Option<ReadError>, now: Instant) {
        let Some(report) = state.read_failures.note(failure.is_some(), now) else {
            return;
        };
        #[cfg(test)]
        state.read_reports.push(report);
        let (name, vhost) = (&self.name, &self.vhost);
        let cause = failure.map_or_else(String::new, |err| err.to_string());
        match report {
            ReadReport::Failing => tracing::error!(
                "queue '{name}' in vhost '{vhost}': its paged-out messages cannot be read back: \
                 {cause}; they stay on disk, and the read is retried every 100 ms while \
                 consumers wait"
            ),
            ReadReport::StillFailing { attempts, lasting } => tracing::error!(
                "queue '{name}' in vhost '{vhost}': its paged-out messages still cannot be read \
                 back, {attempts} attempts failed over {:.0} s: {cause}",
                lasting.as_secs_f64()
            ),
            ReadReport::ReadAgain { attempts, lasting } => tracing::warn!(
                "queue '{name}' in vhost '{vhost}': its paged-out messages are read back again, \
                 after {attempts} failed attempts over {:.1} s",
                lasting.as_secs_f64()
            ),
        }
    }
}

/// A paged-out message to read back, as it was when the read was planned.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    id: u64,
    redelivered: bool,
}

/// A planned read of paged-out messages near the head.
struct PageIn<'a> {
    wanted: Vec<Wanted>,
    under_way: ReadUnderWay<'a>,
    /// The read panics (a test fault: [`QueueState::panic_in_next_read`]).
    #[cfg(test)]
    panics: bool,
}

/// A read of the head under way, the queue's lock released. The read that set
/// [`QueueState::paging_in`] clears it when it ends, with the lock taken again; if the
/// reader panics before, it is cleared when this is dropped, so the queue's consumers do not
/// leave the head to a read that will never end.
struct ReadUnderWay<'a> {
    queue: &'a Queue,
    /// Whether this read set [`QueueState::paging_in`] (and clears it).
    owns_flag: bool,
}

impl ReadUnderWay<'_> {
    /// The read is done: called with the state locked again, before anything that could
    /// panic (the drop would lock it a second time).
    fn end(mut self, state: &mut QueueState) {
        if std::mem::take(&mut self.owns_flag) {
            state.paging_in = false;
        }
    }
}

impl Drop for ReadUnderWay<'_> {
    fn drop(&mut self) {
        if self.owns_flag {
            self.queue.state().paging_in = false;
        }
    }
}

/// A message read back: its content, as its queue delivers it; None if its record is gone or
/// damaged. (A read that failed brings no page at all: the message stays paged out.)
struct Page {
    wanted: Wanted,
    content: Option<Arc<MessageContent>>,
}

/// The reads of a queue's paged-out messages that failed, in episodes: one runs from a read
/// that fails to the next that does not. Which reads to log: the first failure of an
/// episode, a reminder at most every [`READ_FAILURE_REMINDER`] while it lasts, and its end;
/// not every retry of a disk that keeps failing.
#[derive(Debug, Default)]
struct ReadFailures {
    /// The episode under way, if reads fail.
    episode: Option<FailingReads>,
}

/// An episode of failing reads.
#[derive(Debug, Clone, Copy)]
struct FailingReads {
    /// When its first read failed.
    since: Instant,
    /// The reads that failed so far.
    attempts: u64,
    /// When it was last logged.
    reported: Instant,
}

/// What to log of a read of paged-out messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadReport {
    /// The read failed, the first of an episode.
    Failing,
    /// The reads still fail: `attempts` so far, over `lasting`.
    StillFailing { attempts: u64, lasting: Duration },
    /// The read succeeded, after `attempts` that failed over `lasting`.
    ReadAgain { attempts: u64, lasting: Duration },
}

impl ReadFailures {
    /// Counts a read that ended at `now`, failed or not; what to log of it, if anything.
    fn note(&mut self, failed: bool, now: Instant) -> Option<ReadReport> {
        let Some(episode) = &mut self.episode else {
            if failed {
                self.episode = Some(FailingReads {
                    since: now,
                    attempts: 1,
                    reported: now,
                });
                return Some(ReadReport::Failing);
            }
            return None;
        };
        let lasting = now.saturating_duration_since(episode.since);
        if !failed {
            let attempts = episode.attempts;
            self.episode = None;
            return Some(ReadReport::ReadAgain { attempts, lasting });
        }
        episode.attempts += 1;
        if now.saturating_duration_since(episode.reported) < READ_FAILURE_REMINDER {
            return None;
        }
        episode.reported = now;
        Some(ReadReport::StillFailing {
            attempts: episode.attempts,
            lasting,
        })
    }
}

/// A queue's state locked for a change of its ready messages: when unlocked, the change in
/// the body bytes it holds in memory is counted in the store's paging budget.
struct Locked<'a> {
    queue: &'a Queue,
    state: MutexGuard<'a, QueueState>,
}

impl Deref for Locked<'_> {
    type Target = QueueState;

    fn deref(&self) -> &QueueState {
        &self.state
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut QueueState {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(store) = &self.queue.store {
            let state = &mut *self.state;
            let resident = state.ready_bytes.saturating_sub(state.paged_out_bytes);
            let delta = resident as i64 - state.counted_resident as i64;
            store.pager().add_resident(delta);
            state.counted_resident = resident;
        }
    }
}

/// A message's priority in a queue with `x-max-priority` `max`: its `priority` property
/// capped at `max` (none: 0), as RabbitMQ orders a priority queue.
fn message_priority(message: &ReadyMessage, max: u8) -> u8 {
    message.priority().unwrap_or(0).min(max)
}

/// How often a quorum queue message was returned: its `x-delivery-count` header.
fn delivery_count(content: &MessageContent) -> i64 {
    match content
        .properties()
        .headers
        .as_ref()
        .and_then(|h| h.get("x-delivery-count"))
    {
        Some(FieldValue::I64(n)) => *n,
        _ => 0,
    }
}

/// The content with `x-delivery-count` set to `count`, as a quorum queue delivers it. Like
/// RabbitMQ when it sets a header, the headers come out sorted by name.
fn with_delivery_count(content: &Arc<MessageContent>, count: i64) -> Arc<MessageContent> {
    let mut properties = content.properties();
    let mut entries: Vec<(ShortString, FieldValue)> = properties
        .headers
        .take()
        .map(|h| {
            h.iter()
                .filter(|(k, _)| k.as_bytes() != b"x-delivery-count")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    entries.push(("x-delivery-count".into(), FieldValue::I64(count)));
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    properties.headers = Some(entries.into_iter().collect());
    Arc::new(content.with_new_properties(&properties))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Outbox;
    use amqp_codec::BasicProperties;
    use bytes::Bytes;

    fn queue(queue_type: QueueType, single_active_consumer: bool) -> Arc<Queue> {
        Arc::new(Queue::new(
            QueueDeclaration {
                name: "q".into(),
                vhost: "/".to_owned(),
                durable: queue_type == QueueType::Quorum,
                auto_delete: false,
                exclusive_owner: None,
                arguments: FieldTable::new(),
                settings: QueueSettings {
                    queue_type,
                    single_active_consumer,
                    ..QueueSettings::default()
                },
            },
            None,
        ))
    }

    /// A consumer on a channel of its own, acking manually.
    fn consumer(tag: &str, priority: i64, prefetch: u16) -> QueueConsumer {
        QueueConsumer {
            tag: tag.into(),
            link: Arc::new(ChannelLink::new(
                1,
                1,
                Arc::new(Outbox::new(131_072)),
                false,
            )),
            no_ack: false,
            exclusive: false,
            prefetch,
            unacked: 0,
            priority,
            arguments: FieldTable::new(),
            active: true,
            served: 0,
        }
    }

    fn publish(queue: &Arc<Queue>, bodies: &[&str]) {
        for body in bodies {
            let content = MessageContent::with_properties(
                b"",
                b"q",
                &BasicProperties::default(),
                Bytes::copy_from_slice(body.as_bytes()),
            );
            let message = QueuedMessage {
                content: Arc::new(content),
                expires_at: None,
                persist_id: None,
                redelivered: false,
            };
            assert_eq!(queue.publish(message, &mut Vec::new()), Enqueued::Accepted);
        }
    }

    /// What each consumer holds unacked, by tag, in delivery order.
    fn holdings(queue: &Queue) -> Vec<(String, Vec<String>)> {
        queue
            .state()
            .consumers
            .iter()
            .map(|c| {
                let bodies = lock(&c.link.state)
                    .unacked
                    .values()
                    .map(|u| String::from_utf8_lossy(u.message.content.body()).into_owned())
                    .collect();
                (c.tag.to_string(), bodies)
            })
            .collect()
    }

    fn held(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(tag, bodies)| {
                (
                    (*tag).to_owned(),
                    bodies.iter().map(|b| (*b).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn higher_priority_consumer_takes_messages_until_its_prefetch_is_full() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let queue = queue(queue_type, false);
            let mut dead = Vec::new();
            queue.add_consumer(consumer("low", -5, 0), &mut dead);
            queue.add_consumer(consumer("high", 10, 1), &mut dead);
            publish(&queue, &["m0", "m1", "m2"]);
            assert_eq!(
                holdings(&queue),
                held(&[("low", &["m1", "m2"]), ("high", &["m0"])]),
                "{queue_type:?}"
            );
        }
    }

    #[test]
    fn equal_priorities_alternate_and_a_lower_one_waits() {
        let queue = queue(QueueType::Classic, false);
        let mut dead = Vec::new();
        queue.add_consumer(consumer("a", 3, 0), &mut dead);
        queue.add_consumer(consumer("default", 0, 0), &mut dead);
        queue.add_consumer(consumer("b", 3, 0), &mut dead);
        publish(&queue, &["m0", "m1", "m2", "m3", "m4"]);
        assert_eq!(
            holdings(&queue),
            held(&[
                ("a", &["m0", "m2", "m4"]),
                ("default", &[]),
                ("b", &["m1", "m3"])
            ])
        );
    }

    #[test]
    fn consumer_whose_channel_is_in_flow_off_is_passed_over_for_a_lower_one() {
        let queue = queue(QueueType::Classic, false);
        let mut dead = Vec::new();
        let high = consumer("high", 1, 0);
        lock(&high.link.state).flow_active = false;
        queue.add_consumer(high, &mut dead);
        queue.add_consumer(consumer("low", 0, 0), &mut dead);
        publish(&queue, &["m0"]);
        assert_eq!(holdings(&queue), held(&[("high", &[]), ("low", &["m0"])]));
    }

    #[test]
    fn single_active_consumer_queue_delivers_only_to_the_first_registered() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let queue = queue(queue_type, true);
            let mut dead = Vec::new();
            queue.add_consumer(consumer("first", 0, 1), &mut dead);
            queue.add_consumer(consumer("second", 10, 0), &mut dead);
            publish(&queue, &["m0", "m1"]);
            // The active consumer's prefetch is full: the second message waits.
            assert_eq!(
                holdings(&queue),
                held(&[("first", &["m0"]), ("second", &[])]),
                "{queue_type:?}"
            );
            assert_eq!(queue.message_count(), 1);
        }
    }

    #[test]
    fn classic_queue_hands_over_to_the_highest_priority_quorum_to_the_earliest() {
        for (queue_type, expected) in [(QueueType::Classic, "c"), (QueueType::Quorum, "b")] {
            let queue = queue(queue_type, true);
            let mut dead = Vec::new();
            let first = consumer("a", 0, 0);
            let link = first.link.clone();
            queue.add_consumer(first, &mut dead);
            queue.add_consumer(consumer("b", 0, 0), &mut dead);
            queue.add_consumer(consumer("c", 10, 0), &mut dead);
            queue.add_consumer(consumer("d", 10, 0), &mut dead);
            assert!(!queue.remove_consumer(&link, &"a".into()));
            let active: Vec<String> = queue
                .state()
                .consumers
                .iter()
                .filter(|c| c.active)
                .map(|c| c.tag.to_string())
                .collect();
            assert_eq!(active, [expected], "{queue_type:?}");
            publish(&queue, &["m0"]);
            let holders: Vec<String> = holdings(&queue)
                .into_iter()
                .filter(|(_, bodies)| !bodies.is_empty())
                .map(|(tag, _)| tag)
                .collect();
            assert_eq!(holders, [expected], "{queue_type:?}");
        }
    }

    #[test]
    fn exclusive_consume_is_refused_on_a_classic_single_active_consumer_queue_only() {
        assert!(queue(QueueType::Classic, true).consumer_conflict(true));
        assert!(!queue(QueueType::Classic, true).consumer_conflict(false));
        assert!(!queue(QueueType::Classic, false).consumer_conflict(true));
        assert!(!queue(QueueType::Quorum, true).consumer_conflict(true));
        let quorum = queue(QueueType::Quorum, false);
        let mut exclusive = consumer("x", 0, 0);
        exclusive.exclusive = true;
        quorum.add_consumer(exclusive, &mut Vec::new());
        assert!(!quorum.consumer_conflict(false));
    }

    /// Which failed reads of paged-out messages are logged ([`ReadFailures`]).
    mod read_failures {
        use super::*;

        /// `millis` after `start`.
        fn after(start: Instant, millis: u64) -> Instant {
            start + Duration::from_millis(millis)
        }

        /// What is logged of reads that fail every 100 ms for `millis` from `start`.
        fn failing_every_100_ms(
            failures: &mut ReadFailures,
            start: Instant,
            millis: u64,
        ) -> Vec<ReadReport> {
            (0..millis / 100)
                .filter_map(|tick| failures.note(true, after(start, tick * 100)))
                .collect()
        }

        #[test]
        fn reads_that_keep_failing_are_logged_once_within_the_reminder_interval() {
            let start = Instant::now();
            let mut failures = ReadFailures::default();
            // Ten retries a second for 59.9 s.
            let reports = failing_every_100_ms(&mut failures, start, 59_900);
            assert_eq!(reports, [ReadReport::Failing]);
        }

        #[test]
        fn reads_that_keep_failing_are_reminded_of_once_a_minute_with_the_attempts_so_far() {
            let start = Instant::now();
            let mut failures = ReadFailures::default();
            let reports = failing_every_100_ms(&mut failures, start, 150_000);
            assert_eq!(
                reports,
                [
                    ReadReport::Failing,
                    ReadReport::StillFailing {
                        attempts: 601,
                        lasting: Duration::from_secs(60)
                    },
                    ReadReport::StillFailing {
                        attempts: 1201,
                        lasting: Duration::from_secs(120)
                    },
                ]
            );
        }

        #[test]
        fn a_read_that_succeeds_ends_the_episode_with_its_failed_attempts_and_length() {
            let start = Instant::now();
            let mut failures = ReadFailures::default();
            failing_every_100_ms(&mut failures, start, 300);
            assert_eq!(
                failures.note(false, after(start, 300)),
                Some(ReadReport::ReadAgain {
                    attempts: 3,
                    lasting: Duration::from_millis(300)
                })
            );
            assert_eq!(failures.note(false, after(start, 400)), None);
        }

        #[test]
        fn a_failure_after_the_reads_succeeded_again_begins_a_new_episode() {
            let start = Instant::now();
            let mut failures = ReadFailures::default();
            failing_every_100_ms(&mut failures, start, 300);
            assert!(failures.note(false, after(start, 300)).is_some());
            assert_eq!(
                failures.note(true, after(start, 400)),
                Some(ReadReport::Failing)
            );
            assert_eq!(failures.note(true, after(start, 500)), None);
            assert_eq!(
                failures.note(false, after(start, 600)),
                Some(ReadReport::ReadAgain {
                    attempts: 2,
                    lasting: Duration::from_millis(200)
                })
            );
        }

        #[test]
        fn reads_that_succeed_outside_an_episode_are_not_logged() {
            let start = Instant::now();
            let mut failures = ReadFailures::default();
            assert_eq!(failures.note(false, start), None);
            assert_eq!(failures.note(false, after(start, 100)), None);
        }
    }

    /// Paging, on a store of its own.
    mod paging {
        use super::*;
        use crate::store::log::faults;
        use crate::store::log::tests_support::{record_for_q, tempdir, TempDir};
        use crate::store::{Store, StoreOptions};
        use std::sync::mpsc;

        /// A durable classic queue on a store whose paging budget is one byte: whatever is
        /// on disk pages out.
        fn paged_queue() -> (TempDir, Arc<Store>, Arc<Queue>) {
            let dir = tempdir();
            let store = Store::open(StoreOptions::new(&*dir)).unwrap();
            store.pager().set_threshold(1);
            let queue = Arc::new(Queue::new(
                QueueDeclaration {
                    name: "q".into(),
                    vhost: "/".to_owned(),
                    durable: true,
                    auto_delete: false,
                    exclusive_owner: None,
                    arguments: FieldTable::new(),
                    settings: QueueSettings::default(),
                },
                Some(store.clone()),
            ));
            (dir, store, queue)
        }

        /// Publishes persistent message `body` with a store id; logged in the store when
        /// `logged` (otherwise it never reaches the disk, so it cannot page out).
        fn publish_persistent(store: &Store, queue: &Arc<Queue>, body: &str, logged: bool) {
            let message = persistent_message(store, body, logged);
            assert_eq!(queue.publish(message, &mut Vec::new()), Enqueued::Accepted);
        }

        /// Persistent message `body` with a store id, logged in the store when `logged`.
        fn persistent_message(store: &Store, body: &str, logged: bool) -> QueuedMessage {
            let properties = BasicProperties {
                delivery_mode: Some(2),
                ..BasicProperties::default()
            };
            let content = MessageContent::with_properties(
                b"",
                b"q",
                &properties,
                Bytes::copy_from_slice(body.as_bytes()),
            );
            let id = store.next_id();
            if logged {
                store.publish(record_for_q(
                    id,
                    content.header_frame(),
                    content.body_bytes(),
                ));
            }
            QueuedMessage {
                content: Arc::new(content),
                expires_at: None,
                persist_id: Some(id),
                redelivered: false,
            }
        }

        /// A queue of `count` messages "m0".., all paged out.
        fn paged_out_queue(count: usize) -> (TempDir, Arc<Store>, Arc<Queue>) {
            let (dir, store, queue) = paged_queue();
            for i in 0..count {
                publish_persistent(&store, &queue, &format!("m{i}"), true);
            }
            page_out_all(&store, &queue, count);
            (dir, store, queue)
        }

        #[test]
        fn a_head_the_disk_cannot_read_stays_paged_out_and_is_read_once_the_disk_reads_again() {
            let (dir, _store, queue) = paged_out_queue(10);
            let messages = dir.join("messages");
            let mut dead = Vec::new();
            faults::set(&messages, Some(faults::Fault::Read));
            assert!(
                queue.get(&mut dead).is_none(),
                "nothing read, nothing taken"
            );
            assert_eq!(counts(&queue), (10, 10), "nothing lost");
            faults::set(&messages, None);
            let (first, left) = queue
                .get(&mut dead)
                .expect("read once the disk reads again");
            assert_eq!((body_of(&first).as_str(), left), ("m0", 9));
            assert!(dead.is_empty());
        }

        #[test]
        fn a_consumer_stalled_by_a_disk_that_could_not_read_is_served_by_the_retry() {
            let count = 10;
            let (dir, _store, queue) = paged_out_queue(count);
            let messages = dir.join("messages");
            let mut dead = Vec::new();
            faults::set(&messages, Some(faults::Fault::Read));
            queue.add_consumer(consumer("c", 0, 0), &mut dead);
            assert_eq!(counts(&queue), (count, count), "nothing read, nothing lost");
            queue.retry_unread_head(&mut dead);
            assert_eq!(counts(&queue), (count, count), "the disk still cannot read");
            faults::set(&messages, None);
            queue.retry_unread_head(&mut dead);
            let held = holdings(&queue).remove(0).1;
            let expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
            assert_eq!((counts(&queue), held), ((0, 0), expected));
            assert!(!queue.state().unread_head);
        }

        #[test]
        fn a_disk_that_keeps_failing_is_logged_once_per_episode_not_at_every_retry() {
            let count = 10;
            let (dir, store, queue) = paged_out_queue(count);
            let messages = dir.join("messages");
            let mut dead = Vec::new();
            faults::set(&messages, Some(faults::Fault::Read));
            let c = consumer("c", 0, 0);
            let (link, tag) = (c.link.clone(), c.tag.clone());
            queue.add_consumer(c, &mut dead);
            for _ in 0..20 {
                queue.retry_unread_head(&mut dead);
            }
            assert_eq!(queue.state().read_reports, [ReadReport::Failing]);
            faults::set(&messages, None);
            queue.retry_unread_head(&mut dead);
            assert_eq!(counts(&queue), (0, 0), "all delivered");
            assert!(matches!(
                queue.state().read_reports[..],
                [
                    ReadReport::Failing,
                    ReadReport::ReadAgain { attempts: 21, .. }
                ]
            ));
            // A new failure, once the head is paged out again: a new episode.
            queue.remove_consumer(&link, &tag);
            for i in 0..count {
                publish_persistent(&store, &queue, &format!("n{i}"), true);
            }
            page_out_all(&store, &queue, count);
            faults::set(&messages, Some(faults::Fault::Read));
            for _ in 0..3 {
                assert!(queue.get(&mut dead).is_none());
            }
            faults::set(&messages, None);
            let state = queue.state();
            assert!(matches!(
                state.read_reports[..],
                [
                    ReadReport::Failing,
                    ReadReport::ReadAgain { .. },
                    ReadReport::Failing
                ]
            ));
            assert!(dead.is_empty());
        }

        /// Pages out every one of the `count` messages of `queue`, once they are on disk.
        fn page_out_all(store: &Store, queue: &Queue, count: usize) {
            assert!(store.sync());
            queue.page_out_now();
            let state = queue.state();
            assert_eq!((state.ready.len(), state.paged_out), (count, count));
        }

        fn body_of(message: &QueuedMessage) -> String {
            String::from_utf8_lossy(message.content.body()).into_owned()
        }

        /// Counts consistent with the ready messages: (ready, paged out).
        fn counts(queue: &Queue) -> (usize, usize) {
            let state = queue.state();
            let paged: Vec<&ReadyMessage> =
                state.ready.iter().filter(|m| m.is_paged_out()).collect();
            assert_eq!(state.paged_out, paged.len());
            assert_eq!(
                state.paged_out_bytes,
                paged.iter().map(|m| m.size()).sum::<usize>()
            );
            assert_eq!(
                state.ready_bytes,
                state.ready.iter().map(ReadyMessage::size).sum::<usize>()
            );
            (state.ready.len(), state.paged_out)
        }

        #[test]
        fn publishes_look_for_messages_to_page_out_once_per_batch_however_long_the_tail_not_on_disk(
        ) {
            let (_dir, store, queue) = paged_queue();
            // Over the budget, and nothing on disk: every look finds nothing to page out.
            for i in 0..3 * PAGE_OUT_BATCH {
                publish_persistent(&store, &queue, &format!("m{i}"), false);
            }
            let state = queue.state();
            assert_eq!(state.paged_out, 0);
            assert!(
                (1..=3).contains(&state.page_out_looks),
                "{} looks for {} publishes",
                state.page_out_looks,
                3 * PAGE_OUT_BATCH
            );
        }

        /// Runs a basic.get whose read of the paged-out head is held up at the disk, and
        /// `meanwhile` while it is held; returns what `meanwhile` returned (None: it waited
        /// for the read, that is for the queue's lock) and what the get got.
        fn while_the_head_is_read_back<T: Send + 'static>(
            dir: &std::path::Path,
            queue: &Arc<Queue>,
            meanwhile: impl FnOnce() -> T + Send + 'static,
        ) -> (Option<T>, Option<QueuedMessage>) {
            let getter = queue.clone();
            while_read_back_by(
                dir,
                move || getter.get(&mut Vec::new()).map(|(m, _)| m),
                meanwhile,
            )
        }

        /// Runs `reader`, a change whose read of the paged-out head is held up at the disk,
        /// and `meanwhile` while it is held; returns what `meanwhile` returned (None: it
        /// waited for the read, that is for the queue's lock) and what `reader` returned.
        fn while_read_back_by<R: Send + 'static, T: Send + 'static>(
            dir: &std::path::Path,
            reader: impl FnOnce() -> R + Send + 'static,
            meanwhile: impl FnOnce() -> T + Send + 'static,
        ) -> (Option<T>, R) {
            let held = faults::hold_next_read(&dir.join("messages"));
            let reader = std::thread::spawn(reader);
            let reached = held.wait_reached(Duration::from_secs(10));
            let (done, result) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(meanwhile());
            });
            let result = result.recv_timeout(Duration::from_secs(10)).ok();
            held.release();
            assert!(reached, "the reader did not read");
            (result, reader.join().unwrap())
        }

        #[test]
        fn reading_the_head_back_does_not_hold_the_queue_lock_for_publishers() {
            let (dir, store, queue) = paged_out_queue(100);
            let publisher = queue.clone();
            let (published, got) = while_the_head_is_read_back(&dir, &queue, move || {
                publish_persistent(&store, &publisher, "m100", true);
                publisher.message_count()
            });
            assert_eq!(published, Some(101), "the publish waited for the disk");
            assert_eq!(body_of(&got.expect("the head")), "m0");
            assert_eq!(counts(&queue), (100, 0), "all 99 read back");
            let rest: Vec<String> = std::iter::from_fn(|| queue.get(&mut Vec::new()))
                .map(|(m, _)| body_of(&m))
                .collect();
            let expected: Vec<String> = (1..=100).map(|i| format!("m{i}")).collect();
            assert_eq!(rest, expected, "in order");
        }

        #[test]
        fn messages_purged_while_being_read_back_are_not_put_back() {
            let (dir, store, queue) = paged_out_queue(100);
            let purged = queue.clone();
            let (count, got) = while_the_head_is_read_back(&dir, &queue, move || purged.purge());
            assert_eq!(count, Some(100), "the purge waited for the disk");
            assert!(got.is_none(), "nothing left to get");
            assert_eq!(counts(&queue), (0, 0));
            assert!(store.sync());
            assert!((1..=100).all(|id| !store.on_disk().contains(id)), "acked");
        }

        #[test]
        fn a_queue_deleted_while_its_head_is_read_back_stays_empty() {
            let (dir, _store, queue) = paged_out_queue(10);
            let deleted = queue.clone();
            let (count, got) =
                while_the_head_is_read_back(&dir, &queue, move || deleted.delete().0);
            assert_eq!(count, Some(10), "the delete waited for the disk");
            assert!(got.is_none());
            assert_eq!(counts(&queue), (0, 0));
        }

        #[test]
        fn a_message_taken_while_being_read_back_is_delivered_once() {
            let (dir, _store, queue) = paged_out_queue(10);
            // Another get reads the head back itself, and takes m0.
            let other = queue.clone();
            let (first, second) = while_the_head_is_read_back(&dir, &queue, move || {
                other.get(&mut Vec::new()).map(|(m, _)| body_of(&m))
            });
            assert_eq!(first, Some(Some("m0".into())), "the other get waited");
            assert_eq!(body_of(&second.expect("m1")), "m1");
            assert_eq!(counts(&queue), (8, 0));
        }

        /// Asserts that the queue's one consumer (room for all) holds its `count` messages but
        /// m0, in order, and that none are left ready.
        fn assert_holds_all_but_m0(queue: &Queue, count: usize) {
            let left = counts(queue);
            let held: Vec<String> = holdings(queue).remove(0).1;
            assert_eq!(
                (left, held.len()),
                ((0, 0), count - 1),
                "ready messages left (ready, paged out) while the consumer has room"
            );
            let expected: Vec<String> = (1..count).map(|i| format!("m{i}")).collect();
            assert_eq!(held, expected, "in order");
        }

        /// A consume that finds the head paged out while a basic.get reads it back leaves the
        /// read to the get; once the get is done, nothing is under way, so the consumer (room
        /// for all) must hold every message left, not just those the get's one read brought.
        #[test]
        fn a_consumer_that_came_while_a_get_read_the_head_back_gets_the_whole_backlog() {
            let count = READ_AHEAD_MESSAGES + 10;
            let (dir, _store, queue) = paged_out_queue(count);
            let subscriber = queue.clone();
            let (added, got) = while_the_head_is_read_back(&dir, &queue, move || {
                subscriber.add_consumer(consumer("c", 0, 0), &mut Vec::new());
            });
            assert!(added.is_some(), "the consume waited for the disk");
            assert_eq!(body_of(&got.expect("the head")), "m0");
            assert_holds_all_but_m0(&queue, count);
        }

        /// Like a get, an expiry that reads the paged-out head back (to drop it) serves the
        /// consumer that came meanwhile with the whole backlog, not just its one read's.
        #[test]
        fn a_consumer_that_came_while_an_expiry_read_the_head_back_gets_the_whole_backlog() {
            let count = READ_AHEAD_MESSAGES + 10;
            let (dir, store, queue) = paged_queue();
            // m0 expires in an hour, the others never.
            let now = Instant::now();
            let mut first = persistent_message(&store, "m0", true);
            first.expires_at = Some(Deadline::at(now + Duration::from_secs(3600)));
            assert_eq!(queue.publish(first, &mut Vec::new()), Enqueued::Accepted);
            for i in 1..count {
                publish_persistent(&store, &queue, &format!("m{i}"), true);
            }
            page_out_all(&store, &queue, count);
            let expirer = queue.clone();
            let subscriber = queue.clone();
            let (added, dead) = while_read_back_by(
                &dir,
                move || {
                    let mut dead = Vec::new();
                    expirer.expire(now + Duration::from_secs(7200), &mut dead);
                    dead
                },
                move || subscriber.add_consumer(consumer("c", 0, 0), &mut Vec::new()),
            );
            assert!(added.is_some(), "the consume waited for the disk");
            let dead: Vec<(String, &str)> = dead.iter().map(|(m, r)| (body_of(m), *r)).collect();
            assert_eq!(dead, [("m0".to_owned(), "expired")]);
            assert_holds_all_but_m0(&queue, count);
        }

        /// A reader that panics with the lock released does not leave the queue marked as
        /// being read: a consumer that comes next reads the head back itself.
        #[test]
        fn a_read_of_the_head_that_panics_leaves_the_head_to_the_next_change() {
            let (_dir, _store, queue) = paged_out_queue(10);
            queue.state().panic_in_next_read = true;
            let getter = queue.clone();
            let got = std::thread::spawn(move || getter.get(&mut Vec::new()).is_some()).join();
            assert!(got.is_err(), "the get's read did not panic");
            assert!(!queue.state().paging_in, "still marked as being read");
            queue.add_consumer(consumer("c", 0, 0), &mut Vec::new());
            assert_eq!(counts(&queue), (0, 0));
            let held: Vec<String> = holdings(&queue).remove(0).1;
            let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
            assert_eq!(held, expected);
        }
    }
}
