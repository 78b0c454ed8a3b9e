//! Tutorial 6, RPC: the server. Answers requests on the queue `rpc_queue` with the n-th
//! Fibonacci number, sent to the request's `reply_to` queue with its `correlation_id`.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin rpc_server
//!               [x] Awaiting RPC requests
//!               [.] fib(30)
//! terminal 2:  cargo run -p tutorial-bins --bin rpc_client -- 30
//!               [x] Requesting fib(30)
//!               [.] Got 832040
//! ```
//! Start more servers to share the load: prefetch 1 gives each request to an idle one.
//!
//! AMQP methods: queue.declare `rpc_queue`, basic.qos prefetch_count 1, basic.consume with
//! manual acknowledgement; per request basic.publish to the default exchange with routing
//! key = the request's reply_to and the same correlation_id, then basic.ack.

use amqp_client::{BasicConsumeOptions, BasicProperties, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Serves Fibonacci numbers over RPC.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(rpc_server)
}

/// The n-th Fibonacci number, None when it does not fit in 64 bits (n > 93). Iterative: the
/// tutorial's recursive version takes minutes for n = 50.
fn fib(n: u64) -> Option<u64> {
    // fib(94), the first over u64::MAX, still fits in u128.
    let (mut a, mut b) = (0u128, 1u128);
    for _ in 0..n.min(94) {
        (a, b) = (b, a + b);
    }
    u64::try_from(a).ok()
}

async fn rpc_server(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    channel
        .queue_declare(
            "rpc_queue",
            QueueDeclareOptions::default(),
            FieldTable::new(),
        )
        .await?;
    channel.basic_qos(1, false).await?;
    let consumer = channel
        .basic_consume(
            "rpc_queue",
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await?;

    say!(" [x] Awaiting RPC requests");
    tutorial_bins::start_consuming(consumer, |request| {
        let channel = channel.clone();
        async move {
            let body = text(&request.body);
            let response = match body.trim().parse::<u64>() {
                Ok(n) => {
                    say!(" [.] fib({n})");
                    match fib(n) {
                        Some(value) => value.to_string(),
                        None => format!("error: fib({n}) does not fit in 64 bits"),
                    }
                }
                Err(_) => {
                    say!(" [.] not a number: {body:?}");
                    format!("error: not a number: {body:?}")
                }
            };
            if let Some(reply_to) = &request.properties.reply_to {
                let properties = BasicProperties {
                    correlation_id: request.properties.correlation_id.clone(),
                    ..Default::default()
                };
                channel
                    .basic_publish("", &reply_to.to_string(), properties, response, false)
                    .await?;
            }
            request.ack().await?;
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::fib;

    #[test]
    fn fib_matches_the_tutorial_and_stops_at_u64() {
        assert_eq!(fib(0), Some(0));
        assert_eq!(fib(1), Some(1));
        assert_eq!(fib(2), Some(1));
        assert_eq!(fib(30), Some(832_040));
        assert_eq!(fib(93), Some(12_200_160_415_121_876_738));
        assert_eq!(fib(94), None);
    }
}
