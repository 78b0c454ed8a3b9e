//! Channels: where every AMQP operation happens (spec 2.2.5). A [`Channel`] is a cheap,
//! cloneable handle; the connection task does the work.
//!
//! Synchronous methods (queue.declare, basic.qos, ...) wait for their reply. basic.publish
//! and the acks only wait for room in the request queue, never for the socket or the broker;
//! in confirm mode, the publish hands back a [`PublishConfirm`] to await separately.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use amqp_codec::methods::*;
use amqp_codec::{BasicProperties, ChannelId, Command, FieldTable, Method, ShortString};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{
    Acknowledgement, Confirmation, Connection, Request, Shared, DEFAULT_CONSUMER_BUFFER,
};
use crate::consumer::{Consumer, Delivery, GetMessage, Returned};
use crate::error::Error;

/// Flags of exchange.declare (spec 1.6.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists (404 if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete when the last binding is removed.
    pub auto_delete: bool,
    /// Only other exchanges may publish to it.
    pub internal: bool,
}

/// Flags of queue.declare (spec 1.7.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (404 if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Used by this connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when the last consumer goes away.
    pub auto_delete: bool,
}

/// Flags of basic.consume (spec 1.8.3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BasicConsumeOptions {
    /// The broker considers messages acked as soon as they are sent.
    pub no_ack: bool,
    /// No other consumer may consume from the queue.
    pub exclusive: bool,
    /// Do not deliver messages published on this connection (RabbitMQ ignores it).
    pub no_local: bool,
}

/// What queue.declare answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredQueue {
    /// The queue's name; server-generated (`amq.gen-...`) when declared with an empty name.
    pub name: ShortString,
    /// Messages ready for delivery.
    pub message_count: u32,
    /// Active consumers.
    pub consumer_count: u32,
}

/// What a channel's handles share with each other and with the connection task.
pub(crate) struct ChannelShared {
    confirm_mode: AtomicBool,
    blocked_publish_timeout: Mutex<Option<Duration>>,
    /// Why the channel ended, once it has (set by the connection task): every later request
    /// fails at once with it, publishes and acks included, which get no reply to fail.
    closed: OnceLock<Error>,
}

impl ChannelShared {
    pub(crate) fn new() -> Arc<ChannelShared> {
        Arc::new(ChannelShared {
            confirm_mode: AtomicBool::new(false),
            blocked_publish_timeout: Mutex::new(None),
            closed: OnceLock::new(),
        })
    }

    /// Records why the channel ended; the first reason stays.
    pub(crate) fn set_closed(&self, reason: Error) {
        let _ = self.closed.set(reason);
    }
}

/// A channel on a [`Connection`]. Clones share the channel.
///
/// A clone is one reference count: every [`Delivery`] carries one, to ack through.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelHandle>,
}

/// What a [`Channel`] handle holds.
struct ChannelHandle {
    id: ChannelId,
    connection: Connection,
    shared: Arc<ChannelShared>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.inner.id)
            .finish()
    }
}

/// The broker's answer to one publish in confirm mode: await it for the [`Confirmation`].
pub struct PublishConfirm {
    inner: Option<oneshot::Receiver<Result<Confirmation, Error>>>,
    connection: Arc<Shared>,
}

impl Future for PublishConfirm {
    type Output = Result<Confirmation, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            None => Poll::Ready(Ok(Confirmation::NotRequested)),
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(this.connection.closed_error()))),
        }
    }
}

impl Channel {
    pub(crate) fn new(
        id: ChannelId,
        connection: Connection,
        shared: Arc<ChannelShared>,
    ) -> Channel {
        Channel {
            inner: Arc::new(ChannelHandle {
                id,
                connection,
                shared,
            }),
        }
    }

    /// The channel number.
    pub fn id(&self) -> ChannelId {
        self.inner.id
    }

