//! # mini-broker: a single-node AMQP 0-9-1 broker
//!
//! The broker the tutorials run against: it speaks AMQP 0-9-1 as RabbitMQ 3.x does, down to
//! reply codes and reply texts, so that real clients (pika, the project's own client,
//! RabbitMQ's tools) cannot tell the difference for what they use.
//!
//! ```text
//!   TCP ─► server (reader task) ─► ServerConnection ─► Broker ─► VHost ─► exchanges ─► Queue
//!                                    (handshake,         (users,   (declare,  (routing)    │
//!                                     channels, methods)  vhosts)   bind, route)           │
//!   TCP ◄─ server (writer task) ◄─ Outbox ◄──────── ChannelLink ◄─── deliveries ◄──────────┘
//! ```
//!
//! ## Layout
//! - [`server`]: sockets and tasks; [`connection`]: the per-connection protocol state machine.
//! - [`broker`]: users, vhosts, declares and routing; [`exchange`]: routing tables;
//!   [`queue`]: messages, consumers, round-robin dispatch with prefetch.
//! - [`delivery`]: outboxes and channel links, the path from a queue to a socket.
//! - [`alarms`]: the memory and disk alarms that block publishers (connection.blocked).
//! - [`config`], [`error`], [`registry`] (live connections), [`message`];
//!   [`permissions`]: users' configure/write/read patterns per vhost, checked as RabbitMQ does.
//! - [`mgmt`]: the management HTTP API (RabbitMQ's, for `rabbitmqadmin`); [`metrics`]:
//!   Prometheus text on its `/metrics`; [`ctl`]: `mini-broker ctl`, rabbitmqctl's listings.

pub mod alarms;
pub mod broker;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod delivery;
pub mod error;
pub mod exchange;
pub mod message;
pub mod metrics;
pub mod mgmt;
pub mod permissions;
pub mod queue;
pub mod registry;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::sync::watch;

pub use broker::Broker;
pub use config::BrokerConfig;

/// Where to listen and what to serve.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The AMQP listener (RabbitMQ: 5672). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The configuration.
    pub config: BrokerConfig,
    /// Where durable definitions and persistent messages are kept; None keeps nothing.
    pub data_dir: Option<std::path::PathBuf>,
    /// Start even when a message log segment in the middle is corrupt (its rest is lost).
    pub skip_corrupt: bool,
    /// The management HTTP API listener (RabbitMQ: 15672); None serves no API. Port 0 picks
    /// a free port.
    pub mgmt_listen: Option<SocketAddr>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            config: BrokerConfig::default(),
            data_dir: None,
            skip_corrupt: false,
            mgmt_listen: None,
        }
    }
}

/// A running broker: its address, and the switch that stops it.
pub struct RunningBroker {
    /// The AMQP address it listens on.
    pub amqp_addr: SocketAddr,
    /// The management API's address, when it serves one.
    pub mgmt_addr: Option<SocketAddr>,
    /// The shared state.
    pub broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningBroker {
    /// An `amqp://` URL for guest on vhost `/`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr)
    }

    /// Closes every connection with 320 CONNECTION_FORCED, stops listening, and makes sure
    /// everything the store was given is on disk.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        // Give connections a moment to send their close and hear the close-ok.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.broker.connections.all().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(store) = self.broker.store().cloned() {
            let _ = tokio::task::spawn_blocking(move || store.close_cleanly()).await;
        }
    }
}

/// How many connections the kernel queues before they are accepted (as tokio's default).
const LISTEN_BACKLOG: u32 = 1024;

/// Starts a broker in this tokio runtime.
///
/// Order, as RabbitMQ boots: the ports are taken first (so that a port in use fails at
/// once, not after a long recovery), then the store recovers from the data directory and
/// the broker puts back durable definitions and persistent messages, and only then are the
/// ports listened on. Until recovery is done, a client's connect is refused rather than
/// accepted into a broker that does not yet have its queues.
pub async fn start(options: BrokerOptions) -> std::io::Result<RunningBroker> {
    let amqp_socket = reserve_port(options.listen)?;
    let amqp_addr = amqp_socket.local_addr()?;
    let mgmt_socket = options.mgmt_listen.map(reserve_port).transpose()?;
    let store = match &options.data_dir {
        Some(dir) => {
            let mut store_options = store::StoreOptions::new(dir);
            store_options.skip_corrupt = options.skip_corrupt;
            Some(store::Store::open(store_options).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    let broker = Broker::with_store(options.config, store);
    if let Some(dir) = &options.data_dir {
        let file = dir.join(permissions::PERMISSIONS_FILE);
        broker
            .permissions
            .keep_changes_in(file)
            .map_err(std::io::Error::other)?;
    }
    let listener = amqp_socket.listen(LISTEN_BACKLOG)?;
    let mgmt_listener = match mgmt_socket {
        Some(socket) => Some(socket.listen(LISTEN_BACKLOG)?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(housekeeping(broker.clone(), shutdown_rx.clone()));
    let mgmt_addr = match mgmt_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            tokio::spawn(mgmt::serve(
                listener,
                broker.clone(),
                amqp_addr,
                shutdown_rx.clone(),
            ));
            tracing::info!("mini-broker management API on http://{addr}/api/");
            Some(addr)
        }
        None => None,
    };
    let server = tokio::spawn(server::serve(listener, broker.clone(), shutdown_rx));
    tracing::info!("mini-broker listening for AMQP 0-9-1 on {amqp_addr}");
    Ok(RunningBroker {
        amqp_addr,
        mgmt_addr,
        broker,
        shutdown,
        server,
    })
}

/// A socket bound to `addr` but not listening: connects to it are refused until
/// [`TcpSocket::listen`]. SO_REUSEADDR on Unix, as `TcpListener::bind` sets it, so that a
/// restarted broker can take its port back at once.
fn reserve_port(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Periodic work: expire messages past their TTL and queues past their x-expires; watch
/// memory and disk for the alarms (free disk space measured every second).
async fn housekeeping(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        broker.check_memory();
        if ticks % 10 == 0 {
            broker.measure_disk_free();
        } else {
            broker.check_disk();
        }
        ticks += 1;
        for vhost in broker.vhosts() {
            let queues: Vec<_> = vhost.read().queues.values().cloned().collect();
            for queue in queues {
                queue.page_out_now();
                let mut dead = queue::DeadLetters::new();
                queue.retry_unread_head(&mut dead);
                connection::dead_letter(&vhost, &queue, dead);
                if queue.settings.message_ttl.is_some() || has_expiring_messages(&queue) {
                    let mut dead = queue::DeadLetters::new();
                    queue.expire(now, &mut dead);
                    connection::dead_letter(&vhost, &queue, dead);
                }
                if let Some(expires) = queue.settings.expires {
                    let idle = {
                        let state = queue.state();
                        state.consumers.is_empty() && now.duration_since(state.last_used) >= expires
                    };
                    if idle {
                        let (_, consumers) = vhost.remove_queue(&queue);
                        connection::notify_cancelled(consumers);
                    }
                }
            }
        }
    }
}

fn has_expiring_messages(queue: &queue::Queue) -> bool {
    queue
        .state()
        .ready
        .front()
        .is_some_and(|m| m.expires_at.is_some())
}
