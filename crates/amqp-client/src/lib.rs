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
//! ## Where the consume loop runs
//! On tokio's multi-thread runtime, `#[tokio::main]` polls `main`'s own future on the main
//! thread, outside the worker threads where the connection task runs. A consume loop written
//! in `main` therefore takes every batch of deliveries from a worker thread, and hands every
//! batch of acks back to one: each hand-off wakes a sleeping thread. Spawned as a task, the
//! loop runs on the workers next to the connection task, and the hand-offs mostly stay on one
//! thread:
//!
//! ```no_run
//! use amqp_client::{BasicConsumeOptions, Connection, FieldTable};
//!
//! # async fn demo() -> Result<(), amqp_client::Error> {
//! let connection = Connection::open("amqp://guest:guest@localhost:5672/%2f").await?;
//! let channel = connection.create_channel().await?;
//! channel.basic_qos(100, false).await?;
//! let mut consumer = channel
//!     .basic_consume("task_queue", "", BasicConsumeOptions::default(), FieldTable::new())
//!     .await?;
//! let worker = tokio::spawn(async move {
//!     while let Some(delivery) = consumer.next().await {
//!         let delivery = delivery?;
//!         // ... the work ...
//!         delivery.ack().await?;
//!     }
//!     Ok::<(), amqp_client::Error>(())
//! });
//! worker.await.expect("the consumer task")?;
//! # Ok(())
//! # }
//! ```
//!
//! Measured against RabbitMQ 3.10 on two cores (200 k deliveries of 16 octets, prefetch
//! 1000, an ack per delivery; medians of 10 and 8 alternating runs in two windows,
//! docs/PERFORMANCE.md section 12):
//!
//! | the loop runs | msg/s | client CPU per message | context switches per message |
//! | --- | --- | --- | --- |
//! | in `main`'s future | 82 k, 88 k | 5.4 µs, 5.1 µs | 0.55, 0.54 |
//! | in a spawned task | 98 k, 103 k | 2.4 µs, 2.1 µs | 0.11, 0.10 |
//!
//! In a task it got 98–99% of what RabbitMQ delivered there to a consumer that costs next to
//! nothing. The CPU it saves matters most when the broker shares the machine: against
//! mini-broker, which delivers faster than the client consumes, the two ran alike (1.27 M and
//! 1.20 M msg/s). A current-thread runtime (`#[tokio::main(flavor = "current_thread")]`)
//! avoids the hand-offs too.
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
