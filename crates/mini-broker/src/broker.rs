//! The broker's state: users, virtual hosts, and in each vhost its exchanges and queues.
//!
//! Every declare, bind and delete is answered here with RabbitMQ's reply code and text, so
//! that the AMQP connections and the management API refuse the same things the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use amqp_codec::{FieldTable, FieldValue, ShortString};

use crate::alarms::{Resource, ResourceAlarms};
use crate::config::BrokerConfig;
use crate::delivery::lock;
use crate::error::{
    exchange_resource, field_type_name, field_value_text, queue_resource, AmqpError,
};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::queue::{integer_argument, Overflow, Queue, QueueDeclaration, QueueSettings, QueueType};
use crate::store::definitions::{
    table_from_json, table_to_json, BindingDefinition, ExchangeDefinition, QueueDefinition,
    VHostDefinitions,
};
use crate::store::Store;

/// The whole broker: what every connection shares.
pub struct Broker {
    /// The configuration it was started with.
    pub config: BrokerConfig,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection_id: AtomicU64,
    /// Live connections, for the management API and `ctl list_connections`.
    pub connections: crate::registry::Registry,
    /// When the broker started.
    pub started: Instant,
    /// True while any resource alarm is on (memory or disk, [`crate::alarms`]). Connections
    /// watch it to send connection.blocked / unblocked and to stop reading from publishers.
    pub alarm: tokio::sync::watch::Sender<bool>,
    /// Which alarms are on; `alarm` is their "any".
    resource_alarms: std::sync::Mutex<ResourceAlarms>,
    /// The high watermark in bytes of queued message bodies.
    memory_high_watermark: AtomicU64,
    /// Free bytes in the data directory below which the disk alarm goes on.
    disk_free_limit: AtomicU64,
    /// Free bytes in the data directory when last measured (`u64::MAX`: not measured).
    disk_free: AtomicU64,
    store: Option<Arc<Store>>,
    /// Every user's permissions per vhost (from the configuration, changed by the
    /// management API); connections check theirs through a [`crate::permissions::Permit`].
    pub permissions: Arc<crate::permissions::Permissions>,
    /// Message counters since the start, for /metrics and the management overview (shared
    /// with the channel links, which count deliveries).
    pub stats: Arc<MessageStats>,
}

/// Counters of what happened to messages since the broker started (RabbitMQ's global
/// message stats). Relaxed atomics: one add per event, read when scraped.
#[derive(Debug, Default)]
pub struct MessageStats {
    /// basic.publish received.
    pub published: AtomicU64,
    /// Publishes routed to at least one queue.
    pub routed: AtomicU64,
    /// Mandatory publishes returned unroutable (basic.return).
    pub returned: AtomicU64,
    /// Publisher confirms sent (acks and nacks).
    pub confirmed: AtomicU64,
    /// Messages delivered to consumers or fetched with basic.get.
    pub delivered: AtomicU64,
    /// Deliveries of messages delivered before.
    pub redelivered: AtomicU64,
    /// Deliveries acknowledged by clients.
    pub acknowledged: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`MessageStats::published`].
    pub published: u64,
    /// See [`MessageStats::routed`].
    pub routed: u64,
    /// See [`MessageStats::returned`].
    pub returned: u64,
    /// See [`MessageStats::confirmed`].
    pub confirmed: u64,
    /// See [`MessageStats::delivered`].
    pub delivered: u64,
    /// See [`MessageStats::redelivered`].
    pub redelivered: u64,
    /// See [`MessageStats::acknowledged`].
    pub acknowledged: u64,
}

impl MessageStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            published: read(&self.published),
            routed: read(&self.routed),
            returned: read(&self.returned),
            confirmed: read(&self.confirmed),
            delivered: read(&self.delivered),
            redelivered: read(&self.redelivered),
            acknowledged: read(&self.acknowledged),
        }
    }
}

