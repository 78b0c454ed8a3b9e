//! Tutorial 1, "Hello World!": the producer. Sends one message to the queue `hello`.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive
//! terminal 2:  cargo run -p tutorial-bins --bin send
//!               [x] Sent 'Hello World!'
//! ```
//! Add `-- --uri amqp://...` (or set `AMQP_URL`) for a broker other than localhost.
//!
//! AMQP methods: connection.open, channel.open, queue.declare `hello`, basic.publish to
//! the default exchange with routing key `hello`, connection.close.

use amqp_client::{BasicProperties, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, BrokerArgs};

/// Sends 'Hello World!' to the queue `hello`.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(send)
}

async fn send(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())
        .await?;

    channel
        .basic_publish(
            "",
            "hello",
            BasicProperties::default(),
            "Hello World!",
            false,
        )
        .await?;
    say!(" [x] Sent 'Hello World!'");

    connection.close().await?;
    Ok(())
}
