//! Tutorial 5, Topics: the producer. Sends a log message to the topic exchange
//! `topic_logs` with a routing key of dot-separated words, `<facility>.<severity>`.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs_topic -- "#"
//! terminal 2:  cargo run -p tutorial-bins --bin receive_logs_topic -- "kern.*"
//! terminal 3:  cargo run -p tutorial-bins --bin receive_logs_topic -- "*.critical"
//! terminal 4:  cargo run -p tutorial-bins --bin emit_log_topic -- kern.critical "A critical kernel error"
//!               [x] Sent kern.critical:A critical kernel error
//! ```
//! All three receivers print it; `cron.info` would reach the first one only.
//!
//! AMQP methods: exchange.declare `topic_logs` topic, basic.publish to `topic_logs` with
//! routing key KEY.

use amqp_client::{BasicProperties, ExchangeDeclareOptions, FieldTable};
use tutorial_bins::{say, BrokerArgs};

/// Sends a log message with a topic routing key.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The routing key: words separated by dots, e.g. kern.critical.
    #[arg(default_value = "anonymous.info")]
    routing_key: String,
    /// The message. Default: "Hello World!".
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(emit_log_topic)
}

async fn emit_log_topic(args: Args) -> tutorial_bins::Result<()> {
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

    let routing_key = args.routing_key;
    let message = match args.words.join(" ") {
        words if words.is_empty() => "Hello World!".to_owned(),
        words => words,
    };
    channel
        .basic_publish(
            "topic_logs",
            &routing_key,
            BasicProperties::default(),
            message.clone(),
            false,
        )
        .await?;
    say!(" [x] Sent {routing_key}:{message}");

    connection.close().await?;
    Ok(())
}
