//! The client benchmark on amqp-client (this project's client). See src/lib.rs.

use std::collections::VecDeque;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, FieldTable, QueueDeclareOptions,
};
use bench_clients::{consume_in, report, start, Error, Options};
use bytes::Bytes;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let options = Options::from_args("ours");
    let connection = Connection::open(&options.uri()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            &options.queue,
            QueueDeclareOptions::default(),
            FieldTable::new(),
        )
        .await?;
    channel.queue_purge(&options.queue).await?;
    let body = Bytes::from(vec![0u8; options.size]);
    let elapsed = match options.test.as_str() {
        "publish" => {
            let clock = start();
            for _ in 0..options.messages {
                channel
                    .basic_publish(
                        "",
                        &options.queue,
                        BasicProperties::default(),
                        body.clone(),
                        false,
                    )
                    .await?;
            }
            round_trip(&channel, &options.queue).await?;
            clock.elapsed()
        }
        "confirm" => {
            channel.confirm_select().await?;
            let clock = start();
            publish_confirmed(&channel, &options, &body).await?;
            clock.elapsed()
        }
        _ => {
            let filler = connection.create_channel().await?;
            filler.confirm_select().await?;
            publish_confirmed(&filler, &options, &body).await?;
            channel.basic_qos(options.qos, false).await?;
            let clock = start();
            let mut consumer = channel
                .basic_consume(
                    &options.queue,
                    "",
                    BasicConsumeOptions::default(),
                    FieldTable::new(),
                )
                .await?;
            let messages = options.messages;
            let consumer = consume_in(&options, async move {
                for _ in 0..messages {
                    let Some(delivery) = consumer.next().await else {
                        return Err("consumer ended".into());
                    };
                    delivery?.ack().await?;
                }
                Ok(consumer)
            })
            .await?;
            let span = clock.elapsed();
            drop(consumer);
            span
        }
    };
    report("amqp-client", &options, elapsed);
    channel.queue_purge(&options.queue).await?;
    connection.close().await?;
    Ok(())
}

async fn publish_confirmed(
    channel: &Channel,
    options: &Options,
    body: &Bytes,
) -> Result<(), Error> {
    let mut outstanding = VecDeque::new();
    for _ in 0..options.messages {
        let confirm = channel
            .basic_publish(
                "",
                &options.queue,
                BasicProperties::default(),
                body.clone(),
                false,
            )
            .await?;
        outstanding.push_back(confirm);
        if outstanding.len() as u64 >= options.window {
            if let Some(oldest) = outstanding.pop_front() {
                oldest.await?;
            }
        }
    }
    for confirm in outstanding {
        confirm.await?;
    }
    Ok(())
}

/// A synchronous call after the publishes: its reply comes after the broker handled them.
async fn round_trip(channel: &Channel, queue: &str) -> Result<(), Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, passive, FieldTable::new())
        .await?;
    Ok(())
}
