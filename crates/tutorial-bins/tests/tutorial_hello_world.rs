//! Tutorial 1, "Hello World!": `send` and `receive` as separate processes, against
//! mini-broker and RabbitMQ.

mod support;

use support::*;

/// A message sent before the receiver starts waits in `hello`; one sent while it runs
/// arrives at once; Ctrl+C ends the receiver cleanly.
fn hello_world(url: &str) {
    run_ok(SEND, url, &[], &[" [x] Sent 'Hello World!'"]);
    let mut receive = Program::start(RECEIVE, url, &[]);
    receive.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    receive.expect_line(" [x] Received 'Hello World!'");
    run_ok(SEND, url, &[], &[" [x] Sent 'Hello World!'"]);
    receive.expect_line(" [x] Received 'Hello World!'");
    receive.interrupt_cleanly();
    let received = receive
        .seen
        .iter()
        .filter(|line| line.starts_with(" [x] Received"))
        .count();
    assert_eq!(received, 2, "{:?}", receive.seen);
    assert_eq!(ready_messages(url, "hello"), Some(0));
}

#[test]
fn hello_world_send_then_receive_on_mini_broker() {
    let broker = MiniBroker::start();
    hello_world(&broker.url);
}

#[test]
fn hello_world_send_then_receive_on_rabbitmq() {
    let Some(url) = rabbitmq("hello_world_send_then_receive_on_rabbitmq") else {
        return;
    };
    delete_queue(&url, "hello");
    hello_world(&url);
    delete_queue(&url, "hello");
}
