//! Messages inside the broker.

use std::sync::Arc;
use std::time::Instant;

use amqp_codec::{BasicProperties, ShortString};
use bytes::Bytes;

/// What was published, shared by every queue it was routed to.
#[derive(Debug)]
pub struct MessageContent {
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body: a slice of the publisher's frame when it came in one body frame.
    pub body: Bytes,
}

impl MessageContent {
    /// delivery_mode 2: the publisher asked for the message to survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

/// A message in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared content.
    pub content: Arc<MessageContent>,
    /// Whether it was delivered before (and not acked).
    pub redelivered: bool,
    /// When it expires (per-queue x-message-ttl or per-message expiration), if ever.
    pub expires_at: Option<Instant>,
    /// The store's id, for a persistent message in a durable queue (it is on disk).
    pub persist_id: Option<u64>,
}
