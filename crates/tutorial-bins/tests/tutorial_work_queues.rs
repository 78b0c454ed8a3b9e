//! Tutorial 2, Work queues: `new_task` and two `worker`s as separate processes, against
//! mini-broker and RabbitMQ, in the scenarios of the tutorial: round-robin dispatch, a
//! worker killed in the middle of a task (the other one gets it, redelivered), and
//! prefetch 1 (a busy worker gets nothing new).
//!
//! Later: a worker that never acks (messages_unacknowledged in `rabbitmqctl list_queues`),
//! durability across a broker restart, and redeclaring `task_queue` with other flags (406).

mod support;

use support::*;

/// Starts two workers on `url` and waits until both consume.
fn two_workers(url: &str, ms_per_dot: &str) -> (Program, Program) {
    let mut first = Program::start(WORKER, url, &["--ms-per-dot", ms_per_dot]);
    let mut second = Program::start(WORKER, url, &["--ms-per-dot", ms_per_dot]);
    for worker in [&mut first, &mut second] {
        worker.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    }
    (first, second)
}

fn new_task(url: &str, task: &str) {
    let words: Vec<&str> = task.split(' ').collect();
    run_ok(NEW_TASK, url, &words, &[&format!(" [x] Sent {task}")]);
}

fn assert_queue_empty(url: &str) {
    assert_eq!(
        ready_messages(url, "task_queue"),
        Some(0),
        "task_queue should be empty"
    );
}

/// Six tasks, sent one at a time while both workers are idle: they take turns.
fn round_robin(url: &str) {
    let (mut first, mut second) = two_workers(url, "20");
    let mut takers = Vec::new();
    for i in 1..=6 {
        let task = format!("Task {i}.");
        new_task(url, &task);
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
    first.interrupt_cleanly();
    second.interrupt_cleanly();
    assert_queue_empty(url);
}

/// A worker killed (SIGKILL) in the middle of a long task: the broker gives the task to
/// the other worker, flagged redelivered, and nothing is left in the queue.
fn killed_worker(url: &str) {
    let (mut first, mut second) = two_workers(url, "100");
    let task = "Long task..........";
    new_task(url, task);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {task}"),
    );
    let (killed, survivor) = taker_first(taker, &mut first, &mut second);
    killed.kill();
    if killed.lines().iter().any(|line| line == " [x] Done") {
        killed.fail("finished the task before it was killed");
    }
    survivor.expect_line(&format!(" [x] Received {task} (redelivered)"));
    survivor.expect_line(" [x] Done");
    survivor.interrupt_cleanly();
    assert_queue_empty(url);
}

/// prefetch 1: while one worker is busy with a long task, the other takes every new one.
fn busy_worker_gets_nothing_new(url: &str) {
    let (mut first, mut second) = two_workers(url, "100");
    let long = "Long task..............................";
    new_task(url, long);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {long}"),
    );
    let (busy, idle) = taker_first(taker, &mut first, &mut second);
    for i in 1..=3 {
        new_task(url, &format!("Short {i}."));
    }
    for i in 1..=3 {
        idle.expect_line(&format!(" [x] Received Short {i}."));
        idle.expect_line(" [x] Done");
    }
    busy.expect_line(" [x] Done");
    if busy.lines().iter().any(|line| line.contains("Short")) {
        busy.fail("got a task while busy with prefetch 1");
    }
    busy.interrupt_cleanly();
    idle.interrupt_cleanly();
    assert_queue_empty(url);
}

/// A Ctrl+C in the middle of a task: the worker exits at once and cleanly, its connection
/// closed politely, and the broker gives the task to the other worker.
fn interrupted_worker(url: &str) {
    let (mut first, mut second) = two_workers(url, "100");
    let task = "Interrupted task..........";
    new_task(url, task);
    let taker = expect_from_any(
        &mut [&mut first, &mut second],
        &format!(" [x] Received {task}"),
    );
    let (interrupted, survivor) = taker_first(taker, &mut first, &mut second);
    interrupted.interrupt_cleanly();
    survivor.expect_line(&format!(" [x] Received {task} (redelivered)"));
    survivor.expect_line(" [x] Done");
    survivor.interrupt_cleanly();
    assert_queue_empty(url);
}

#[test]
fn work_queues_round_robin_on_mini_broker() {
    let broker = MiniBroker::start();
    round_robin(&broker.url);
}

#[test]
fn work_queues_killed_worker_task_goes_to_other_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    killed_worker(&broker.url);
}

#[test]
fn work_queues_prefetch_one_skips_busy_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    busy_worker_gets_nothing_new(&broker.url);
}

#[test]
fn work_queues_interrupted_worker_task_goes_to_other_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    interrupted_worker(&broker.url);
}

/// The same scenarios on RabbitMQ, one after the other: `task_queue` is a fixed name.
#[test]
fn work_queues_scenarios_on_rabbitmq() {
    let Some(url) = rabbitmq("work_queues_scenarios_on_rabbitmq") else {
        return;
    };
    for scenario in [
        round_robin,
        killed_worker,
        busy_worker_gets_nothing_new,
        interrupted_worker,
    ] {
        delete_queue(&url, "task_queue");
        scenario(&url);
    }
    delete_queue(&url, "task_queue");
}
