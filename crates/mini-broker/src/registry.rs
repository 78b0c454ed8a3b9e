//! Live connections and their channels, for the management API and `ctl`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use amqp_codec::{ChannelId, FieldTable};
use tokio::sync::Notify;

use crate::delivery::{lock, ChannelLink};

/// What is known of one connection.
pub struct ConnectionInfo {
    /// The broker's id for it.
    pub id: u64,
    /// `peer -> local`, as RabbitMQ names connections.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The client's properties from connection.start-ok.
    pub client_properties: FieldTable,
    /// The negotiated heartbeat, frame_max and channel_max.
    pub tune: amqp_codec::Tune,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Its open channels.
    pub channels: Mutex<BTreeMap<ChannelId, ChannelInfo>>,
    /// Set to close the connection with 320 CONNECTION_FORCED (management API, shutdown).
    pub force_close: Notify,
    /// The reason given for a forced close.
    pub force_close_reason: Mutex<Option<String>>,
}

/// What is known of one channel.
#[derive(Clone)]
pub struct ChannelInfo {
    /// Its link (unacked count, global prefetch).
    pub link: Arc<ChannelLink>,
    /// Per-consumer prefetch for new consumers.
    pub prefetch_count: u16,
    /// Publisher confirms on.
    pub confirm: bool,
    /// Transactions on.
    pub transactional: bool,
    /// Consumers on it.
    pub consumer_count: usize,
}

impl ConnectionInfo {
    /// Asks the connection to close with 320 CONNECTION_FORCED and `reason`.
    pub fn close(&self, reason: &str) {
        *lock(&self.force_close_reason) = Some(reason.to_owned());
        self.force_close.notify_one();
    }
}

/// The live connections.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<BTreeMap<u64, Arc<ConnectionInfo>>>,
}

impl Registry {
    /// Adds an open connection.
    pub fn insert(&self, info: Arc<ConnectionInfo>) {
        lock(&self.connections).insert(info.id, info);
    }

    /// Removes a closed connection.
    pub fn remove(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Every open connection, oldest first.
    pub fn all(&self) -> Vec<Arc<ConnectionInfo>> {
        lock(&self.connections).values().cloned().collect()
    }

    /// The connection of that name.
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionInfo>> {
        lock(&self.connections)
            .values()
            .find(|c| c.name == name)
            .cloned()
    }
}
