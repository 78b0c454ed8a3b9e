//! Tutorial 7, Publisher confirms: three ways to know the broker has each message. Publishes
//! N messages (default 50,000) three times and says how long each way took.
//!
//! ```text
//! terminal 1:  cargo run --release -p tutorial-bins --bin publisher_confirms
//!              Published 50,000 messages individually in 4,112 ms
//!              Published 50,000 messages in batch in 412 ms
//!              Published 50,000 messages and handled confirms asynchronously in 301 ms
//! ```
//! `--messages 1000` for a quicker run.
//!
//! - individually: publish, wait for its confirm, publish the next. Simple, slow: one round
//!   trip per message.
//! - in batch: publish 100, wait for all of their confirms. Fast, but a nack does not say
//!   which message of the batch failed.
//! - asynchronously: publish everything; a separate task takes the confirms as they come,
//!   knowing which message each one is for.
//!
//! AMQP methods: queue.declare (a fresh, auto-delete queue per strategy), confirm.select,
//! basic.publish; the broker answers each publish with basic.ack (or basic.nack), by
//! sequence number, sometimes several at once (multiple); queue.delete at the end.

use std::time::{Duration, Instant};

use amqp_client::{
    BasicProperties, Channel, Confirmation, FieldTable, PublishConfirm, QueueDeclareOptions,
};
use tokio::sync::mpsc;
use tutorial_bins::{say, thousands, BrokerArgs, Failure};

/// Compares three ways of waiting for publisher confirms.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// How many messages each strategy publishes.
    #[arg(long, default_value_t = 50_000)]
    messages: u32,
}

/// How many messages the batch strategy publishes between waits.
const BATCH_SIZE: u32 = 100;
/// How long a wait for confirms may take, as the Java tutorial's `waitForConfirmsOrDie(5_000)`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the asynchronous strategy may wait for the last confirms.
const ALL_CONFIRMED_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    tutorial_bins::run(publisher_confirms)
}

async fn publisher_confirms(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let count = args.messages;

    let (channel, queue) = confirmed_channel(&connection).await?;
    let start = Instant::now();
    for i in 0..count {
        let confirm = channel
            .basic_publish("", &queue, BasicProperties::default(), i.to_string(), false)
            .await?;
        wait_for(confirm, i).await?;
    }
    let elapsed = start.elapsed();
    say!(
        "Published {} messages individually in {} ms",
        thousands(count.into()),
        thousands(elapsed.as_millis())
    );
    channel.queue_delete(&queue, false, false).await?;

    let (channel, queue) = confirmed_channel(&connection).await?;
    let start = Instant::now();
    let mut outstanding = 0;
    for i in 0..count {
        channel
            .basic_publish("", &queue, BasicProperties::default(), i.to_string(), false)
            .await?;
        outstanding += 1;
        if outstanding == BATCH_SIZE {
            wait_for_batch(&channel).await?;
            outstanding = 0;
        }
    }
    if outstanding > 0 {
        wait_for_batch(&channel).await?;
    }
    let elapsed = start.elapsed();
    say!(
        "Published {} messages in batch in {} ms",
        thousands(count.into()),
        thousands(elapsed.as_millis())
    );
    channel.queue_delete(&queue, false, false).await?;

    let (channel, queue) = confirmed_channel(&connection).await?;
    let start = Instant::now();
    let (outstanding, confirms) = mpsc::unbounded_channel();
    let handler = tokio::spawn(handle_confirms(confirms));
    for i in 0..count {
        let confirm = channel
            .basic_publish("", &queue, BasicProperties::default(), i.to_string(), false)
            .await?;
        // The handler outlives the loop unless it failed; its result says why.
        let _ = outstanding.send((i, confirm));
    }
    drop(outstanding);
    match tokio::time::timeout(ALL_CONFIRMED_TIMEOUT, handler).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join_error)) => return Err(Failure::new(format!("confirm handler: {join_error}"))),
        Err(_) => {
            return Err(Failure::new(format!(
                "all messages could not be confirmed in {} seconds",
                ALL_CONFIRMED_TIMEOUT.as_secs()
            )))
        }
    }
    let elapsed = start.elapsed();
    say!(
        "Published {} messages and handled confirms asynchronously in {} ms",
        thousands(count.into()),
        thousands(elapsed.as_millis())
    );
    channel.queue_delete(&queue, false, false).await?;

    connection.close().await?;
    Ok(())
}

/// A new channel in confirm mode, and a new queue to publish to.
async fn confirmed_channel(
    connection: &amqp_client::Connection,
) -> tutorial_bins::Result<(Channel, String)> {
    let channel = connection.create_channel().await?;
    let queue = tutorial_bins::unique_id();
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(&queue, auto_delete, FieldTable::new())
        .await?;
    channel.confirm_select().await?;
    Ok((channel, queue))
}

/// Waits for one message's confirm: an ack, within the timeout.
async fn wait_for(confirm: PublishConfirm, message: u32) -> tutorial_bins::Result<()> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack | Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Nack)) => Err(Failure::new(format!(
            "message {message} was nack-ed by the broker"
        ))),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(Failure::new(format!(
            "message {message} not confirmed within {} s",
            CONFIRM_TIMEOUT.as_secs()
        ))),
    }
}

/// Waits for the confirms of everything published on the channel so far.
async fn wait_for_batch(channel: &Channel) -> tutorial_bins::Result<()> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, channel.wait_for_confirms()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Failure::new("a message of the batch was nack-ed")),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(Failure::new(format!(
            "batch not confirmed within {} s",
            CONFIRM_TIMEOUT.as_secs()
        ))),
    }
}

/// Takes the confirms of the asynchronous strategy as they come; says which message a nack
/// was for.
async fn handle_confirms(
    mut outstanding: mpsc::UnboundedReceiver<(u32, PublishConfirm)>,
) -> tutorial_bins::Result<()> {
    while let Some((message, confirm)) = outstanding.recv().await {
        if confirm.await? == Confirmation::Nack {
            say!("Message with body {message} has been nack-ed");
        }
    }
    Ok(())
}
