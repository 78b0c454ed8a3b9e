//! Tutorial 2, Work queues: the tutorial's scenarios, played by workers and producers of
//! either kind, this project's (Rust) or RabbitMQ's tutorial's (Python, pika), on any broker.

use super::*;

/// Who wrote a program of tutorial 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// `new_task` and `worker` of this crate.
    Rust,
    /// `python/new_task.py` and `python/worker.py`, RabbitMQ's tutorial with pika.
    Pika,
}

impl Client {
    /// Starts a worker whose '.' takes `ms_per_dot`, and waits until it consumes.
    pub fn start_worker(self, url: &str, ms_per_dot: u64) -> Program {
        let ms = ms_per_dot.to_string();
        let mut worker = match self {
            Client::Rust => Program::start(WORKER, url, &["--ms-per-dot", &ms]),
            Client::Pika => Program::python(PIKA_WORKER, url, &[], &[("MS_PER_DOT", &ms)]),
        };
        worker.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
        worker
    }

    /// Runs new_task with the words of `task`; checks that it succeeds saying it sent it.
    pub fn new_task(self, url: &str, task: &str) {
        let words: Vec<&str> = task.split(' ').collect();
        let sent = format!(" [x] Sent {task}");
        match self {
            Client::Rust => run_ok(NEW_TASK, url, &words, &[&sent]),
            Client::Pika => {
                let mut program = Program::python(PIKA_NEW_TASK, url, &words, &[]);
                let finished = finish(&mut program);
                if !finished.status.success()
                    || finished.stdout != [sent.as_str()]
                    || !finished.stderr.is_empty()
                {
                    program.fail(&format!("expected success printing {sent:?}"));
                }
            }
        }
    }

    /// The line a worker of this kind prints when it takes `task`: the Rust worker says when
    /// the task is redelivered, the tutorial's Python one does not.
    pub fn received(self, task: &str, redelivered: bool) -> String {
        match (self, redelivered) {
            (Client::Rust, true) => format!(" [x] Received {task} (redelivered)"),
            _ => format!(" [x] Received {task}"),
        }
    }
}

/// Who plays a scenario: the producer and the two workers.
#[derive(Debug, Clone, Copy)]
pub struct Cast {
    pub producer: Client,
    pub workers: [Client; 2],
}

impl Cast {
    /// Everything written in one language.
    pub fn all(client: Client) -> Cast {
        Cast {
            producer: client,
            workers: [client, client],
        }
    }

    /// Starts both workers and waits until both consume.
    fn two_workers(&self, url: &str, ms_per_dot: u64) -> (Program, Program) {
        (
            self.workers[0].start_worker(url, ms_per_dot),
            self.workers[1].start_worker(url, ms_per_dot),
        )
    }
}

/// Waits until every task of `task_queue` is done and acked. A worker prints ` [x] Done`
/// before it acks (the tutorial's order): a Ctrl+C right after the line could beat the ack,
/// and the broker would rightly requeue the task.
pub fn expect_all_acked(broker: &Broker<'_>) {
    broker.expect_counts("task_queue", QueueCounts::EMPTY);
}

/// Checks that `task_queue` is empty once the workers are gone: nothing was requeued.
pub fn assert_task_queue_empty(url: &str) {
    assert_eq!(
        ready_messages(url, "task_queue"),
        Some(0),
        "task_queue should be empty"
    );
}

/// Six tasks, sent one at a time while both workers are idle: they take turns.
pub fn round_robin(broker: &Broker<'_>, cast: Cast) {
    let url = broker.url();
    let (mut first, mut second) = cast.two_workers(url, 20);
    let mut takers = Vec::new();
    for i in 1..=6 {
        let task = format!("Task {i}.");
        cast.producer.new_task(url, &task);
        let taker = expect_from_any(
            &mut [&mut first, &mut second],
            &format!(" [x] Received {task}"),
        );
        let worker = if taker == 0 { &mut first } else { &mut second };
        worker.expect_line(" [x] Done");
        takers.push(taker);
    }
    assert!(
        takers.windows(2).all(|pair| pair[0] != pair[1]),
        "the workers should take turns, got {takers:?}"
    );
    assert_eq!(takers.iter().filter(|&&t| t == 0).count(), 3);
    expect_all_acked(broker);
    first.interrupt_cleanly();
    second.interrupt_cleanly();
    assert_task_queue_empty(url);
}

/// A worker killed (SIGKILL) in the middle of a long task: the broker gives the task to
/// the other worker, flagged redelivered, and nothing is left in the queue.
pub fn killed_worker(broker: &Broker<'_>, cast: Cast) {
    let url = broker.url();
    let (mut first, mut second) = cast.two_workers(url, 100);
    let task = "Long task..........";
    cast.producer.new_task(url, task);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {task}"),
    );
    let survivor_kind = cast.workers[1 - taker];
    let (killed, survivor) = taker_first(taker, &mut first, &mut second);
    killed.kill();
    if killed.lines().iter().any(|line| line == " [x] Done") {
        killed.fail("finished the task before it was killed");
    }
    survivor.expect_line(&survivor_kind.received(task, true));
    survivor.expect_line(" [x] Done");
    expect_all_acked(broker);
    survivor.interrupt_cleanly();
    assert_task_queue_empty(url);
}

/// prefetch 1: while one worker is busy with a long task, the other takes every new one.
pub fn busy_worker_gets_nothing_new(broker: &Broker<'_>, cast: Cast) {
    let url = broker.url();
    let (mut first, mut second) = cast.two_workers(url, 100);
    let long = "Long task..............................";
    cast.producer.new_task(url, long);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {long}"),
    );
    let (busy, idle) = taker_first(taker, &mut first, &mut second);
    for i in 1..=3 {
        cast.producer.new_task(url, &format!("Short {i}."));
    }
    for i in 1..=3 {
        idle.expect_line(&format!(" [x] Received Short {i}."));
        idle.expect_line(" [x] Done");
    }
    busy.expect_line(" [x] Done");
    if busy.lines().iter().any(|line| line.contains("Short")) {
        busy.fail("got a task while busy with prefetch 1");
    }
    expect_all_acked(broker);
    busy.interrupt_cleanly();
    idle.interrupt_cleanly();
    assert_task_queue_empty(url);
}

/// A Ctrl+C in the middle of a task: the worker exits at once and cleanly, and the broker
/// gives the task to the other worker.
pub fn interrupted_worker(broker: &Broker<'_>, cast: Cast) {
    let url = broker.url();
    let (mut first, mut second) = cast.two_workers(url, 100);
    let task = "Interrupted task..........";
    cast.producer.new_task(url, task);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {task}"),
    );
    let survivor_kind = cast.workers[1 - taker];
    let (interrupted, survivor) = taker_first(taker, &mut first, &mut second);
    interrupted.interrupt_cleanly();
    survivor.expect_line(&survivor_kind.received(task, true));
    survivor.expect_line(" [x] Done");
    expect_all_acked(broker);
    survivor.interrupt_cleanly();
    assert_task_queue_empty(url);
}

/// Plays `scenario` on the RabbitMQ of this machine, with `task_queue` deleted before and
/// after, while no other test of this binary uses RabbitMQ. Skipped (or failed, with
/// `REQUIRE_RABBITMQ=1`) without RabbitMQ.
pub fn on_rabbitmq(test: &str, scenario: fn(&Broker<'_>, Cast), cast: Cast) {
    let Some((broker, _alone)) = rabbitmq_alone(test) else {
        return;
    };
    delete_queue(broker.url(), "task_queue");
    scenario(&broker, cast);
    delete_queue(broker.url(), "task_queue");
}
