//! The JSON shapes of the management API's objects, field for field as RabbitMQ 3.10 names
//! them (the subset this broker can fill in truthfully: no rates, no Erlang internals).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use amqp_codec::{BasicProperties, FieldTable};

use super::http::quote_plus;
use super::json::{table_to_json, Json};
use crate::broker::{Broker, VHost};
use crate::delivery::lock;
use crate::exchange::{Binding, Destination, Exchange};
use crate::queue::Queue;
use crate::registry::ConnectionInfo;

/// The node name, as the AMQP connection.start's `cluster_name` says it.
pub const NODE: &str = "mini-broker@localhost";

/// `{"rate": 0.0}`: this broker keeps no rates, but clients read these objects.
fn no_rate() -> Json {
    Json::object().with("rate", 0.0)
}

/// What is known of the live connections, taken once per request.
pub struct Snapshot {
    /// Every open connection, oldest first.
    pub connections: Vec<Arc<ConnectionInfo>>,
    by_id: HashMap<u64, Arc<ConnectionInfo>>,
    /// Per queue (by address): unacked bytes, persistent unacked count and bytes.
    unacked: HashMap<usize, UnackedStats>,
}

#[derive(Default, Clone, Copy)]
struct UnackedStats {
    bytes: usize,
    persistent: usize,
    persistent_bytes: usize,
}

impl Snapshot {
    /// Takes the connections; with `unacked`, also walks every channel's unacked deliveries
    /// to size them per queue (locks one channel link at a time, never a queue with it).
    pub fn take(broker: &Broker, unacked: bool) -> Snapshot {
        let connections = broker.connections.all();
        let by_id = connections.iter().map(|c| (c.id, c.clone())).collect();
        let mut stats: HashMap<usize, UnackedStats> = HashMap::new();
        if unacked {
            for connection in &connections {
                let links: Vec<_> = lock(&connection.channels)
                    .values()
                    .map(|c| c.link.clone())
                    .collect();
                for link in links {
                    let state = lock(&link.state);
                    for delivery in state.unacked.values() {
                        let entry = stats
                            .entry(Arc::as_ptr(&delivery.queue) as usize)
                            .or_default();
                        let size = delivery.message.content.size();
                        entry.bytes += size;
                        if delivery.message.content.is_persistent() {
                            entry.persistent += 1;
                            entry.persistent_bytes += size;
                        }
                    }
                }
            }
        }
        Snapshot {
            connections,
            by_id,
            unacked: stats,
        }
    }

    /// The connection of that id, if it is still open.
    pub fn connection(&self, id: u64) -> Option<&Arc<ConnectionInfo>> {
        self.by_id.get(&id)
    }
}

/// The counts of one queue, read under its lock once.
pub struct QueueCounts {
    /// Ready messages.
    pub ready: usize,
    /// Delivered, not yet acked.
    pub unacked: usize,
    /// Consumers.
    pub consumers: usize,
    ready_bytes: usize,
    paged_out: usize,
    paged_out_bytes: usize,
    ready_persistent: usize,
    ready_persistent_bytes: usize,
    exclusive_consumer: Option<String>,
    single_active_consumer: Option<String>,
    consumer_list: Vec<ConsumerEntry>,
}

/// One consumer, copied out of the queue's state.
pub struct ConsumerEntry {
    tag: String,
    connection_id: u64,
    channel: u16,
    no_ack: bool,
    exclusive: bool,
    prefetch: u16,
    arguments: Json,
    active: bool,
    activity_status: &'static str,
}

impl QueueCounts {
    /// Reads a queue's counts. Persistent messages are counted only in durable queues (as
    /// RabbitMQ counts them), which costs a walk of the ready messages.
    pub fn of(queue: &Queue) -> QueueCounts {
        let state = queue.state();
        let (mut ready_persistent, mut ready_persistent_bytes) = (0, 0);
        if queue.durable {
            for message in state.ready.iter().filter(|m| m.is_persistent()) {
                ready_persistent += 1;
                ready_persistent_bytes += message.size();
            }
        }
        QueueCounts {
            ready: state.ready.len(),
            unacked: state.unacked,
            consumers: state.consumers.len(),
            ready_bytes: state.ready_bytes,
            paged_out: state.paged_out,
            paged_out_bytes: state.paged_out_bytes,
            ready_persistent,
            ready_persistent_bytes,
            exclusive_consumer: state
                .consumers
                .iter()
                .find(|c| c.exclusive)
                .map(|c| c.tag.to_str_lossy().into_owned()),
            single_active_consumer: state
                .consumers
                .iter()
                .find(|c| queue.settings.single_active_consumer && c.active)
                .map(|c| c.tag.to_str_lossy().into_owned()),
            consumer_list: state
                .consumers
                .iter()
                .map(|c| ConsumerEntry {
                    tag: c.tag.to_str_lossy().into_owned(),
                    connection_id: c.link.connection_id,
                    channel: c.link.id,
                    no_ack: c.no_ack,
                    exclusive: c.exclusive,
                    prefetch: c.prefetch,
                    arguments: table_to_json(&c.arguments),
                    active: c.active,
                    // RabbitMQ 3.10's activity status: `single_active` and `waiting` on a
                    // single-active-consumer queue, `up` elsewhere.
                    activity_status: match (queue.settings.single_active_consumer, c.active) {
                        (false, _) => "up",
                        (true, true) => "single_active",
                        (true, false) => "waiting",
                    },
                })
                .collect(),
        }
    }
}

