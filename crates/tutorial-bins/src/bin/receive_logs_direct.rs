//! Tutorial 4, Routing: a subscriber. Prints the messages sent to the direct exchange
//! `direct_logs` with one of the severities it is given.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs_direct -- warning error > logs_from_rabbit.log
//! terminal 2:  cargo run -p tutorial-bins --bin receive_logs_direct -- info warning error
//!               [*] Waiting for logs. To exit press CTRL+C
//!               [x] error:Run. Run. Or it will explode.
//! terminal 3:  cargo run -p tutorial-bins --bin emit_log_direct -- error "Run. Run. Or it will explode."
//! ```
//!
//! AMQP methods: exchange.declare `direct_logs` direct, queue.declare exclusive with a
//! server-chosen name, one queue.bind per severity (the binding key), basic.consume with
//! no_ack.

use amqp_client::{BasicConsumeOptions, ExchangeDeclareOptions, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Prints the log messages of the given severities.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The severities to receive: info, warning, error, ...
    #[arg(required = true)]
    severities: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(receive_logs_direct)
}

async fn receive_logs_direct(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .exchange_declare(
            "direct_logs",
            "direct",
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
    for severity in &args.severities {
        channel
            .queue_bind(&queue_name, "direct_logs", severity, FieldTable::new())
            .await?;
    }

    say!(" [*] Waiting for logs. To exit press CTRL+C");

    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(&queue_name, "", auto_ack, FieldTable::new())
        .await?;
    tutorial_bins::start_consuming(consumer, |delivery| async move {
        say!(" [x] {}:{}", delivery.routing_key, text(&delivery.body));
        Ok(())
    })
    .await
}