impl Broker {
    /// A broker with the configured vhosts, each with its standard exchanges, keeping
    /// nothing on disk.
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Broker::with_store(config, None)
    }

    /// A broker whose durable definitions and persistent messages live in `store`; what the
    /// store recovered is put back first: definitions, then each durable queue takes its
    /// messages (paged out, read back as its budget allows).
    pub fn with_store(config: BrokerConfig, store: Option<Arc<Store>>) -> Arc<Broker> {
        let watermark = if config.memory_high_watermark == 0 {
            default_memory_high_watermark()
        } else {
            config.memory_high_watermark
        };
        let vhosts: HashMap<String, Arc<VHost>> = config
            .vhosts
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    Arc::new(VHost::with_store(name, store.clone())),
                )
            })
            .collect();
        if let Some(store) = &store {
            store.pager().set_threshold(config.paging_threshold);
            let definitions = lock(&store.definitions).clone();
            for (name, vhost) in &vhosts {
                if let Some(saved) = definitions.vhosts.get(name) {
                    vhost.restore(saved);
                }
            }
            // Messages of queues in vhosts the configuration no longer has (logged).
            store.forget_unclaimed();
        }
        let permissions =
            crate::permissions::Permissions::from_config(&config).unwrap_or_else(|err| {
                tracing::error!("permissions not set, no user may open a vhost: {err}");
                Default::default()
            });
        let disk_free_limit = config.disk_free_limit;
        Arc::new(Broker {
            permissions: Arc::new(permissions),
            config,
            vhosts: RwLock::new(vhosts),
            next_connection_id: AtomicU64::new(1),
            connections: crate::registry::Registry::default(),
            started: Instant::now(),
            alarm: tokio::sync::watch::channel(false).0,
            resource_alarms: Default::default(),
            memory_high_watermark: AtomicU64::new(watermark),
            disk_free_limit: AtomicU64::new(disk_free_limit),
            disk_free: AtomicU64::new(u64::MAX),
            store,
            stats: Arc::new(MessageStats::default()),
        })
    }

    /// The memory high watermark in bytes.
    pub fn memory_high_watermark(&self) -> u64 {
        self.memory_high_watermark.load(Ordering::Relaxed)
    }

    /// Changes the high watermark (as `rabbitmqctl set_vm_memory_high_watermark` does) and
    /// re-evaluates the alarm.
    pub fn set_memory_high_watermark(&self, bytes: u64) {
        self.memory_high_watermark.store(bytes, Ordering::Relaxed);
        self.check_memory();
    }

    /// Bytes of message bodies held in memory by queues (ready ones, not paged out).
    pub fn memory_used(&self) -> u64 {
        self.vhosts()
            .iter()
            .flat_map(|vhost| vhost.read().queues.values().cloned().collect::<Vec<_>>())
            .map(|queue| {
                let state = queue.state();
                state.ready_bytes.saturating_sub(state.paged_out_bytes) as u64
            })
            .sum()
    }

    /// Raises or clears the memory alarm from the current usage. Returns the alarm state.
    pub fn check_memory(&self) -> bool {
        let used = self.memory_used();
        let alarm = used > self.memory_high_watermark();
        if self.set_alarm(Resource::Memory, alarm) {
            if alarm {
                tracing::warn!(
                    "memory alarm set: {used} bytes queued, above the high watermark of {} bytes; publishers are blocked",
                    self.memory_high_watermark()
                );
            } else {
                tracing::info!("memory alarm cleared: {used} bytes queued");
            }
        }
        alarm
    }

    /// The alarms on now.
    pub fn alarms(&self) -> ResourceAlarms {
        *lock(&self.resource_alarms)
    }

    /// Sets one alarm; when that turns "any alarm" on or off, tells the connections (the
    /// [`Broker::alarm`] watch). Returns whether this alarm changed.
    fn set_alarm(&self, resource: Resource, on: bool) -> bool {
        let mut alarms = lock(&self.resource_alarms);
        let changed = alarms.set(resource, on);
        if alarms.any() != *self.alarm.borrow() {
            self.alarm.send_replace(alarms.any());
        }
        changed
    }

    /// The free disk space limit in bytes (`disk_free_limit`).
    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (as `rabbitmqctl set_disk_free_limit` does) and re-evaluates the
    /// disk alarm.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_free_limit.store(bytes, Ordering::Relaxed);
        self.check_disk();
    }

    /// Free bytes in the data directory when last measured; None before the first
    /// measurement or without a data directory.
    pub fn disk_free(&self) -> Option<u64> {
        Some(self.disk_free.load(Ordering::Relaxed)).filter(|&free| free != u64::MAX)
    }

    /// Measures the free space in the data directory (statvfs), then re-evaluates the disk
    /// alarm. Called every second by the housekeeping task.
    pub fn measure_disk_free(&self) -> bool {
        if let Some(free) = self
            .store
            .as_ref()
            .and_then(|store| crate::alarms::free_disk_space(store.dir()))
        {
            self.disk_free.store(free, Ordering::Relaxed);
        }
        self.check_disk()
    }

    /// Raises or clears the disk alarm: on while the message store cannot write (disk full,
    /// IO error: it retries every second by itself) or the free space last measured is
    /// below `disk_free_limit`. Returns the alarm state. A broker without a data directory
    /// has no disk alarm.
    pub fn check_disk(&self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let failing = store.has_failed();
        let limit = self.disk_free_limit();
        let free = self.disk_free();
        let low = free.is_some_and(|free| free < limit);
        let alarm = failing || low;
        if self.set_alarm(Resource::Disk, alarm) {
            let dir = store.dir().display();
            if low {
                tracing::warn!(
                    "disk resource limit alarm set: free disk space in {dir} is insufficient (free bytes: {}, limit: {limit}); publishers will be blocked until this alarm clears",
                    free.unwrap_or_default()
                );
            } else if failing {
                tracing::warn!(
                    "disk resource limit alarm set: the message store in {dir} cannot write; publishers will be blocked until it can write again"
                );
            } else {
                tracing::info!(
                    "disk resource limit alarm cleared: the message store in {dir} writes and {} bytes are free (limit: {limit}); publishers are unblocked",
                    free.map_or_else(|| "?".to_owned(), |f| f.to_string())
                );
            }
        }
        alarm
    }

    /// The durable store, when the broker has a data directory.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The vhost of that name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        read(&self.vhosts).get(name).cloned()
    }

    /// Every vhost, by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut all: Vec<_> = read(&self.vhosts).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Checks a user's password; returns the user's name on success.
    pub fn authenticate(&self, username: &str, password: &str) -> bool {
        self.config
            .users
            .iter()
            .any(|u| u.name == username && u.password == password)
    }

    /// Whether `username` may use `vhost`: it has permissions there (any).
    pub fn may_access(&self, username: &str, vhost: &str) -> bool {
        self.permissions.has_vhost_access(username, vhost)
    }

    /// Whether `username` is an administrator (management API writes).
    pub fn is_administrator(&self, username: &str) -> bool {
        self.config
            .users
            .iter()
            .any(|u| u.name == username && u.tags.iter().any(|t| t == "administrator"))
    }
}

/// RabbitMQ's default vm_memory_high_watermark: 40% of the machine's memory.
fn default_memory_high_watermark() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(4 * 1024 * 1024);
    total_kib * 1024 / 10 * 4
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A virtual host: a namespace of exchanges, queues and bindings.
pub struct VHost {
    /// Its name ("/" by default).
    pub name: String,
    state: RwLock<VHostState>,
    /// Where durable definitions and persistent messages go, if anywhere.
    pub store: Option<Arc<Store>>,
}

/// The exchanges and queues of a vhost.
pub struct VHostState {
    /// Exchanges by name (the default exchange "" included).
    pub exchanges: HashMap<ShortString, Exchange>,
    /// Queues by name.
    pub queues: HashMap<ShortString, Arc<Queue>>,
}

/// What queue.declare answers.
pub struct DeclaredQueue {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// The flags of a queue declaration.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueFlags {
    /// Only check existence.
    pub passive: bool,
    /// Survive restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted with its last consumer.
    pub auto_delete: bool,
}

/// The flags of an exchange declaration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeFlags {
    /// Only check existence.
    pub passive: bool,
    /// Survive restarts.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Not for publishing to.
    pub internal: bool,
}

impl VHost {
    /// A vhost with the standard exchanges every RabbitMQ vhost has, kept in memory only.
    pub fn new(name: &str) -> VHost {
        VHost::with_store(name, None)
    }

    /// A vhost with the standard exchanges, keeping its durable parts in `store`.
    pub fn with_store(name: &str, store: Option<Arc<Store>>) -> VHost {
        let mut exchanges = HashMap::new();
        for (exchange, kind, internal) in [
            ("", ExchangeKind::Direct, false),
            ("amq.direct", ExchangeKind::Direct, false),
            ("amq.fanout", ExchangeKind::Fanout, false),
            ("amq.topic", ExchangeKind::Topic, false),
            ("amq.headers", ExchangeKind::Headers, false),
            ("amq.match", ExchangeKind::Headers, false),
            ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
        ] {
            let name = ShortString::from(exchange);
            let exchange =
                Exchange::new(name.clone(), kind, true, false, internal, FieldTable::new());
            exchanges.insert(name, exchange);
        }
        VHost {
            name: name.to_owned(),
            state: RwLock::new(VHostState {
                exchanges,
                queues: HashMap::new(),
            }),
            store,
        }
    }