/// A queue as `GET /api/queues` shows it.
pub fn queue_json(queue: &Arc<Queue>, counts: &QueueCounts, snapshot: &Snapshot) -> Json {
    let unacked = snapshot
        .unacked
        .get(&(Arc::as_ptr(queue) as usize))
        .copied()
        .unwrap_or_default();
    let persistent = if queue.durable {
        counts.ready_persistent + unacked.persistent
    } else {
        0
    };
    let persistent_bytes = if queue.durable {
        counts.ready_persistent_bytes + unacked.persistent_bytes
    } else {
        0
    };
    let messages = counts.ready + counts.unacked;
    let bytes = counts.ready_bytes + unacked.bytes;
    let mut json = Json::object()
        .with("arguments", table_to_json(&queue.arguments))
        .with("auto_delete", queue.auto_delete)
        .with(
            "consumer_capacity",
            if counts.consumers > 0 { 1.0 } else { 0.0 },
        )
        .with(
            "consumer_utilisation",
            if counts.consumers > 0 { 1.0 } else { 0.0 },
        )
        .with("consumers", counts.consumers)
        .with("durable", queue.durable)
        .with("effective_policy_definition", Json::object())
        .with("exclusive", queue.exclusive_owner.is_some())
        .with("exclusive_consumer_tag", counts.exclusive_consumer.clone())
        .with("head_message_timestamp", Json::Null)
        .with("message_bytes", bytes)
        .with("message_bytes_paged_out", counts.paged_out_bytes)
        .with("message_bytes_persistent", persistent_bytes)
        .with("message_bytes_ram", bytes - counts.paged_out_bytes)
        .with("message_bytes_ready", counts.ready_bytes)
        .with("message_bytes_unacknowledged", unacked.bytes)
        .with("messages", messages)
        .with("messages_details", no_rate())
        .with("messages_paged_out", counts.paged_out)
        .with("messages_persistent", persistent)
        .with("messages_ram", messages - counts.paged_out)
        .with("messages_ready", counts.ready)
        .with("messages_ready_details", no_rate())
        .with("messages_ready_ram", counts.ready - counts.paged_out)
        .with("messages_unacknowledged", counts.unacked)
        .with("messages_unacknowledged_details", no_rate())
        .with("messages_unacknowledged_ram", counts.unacked)
        .with("name", queue.name.to_str_lossy().as_ref())
        .with("node", NODE)
        .with("operator_policy", Json::Null)
        .with("policy", Json::Null)
        .with("recoverable_slaves", Json::Null)
        .with(
            "single_active_consumer_tag",
            counts.single_active_consumer.clone(),
        )
        .with("state", "running")
        .with("type", queue.settings.queue_type.name())
        .with("vhost", queue.vhost.as_str());
    if let Some(owner) = queue.exclusive_owner {
        if let Some(connection) = snapshot.connection(owner) {
            json.set("owner_pid_details", connection_details(connection));
        }
    }
    json
}

/// A queue's consumers as `GET /api/consumers` shows them.
pub fn consumers_json(queue: &Queue, counts: &QueueCounts, snapshot: &Snapshot) -> Vec<Json> {
    counts
        .consumer_list
        .iter()
        .map(|c| {
            let channel = match snapshot.connection(c.connection_id) {
                Some(connection) => connection_details(connection)
                    .with("connection_name", connection.name.as_str())
                    .with("name", format!("{} ({})", connection.name, c.channel))
                    .with("node", NODE)
                    .with("number", c.channel)
                    .with("user", connection.user.as_str()),
                None => Json::object().with("number", c.channel),
            };
            Json::object()
                .with("arguments", c.arguments.clone())
                .with("ack_required", !c.no_ack)
                .with("active", c.active)
                .with("activity_status", c.activity_status)
                .with("channel_details", channel)
                .with("consumer_tag", c.tag.as_str())
                .with("exclusive", c.exclusive)
                .with("prefetch_count", c.prefetch)
                .with(
                    "queue",
                    Json::object()
                        .with("name", queue.name.to_str_lossy().as_ref())
                        .with("vhost", queue.vhost.as_str()),
                )
        })
        .collect()
}

