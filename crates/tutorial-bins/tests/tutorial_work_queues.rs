//! Tutorial 2, Work queues: `new_task` and two `worker`s as separate processes, against
//! mini-broker and RabbitMQ, in the scenarios of the tutorial: round-robin dispatch, a
//! worker killed in the middle of a task (the other one gets it, redelivered), prefetch 1
//! (a busy worker gets nothing new), a worker that forgets to ack (`list_queues name
//! messages_ready messages_unacknowledged`), and declaring `hello` durable when it exists
//! non-durable (406).
//!
//! The same scenarios with RabbitMQ's own Python programs are in `tutorial_pika.rs`;
//! durability across a broker restart is in `tutorial_restart.rs`.

mod support;

use support::work_queues::{
    busy_worker_gets_nothing_new, interrupted_worker, killed_worker, on_rabbitmq, round_robin,
    Cast, Client,
};
use support::*;

const RUST: Cast = Cast {
    producer: Client::Rust,
    workers: [Client::Rust, Client::Rust],
};

/// The tutorial's "forgotten acknowledgment": a worker that never acks. With no prefetch
/// limit it takes all three tasks and `list_queues` shows them unacknowledged; killed, it
/// leaves them ready again. With prefetch 1 it takes one and gets no more.
fn forgotten_ack(broker: &Broker<'_>) {
    let url = broker.url();
    let mut forgetful = Program::start(
        WORKER,
        url,
        &["--forget-ack", "--prefetch", "0", "--ms-per-dot", "10"],
    );
    forgetful.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    let tasks = ["First message.", "Second message..", "Third message..."];
    for task in tasks {
        run_ok(
            NEW_TASK,
            url,
            &task.split(' ').collect::<Vec<_>>(),
            &[&format!(" [x] Sent {task}")],
        );
    }
    for task in tasks {
        forgetful.expect_line(&format!(" [x] Received {task}"));
        forgetful.expect_line(" [x] Done");
    }
    let all_unacked = QueueCounts {
        ready: 0,
        unacked: 3,
    };
    broker.expect_counts("task_queue", all_unacked);
    forgetful.kill();
    let all_ready = QueueCounts {
        ready: 3,
        unacked: 0,
    };
    broker.expect_counts("task_queue", all_ready);

    // Prefetch 1: the first task is never acked, so nothing more comes.
    let mut stuck = Program::start(WORKER, url, &["--forget-ack", "--ms-per-dot", "10"]);
    stuck.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    stuck.expect_line(" [x] Received First message. (redelivered)");
    stuck.expect_line(" [x] Done");
    let one_unacked = QueueCounts {
        ready: 2,
        unacked: 1,
    };
    broker.expect_counts("task_queue", one_unacked);
    if stuck.lines().iter().any(|line| line.contains("Second")) {
        stuck.fail("got a second task with prefetch 1 and the first one unacked");
    }
    // Ctrl+C closes the connection politely: the task is requeued all the same.
    stuck.interrupt_cleanly();
    broker.expect_counts("task_queue", all_ready);

    // A worker that acks takes them all, and the queue is empty.
    let mut worker = Program::start(WORKER, url, &["--ms-per-dot", "10"]);
    for task in tasks {
        worker.expect_line(&format!(" [x] Received {task} (redelivered)"));
        worker.expect_line(" [x] Done");
    }
    broker.expect_counts("task_queue", QueueCounts::EMPTY);
    worker.interrupt_cleanly();
}

/// The tutorial's durability mistake: `hello` exists non-durable, and `send --durable`
/// declares it durable. The broker closes the channel with 406 PRECONDITION_FAILED; `send`
/// prints it on one line and exits with 1, having sent nothing.
fn durable_hello_refused(url: &str) {
    run_ok(SEND, url, &[], &[" [x] Sent 'Hello World!'"]);
    let finished = run(SEND, url, &["--durable"]);
    let expected = "error: channel closed by the server: 406: PRECONDITION_FAILED - \
                    inequivalent arg 'durable' for queue 'hello' in vhost '/': received 'true' \
                    but current is 'false' (after queue.declare)\n";
    assert_eq!(finished.stderr, expected);
    assert_eq!(finished.status.code(), Some(1));
    assert!(finished.stdout.is_empty(), "{:?}", finished.stdout);
    assert_eq!(ready_messages(url, "hello"), Some(1));
}

#[test]
fn work_queues_round_robin_on_mini_broker() {
    let broker = MiniBroker::start();
    round_robin(&Broker::Mini(&broker), RUST);
}

#[test]
fn work_queues_killed_worker_task_goes_to_other_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    killed_worker(&Broker::Mini(&broker), RUST);
}

#[test]
fn work_queues_prefetch_one_skips_busy_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    busy_worker_gets_nothing_new(&Broker::Mini(&broker), RUST);
}

#[test]
fn work_queues_interrupted_worker_task_goes_to_other_worker_on_mini_broker() {
    let broker = MiniBroker::start();
    interrupted_worker(&Broker::Mini(&broker), RUST);
}

#[test]
fn worker_forgetting_acks_leaves_tasks_unacked_until_it_dies_on_mini_broker() {
    let broker = MiniBroker::start();
    forgotten_ack(&Broker::Mini(&broker));
}

#[test]
fn send_durable_after_hello_exists_fails_with_406_on_one_line_on_mini_broker() {
    let broker = MiniBroker::start();
    durable_hello_refused(&broker.url);
}

// On RabbitMQ the tests take turns: `task_queue` is a fixed name.

#[test]
fn work_queues_round_robin_on_rabbitmq() {
    on_rabbitmq("work_queues_round_robin_on_rabbitmq", round_robin, RUST);
}

#[test]
fn work_queues_killed_worker_task_goes_to_other_worker_on_rabbitmq() {
    let test = "work_queues_killed_worker_task_goes_to_other_worker_on_rabbitmq";
    on_rabbitmq(test, killed_worker, RUST);
}

#[test]
fn work_queues_prefetch_one_skips_busy_worker_on_rabbitmq() {
    let test = "work_queues_prefetch_one_skips_busy_worker_on_rabbitmq";
    on_rabbitmq(test, busy_worker_gets_nothing_new, RUST);
}

#[test]
fn work_queues_interrupted_worker_task_goes_to_other_worker_on_rabbitmq() {
    let test = "work_queues_interrupted_worker_task_goes_to_other_worker_on_rabbitmq";
    on_rabbitmq(test, interrupted_worker, RUST);
}

#[test]
fn worker_forgetting_acks_leaves_tasks_unacked_until_it_dies_on_rabbitmq() {
    let test = "worker_forgetting_acks_leaves_tasks_unacked_until_it_dies_on_rabbitmq";
    let Some((broker, _alone)) = rabbitmq_alone(test) else {
        return;
    };
    delete_queue(broker.url(), "task_queue");
    forgotten_ack(&broker);
    delete_queue(broker.url(), "task_queue");
}

#[test]
fn send_durable_after_hello_exists_fails_with_406_on_one_line_on_rabbitmq() {
    let test = "send_durable_after_hello_exists_fails_with_406_on_one_line_on_rabbitmq";
    let Some((broker, _alone)) = rabbitmq_alone(test) else {
        return;
    };
    delete_queue(broker.url(), "hello");
    durable_hello_refused(broker.url());
    delete_queue(broker.url(), "hello");
}