    /// Saves the durable definitions, if this vhost has a store.
    fn persist(&self) {
        if let Some(store) = &self.store {
            store.save_definitions(&self.name, self.definitions());
        }
    }

    /// The durable exchanges, queues and bindings, as they are saved.
    pub fn definitions(&self) -> VHostDefinitions {
        let state = self.read();
        let durable_queue = |name: &ShortString| {
            state
                .queues
                .get(name)
                .is_some_and(|q| q.durable && q.exclusive_owner.is_none())
        };
        let durable_exchange =
            |name: &ShortString| state.exchanges.get(name).is_some_and(|e| e.durable);
        let standard = |name: &ShortString| name.is_empty() || name.as_bytes().starts_with(b"amq.");
        let mut definitions = VHostDefinitions::default();
        let mut exchanges: Vec<&Exchange> = state.exchanges.values().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for exchange in exchanges {
            if exchange.durable && !standard(&exchange.name) {
                definitions.exchanges.push(ExchangeDefinition {
                    name: exchange.name.to_string(),
                    kind: exchange.kind.name().to_owned(),
                    auto_delete: exchange.auto_delete,
                    internal: exchange.internal,
                    arguments: table_to_json(&exchange.arguments),
                });
            }
            if !exchange.durable {
                continue;
            }
            for binding in exchange.bindings() {
                let durable_destination = match &binding.destination {
                    Destination::Queue(name) => durable_queue(name),
                    Destination::Exchange(name) => durable_exchange(name),
                };
                if durable_destination {
                    definitions.bindings.push(BindingDefinition {
                        source: exchange.name.to_string(),
                        destination: binding.destination.name().to_string(),
                        destination_type: binding.destination.kind_name().to_owned(),
                        routing_key: binding.routing_key.to_string(),
                        arguments: table_to_json(&binding.arguments),
                    });
                }
            }
        }
        let mut queues: Vec<&Arc<Queue>> = state.queues.values().collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for queue in queues {
            if durable_queue(&queue.name) {
                definitions.queues.push(QueueDefinition {
                    name: queue.name.to_string(),
                    auto_delete: queue.auto_delete,
                    arguments: table_to_json(&queue.arguments),
                });
            }
        }
        definitions
    }

