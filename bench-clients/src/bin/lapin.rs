//! The client benchmark on lapin (comparison only). See src/lib.rs.

use std::collections::VecDeque;

use bench_clients::{consume_in, report, start, Error, Options};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let options = Options::from_args("lapin");
    let connection = Connection::connect(&options.uri(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            options.queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_purge(options.queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    let body = vec![0u8; options.size];
    let elapsed = match options.test.as_str() {
        "publish" => {
            let clock = start();
            for _ in 0..options.messages {
                // Not in confirm mode: the returned confirm is ready at once, so dropping it
                // waits for nothing.
                let _not_awaited = channel
                    .basic_publish(
                        "".into(),
                        options.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await?;
            }
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(
                    options.queue.as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            clock.elapsed()
        }
        "confirm" => {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let clock = start();
            publish_confirmed(&channel, &options, &body).await?;
            clock.elapsed()
        }
        _ => {
            let filler = connection.create_channel().await?;
            filler
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            publish_confirmed(&filler, &options, &body).await?;
            channel
                .basic_qos(options.qos, BasicQosOptions::default())
                .await?;
            let clock = start();
            let mut consumer = channel
                .basic_consume(
                    options.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let messages = options.messages;
            let consumer = consume_in(&options, async move {
                for _ in 0..messages {
                    let Some(delivery) = consumer.next().await else {
                        return Err("consumer ended".into());
                    };
                    delivery?.ack(BasicAckOptions::default()).await?;
                }
                Ok(consumer)
            })
            .await?;
            let span = clock.elapsed();
            drop(consumer);
            span
        }
    };
    report("lapin", &options, elapsed);
    channel
        .queue_purge(options.queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}

async fn publish_confirmed(channel: &Channel, options: &Options, body: &[u8]) -> Result<(), Error> {
    let mut outstanding = VecDeque::new();
    for _ in 0..options.messages {
        let confirm = channel
            .basic_publish(
                "".into(),
                options.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
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
