//! Tutorial 3, Publish/Subscribe: a subscriber. Prints every message sent to the fanout
//! exchange `logs` from the moment it starts.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs
//!               [*] Waiting for logs. To exit press CTRL+C
//!               [x] info: Hello World!
//! terminal 2:  cargo run -p tutorial-bins --bin receive_logs > logs_from_rabbit.log
//! terminal 3:  cargo run -p tutorial-bins --bin emit_log
//! ```
//!
//! AMQP methods: exchange.declare `logs` fanout, queue.declare with an empty name and
//! exclusive (the broker names it `amq.gen-...` and deletes it when this program leaves),
//! queue.bind to `logs`, basic.consume with no_ack.

use amqp_client::{BasicConsumeOptions, ExchangeDeclareOptions, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Prints the log messages sent to the exchange `logs`.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(receive_logs)
}

async fn receive_logs(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .exchange_declare(
            "logs",
            "fanout",
            ExchangeDeclareOptions::default(),
            FieldTable::new(),
        )
        .await?;

    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("", exclusive, FieldTable::new())
        .await?;
    let queue_name = queue.name.to_string();
    channel
        .queue_bind(&queue_name, "logs", "", FieldTable::new())
        .await?;

    say!(" [*] Waiting for logs. To exit press CTRL+C");

    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(&queue_name, "", auto_ack, FieldTable::new())
        .await?;
    tutorial_bins::start_consuming(consumer, |delivery| async move {
        say!(" [x] {}", text(&delivery.body));
        Ok(())
    })
    .await
}