    /// Declares what was saved, without saving it again.
    fn restore(&self, saved: &VHostDefinitions) {
        let mut state = self.write();
        for e in &saved.exchanges {
            let Some(kind) = ExchangeKind::parse(&e.kind) else {
                continue;
            };
            let name = ShortString::from(e.name.as_str());
            let arguments = table_from_json(&e.arguments).unwrap_or_default();
            state.exchanges.insert(
                name.clone(),
                Exchange::new(name, kind, true, e.auto_delete, e.internal, arguments),
            );
        }
        for q in &saved.queues {
            let name = ShortString::from(q.name.as_str());
            let arguments = table_from_json(&q.arguments).unwrap_or_default();
            let flags = QueueFlags {
                durable: true,
                auto_delete: q.auto_delete,
                ..Default::default()
            };
            // A queue saved by a broker that accepted arguments this one refuses is still
            // restored (its messages are in the log), with the arguments it understands.
            let settings = match self.queue_settings(&name, flags, &arguments) {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::warn!("restoring queue '{name}' despite its arguments: {error}");
                    QueueSettings {
                        queue_type: queue_type_argument(&arguments).unwrap_or(QueueType::Classic),
                        ..QueueSettings::default()
                    }
                }
            };
            let queue = Queue::new(
                QueueDeclaration {
                    name: name.clone(),
                    vhost: self.name.clone(),
                    durable: true,
                    auto_delete: q.auto_delete,
                    exclusive_owner: None,
                    arguments,
                    settings,
                },
                self.store.clone(),
            );
            state.queues.insert(name, Arc::new(queue));
        }
        for b in &saved.bindings {
            let destination = match b.destination_type.as_str() {
                "exchange" => Destination::Exchange(b.destination.as_str().into()),
                _ => Destination::Queue(b.destination.as_str().into()),
            };
            if let Some(exchange) = state
                .exchanges
                .get_mut(&ShortString::from(b.source.as_str()))
            {
                exchange.bind(Binding {
                    destination,
                    routing_key: b.routing_key.as_str().into(),
                    arguments: table_from_json(&b.arguments).unwrap_or_default(),
                });
            }
        }
    }

    /// Reads the vhost's state.
    pub fn read(&self) -> RwLockReadGuard<'_, VHostState> {
        read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, VHostState> {
        write(&self.state)
    }

    /// The queue of that name.
    pub fn queue(&self, name: &ShortString) -> Option<Arc<Queue>> {
        self.read().queues.get(name).cloned()
    }

    fn no_queue(&self, name: &ShortString) -> AmqpError {
        AmqpError::not_found(format!(
            "no {}",
            queue_resource(&name.to_str_lossy(), &self.name)
        ))
    }

    fn no_exchange(&self, name: &ShortString) -> AmqpError {
        AmqpError::not_found(format!(
            "no {}",
            exchange_resource(&name.to_str_lossy(), &self.name)
        ))
    }

    /// A queue that `connection` may use: it exists, and is not another connection's
    /// exclusive queue (405 RESOURCE_LOCKED).
    pub fn usable_queue(
        &self,
        name: &ShortString,
        connection: u64,
    ) -> Result<Arc<Queue>, AmqpError> {
        let queue = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        self.check_exclusive(&queue, connection)?;
        Ok(queue)
    }

    fn check_exclusive(&self, queue: &Queue, connection: u64) -> Result<(), AmqpError> {
        match queue.exclusive_owner {
            Some(owner) if owner != connection => Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                queue_resource(&queue.name.to_str_lossy(), &self.name)
            ))),
            _ => Ok(()),
        }
    }

    // ---- queues -------------------------------------------------------------------------

    /// queue.declare (spec 1.7.2.1), with RabbitMQ's checks and texts, in RabbitMQ's order:
    /// the reserved prefix, then (for an existing queue) exclusivity, `durable`,
    /// `auto_delete` and the arguments; (for a new one) the arguments' validity, then the
    /// queue type's own rules.
    pub fn declare_queue(
        &self,
        connection: u64,
        name: &ShortString,
        flags: QueueFlags,
        arguments: &FieldTable,
    ) -> Result<DeclaredQueue, AmqpError> {
        self.declare_queue_checked(connection, name, flags, arguments, &mut |_| Ok(()))
    }

    /// [`VHost::declare_queue`], with `check_server_name` run on the name the server chose
    /// for a `""` queue before the queue is made (RabbitMQ checks the declaring user's
    /// configure permission on that name).
    pub fn declare_queue_checked(
        &self,
        connection: u64,
        name: &ShortString,
        flags: QueueFlags,
        arguments: &FieldTable,
        check_server_name: &mut dyn FnMut(&ShortString) -> Result<(), AmqpError>,
    ) -> Result<DeclaredQueue, AmqpError> {
        if flags.passive {
            let existing = self.queue(name).ok_or_else(|| self.no_queue(name))?;
            self.check_exclusive(&existing, connection)?;
            return Ok(declared(existing));
        }
        if name.as_bytes().starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        // RabbitMQ: an exclusive queue is never durable, whatever the declaration says.
        let flags = QueueFlags {
            durable: flags.durable && !flags.exclusive,
            ..flags
        };
        if let Some(existing) = self.queue(name) {
            self.check_equivalent(&existing, connection, flags, arguments)?;
            return Ok(declared(existing));
        }
        let name = if name.is_empty() {
            if queue_type_argument(arguments) == Some(QueueType::Quorum) {
                return Err(AmqpError::precondition_failed(
                    "Cannot declare a server-named queue for type rabbit_quorum_queue",
                ));
            }
            let generated = generated_queue_name();
            check_server_name(&generated)?;
            generated
        } else {
            name.detached()
        };
        // The queue outlives the frame that declared it: nothing it keeps may be a slice of
        // that frame, which would keep the connection's whole read buffer alive.
        let arguments = &arguments.detached();
        let settings = self.queue_settings(&name, flags, arguments)?;
        let owner = flags.exclusive.then_some(connection);
        let queue = Arc::new(Queue::new(
            QueueDeclaration {
                name: name.clone(),
                vhost: self.name.clone(),
                durable: flags.durable,
                auto_delete: flags.auto_delete,
                exclusive_owner: owner,
                arguments: arguments.clone(),
                settings,
            },
            self.store.clone(),
        ));
        let mut state = self.write();
        // Two connections may race to create it: the first one wins, the second gets it.
        let queue = state.queues.entry(name.clone()).or_insert(queue).clone();
        // Every queue is bound to the default exchange by its name (implicitly).
        drop(state);
        if queue.durable {
            self.persist();
        }
        Ok(declared(queue))
    }

    /// RabbitMQ's `assert_equivalence` of a redeclared queue: exclusivity (strict: the
    /// exclusive flag must match and the owner be this connection), `durable`, `auto_delete`,
    /// then the queue type's arguments, in its order.
    fn check_equivalent(
        &self,
        queue: &Queue,
        connection: u64,
        flags: QueueFlags,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let resource = queue_resource(&queue.name.to_str_lossy(), &self.name);
        let owner_matches = match queue.exclusive_owner {
            Some(owner) => flags.exclusive && owner == connection,
            None => !flags.exclusive,
        };
        if !owner_matches {
            return Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked {resource}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
            )));
        }
        let flag = |name: &str, received: bool, current: bool| {
            if received == current {
                Ok(())
            } else {
                Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg '{name}' for {resource}: received '{received}' but current is '{current}'"
                )))
            }
        };
        flag("durable", flags.durable, queue.durable)?;
        flag("auto_delete", flags.auto_delete, queue.auto_delete)?;
        let keys: &[&str] = match queue.settings.queue_type {
            QueueType::Classic => &CLASSIC_QUEUE_ARGUMENTS,
            QueueType::Quorum => &QUORUM_QUEUE_ARGUMENTS,
        };
        for key in keys {
            check_argument_equivalence(key, arguments.get(key), queue.arguments.get(key)).map_err(
                |text| {
                    AmqpError::precondition_failed(format!(
                        "inequivalent arg '{key}' for {resource}: {text}"
                    ))
                },
            )?;
        }
        Ok(())
    }

    /// Checks the arguments of a new queue as RabbitMQ does (in its order, with its texts)
    /// and keeps what the broker acts on.
    fn queue_settings(
        &self,
        name: &ShortString,
        flags: QueueFlags,
        arguments: &FieldTable,
    ) -> Result<QueueSettings, AmqpError> {
        let resource = queue_resource(&name.to_str_lossy(), &self.name);
        for (key, check) in DECLARE_ARGUMENT_CHECKS {
            if let Some(value) = arguments.get(key) {
                check(value, arguments).map_err(|reason| {
                    AmqpError::precondition_failed(format!(
                        "invalid arg '{key}' for {resource}: {reason}"
                    ))
                })?;
            }
        }
        // The checks passed: every value below has the type its check wants.
        let mut settings = QueueSettings::default();
        let millis = |key: &str| {
            arguments
                .get(key)
                .and_then(integer_argument)
                .map(|ms| Duration::from_millis(ms.max(0) as u64))
        };
        let count = |key: &str| {
            arguments
                .get(key)
                .and_then(integer_argument)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        let string = |key: &str| match arguments.get(key) {
            Some(FieldValue::LongString(s)) => Some(ShortString::new(s.bytes().clone())),
            _ => None,
        };
        settings.queue_type = queue_type_argument(arguments).unwrap_or(QueueType::Classic);
        settings.message_ttl = millis("x-message-ttl");
        settings.expires = millis("x-expires");
        settings.max_length = count("x-max-length");
        settings.max_length_bytes = count("x-max-length-bytes");
        settings.max_priority = arguments
            .get("x-max-priority")
            .and_then(integer_argument)
            .and_then(|p| u8::try_from(p).ok());
        if let Some(overflow) = string("x-overflow") {
            settings.overflow = match overflow.as_bytes() {
                b"drop-head" => Overflow::DropHead,
                _ => Overflow::RejectPublish,
            };
        }
        settings.dead_letter_exchange = string("x-dead-letter-exchange");
        settings.dead_letter_routing_key = string("x-dead-letter-routing-key");
        settings.single_active_consumer = matches!(
            arguments.get("x-single-active-consumer"),
            Some(FieldValue::Bool(true))
        );
        if settings.queue_type == QueueType::Quorum {
            // rabbit_quorum_queue:declare: arguments it refuses, then auto-delete,
            // exclusive and non-durable, in that order.
            for key in ["x-queue-mode", "x-max-priority"] {
                if arguments.contains_key(key) {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid arg '{key}' for {resource} of queue type rabbit_quorum_queue"
                    )));
                }
            }
            let property = if flags.auto_delete {
                Some("auto-delete")
            } else if flags.exclusive {
                Some("exclusive-owner")
            } else if !flags.durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(property) = property {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid property '{property}' for {resource}"
                )));
            }
            // Priorities are a classic queue feature.
            settings.max_priority = None;
        }
        Ok(settings)
    }

    /// queue.bind (spec 1.7.2.3), checked in RabbitMQ's order: the default exchange (403),
    /// the exchange then the queue (404), the binding's arguments (406), then exclusivity
    /// (405). Binding twice is not an error.
    pub fn bind_queue(
        &self,
        connection: u64,
        queue: &ShortString,
        exchange: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(default_exchange_refusal());
        }
        let mut state = self.write();
        let source = state
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let kind = source.kind;
        let q = state
            .queues
            .get(queue)
            .cloned()
            .ok_or_else(|| self.no_queue(queue))?;
        validate_binding(kind, arguments)?;
        self.check_exclusive(&q, connection)?;
        let binding = Binding {
            destination: Destination::Queue(q.name.clone()),
            routing_key: routing_key.detached(),
            arguments: arguments.detached(),
        };
        if let Some(source) = state.exchanges.get_mut(exchange) {
            source.bind(binding);
        }
        drop(state);
        if q.durable {
            self.persist();
        }
        Ok(())
    }

    /// queue.unbind (spec 1.7.2.5). As in RabbitMQ, a missing exchange, a missing queue or
    /// a binding that does not exist are not errors; removing an existing binding of
    /// another connection's exclusive queue is (405).
    pub fn unbind_queue(
        &self,
        connection: u64,
        queue: &ShortString,
        exchange: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(default_exchange_refusal());
        }
        let mut state = self.write();
        let Some(q) = state.queues.get(queue).cloned() else {
            return Ok(());
        };
        let Some(source) = state.exchanges.get_mut(exchange) else {
            return Ok(());
        };
        let binding = Binding {
            destination: Destination::Queue(q.name.clone()),
            routing_key: routing_key.clone(),
            arguments: arguments.clone(),
        };
        if !source.has_binding(&binding) {
            return Ok(());
        }
        self.check_exclusive(&q, connection)?;
        source.unbind(&binding);
        let auto_delete = source.auto_delete && source.bindings().is_empty();
        if auto_delete {
            state.exchanges.remove(exchange);
        }
        drop(state);
        self.persist();
        Ok(())
    }

    /// queue.purge (spec 1.7.2.7).
    pub fn purge_queue(&self, connection: u64, queue: &ShortString) -> Result<u32, AmqpError> {
        Ok(self.usable_queue(queue, connection)?.purge() as u32)
    }

    /// queue.delete (spec 1.7.2.9). Deleting a queue that does not exist answers 0, as
    /// RabbitMQ does. Returns the message count and the consumers to cancel.
    pub fn delete_queue(
        &self,
        connection: u64,
        name: &ShortString,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(u32, Vec<crate::queue::QueueConsumer>), AmqpError> {
        let Some(queue) = self.queue(name) else {
            return Ok((0, Vec::new()));
        };
        self.check_exclusive(&queue, connection)?;
        let resource = queue_resource(&name.to_str_lossy(), &self.name);
        {
            let state = queue.state();
            if if_unused && !state.consumers.is_empty() {
                return Err(AmqpError::precondition_failed(format!("{resource} in use")));
            }
            if if_empty && !state.ready.is_empty() {
                return Err(AmqpError::precondition_failed(format!(
                    "{resource} not empty"
                )));
            }
        }
        Ok(self.remove_queue(&queue))
    }

    /// Removes a queue and its bindings; returns its message count and consumers.
    pub fn remove_queue(&self, queue: &Arc<Queue>) -> (u32, Vec<crate::queue::QueueConsumer>) {
        let mut state = self.write();
        if state
            .queues
            .get(&queue.name)
            .is_some_and(|q| Arc::ptr_eq(q, queue))
        {
            state.queues.remove(&queue.name);
        }
        let destination = Destination::Queue(queue.name.clone());
        let mut emptied = Vec::new();
        for (name, exchange) in state.exchanges.iter_mut() {
            if exchange.unbind_destination(&destination) > 0
                && exchange.auto_delete
                && exchange.bindings().is_empty()
            {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            state.exchanges.remove(&name);
        }
        drop(state);
        if queue.durable {
            self.persist();
        }
        let (count, consumers) = queue.delete();
        (count as u32, consumers)
    }

    // ---- exchanges ----------------------------------------------------------------------

    /// exchange.declare (spec 1.6.2.1), checked in RabbitMQ's order: the type (503, before
    /// anything else), the default exchange (403), then for an existing exchange its
    /// equivalence (406), for a new one the reserved `amq.` prefix (403). A passive declare
    /// checks only the default exchange and existence (the type is not compared).
    pub fn declare_exchange(
        &self,
        name: &ShortString,
        kind: &ShortString,
        flags: ExchangeFlags,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if flags.passive {
            if name.is_empty() {
                return Err(default_exchange_refusal());
            }
            return if self.read().exchanges.contains_key(name) {
                Ok(())
            } else {
                Err(self.no_exchange(name))
            };
        }
        let Some(parsed) = ExchangeKind::parse(&kind.to_str_lossy()) else {
            return Err(AmqpError::command_invalid(format!(
                "unknown exchange type '{kind}'"
            )));
        };
        if name.is_empty() {
            return Err(default_exchange_refusal());
        }
        let resource = exchange_resource(&name.to_str_lossy(), &self.name);
        let mut state = self.write();
        if let Some(existing) = state.exchanges.get(name) {
            let mismatch = |arg: &str, received: &str, current: &str| {
                Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg '{arg}' for {resource}: received '{received}' but current is '{current}'"
                )))
            };
            if existing.kind != parsed {
                return mismatch("type", parsed.name(), existing.kind.name());
            }
            if existing.durable != flags.durable {
                return mismatch(
                    "durable",
                    &flags.durable.to_string(),
                    &existing.durable.to_string(),
                );
            }
            if existing.auto_delete != flags.auto_delete {
                return mismatch(
                    "auto_delete",
                    &flags.auto_delete.to_string(),
                    &existing.auto_delete.to_string(),
                );
            }
            if existing.internal != flags.internal {
                return mismatch(
                    "internal",
                    &flags.internal.to_string(),
                    &existing.internal.to_string(),
                );
            }
            const KEY: &str = "alternate-exchange";
            return check_argument_equivalence(
                KEY,
                arguments.get(KEY),
                existing.arguments.get(KEY),
            )
            .map_err(|text| {
                AmqpError::precondition_failed(format!(
                    "inequivalent arg '{KEY}' for {resource}: {text}"
                ))
            });
        }
        if name.as_bytes().starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = name.detached();
        state.exchanges.insert(
            name.clone(),
            Exchange::new(
                name,
                parsed,
                flags.durable,
                flags.auto_delete,
                flags.internal,
                arguments.detached(),
            ),
        );
        drop(state);
        if flags.durable {
            self.persist();
        }
        Ok(())
    }

    /// exchange.delete (spec 1.6.2.3). Deleting one that does not exist is not an error;
    /// deleting the default exchange or an `amq.` one is (403), whether it exists or not.
    pub fn delete_exchange(&self, name: &ShortString, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(default_exchange_refusal());
        }
        if name.as_bytes().starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system {} not allowed",
                exchange_resource(&name.to_str_lossy(), &self.name)
            )));
        }
        let mut state = self.write();
        let Some(exchange) = state.exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && !exchange.bindings().is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                exchange_resource(&name.to_str_lossy(), &self.name)
            )));
        }
        state.exchanges.remove(name);
        let destination = Destination::Exchange(name.clone());
        for exchange in state.exchanges.values_mut() {
            exchange.unbind_destination(&destination);
        }
        drop(state);
        self.persist();
        Ok(())
    }

    /// exchange.bind / exchange.unbind (RabbitMQ's exchange-to-exchange bindings). Binding
    /// checks the source before the destination (404) and the binding's arguments (406);
    /// unbinding what does not exist is not an error.
    pub fn bind_exchange(
        &self,
        destination: &ShortString,
        source: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
        bind: bool,
    ) -> Result<(), AmqpError> {
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange_refusal());
        }
        let mut state = self.write();
        let found = (
            state.exchanges.get(source).map(|x| x.kind),
            state.exchanges.contains_key(destination),
        );
        let kind = match found {
            (Some(kind), true) => kind,
            _ if !bind => return Ok(()),
            (None, _) => return Err(self.no_exchange(source)),
            (Some(_), false) => return Err(self.no_exchange(destination)),
        };
        let binding = if bind {
            validate_binding(kind, arguments)?;
            // Kept by the source exchange: detached from the frame (see declare_queue).
            Binding {
                destination: Destination::Exchange(destination.detached()),
                routing_key: routing_key.detached(),
                arguments: arguments.detached(),
            }
        } else {
            Binding {
                destination: Destination::Exchange(destination.clone()),
                routing_key: routing_key.clone(),
                arguments: arguments.clone(),
            }
        };
        let Some(exchange) = state.exchanges.get_mut(source) else {
            return Ok(());
        };
        if bind {
            exchange.bind(binding);
        } else {
            exchange.unbind(&binding);
            if exchange.auto_delete && exchange.bindings().is_empty() {
                state.exchanges.remove(source);
            }
        }
        drop(state);
        self.persist();
        Ok(())
    }

    // ---- routing ------------------------------------------------------------------------

    /// The queues a message published to `exchange` with `routing_key` goes to, each once,
    /// following exchange-to-exchange bindings and alternate exchanges. 404 if the exchange
    /// does not exist; 403 if it is internal and `from_client`.
    pub fn route(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        headers: Option<&FieldTable>,
        from_client: bool,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), AmqpError> {
        self.route_keys(
            exchange,
            std::slice::from_ref(routing_key),
            headers,
            from_client,
            out,
        )
    }

    /// [`route`](Self::route) for a message with several routing keys (its own and those of
    /// its `CC` and `BCC` headers, RabbitMQ's sender-selected distribution).
    ///
    /// As RabbitMQ does, an exchange that matches nothing for the message passes it to its
    /// `alternate-exchange`, if it has one.
    pub fn route_keys(
        &self,
        exchange: &ShortString,
        routing_keys: &[ShortString],
        headers: Option<&FieldTable>,
        from_client: bool,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), AmqpError> {
        let state = self.read();
        if exchange.is_empty() {
            // The default exchange: every queue is bound by its own name.
            for key in routing_keys {
                if let Some(queue) = state.queues.get(key) {
                    if !out.iter().any(|q| Arc::ptr_eq(q, queue)) {
                        out.push(queue.clone());
                    }
                }
            }
            return Ok(());
        }
        let first = state
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if from_client && first.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal {}",
                exchange_resource(&exchange.to_str_lossy(), &self.name)
            )));
        }
        let mut pending = vec![first];
        let mut visited: Vec<&ShortString> = vec![&first.name];
        while let Some(exchange) = pending.pop() {
            let mut matched = false;
            for key in routing_keys {
                exchange.route(key, headers, |destination| {
                    matched = true;
                    match destination {
                        Destination::Queue(name) => {
                            if let Some(queue) = state.queues.get(name) {
                                if !out.iter().any(|q| Arc::ptr_eq(q, queue)) {
                                    out.push(queue.clone());
                                }
                            }
                        }
                        Destination::Exchange(name) => {
                            if let Some(next) = state.exchanges.get(name) {
                                if !visited.contains(&&next.name) {
                                    visited.push(&next.name);
                                    pending.push(next);
                                }
                            }
                        }
                    }
                });
            }
            if !matched {
                let alternate = match exchange.arguments.get("alternate-exchange") {
                    Some(FieldValue::LongString(name)) => state
                        .exchanges
                        .get(&ShortString::new(name.bytes().clone()))
                        .filter(|x| !visited.contains(&&x.name)),
                    _ => None,
                };
                if let Some(alternate) = alternate {
                    visited.push(&alternate.name);
                    pending.push(alternate);
                }
            }
        }
        Ok(())
    }

    /// Whether a client may publish to `exchange`: it exists (404) and is not internal
    /// (403). The default exchange always takes publishes.
    pub fn check_publish(&self, exchange: &ShortString) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Ok(());
        }
        let state = self.read();
        let found = state
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if found.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal {}",
                exchange_resource(&exchange.to_str_lossy(), &self.name)
            )));
        }
        Ok(())
    }

    /// Whether the exchange exists.
    pub fn has_exchange(&self, name: &ShortString) -> bool {
        self.read().exchanges.contains_key(name)
    }
}

