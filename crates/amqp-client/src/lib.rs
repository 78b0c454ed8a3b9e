//! # amqp-client: an async AMQP 0-9-1 client with a sans-IO core
//!
//! A tokio client for RabbitMQ and any AMQP 0-9-1 broker. Nothing hangs: when the broker goes
//! away, every pending call, confirm and consumer ends with an error saying why. Every broker
//! error is typed, with its reply code and text.
//!
//! ```text
//!  Connection / Channel handles (cloneable)      the application
//!        │ requests (bounded)   ▲ replies, deliveries, confirms
//!  ┌─────▼──────────────────────┴──────────┐
//!  │ connection task: socket ⇄ core        │   connection.rs
//!  ├───────────────────────────────────────┤
//!  │ ConnectionCore: handshake, tune,       │   core/ (sans-IO: frames and `now` in,
//!  │ channels, replies, heartbeats, close   │          frames, events and deadlines out)
//!  ├───────────────────────────────────────┤
//!  │ amqp-codec: frames, methods, content   │
//!  └───────────────────────────────────────┘
//! ```
//!
//! ## Quick start
//! ```no_run
//! use amqp_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};
//!
//! # async fn demo() -> Result<(), amqp_client::Error> {
//! let connection = Connection::open("amqp://guest:guest@localhost:5672/%2f").await?;
//! let channel = connection.create_channel().await?;
//! let options = QueueDeclareOptions { durable: true, ..Default::default() };
//! channel.queue_declare("task_queue", options, FieldTable::new()).await?;
//! let persistent = BasicProperties { delivery_mode: Some(2), ..Default::default() };
//! channel.basic_publish("", "task_queue", persistent, "Hello World!", false).await?;
//! connection.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//! - [`uri`]: `amqp://` URIs (RabbitMQ's URI spec).
//! - [`core`]: the sans-IO connection and channel state machines.
//! - [`connection`]: the task that owns the socket, and [`Connection`].
//! - [`channel`]: [`Channel`] and every AMQP operation.
//! - [`consumer`]: [`Consumer`] streams, [`Delivery`], [`Returned`].
//! - [`error`]: [`Error`], which says whose doing a failure was.
//! - `queue` (private): the bounded queues between the handles, the connection task and the
//!   consumers.

pub mod channel;
pub mod connection;
pub mod consumer;
pub mod core;
pub mod error;
mod queue;
pub mod uri;

pub use amqp_codec::{BasicProperties, FieldTable, FieldValue, ShortString};
pub use channel::{
    BasicConsumeOptions, Channel, DeclaredQueue, ExchangeDeclareOptions, PublishConfirm,
    QueueDeclareOptions,
};
pub use connection::{Confirmation, Connection};
pub use consumer::{Consumer, Delivery, GetMessage, Returned};
pub use core::ConnectionConfig;
pub use error::{Error, ServerClose};
pub use uri::{AmqpUri, AuthMechanism};
