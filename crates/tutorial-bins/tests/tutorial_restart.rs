//! Tutorial 2, "Message durability": what a broker restart keeps. A persistent task in the
//! durable `task_queue` survives it, whether it was waiting or delivered to a worker that
//! had not acked it, and a worker started after the restart does it; the non-durable
//! `hello` and its message are gone. A worker connected during the restart says why it
//! stopped, on one line.
//!
//! Against mini-broker the broker runs in this process with a data directory and is
//! restarted in place. Against RabbitMQ the test runs `rabbitmqctl stop_app`, `start_app`
//! and `await_startup`, which cuts every client of that RabbitMQ: it runs only when
//! `TUTORIAL_RESTART_RABBITMQ=1`, on its own, after the other tests:
//!
//! ```text
//! TUTORIAL_RESTART_RABBITMQ=1 cargo test -p tutorial-bins --test tutorial_restart -- --test-threads=1
//! ```

mod support;

use support::*;

/// What a worker says when the broker stops under it: RabbitMQ's words, and mini-broker's.
const FORCED: &str = "error: connection closed by the server: 320: CONNECTION_FORCED - broker \
                      forced connection closure with reason 'shutdown'\n";

/// The task delivered (and never acked) before the restart, and the one still waiting.
const DELIVERED: &str = "Delivered task.";
const WAITING: &str = "Waiting task..";

/// The variable that allows the RabbitMQ test to restart RabbitMQ.
const RESTART_RABBITMQ: &str = "TUTORIAL_RESTART_RABBITMQ";

/// Before the restart: a message in `hello`, and two tasks in `task_queue`. One task is
/// delivered to a worker that never acks it; with prefetch 1 the second one waits in the
/// queue. Returns the worker.
fn before_restart(url: &str) -> Program {
    run_ok(SEND, url, &[], &[" [x] Sent 'Hello World!'"]);
    let mut forgetful = Program::start(WORKER, url, &["--forget-ack", "--ms-per-dot", "10"]);
    forgetful.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    for task in [DELIVERED, WAITING] {
        let words: Vec<&str> = task.split(' ').collect();
        run_ok(NEW_TASK, url, &words, &[&format!(" [x] Sent {task}")]);
    }
    forgetful.expect_line(&format!(" [x] Received {DELIVERED}"));
    forgetful.expect_line(" [x] Done");
    forgetful
}

/// After the restart: what survived, and who says what.
fn after_restart(broker: &Broker<'_>, mut forgetful: Program) {
    let url = broker.url();
    // The worker learns that the broker went away, says so on one line, and exits with 1.
    let status = forgetful.wait();
    if status.code() != Some(1) || forgetful.stderr() != FORCED {
        forgetful.fail(&format!(
            "expected exit code 1 and {FORCED:?}, got {status}"
        ));
    }

    assert_eq!(
        ready_messages(url, "hello"),
        None,
        "the non-durable queue hello should be gone after the restart"
    );
    assert_eq!(
        ready_messages(url, "task_queue"),
        Some(2),
        "both persistent tasks should be in task_queue after the restart"
    );

    // The task that had been delivered comes flagged redelivered (RabbitMQ keeps that in its
    // queue index; so does mini-broker), the other one does not.
    let mut worker = Program::start(WORKER, url, &["--ms-per-dot", "10"]);
    worker.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    worker.expect_line(&format!(" [x] Received {DELIVERED} (redelivered)"));
    worker.expect_line(" [x] Done");
    worker.expect_line(&format!(" [x] Received {WAITING}"));
    worker.expect_line(" [x] Done");
    broker.expect_counts("task_queue", QueueCounts::EMPTY);
    worker.interrupt_cleanly();
    assert_eq!(ready_messages(url, "task_queue"), Some(0));
}

#[test]
fn persistent_task_survives_restart_and_goes_to_next_worker_on_mini_broker() {
    let data = TempDir::new("tutorial-restart");
    let mut broker = MiniBroker::start_in(&data.0);
    let forgetful = before_restart(&broker.url);
    broker.restart();
    after_restart(&Broker::Mini(&broker), forgetful);
}

#[test]
fn persistent_task_survives_restart_and_goes_to_next_worker_on_rabbitmq() {
    let test = "persistent_task_survives_restart_and_goes_to_next_worker_on_rabbitmq";
    if std::env::var(RESTART_RABBITMQ).as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED {test}: it restarts RabbitMQ, which cuts every other test's connections; \
             run it alone with {RESTART_RABBITMQ}=1 cargo test -p tutorial-bins --test \
             tutorial_restart -- --test-threads=1"
        );
        return;
    }
    // Asked for by name: a missing RabbitMQ or rabbitmqctl is a failure.
    let Some(url) = rabbitmq(test) else {
        panic!("{test}: {RESTART_RABBITMQ}=1 but no RabbitMQ answers");
    };
    if integration_tests::rabbitmqctl(test, &["list_vhosts"]).is_none() {
        panic!("{test}: {RESTART_RABBITMQ}=1 but rabbitmqctl cannot run");
    }
    delete_queue(&url, "hello");
    delete_queue(&url, "task_queue");
    let forgetful = before_restart(&url);
    for command in ["stop_app", "start_app", "await_startup"] {
        integration_tests::rabbitmqctl(test, &[command]).expect("rabbitmqctl");
    }
    let broker = Broker::RabbitMq { url, test };
    after_restart(&broker, forgetful);
    delete_queue(broker.url(), "task_queue");
}