/// The arguments RabbitMQ 3.10 compares when a classic queue is redeclared, in its order
/// (rabbit_classic_queue's `queue_arguments`).
const CLASSIC_QUEUE_ARGUMENTS: [&str; 14] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// The same for quorum queues (rabbit_quorum_queue's `queue_arguments`).
const QUORUM_QUEUE_ARGUMENTS: [&str; 14] = [
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
];

/// A declaration's answer for an existing queue: its ready messages and consumers.
fn declared(queue: Arc<Queue>) -> DeclaredQueue {
    let state = queue.state();
    let (message_count, consumer_count) = (state.ready.len() as u32, state.consumers.len() as u32);
    drop(state);
    DeclaredQueue {
        queue,
        message_count,
        consumer_count,
    }
}

/// The queue type an `x-queue-type` argument asks for, if it names one this broker has.
fn queue_type_argument(arguments: &FieldTable) -> Option<QueueType> {
    match arguments.get("x-queue-type") {
        Some(FieldValue::LongString(s)) => match s.as_bytes() {
            b"classic" => Some(QueueType::Classic),
            b"quorum" => Some(QueueType::Quorum),
            _ => None,
        },
        _ => None,
    }
}

/// RabbitMQ's `assert_args_equivalence` of one argument; Err is the text after the key:
/// `received '2000' but current is '1000'` when both have it (values only), or
/// `received the value '10' of type 'signedint' but current is none` when one lacks it.
/// Integers of different widths with the same value are equivalent; a missing
/// `x-queue-type` is `classic`.
fn check_argument_equivalence(
    key: &str,
    received: Option<&FieldValue>,
    current: Option<&FieldValue>,
) -> Result<(), String> {
    let classic = FieldValue::LongString("classic".into());
    let (received, current) = match (key, received, current) {
        ("x-queue-type", None, Some(c)) if *c == classic => return Ok(()),
        ("x-queue-type", Some(r), None) if *r == classic => return Ok(()),
        other => (other.1, other.2),
    };
    match (received, current) {
        (None, None) => Ok(()),
        (Some(r), Some(c)) => {
            let same = match (integer_argument(r), integer_argument(c)) {
                (Some(a), Some(b)) => a == b,
                _ => r == c,
            };
            if same {
                Ok(())
            } else {
                Err(format!(
                    "received '{}' but current is '{}'",
                    field_value_text(r),
                    field_value_text(c)
                ))
            }
        }
        (r, c) => Err(format!(
            "received {} but current is {}",
            describe_argument(r),
            describe_argument(c)
        )),
    }
}