/// `{name, peer_host, peer_port}` of a connection (`connection_details`,
/// `owner_pid_details`).
fn connection_details(connection: &ConnectionInfo) -> Json {
    Json::object()
        .with("name", connection.name.as_str())
        .with("peer_host", connection.peer.ip().to_string())
        .with("peer_port", connection.peer.port())
}

/// An exchange as `GET /api/exchanges` shows it.
pub fn exchange_json(vhost: &str, exchange: &Exchange) -> Json {
    Json::object()
        .with("arguments", table_to_json(&exchange.arguments))
        .with("auto_delete", exchange.auto_delete)
        .with("durable", exchange.durable)
        .with("internal", exchange.internal)
        .with("name", exchange.name.to_str_lossy().as_ref())
        .with("type", exchange.kind.name())
        .with("vhost", vhost)
}

/// A binding's `properties_key`: the routing key, percent-encoded as RabbitMQ does (`~` for
/// an empty key), followed by `~` and a short hash of the arguments when there are any.
/// RabbitMQ hashes with Erlang's phash2; this hash differs but is as stable, and clients
/// only ever read it back from the API.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    if arguments.is_empty() {
        return if routing_key.is_empty() {
            "~".to_owned()
        } else {
            quote_plus(routing_key)
        };
    }
    let mut entries: Vec<(String, String)> = arguments
        .iter()
        .map(|(k, v)| {
            (
                k.to_str_lossy().into_owned(),
                super::json::value_to_json(v).to_text(),
            )
        })
        .collect();
    entries.sort();
    // FNV-1a, 64 bits, over the sorted entries.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in &entries {
        for b in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let digest = super::http::base64_encode(&hash.to_be_bytes()[..6])
        .replace('+', "-")
        .replace('/', "_");
    format!("{}~{digest}", quote_plus(routing_key))
}

/// A binding as `GET /api/bindings` shows it.
pub fn binding_json(vhost: &str, source: &str, binding: &Binding) -> Json {
    let routing_key = binding.routing_key.to_str_lossy();
    Json::object()
        .with("source", source)
        .with("vhost", vhost)
        .with(
            "destination",
            binding.destination.name().to_str_lossy().as_ref(),
        )
        .with("destination_type", binding.destination.kind_name())
        .with("routing_key", routing_key.as_ref())
        .with("arguments", table_to_json(&binding.arguments))
        .with(
            "properties_key",
            properties_key(&routing_key, &binding.arguments),
        )
}

/// Every binding of a vhost: first the implicit default-exchange binding of each queue (by
/// queue name), then the explicit ones by source exchange, in the order they were made.
pub fn vhost_bindings(vhost: &VHost) -> Vec<Json> {
    let state = vhost.read();
    let mut queues: Vec<String> = state
        .queues
        .keys()
        .map(|q| q.to_str_lossy().into_owned())
        .collect();
    queues.sort();
    let mut out: Vec<Json> = queues
        .iter()
        .map(|q| {
            binding_json(
                &vhost.name,
                "",
                &Binding {
                    destination: Destination::Queue(q.as_str().into()),
                    routing_key: q.as_str().into(),
                    arguments: FieldTable::new(),
                },
            )
        })
        .collect();
    let mut exchanges: Vec<&Exchange> = state.exchanges.values().collect();
    exchanges.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for exchange in exchanges {
        let source = exchange.name.to_str_lossy();
        for binding in exchange.bindings() {
            out.push(binding_json(&vhost.name, &source, binding));
        }
    }
    out
}

/// Milliseconds since the epoch.
fn millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local address of a connection, from its `peer -> local` name.
fn local_address(connection: &ConnectionInfo) -> Option<SocketAddr> {
    connection.name.split(" -> ").nth(1)?.parse().ok()
}

/// A connection as `GET /api/connections` shows it.
pub fn connection_json(connection: &ConnectionInfo) -> Json {
    let local = local_address(connection);
    let channels = lock(&connection.channels).len();
    Json::object()
        .with("channel_max", connection.tune.channel_max)
        .with("channels", channels)
        .with(
            "client_properties",
            table_to_json(&connection.client_properties),
        )
        .with("connected_at", millis(connection.connected_at))
        .with("frame_max", connection.tune.frame_max)
        .with("host", local.map(|a| a.ip().to_string()))
        .with("name", connection.name.as_str())
        .with("node", NODE)
        .with("peer_cert_issuer", Json::Null)
        .with("peer_cert_subject", Json::Null)
        .with("peer_cert_validity", Json::Null)
        .with("peer_host", connection.peer.ip().to_string())
        .with("peer_port", connection.peer.port())
        .with("port", local.map(|a| a.port()))
        .with("protocol", "AMQP 0-9-1")
        .with("ssl", false)
        .with("ssl_cipher", Json::Null)
        .with("ssl_hash", Json::Null)
        .with("ssl_key_exchange", Json::Null)
        .with("ssl_protocol", Json::Null)
        .with("state", "running")
        .with("timeout", connection.tune.heartbeat)
        .with("type", "network")
        .with("user", connection.user.as_str())
        .with("user_who_performed_action", connection.user.as_str())
        .with("vhost", connection.vhost.as_str())
}

