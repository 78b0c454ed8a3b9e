//! Tutorial 6, RPC: the client. Asks `rpc_server` for fib(N) and waits for the answer.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin rpc_server
//! terminal 2:  cargo run -p tutorial-bins --bin rpc_client -- 30
//!               [x] Requesting fib(30)
//!               [.] Got 832040
//! ```
//!
//! AMQP methods: queue.declare with an empty name and exclusive (the callback queue, named
//! by the broker), basic.consume on it with no_ack, basic.publish of the request to the
//! default exchange with routing key `rpc_queue` and properties reply_to (the callback
//! queue) and correlation_id (a fresh unique id); the answer is the delivery on the
//! callback queue with the same correlation_id.

use amqp_client::{BasicConsumeOptions, BasicProperties, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs, Failure};

/// Asks the RPC server for a Fibonacci number.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Which Fibonacci number.
    #[arg(default_value_t = 30)]
    n: u64,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(rpc_client)
}

async fn rpc_client(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let callback_queue = channel
        .queue_declare("", exclusive, FieldTable::new())
        .await?;
    let callback_queue = callback_queue.name;
    let auto_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut responses = channel
        .basic_consume(&callback_queue.to_string(), "", auto_ack, FieldTable::new())
        .await?;

    let n = args.n;
    say!(" [x] Requesting fib({n})");
    let correlation_id = tutorial_bins::unique_id();
    let properties = BasicProperties {
        reply_to: Some(callback_queue),
        correlation_id: Some(correlation_id.as_str().into()),
        ..Default::default()
    };
    channel
        .basic_publish("", "rpc_queue", properties, n.to_string(), false)
        .await?;

    // The answer is the message with our correlation id: a callback queue shared by several
    // requests would hold others too.
    let response = loop {
        let Some(delivery) = responses.next().await else {
            return Err(Failure::new("the callback queue's consumer was cancelled"));
        };
        let delivery = delivery?;
        let ours = delivery.properties.correlation_id.as_ref();
        if ours.is_some_and(|id| *id == correlation_id.as_str()) {
            break text(&delivery.body).into_owned();
        }
    };
    say!(" [.] Got {response}");

    connection.close().await?;
    Ok(())
}