/// How RabbitMQ describes an argument value in an error text:
/// `the value '1000' of type 'signedint'`, or `none`.
pub fn describe_argument(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_owned(),
        Some(value) => format!(
            "the value '{}' of type '{}'",
            field_value_text(value),
            field_type_name(value)
        ),
    }
}

/// A check of one queue argument: Ok, or the reason as RabbitMQ prints its error term.
type ArgumentCheck = fn(&FieldValue, &FieldTable) -> Result<(), String>;

/// RabbitMQ 3.10's `declare_args`: the queue arguments it validates, in its order.
const DECLARE_ARGUMENT_CHECKS: [(&str, ArgumentCheck); 13] = [
    ("x-expires", check_expires),
    ("x-message-ttl", check_message_ttl),
    ("x-dead-letter-exchange", check_dead_letter_exchange),
    ("x-dead-letter-routing-key", check_dead_letter_routing_key),
    ("x-max-length", check_non_negative),
    ("x-max-length-bytes", check_non_negative),
    ("x-max-in-memory-length", check_non_negative),
    ("x-max-in-memory-bytes", check_non_negative),
    ("x-max-priority", check_max_priority),
    ("x-overflow", check_overflow),
    ("x-queue-mode", check_queue_mode),
    ("x-single-active-consumer", check_single_active_consumer),
    ("x-queue-type", check_queue_type),
];