    /// The connection this channel belongs to.
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }

    /// Fails with why the channel ended, if it has.
    fn check_open(&self) -> Result<(), Error> {
        match self.inner.shared.closed.get() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    async fn call(&self, method: Method) -> Result<Command, Error> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .connection
            .send(Request::Call {
                channel: self.inner.id,
                method: Box::new(method),
                reply,
            })
            .await?;
        let result = rx
            .await
            .map_err(|_| self.inner.connection.shared.closed_error())?;
        if let Err(err @ Error::ChannelClosed(_)) = &result {
            // The task records it too; this makes it visible before the call returns.
            self.inner.shared.set_closed(err.clone());
        }
        result
    }

    /// Sends an ack, nack or reject: it waits for room in the request queue, never for the
    /// socket or a reply.
    async fn acknowledge(&self, ack: Acknowledgement) -> Result<(), Error> {
        self.check_open()?;
        self.inner
            .connection
            .send(Request::Acknowledge {
                channel: self.inner.id,
                ack,
            })
            .await
    }

    // ---- exchanges ----------------------------------------------------------------------

    /// Declares an exchange of `kind` ("direct", "fanout", "topic", "headers", ...).
    pub async fn exchange_declare(
        &self,
        exchange: &str,
        kind: &str,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            ExchangeDeclare {
                exchange: exchange.into(),
                kind: kind.into(),
                passive: options.passive,
                durable: options.durable,
                auto_delete: options.auto_delete,
                internal: options.internal,
                no_wait: false,
                arguments,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Deletes an exchange; with `if_unused`, only when it has no bindings (else 406).
    pub async fn exchange_delete(&self, exchange: &str, if_unused: bool) -> Result<(), Error> {
        self.call(
            ExchangeDelete {
                exchange: exchange.into(),
                if_unused,
                no_wait: false,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Binds exchange `destination` to `source` (RabbitMQ's exchange-to-exchange bindings).
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            ExchangeBind {
                destination: destination.into(),
                source: source.into(),
                routing_key: routing_key.into(),
                no_wait: false,
                arguments,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Removes an exchange-to-exchange binding.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            ExchangeUnbind {
                destination: destination.into(),
                source: source.into(),
                routing_key: routing_key.into(),
                no_wait: false,
                arguments,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    // ---- queues -------------------------------------------------------------------------

    /// Declares a queue; an empty name asks the server to make one up (`amq.gen-...`).
    /// Redeclaring an existing queue with other flags or arguments closes the channel with
    /// 406 PRECONDITION_FAILED.
    pub async fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<DeclaredQueue, Error> {
        let reply = self
            .call(
                QueueDeclare {
                    queue: queue.into(),
                    passive: options.passive,
                    durable: options.durable,
                    exclusive: options.exclusive,
                    auto_delete: options.auto_delete,
                    no_wait: false,
                    arguments,
                }
                .into(),
            )
            .await?;
        match reply.method {
            Method::QueueDeclareOk(ok) => Ok(DeclaredQueue {
                name: ok.queue,
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Binds a queue to an exchange with a routing key (or header arguments).
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            QueueBind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                no_wait: false,
                arguments,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Removes a queue binding.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            QueueUnbind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                arguments,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Removes every ready message; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        let reply = self
            .call(
                QueuePurge {
                    queue: queue.into(),
                    no_wait: false,
                }
                .into(),
            )
            .await?;
        match reply.method {
            Method::QueuePurgeOk(ok) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a queue; returns how many messages went with it.
    pub async fn queue_delete(
        &self,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, Error> {
        let reply = self
            .call(
                QueueDelete {
                    queue: queue.into(),
                    if_unused,
                    if_empty,
                    no_wait: false,
                }
                .into(),
            )
            .await?;
        match reply.method {
            Method::QueueDeleteOk(ok) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    // ---- basic --------------------------------------------------------------------------

    /// Limits unacked deliveries (basic.qos): per consumer, or per channel with `global`
    /// (RabbitMQ's reinterpretation; quorum queues refuse `global`).
    pub async fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.call(
            BasicQos {
                prefetch_size: 0,
                prefetch_count,
                global,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Publishes a message. Returns once the publish is queued for the socket, without
    /// waiting for the broker; in confirm mode, await the returned [`PublishConfirm`] for the
    /// broker's ack or nack. While the connection is blocked (connection.blocked), waits
    /// until it is unblocked (or the timeout set with
    /// [`set_blocked_publish_timeout`](Self::set_blocked_publish_timeout) passes).
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: impl Into<Bytes>,
        mandatory: bool,
    ) -> Result<PublishConfirm, Error> {
        let address = (exchange.into(), routing_key.into());
        self.publish(address, properties, body.into(), mandatory)
            .await
    }

    /// [`basic_publish`](Self::basic_publish) to an exchange and routing key made into
    /// [`ShortString`]s once: each publish then takes a reference to them instead of copying
    /// them into a new allocation (a help when publishing many messages to one queue).
    pub async fn basic_publish_to(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        properties: BasicProperties,
        body: impl Into<Bytes>,
        mandatory: bool,
    ) -> Result<PublishConfirm, Error> {
        let address = (exchange.clone(), routing_key.clone());
        self.publish(address, properties, body.into(), mandatory)
            .await
    }

    async fn publish(
        &self,
        (exchange, routing_key): (ShortString, ShortString),
        properties: BasicProperties,
        body: Bytes,
        mandatory: bool,
    ) -> Result<PublishConfirm, Error> {
        self.check_open()?;
        let properties = boxed_properties(properties);
        self.wait_unblocked().await?;
        let (confirm, rx) = if self.inner.shared.confirm_mode.load(Ordering::Relaxed) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.inner
            .connection
            .send(Request::Publish {
                channel: self.inner.id,
                exchange,
                routing_key,
                mandatory,
                properties,
                body,
                confirm,
            })
            .await?;
        Ok(PublishConfirm {
            inner: rx,
            connection: self.inner.connection.shared.clone(),
        })
    }

    /// How long [`basic_publish`](Self::basic_publish) waits while the connection is blocked
    /// before failing with [`Error::Timeout`]; None (the default) waits as long as it takes.
    pub fn set_blocked_publish_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut slot) = self.inner.shared.blocked_publish_timeout.lock() {
            *slot = timeout;
        }
    }

    async fn wait_unblocked(&self) -> Result<(), Error> {
        if !self.inner.connection.is_blocked() {
            return Ok(());
        }
        let mut watch = self.inner.connection.blocked_watch();
        let timeout = self
            .inner
            .shared
            .blocked_publish_timeout
            .lock()
            .ok()
            .and_then(|t| *t);
        let unblocked = async {
            while *watch.borrow_and_update() {
                if watch.changed().await.is_err() {
                    return Err(self.inner.connection.shared.closed_error());
                }
            }
            Ok(())
        };
        match timeout {
            None => unblocked.await,
            Some(timeout) => tokio::time::timeout(timeout, unblocked)
                .await
                .unwrap_or(Err(Error::Timeout(
                    "publishing while the connection is blocked",
                ))),
        }
    }

    /// Starts a consumer on `queue` (basic.consume); an empty tag lets the server choose one.
    pub async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: BasicConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        self.basic_consume_with_buffer(
            queue,
            consumer_tag,
            options,
            arguments,
            DEFAULT_CONSUMER_BUFFER,
        )
        .await
    }

    /// [`basic_consume`](Self::basic_consume) with a chosen delivery buffer size.
    pub async fn basic_consume_with_buffer(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: BasicConsumeOptions,
        arguments: FieldTable,
        buffer: usize,
    ) -> Result<Consumer, Error> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        let method = BasicConsume {
            queue: queue.into(),
            consumer_tag: consumer_tag.into(),
            no_local: options.no_local,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            no_wait: false,
            arguments,
        };
        self.inner
            .connection
            .send(Request::Consume {
                channel: self.inner.id,
                method: Box::new(method.into()),
                buffer,
                reply,
            })
            .await?;
        let consumer = rx
            .await
            .map_err(|_| self.inner.connection.shared.closed_error())??;
        Ok(consumer.attach(self.clone()))
    }

    /// Cancels a consumer (basic.cancel); its stream ends once the broker confirms.
    pub async fn basic_cancel(&self, consumer_tag: &str) -> Result<(), Error> {
        self.call(
            BasicCancel {
                consumer_tag: consumer_tag.into(),
                no_wait: false,
            }
            .into(),
        )
        .await
        .map(drop)
    }

    /// Fetches one message (basic.get); None when the queue is empty.
    pub async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<GetMessage>, Error> {
        let reply = self
            .call(
                BasicGet {
                    queue: queue.into(),
                    no_ack,
                }
                .into(),
            )
            .await?;
        let message_count = match &reply.method {
            Method::BasicGetOk(ok) => ok.message_count,
            Method::BasicGetEmpty(_) => return Ok(None),
            other => return Err(unexpected(other)),
        };
        let mut delivery = Delivery::from_get_ok(self.inner.id, reply)
            .ok_or_else(|| Error::UnexpectedFrame("basic.get-ok without content".into()))?;
        delivery.channel = Some(self.clone());
        Ok(Some(GetMessage {
            delivery,
            message_count,
        }))
    }

    /// Acknowledges a delivery (or every one up to it, with `multiple`).
    pub async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.acknowledge(Acknowledgement::Ack(BasicAck {
            delivery_tag,
            multiple,
        }))
        .await
    }

    /// Negatively acknowledges deliveries (RabbitMQ's basic.nack): requeue or drop.
    pub async fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        self.acknowledge(Acknowledgement::Nack(BasicNack {
            delivery_tag,
            multiple,
            requeue,
        }))
        .await
    }

    /// Rejects one delivery: requeue or drop.
    pub async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.acknowledge(Acknowledgement::Reject(BasicReject {
            delivery_tag,
            requeue,
        }))
        .await
    }

    /// Redelivers every unacked message of this channel (basic.recover).
    pub async fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.call(BasicRecover { requeue }.into()).await.map(drop)
    }

    /// Receives the mandatory messages the broker returns as unroutable (basic.return), for
    /// publishes on this channel. A return arrives before the publish's confirm.
    pub async fn returns(&self, buffer: usize) -> Result<mpsc::Receiver<Returned>, Error> {
        self.check_open()?;
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        self.inner
            .connection
            .send(Request::Returns {
                channel: self.inner.id,
                sender,
            })
            .await?;
        Ok(receiver)
    }

    // ---- confirms and transactions ------------------------------------------------------

    /// Puts the channel in confirm mode (confirm.select): every publish is acked or nacked.
    pub async fn confirm_select(&self) -> Result<(), Error> {
        self.inner
            .shared
            .confirm_mode
            .store(true, Ordering::Relaxed);
        self.call(ConfirmSelect { nowait: false }.into())
            .await
            .map(drop)
    }

    /// Waits until every publish so far is confirmed; true if all were acked, false if any
    /// was nacked.
    pub async fn wait_for_confirms(&self) -> Result<bool, Error> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .connection
            .send(Request::WaitForConfirms {
                channel: self.inner.id,
                reply,
            })
            .await?;
        rx.await
            .map_err(|_| self.inner.connection.shared.closed_error())?
    }

    /// Starts transactions on this channel (tx.select).
    pub async fn tx_select(&self) -> Result<(), Error> {
        self.call(TxSelect.into()).await.map(drop)
    }

    /// Commits the current transaction (tx.commit).
    pub async fn tx_commit(&self) -> Result<(), Error> {
        self.call(TxCommit.into()).await.map(drop)
    }

    /// Abandons the current transaction (tx.rollback).
    pub async fn tx_rollback(&self) -> Result<(), Error> {
        self.call(TxRollback.into()).await.map(drop)
    }

    /// Closes the channel (channel.close 200, waiting for close-ok). Closing it again is a
    /// no-op; a channel the server closed answers with the server's reason.
    pub async fn close(&self) -> Result<(), Error> {
        match self.inner.shared.closed.get() {
            Some(Error::ChannelClosedLocally) => return Ok(()),
            Some(reason) => return Err(reason.clone()),
            None => {}
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .connection
            .send(Request::CloseChannel {
                channel: self.inner.id,
                reply,
            })
            .await?;
        rx.await
            .map_err(|_| self.inner.connection.shared.closed_error())??;
        self.inner.shared.set_closed(Error::ChannelClosedLocally);
        Ok(())
    }
}

/// A publish's properties as the request carries them: boxed, and only when there are any.
fn boxed_properties(properties: BasicProperties) -> Option<Box<BasicProperties>> {
    if properties.flags() == 0 {
        None
    } else {
        Some(Box::new(properties))
    }
}

fn unexpected(method: &Method) -> Error {
    Error::UnexpectedFrame(format!("unexpected reply {}", method.name()))
}