/// The channels of a connection as `GET /api/channels` shows them.
pub fn channels_json(connection: &ConnectionInfo) -> Vec<Json> {
    let channels: Vec<_> = lock(&connection.channels)
        .iter()
        .map(|(id, info)| (*id, info.clone()))
        .collect();
    channels
        .into_iter()
        .map(|(id, info)| {
            let (unacked, global_prefetch, flow) = {
                let state = lock(&info.link.state);
                (
                    state.unacked.len(),
                    state.global_prefetch,
                    state.flow_active,
                )
            };
            Json::object()
                .with("acks_uncommitted", 0u32)
                .with("confirm", info.confirm)
                .with("connection_details", connection_details(connection))
                .with("consumer_count", info.consumer_count)
                .with("global_prefetch_count", global_prefetch)
                .with("messages_unacknowledged", unacked)
                .with("messages_uncommitted", 0u32)
                .with("messages_unconfirmed", 0u32)
                .with("name", format!("{} ({id})", connection.name))
                .with("node", NODE)
                .with("number", id)
                .with("pending_raft_commands", 0u32)
                .with("prefetch_count", info.prefetch_count)
                .with("state", if flow { "running" } else { "flow" })
                .with("transactional", info.transactional)
                .with("user", connection.user.as_str())
                .with("user_who_performed_action", connection.user.as_str())
                .with("vhost", connection.vhost.as_str())
        })
        .collect()
}

/// Message properties as the API's `get` shows them: only those set; an empty list (not
/// an object) when none is, exactly as RabbitMQ 3.10 answers.
pub fn properties_json(properties: &BasicProperties) -> Json {
    let mut json = Json::object();
    let text = |s: &amqp_codec::ShortString| Json::from(s.to_str_lossy().as_ref());
    if let Some(v) = &properties.content_type {
        json.set("content_type", text(v));
    }
    if let Some(v) = &properties.content_encoding {
        json.set("content_encoding", text(v));
    }
    if let Some(v) = &properties.headers {
        json.set("headers", table_to_json(v));
    }
    if let Some(v) = properties.delivery_mode {
        json.set("delivery_mode", v);
    }
    if let Some(v) = properties.priority {
        json.set("priority", v);
    }
    if let Some(v) = &properties.correlation_id {
        json.set("correlation_id", text(v));
    }
    if let Some(v) = &properties.reply_to {
        json.set("reply_to", text(v));
    }
    if let Some(v) = &properties.expiration {
        json.set("expiration", text(v));
    }
    if let Some(v) = &properties.message_id {
        json.set("message_id", text(v));
    }
    if let Some(v) = properties.timestamp {
        json.set("timestamp", v);
    }
    if let Some(v) = &properties.kind {
        json.set("type", text(v));
    }
    if let Some(v) = &properties.user_id {
        json.set("user_id", text(v));
    }
    if let Some(v) = &properties.app_id {
        json.set("app_id", text(v));
    }
    if let Some(v) = &properties.cluster_id {
        json.set("cluster_id", text(v));
    }
    match json.as_object() {
        Some([]) => Json::Array(Vec::new()),
        _ => json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_key_without_arguments_is_the_quoted_routing_key() {
        assert_eq!(properties_key("", &FieldTable::new()), "~");
        assert_eq!(properties_key("a.#", &FieldTable::new()), "a.%23");
    }

    #[test]
    fn properties_key_with_arguments_depends_on_them_not_their_order() {
        let a: FieldTable = [("x-match", "any"), ("format", "pdf")]
            .into_iter()
            .collect();
        let b: FieldTable = [("format", "pdf"), ("x-match", "any")]
            .into_iter()
            .collect();
        let c: FieldTable = [("format", "zip"), ("x-match", "any")]
            .into_iter()
            .collect();
        assert_eq!(properties_key("", &a), properties_key("", &b));
        assert_ne!(properties_key("", &a), properties_key("", &c));
        assert!(properties_key("k", &a).starts_with("k~"));
    }

    #[test]
    fn empty_properties_are_an_empty_list() {
        assert_eq!(
            properties_json(&BasicProperties::default()),
            Json::Array(Vec::new())
        );
        let properties = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        assert_eq!(
            properties_json(&properties).to_text(),
            r#"{"delivery_mode":2}"#
        );
    }
}