/// An integer argument, or RabbitMQ's `"expected integer, got longstr"`.
fn check_integer(value: &FieldValue) -> Result<i64, String> {
    integer_argument(value).ok_or_else(|| {
        format!(
            "\"expected integer, got {}\"",
            crate::error::field_type_name(value)
        )
    })
}

/// RabbitMQ 3.10's `check_expiry`: not negative (there is no upper bound).
fn check_expiry(n: i64) -> Result<(), String> {
    if n < 0 {
        Err(format!("{{value_negative,{n}}}"))
    } else {
        Ok(())
    }
}

fn check_expires(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match check_integer(value)? {
        0 => Err("{value_zero,0}".to_owned()),
        n => check_expiry(n),
    }
}

fn check_message_ttl(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    check_expiry(check_integer(value)?)
}

fn check_non_negative(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match check_integer(value)? {
        n if n < 0 => Err(format!("{{value_negative,{n}}}")),
        _ => Ok(()),
    }
}

fn check_max_priority(value: &FieldValue, arguments: &FieldTable) -> Result<(), String> {
    check_non_negative(value, arguments)?;
    match check_integer(value)? {
        n if n > 255 => Err(format!("{{max_value_exceeded,{n}}}")),
        _ => Ok(()),
    }
}

fn unacceptable_type(value: &FieldValue) -> String {
    format!(
        "{{unacceptable_type,{}}}",
        crate::error::field_type_name(value)
    )
}

fn check_dead_letter_exchange(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::LongString(_) => Ok(()),
        other => Err(unacceptable_type(other)),
    }
}

fn check_dead_letter_routing_key(value: &FieldValue, arguments: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::LongString(_) if arguments.contains_key("x-dead-letter-exchange") => Ok(()),
        FieldValue::LongString(_) => Err("routing_key_but_no_dlx_defined".to_owned()),
        other => Err(unacceptable_type(other)),
    }
}

fn check_overflow(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::LongString(s) => match s.as_bytes() {
            b"drop-head" | b"reject-publish" | b"reject-publish-dlx" => Ok(()),
            _ => Err("invalid_overflow".to_owned()),
        },
        other => Err(unacceptable_type(other)),
    }
}

fn check_queue_mode(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::LongString(s) => match s.as_bytes() {
            b"default" | b"lazy" => Ok(()),
            _ => Err("invalid_queue_mode".to_owned()),
        },
        other => Err(unacceptable_type(other)),
    }
}

fn check_single_active_consumer(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::Bool(_) => Ok(()),
        other => Err(unacceptable_type(other)),
    }
}

/// `x-queue-type`: classic or quorum. (RabbitMQ 3.10 also has `stream`, which this broker
/// does not implement: it answers as RabbitMQ answers an unknown type.)
fn check_queue_type(value: &FieldValue, _: &FieldTable) -> Result<(), String> {
    match value {
        FieldValue::LongString(s) => match s.as_bytes() {
            b"classic" | b"quorum" => Ok(()),
            other => Err(format!(
                "\"unsupported queue type '{}'\"",
                String::from_utf8_lossy(other)
            )),
        },
        other => Err(unacceptable_type(other)),
    }
}

