//! The client benchmark on amqprs (comparison only). See src/lib.rs.
//!
//! amqprs hands publisher confirms to a ChannelCallback rather than to each publish; the
//! callback below keeps the highest confirmed sequence number (RabbitMQ confirms a channel's
//! publishes in order) and wakes the publisher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, QueueDeclareArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use bench_clients::{consume_in, report, start, Error, Options};
use tokio::sync::Notify;

#[derive(Default)]
struct Confirms {
    upto: AtomicU64,
    nacked: AtomicU64,
    changed: Notify,
}

struct ConfirmCallback(Arc<Confirms>);

#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.0.upto.fetch_max(ack.delivery_tag(), Ordering::AcqRel);
        self.0.changed.notify_one();
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.nacked.fetch_add(1, Ordering::AcqRel);
        self.0.upto.fetch_max(nack.delivery_tag(), Ordering::AcqRel);
        self.0.changed.notify_one();
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let options = Options::from_args("amqprs");
    let connection = Connection::open(&OpenConnectionArguments::new(
        &options.host,
        options.port,
        "guest",
        "guest",
    ))
    .await?;
    let channel = connection.open_channel(None).await?;
    channel
        .queue_declare(QueueDeclareArguments::new(&options.queue))
        .await?;
    channel
        .queue_purge(QueuePurgeArguments::new(&options.queue))
        .await?;
    let body = vec![0u8; options.size];
    let elapsed = match options.test.as_str() {
        "publish" => {
            let clock = start();
            for _ in 0..options.messages {
                channel
                    .basic_publish(
                        BasicProperties::default(),
                        body.clone(),
                        BasicPublishArguments::new("", &options.queue),
                    )
                    .await?;
            }
            let mut passive = QueueDeclareArguments::new(&options.queue);
            passive.passive(true);
            channel.queue_declare(passive).await?;
            clock.elapsed()
        }
        "confirm" => {
            let confirms = confirm_mode(&channel).await?;
            let clock = start();
            publish_confirmed(&channel, &confirms, &options, &body).await?;
            clock.elapsed()
        }
        _ => {
            let filler = connection.open_channel(None).await?;
            let confirms = confirm_mode(&filler).await?;
            publish_confirmed(&filler, &confirms, &options, &body).await?;
            channel
                .basic_qos(BasicQosArguments::new(0, options.qos, false))
                .await?;
            let clock = start();
            let (_tag, mut deliveries) = channel
                .basic_consume_rx(BasicConsumeArguments::new(&options.queue, ""))
                .await?;
            let messages = options.messages;
            let acking = channel.clone();
            let deliveries = consume_in(&options, async move {
                for _ in 0..messages {
                    let Some(message) = deliveries.recv().await else {
                        return Err("consumer ended".into());
                    };
                    let tag = message
                        .deliver
                        .ok_or("delivery without basic.deliver")?
                        .delivery_tag();
                    acking.basic_ack(BasicAckArguments::new(tag, false)).await?;
                }
                Ok(deliveries)
            })
            .await?;
            let span = clock.elapsed();
            drop(deliveries);
            span
        }
    };
    report("amqprs", &options, elapsed);
    channel
        .queue_purge(QueuePurgeArguments::new(&options.queue))
        .await?;
    connection.close().await?;
    Ok(())
}

async fn confirm_mode(channel: &Channel) -> Result<Arc<Confirms>, Error> {
    let confirms = Arc::new(Confirms::default());
    channel
        .register_callback(ConfirmCallback(confirms.clone()))
        .await?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await?;
    Ok(confirms)
}

async fn publish_confirmed(
    channel: &Channel,
    confirms: &Confirms,
    options: &Options,
    body: &[u8],
) -> Result<(), Error> {
    for published in 1..=options.messages {
        channel
            .basic_publish(
                BasicProperties::default(),
                body.to_vec(),
                BasicPublishArguments::new("", &options.queue),
            )
            .await?;
        while published - confirms.upto.load(Ordering::Acquire) >= options.window {
            confirms.changed.notified().await;
        }
    }
    while confirms.upto.load(Ordering::Acquire) < options.messages {
        confirms.changed.notified().await;
    }
    if confirms.nacked.load(Ordering::Acquire) > 0 {
        return Err("the broker nacked publishes".into());
    }
    Ok(())
}
