//! Tutorial 5, Topics: a subscriber. Prints the messages sent to the topic exchange
//! `topic_logs` whose routing key matches one of its patterns (`*` is exactly one word,
//! `#` zero or more).
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs_topic -- "kern.*" "*.critical"
//!               [*] Waiting for logs. To exit press CTRL+C
//!               [x] kern.critical:A critical kernel error
//! terminal 2:  cargo run -p tutorial-bins --bin emit_log_topic -- kern.critical "A critical kernel error"
//! ```
//!
//! AMQP methods: exchange.declare `topic_logs` topic, queue.declare exclusive with a
//! server-chosen name, one queue.bind per pattern (the binding key), basic.consume with
//! no_ack.

use amqp_client::{BasicConsumeOptions, ExchangeDeclareOptions, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Prints the log messages whose routing key matches a pattern.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Binding keys: "#" (everything), "kern.*", "*.critical", ...
    #[arg(required = true)]
    binding_keys: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(receive_logs_topic)
}

async fn receive_logs_topic(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .exchange_declare(
            "topic_logs",
            "topic",
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
    for binding_key in &args.binding_keys {
        channel
            .queue_bind(&queue_name, "topic_logs", binding_key, FieldTable::new())
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
