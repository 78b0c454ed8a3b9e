//! Tutorial 2, Work queues: the worker. Takes tasks from `task_queue` one at a time, works
//! one second per `.` in the task, then acknowledges it.
//!
//! ```text
//! terminal 1:  cargo run -p tutorial-bins --bin worker
//!               [*] Waiting for messages. To exit press CTRL+C
//!               [x] Received First message.
//!               [x] Done
//! terminal 2:  cargo run -p tutorial-bins --bin worker
//! terminal 3:  cargo run -p tutorial-bins --bin new_task -- First message.
//! ```
//! Kill a worker in the middle of a long task: the broker gives the task to the other one,
//! which prints it with `(redelivered)`. `--ms-per-dot 100` makes the work faster.
//!
//! The tutorial's "forgotten acknowledgment" mistake, on purpose: `--forget-ack` works as
//! usual but never sends basic.ack. The broker keeps every task it handed out as
//! unacknowledged, and with prefetch 1 gives this worker nothing more; once the worker
//! exits, the tasks are ready again:
//!
//! ```text
//! cargo run -p tutorial-bins --bin worker -- --forget-ack --prefetch 0
//! rabbitmqctl list_queues name messages_ready messages_unacknowledged
//! cargo run -p mini-broker -- ctl list_queues name messages_ready messages_unacknowledged
//! ```
//!
//! `--trace` prints every frame on stderr.
//!
//! AMQP methods: queue.declare `task_queue` durable, basic.qos prefetch_count 1 (no new task
//! before the last one is acked: busy workers are skipped), basic.consume with manual
//! acknowledgement, basic.ack after the work is done.

use std::time::Duration;

use amqp_client::{BasicConsumeOptions, FieldTable, QueueDeclareOptions};
use tutorial_bins::{say, text, BrokerArgs};

/// Works on the tasks of the queue `task_queue`.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// How long each '.' of a task takes.
    #[arg(long, default_value_t = 1000)]
    ms_per_dot: u64,
    /// How many unacknowledged tasks the broker may hand this worker (basic.qos
    /// prefetch_count); 0 sends no basic.qos: no limit, as before the tutorial's
    /// "Fair dispatch".
    #[arg(long, default_value_t = 1)]
    prefetch: u16,
    /// Never acknowledge a task: reproduces the tutorial's "forgotten acknowledgment"
    /// mistake. The tasks stay unacknowledged (`list_queues name messages_ready
    /// messages_unacknowledged`) until this worker exits, then the broker requeues them.
    #[arg(long)]
    forget_ack: bool,
}

fn main() -> std::process::ExitCode {
    tutorial_bins::run(worker)
}

async fn worker(args: Args) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(&args.broker).await?;
    let channel = connection.create_channel().await?;

    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await?;
    if args.prefetch > 0 {
        channel.basic_qos(args.prefetch, false).await?;
    }

    let manual_ack = BasicConsumeOptions::default();
    let consumer = channel
        .basic_consume("task_queue", "", manual_ack, FieldTable::new())
        .await?;

    say!(" [*] Waiting for messages. To exit press CTRL+C");
    let per_dot = Duration::from_millis(args.ms_per_dot);
    let forget_ack = args.forget_ack;
    tutorial_bins::start_consuming(consumer, |delivery| async move {
        let body = text(&delivery.body);
        let again = if delivery.redelivered {
            " (redelivered)"
        } else {
            ""
        };
        say!(" [x] Received {body}{again}");
        let dots = body.matches('.').count() as u32;
        tokio::time::sleep(per_dot * dots).await;
        say!(" [x] Done");
        if !forget_ack {
            delivery.ack().await?;
        }
        Ok(())
    })
    .await
}
