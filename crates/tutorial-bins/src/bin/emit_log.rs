//! Tutorial 3, Publish/Subscribe: the producer. Sends a log message to the fanout exchange
//! `logs`, which copies it to every queue bound to it.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs
//! terminal 2:  cargo run -p tutorial-bins --bin receive_logs
//! terminal 3:  cargo run -p tutorial-bins --bin emit_log -- info: Hello World!
//!               [x] Sent info: Hello World!
//! ```
//! Both receivers print the message. Options (`--uri amqp://...`) go before the words.
//!
//! AMQP methods: exchange.declare `logs` fanout, basic.publish to `logs` (the routing key
//! is ignored by a fanout exchange).

use amqp_client::{BasicProperties, ExchangeDeclareOptions, FieldTable};
use tutorial_bins::{say, BrokerArgs};

/// Sends a log message to every receiver.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The message. Default: "info: Hello World!".
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(emit_log)
}

async fn emit_log(args: Args) -> tutorial_bins::Result<()> {
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

    let message = match args.words.join(" ") {
        words if words.is_empty() => "info: Hello World!".to_owned(),
        words => words,
    };
    channel
        .basic_publish(
            "logs",
            "",
            BasicProperties::default(),
            message.clone(),
            false,
        )
        .await?;
    say!(" [x] Sent {message}");

    connection.close().await?;
    Ok(())
}
