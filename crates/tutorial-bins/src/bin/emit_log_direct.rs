//! Tutorial 4, Routing: the producer. Sends a log message to the direct exchange
//! `direct_logs` with its severity as the routing key.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin receive_logs_direct -- warning error
//! terminal 2:  cargo run -p tutorial-bins --bin receive_logs_direct -- info warning error
//! terminal 3:  cargo run -p tutorial-bins --bin emit_log_direct -- error "Run. Run. Or it will explode."
//!               [x] Sent error:Run. Run. Or it will explode.
//! ```
//! Both receivers print the error; only the second would print an `info` message.
//!
//! AMQP methods: exchange.declare `direct_logs` direct, basic.publish to `direct_logs`
//! with routing key SEVERITY.

use amqp_client::{BasicProperties, ExchangeDeclareOptions, FieldTable};
use tutorial_bins::{say, BrokerArgs};

/// Sends a log message with a severity.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The severity: the routing key (info, warning, error, ...).
    #[arg(default_value = "info")]
    severity: String,
    /// The message. Default: "Hello World!".
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(emit_log_direct)
}

async fn emit_log_direct(args: Args) -> tutorial_bins::Result<()> {
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

    let severity = args.severity;
    let message = match args.words.join(" ") {
        words if words.is_empty() => "Hello World!".to_owned(),
        words => words,
    };
    channel
        .basic_publish(
            "direct_logs",
            &severity,
            BasicProperties::default(),
            message.clone(),
            false,
        )
        .await?;
    say!(" [x] Sent {severity}:{message}");

    connection.close().await?;
    Ok(())
}
