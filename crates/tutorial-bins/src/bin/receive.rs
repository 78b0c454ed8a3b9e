//! Tutorial 1, "Hello World!": the consumer. Prints every message of the queue `hello`.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive
//!               [*] Waiting for messages. To exit press CTRL+C
//!               [x] Received 'Hello World!'
//! terminal 2:  cargo run -p tutorial-bins --bin send
//! ```
//! Add `-- --uri amqp://...` (or set `AMQP_URL`) for a broker other than localhost.
//!
//! AMQP methods: queue.declare `hello` (idempotent: whichever program starts first creates
//! it), basic.consume with no_ack (automatic acknowledgement), then basic.deliver for
//! each message.

use amqp_client::{BasicConsumeOptions, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Prints the messages sent to the queue `hello`.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(receive)
}

async fn receive(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())
        .await?;

    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume("hello", "", auto_ack, FieldTable::new())
        .await?;

    say!(" [*] Waiting for messages. To exit press CTRL+C");
    tutorial_bins::start_consuming(consumer, |delivery| async move {
        say!(" [x] Received '{}'", text(&delivery.body));
        Ok(())
    })
    .await
}
