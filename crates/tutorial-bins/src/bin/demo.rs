//! The tutorials for someone with one terminal: a broker (mini-broker) runs inside this
//! process, and the tutorial's programs run as tasks next to it, each with its own
//! connection, their lines prefixed with who printed them.
//!
//! ```text
//! cargo run -p tutorial-bins --bin demo -- work-queues
//! cargo run -p tutorial-bins --bin demo -- work-queues --ms-per-dot 200   # faster
//! cargo run -p tutorial-bins --bin demo -- --trace work-queues            # and every frame
//! ```
//!
//! `work-queues` (tutorial 2): two workers, then five tasks from "First message." (one
//! second of work) to "Fifth message....." (five). With prefetch 1 a worker gets a new task
//! only once it has acked the last one, so the first worker does tasks 1, 3 and 5 while the
//! second does the two long ones, 2 and 4.
//!
//! AMQP methods: those of `new_task` and `worker`: queue.declare `task_queue` durable,
//! basic.publish persistent, basic.qos 1, basic.consume, basic.ack.

use std::net::SocketAddr;
use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use mini_broker::BrokerOptions;
use tokio::sync::{mpsc, oneshot};
use tutorial_bins::{say, text, BrokerArgs, Failure};

/// Runs a tutorial in one process, broker included.
#[derive(clap::Parser)]
struct Args {
    /// Print every AMQP frame on stderr, one line each: the programs' (`client#N`) and the
    /// broker's (`broker#N`) side of each connection.
    #[arg(long, global = true)]
    trace: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// Tutorial 2: two workers share five tasks.
    WorkQueues {
        /// How long each '.' of a task takes.
        #[arg(long, default_value_t = 1000)]
        ms_per_dot: u64,
    },
}

/// The tasks of the tutorial, one more dot (second of work) each.
const TASKS: [&str; 5] = [
    "First message.",
    "Second message..",
    "Third message...",
    "Fourth message....",
    "Fifth message.....",
];

fn main() -> std::process::ExitCode {
    tutorial_bins::run(demo)
}

async fn demo(args: Args) -> tutorial_bins::Result<()> {
    match args.scenario {
        Scenario::WorkQueues { ms_per_dot } => {
            work_queues(Duration::from_millis(ms_per_dot), args.trace).await
        }
    }
}

async fn work_queues(per_dot: Duration, trace: bool) -> tutorial_bins::Result<()> {
    let broker = mini_broker::start(BrokerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await
    .map_err(|err| Failure::new(format!("cannot start mini-broker: {err}")))?;
    let url = BrokerArgs {
        uri: broker.url(),
        trace,
    };
    say!(
        "mini-broker: listening on {} (in this process)",
        broker.amqp_addr
    );

    let (done, mut finished) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for name in ["worker 1", "worker 2"] {
        workers.push(start_worker(name, &url, per_dot, done.clone()).await?);
    }

    for task in TASKS {
        new_task(&url, task).await?;
    }

    let mut work: Vec<(&str, Vec<String>)> = vec![("worker 1", vec![]), ("worker 2", vec![])];
    for _ in TASKS {
        let Some((name, task)) = finished.recv().await else {
            return Err(Failure::new(
                "the workers stopped before the tasks were done",
            ));
        };
        if let Some((_, tasks)) = work.iter_mut().find(|(worker, _)| *worker == name) {
            tasks.push(task);
        }
    }
    say!("");
    for (name, tasks) in &work {
        say!("{name} did {} tasks: {}", tasks.len(), tasks.join(", "));
    }

    for (connection, task) in workers {
        task.abort();
        connection.close().await?;
    }
    broker.shutdown().await;
    Ok(())
}

/// What `new_task` does: one connection, one persistent message to `task_queue`.
async fn new_task(url: &BrokerArgs, task: &str) -> tutorial_bins::Result<()> {
    let connection = tutorial_bins::connect(url).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare("task_queue", durable(), FieldTable::new())
        .await?;
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    channel
        .basic_publish("", "task_queue", persistent, task.to_owned(), false)
        .await?;
    say!("new_task: [x] Sent {task}");
    connection.close().await?;
    Ok(())
}

/// What `worker` does, as a task: returns once it consumes, with its connection and task;
/// says on `done` which task it finished.
async fn start_worker(
    name: &'static str,
    url: &BrokerArgs,
    per_dot: Duration,
    done: mpsc::UnboundedSender<(&'static str, String)>,
) -> tutorial_bins::Result<(Connection, tokio::task::JoinHandle<()>)> {
    let connection = tutorial_bins::connect(url).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare("task_queue", durable(), FieldTable::new())
        .await?;
    channel.basic_qos(1, false).await?;
    let consumer = channel
        .basic_consume(
            "task_queue",
            "",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await?;
    say!("{name}: [*] Waiting for messages. To exit press CTRL+C");

    let (started, running) = oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = started.send(());
        let result = tutorial_bins::start_consuming(consumer, |delivery| {
            let done = done.clone();
            async move {
                let body = text(&delivery.body).into_owned();
                say!("{name}: [x] Received {body}");
                let dots = body.matches('.').count() as u32;
                tokio::time::sleep(per_dot * dots).await;
                say!("{name}: [x] Done");
                delivery.ack().await?;
                let _ = done.send((name, body));
                Ok(())
            }
        })
        .await;
        if let Err(failure) = result {
            say!("{name}: error: {failure}");
        }
    });
    let _ = running.await;
    Ok((connection, task))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}