/// RabbitMQ's check of a new binding's arguments: a headers exchange's `x-match` must be
/// a long string naming a mode it knows.
fn validate_binding(kind: ExchangeKind, arguments: &FieldTable) -> Result<(), AmqpError> {
    if kind != ExchangeKind::Headers {
        return Ok(());
    }
    match arguments.get("x-match") {
        None => Ok(()),
        Some(FieldValue::LongString(mode)) => match mode.as_bytes() {
            b"all" | b"any" | b"all-with-x" | b"any-with-x" => Ok(()),
            other => Err(AmqpError::precondition_failed(format!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                crate::error::erlang_binary_p(other)
            ))),
        },
        Some(other) => Err(AmqpError::precondition_failed(format!(
            "Invalid x-match field type {} (value {}); expected longstr",
            field_type_name(other),
            crate::error::erlang_term(other)
        ))),
    }
}

fn default_exchange_refusal() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

/// A server-generated queue name: `amq.gen-` and 22 URL-safe base64 characters, as RabbitMQ
/// makes them.
pub fn generated_queue_name() -> ShortString {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut seed = random_u64();
    let mut name = String::from("amq.gen-");
    for i in 0..22 {
        if i == 11 {
            seed = random_u64();
        }
        name.push(char::from(ALPHABET[(seed & 63) as usize]));
        seed >>= 6;
    }
    name.into()
}

/// 64 random bits from the standard library's randomly seeded hasher (no extra dependency).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::{FieldArray, LongString};
    use bytes::Bytes;

    /// Stands for a connection's read buffer: `texts` back to back in one allocation, and
    /// each of them as a slice of it, as the strings of a decoded frame are.
    fn read_buffer(texts: &[&str]) -> (Bytes, Vec<Bytes>) {
        let buffer = Bytes::from(texts.concat());
        let mut at = 0;
        let slices = texts
            .iter()
            .map(|text| {
                at += text.len();
                buffer.slice(at - text.len()..at)
            })
            .collect();
        (buffer, slices)
    }

    /// Every name, string and byte array of `table`, nested ones included.
    fn table_octets<'a>(table: &'a FieldTable, out: &mut Vec<&'a [u8]>) {
        for (name, value) in table.iter() {
            out.push(name.as_bytes());
            value_octets(value, out);
        }
    }

    fn value_octets<'a>(value: &'a FieldValue, out: &mut Vec<&'a [u8]>) {
        match value {
            FieldValue::LongString(text) => out.push(text.as_bytes()),
            FieldValue::ByteArray(octets) => out.push(octets),
            FieldValue::Table(table) => table_octets(table, out),
            FieldValue::Array(values) => values.iter().for_each(|v| value_octets(v, out)),
            _ => {}
        }
    }

    #[test]
    fn what_declarations_and_bindings_keep_is_not_a_slice_of_the_read_buffer() {
        let (buffer, slices) = read_buffer(&[
            "a-queue-name-longer-than-thirty-one-octets",
            "an-exchange-name-longer-than-thirty-one-octets",
            "a dead letter exchange named at length",
            "x-an-argument-name-longer-than-thirty-one-octets",
            "a-routing-key-longer-than-thirty-one-octets",
            "a value in an array",
        ]);
        let [queue, exchange, dead_letter, long_key, routing_key, in_array] = &slices[..] else {
            unreachable!()
        };
        let short = |octets: &Bytes| ShortString::new(octets.clone());
        let mut arguments = FieldTable::new();
        arguments.insert(
            "x-dead-letter-exchange",
            FieldValue::LongString(LongString::new(dead_letter.clone())),
        );
        let mut nested = FieldTable::new();
        nested.insert(short(long_key), FieldValue::ByteArray(in_array.clone()));
        nested.insert(
            "list",
            FieldValue::Array(FieldArray(vec![FieldValue::LongString(LongString::new(
                in_array.clone(),
            ))])),
        );
        arguments.insert(short(long_key), nested);

        let vhost = VHost::new("/");
        let durable = QueueFlags {
            durable: true,
            ..QueueFlags::default()
        };
        vhost
            .declare_queue(1, &short(queue), durable, &arguments)
            .unwrap();
        let fanout = ShortString::from("fanout");
        vhost
            .declare_exchange(
                &short(exchange),
                &fanout,
                ExchangeFlags::default(),
                &arguments,
            )
            .unwrap();
        vhost
            .bind_queue(
                1,
                &short(queue),
                &short(exchange),
                &short(routing_key),
                &arguments,
            )
            .unwrap();
        vhost
            .bind_exchange(
                &short(exchange),
                &ShortString::from("amq.fanout"),
                &short(routing_key),
                &arguments,
                true,
            )
            .unwrap();

        let mut kept: Vec<&[u8]> = Vec::new();
        let state = vhost.read();
        let declared = &state.queues[&short(queue)];
        kept.push(declared.name.as_bytes());
        table_octets(&declared.arguments, &mut kept);
        let settings_dlx = declared.settings.dead_letter_exchange.as_ref();
        kept.push(settings_dlx.expect("the dead letter exchange").as_bytes());
        for name in [short(exchange), ShortString::from("amq.fanout")] {
            let exchange = &state.exchanges[&name];
            kept.push(exchange.name.as_bytes());
            table_octets(&exchange.arguments, &mut kept);
            for binding in exchange.bindings() {
                match &binding.destination {
                    Destination::Queue(name) | Destination::Exchange(name) => {
                        kept.push(name.as_bytes())
                    }
                }
                kept.push(binding.routing_key.as_bytes());
                table_octets(&binding.arguments, &mut kept);
            }
        }
        // The arguments hold 7 names and strings. The queue: its name, the arguments and
        // the dead letter exchange; the exchange: its name, the arguments and its binding
        // to the queue (destination, key, arguments); amq.fanout: its name and its binding.
        assert_eq!(kept.len(), (1 + 7 + 1) + (1 + 7 + 9) + (1 + 9));
        let read_buffer = buffer.as_ptr_range();
        let in_buffer: Vec<_> = kept
            .iter()
            .filter(|octets| read_buffer.contains(&octets.as_ptr()))
            .map(|octets| String::from_utf8_lossy(octets))
            .collect();
        assert!(in_buffer.is_empty(), "kept as slices: {in_buffer:?}");
    }
}
