//! Tutorial 2, Work queues: the producer. Sends a task (its words; one second of work per
//! `.`) to the durable queue `task_queue`, as a persistent message.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin worker
//! terminal 2:  cargo run -p tutorial-bins --bin worker
//! terminal 3:  cargo run -p tutorial-bins --bin new_task -- First message.
//!               [x] Sent First message.
//!              cargo run -p tutorial-bins --bin new_task -- Second message..
//!              cargo run -p tutorial-bins --bin new_task -- Third message...
//!              cargo run -p tutorial-bins --bin new_task -- Fourth message....
//!              cargo run -p tutorial-bins --bin new_task -- Fifth message.....
//! ```
//! The workers take the tasks in turns (round-robin). Options (`--uri amqp://...`) go
//! before the words.
//!
//! AMQP methods: queue.declare `task_queue` durable (it survives a broker restart),
//! basic.publish with delivery_mode 2 (persistent: the message survives it too).

use amqp_client::{BasicProperties, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, BrokerArgs};

/// Sends a task to the queue `task_queue`.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The task; each '.' is one second of work. Default: "Hello World!".
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(new_task)
}

async fn new_task(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await?;

    let message = match args.words.join(" ") {
        words if words.is_empty() => "Hello World!".to_owned(),
        words => words,
    };
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    channel
        .basic_publish("", "task_queue", persistent, message.clone(), false)
        .await?;
    say!(" [x] Sent {message}");

    connection.close().await?;
    Ok(())
}
