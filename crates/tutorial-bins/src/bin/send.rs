//! Tutorial 1, "Hello World!": the producer. Sends one message to the queue `hello`.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive
//! terminal 2:  cargo run -p tutorial-bins --bin send
//!               [x] Sent 'Hello World!'
//! ```
//! Add `-- --uri amqp://...` (or set `AMQP_URL`) for a broker other than localhost, and
//! `--trace` to see every frame on stderr.
//!
//! `--durable` makes the mistake of tutorial 2's "Message durability": declaring `hello`
//! durable once it exists non-durable. The broker refuses to change a queue and closes the
//! channel, and `send` says so and exits with 1:
//!
//! ```text
//! cargo run -p tutorial-bins --bin send
//! cargo run -p tutorial-bins --bin send -- --durable
//! error: channel closed by the server: 406: PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'hello' in vhost '/': received 'true' but current is 'false' (after queue.declare)
//! ```
//! The tutorial's fix is a new queue, `task_queue`, durable from the start.
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
    /// Declare `hello` durable: fails with 406 PRECONDITION_FAILED when `hello` exists
    /// non-durable (the tutorial's mistake).
    #[arg(long)]
    durable: bool,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(send)
}

async fn send(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    let options = QueueDeclareOptions {
        durable: args.durable,
        ..Default::default()
    };
    channel
        .queue_declare("hello", options, FieldTable::new())
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
