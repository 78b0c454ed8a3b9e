//! Tutorial 3, Publish/Subscribe: `emit_log` and two `receive_logs` as separate processes,
//! against mini-broker and RabbitMQ.

mod support;

use support::*;

/// Every receiver gets every message of the fanout exchange `logs`.
fn fanout_reaches_every_receiver(url: &str) {
    let mut receivers = [
        Program::start(RECEIVE_LOGS, url, &[]),
        Program::start(RECEIVE_LOGS, url, &[]),
    ];
    for receiver in &mut receivers {
        receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    }
    let first = format!("info: {}", unique("first"));
    let second = format!("warning: {}", unique("second"));
    for message in [&first, &second] {
        let words: Vec<&str> = message.split(' ').collect();
        run_ok(EMIT_LOG, url, &words, &[&format!(" [x] Sent {message}")]);
    }
    for receiver in &mut receivers {
        receiver.expect_line(&format!(" [x] {first}"));
        receiver.expect_line(&format!(" [x] {second}"));
        receiver.interrupt_cleanly();
    }
}

/// Without words, emit_log sends the tutorial's default message.
fn default_message(url: &str) {
    let mut receiver = Program::start(RECEIVE_LOGS, url, &[]);
    receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    run_ok(EMIT_LOG, url, &[], &[" [x] Sent info: Hello World!"]);
    receiver.expect_line(" [x] info: Hello World!");
    receiver.interrupt_cleanly();
}

#[test]
fn publish_subscribe_fanout_reaches_every_receiver_on_mini_broker() {
    let broker = MiniBroker::start();
    fanout_reaches_every_receiver(&broker.url);
    default_message(&broker.url);
}

#[test]
fn publish_subscribe_fanout_reaches_every_receiver_on_rabbitmq() {
    let Some(url) = rabbitmq("publish_subscribe_fanout_reaches_every_receiver_on_rabbitmq") else {
        return;
    };
    fanout_reaches_every_receiver(&url);
    default_message(&url);
}
