//! Messages as the application sees them: deliveries to a consumer, messages fetched with
//! basic.get, and mandatory messages returned unroutable.

use std::pin::Pin;
use std::task::{Context, Poll};

use amqp_codec::methods::{BasicDeliver, BasicReturn};
use amqp_codec::{BasicProperties, ChannelId, Command, Method, ShortString};
use bytes::Bytes;

use crate::channel::Channel;
use crate::core::Message;
use crate::error::Error;
use crate::queue;

/// What a consumer's queue carries: a delivery in the core's compact form (turned into a
/// [`Delivery`] when the application takes it), or the error that ended the consumer.
pub(crate) type DeliveryItem = Result<Message<BasicDeliver>, Error>;

/// A message delivered to a consumer (basic.deliver with its content), or fetched with
/// basic.get (basic.get-ok).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel it came on; acks must go back on the same channel.
    pub channel_id: ChannelId,
    /// The consumer it was delivered to (empty for basic.get).
    pub consumer_tag: ShortString,
    /// The channel-scoped number that acks, nacks and rejects refer to.
    pub delivery_tag: u64,
    /// Whether it was delivered before and not acked (the consumer died, or it was rejected).
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// The content properties (delivery_mode, correlation_id, reply_to, headers, ...).
    pub properties: BasicProperties,
    /// The body.
    pub body: Bytes,
    /// The channel to ack on, set when the delivery reaches the application.
    pub(crate) channel: Option<Channel>,
}

impl Delivery {
    /// A basic.deliver as the consumer hands it to the application.
    pub(crate) fn from_message(
        mut message: Message<BasicDeliver>,
        channel_id: ChannelId,
        channel: Option<Channel>,
    ) -> Delivery {
        let properties = message.take_properties();
        let deliver = message.method;
        Delivery {
            channel_id,
            consumer_tag: deliver.consumer_tag,
            delivery_tag: deliver.delivery_tag,
            redelivered: deliver.redelivered,
            exchange: deliver.exchange,
            routing_key: deliver.routing_key,
            properties,
            body: message.body,
            channel,
        }
    }

    /// A basic.get-ok with its content.
    pub(crate) fn from_get_ok(channel_id: ChannelId, command: Command) -> Option<Delivery> {
        let content = command.content?;
        match command.method {
            Method::BasicGetOk(get) => Some(Delivery {
                channel_id,
                consumer_tag: ShortString::default(),
                delivery_tag: get.delivery_tag,
                redelivered: get.redelivered,
                exchange: get.exchange,
                routing_key: get.routing_key,
                properties: content.header.properties,
                body: content.body,
                channel: None,
            }),
            _ => None,
        }
    }

    /// The channel the message came on: replies (RPC) and acks go through it.
    pub fn channel(&self) -> Result<&Channel, Error> {
        self.channel.as_ref().ok_or(Error::ChannelClosedLocally)
    }

    /// Acknowledges this message (basic.ack): the broker may forget it. Returns once the ack
    /// is queued for the connection, without waiting for the socket. Acks of consecutive
    /// deliveries go out together, as one `basic.ack multiple=true`, at most 1 ms (or 64
    /// acks) later, while more deliveries wait in the consumer. Otherwise (with prefetch 1,
    /// always) an ack goes out at once. Any other method on the channel goes out after the
    /// acks made before it.
    pub async fn ack(&self) -> Result<(), Error> {
        self.channel()?.basic_ack(self.delivery_tag, false).await
    }

    /// Negatively acknowledges it (basic.nack): requeued, or dropped / dead-lettered.
    pub async fn nack(&self, requeue: bool) -> Result<(), Error> {
        self.channel()?
            .basic_nack(self.delivery_tag, false, requeue)
            .await
    }

    /// Rejects it (basic.reject): requeued, or dropped / dead-lettered.
    pub async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.channel()?
            .basic_reject(self.delivery_tag, requeue)
            .await
    }
}

/// A message fetched with basic.get.
#[derive(Debug, Clone)]
pub struct GetMessage {
    /// The message.
    pub delivery: Delivery,
    /// How many messages are left in the queue.
    pub message_count: u32,
}

/// A mandatory message the broker could not route, sent back with basic.return.
#[derive(Debug, Clone)]
pub struct Returned {
    /// Why: 312 NO_ROUTE, usually.
    pub reply_code: u16,
    /// The reply text, e.g. `NO_ROUTE`.
    pub reply_text: ShortString,
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// The content properties.
    pub properties: BasicProperties,
    /// The body.
    pub body: Bytes,
}

impl Returned {
    pub(crate) fn from_message(mut message: Message<BasicReturn>) -> Returned {
        let properties = message.take_properties();
        let ret = message.method;
        Returned {
            reply_code: ret.reply_code,
            reply_text: ret.reply_text,
            exchange: ret.exchange,
            routing_key: ret.routing_key,
            properties,
            body: message.body,
        }
    }
}

/// The deliveries of one consumer (basic.consume), as a [`futures_core::Stream`].
///
/// The buffer is bounded: when the application falls behind, the connection stops reading
/// from the socket until there is room again (and TCP slows the broker down), instead of
/// holding an unbounded backlog in memory. With `basic_qos` the broker never sends more than
/// the prefetch count anyway.
///
/// The stream ends with `None` after [`Channel::basic_cancel`]; when the server cancels the
/// consumer (the queue was deleted) or the channel or connection closes, the last item is the
/// `Err` saying why.
///
/// On a multi-thread runtime, a consume loop spawned as a task cost 41–44% of the CPU per
/// message of one in `#[tokio::main]`'s own future, against RabbitMQ: see the crate docs,
/// "Where the consume loop runs".
pub struct Consumer {
    channel_id: ChannelId,
    tag: ShortString,
    receiver: queue::Receiver<DeliveryItem>,
    channel: Option<Channel>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("channel", &self.channel_id)
            .field("tag", &self.tag)
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(
        channel_id: ChannelId,
        tag: ShortString,
        receiver: queue::Receiver<DeliveryItem>,
    ) -> Consumer {
        Consumer {
            channel_id,
            tag,
            receiver,
            channel: None,
        }
    }

    pub(crate) fn attach(mut self, channel: Channel) -> Consumer {
        self.channel = Some(channel);
        self
    }

    /// The consumer tag (server-generated when none was given).
    pub fn tag(&self) -> &ShortString {
        &self.tag
    }

    /// The next delivery; `None` once the consumer is cancelled.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery, Error>>> {
        let item = std::task::ready!(self.receiver.poll_recv(cx));
        Poll::Ready(item.map(|result| {
            result.map(|message| {
                Delivery::from_message(message, self.channel_id, self.channel.clone())
            })
        }))
    }
}

impl futures_core::Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx)
    }
}
