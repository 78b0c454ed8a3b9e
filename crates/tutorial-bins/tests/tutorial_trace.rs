//! `--trace`: every tutorial program prints each frame it sends and receives on stderr, one
//! line each, and its usual output on stdout unchanged.

mod support;

use std::process::Command;

use support::*;

/// Every program built from this crate.
const PROGRAMS: [&str; 14] = [
    SEND,
    RECEIVE,
    NEW_TASK,
    WORKER,
    EMIT_LOG,
    RECEIVE_LOGS,
    EMIT_LOG_DIRECT,
    RECEIVE_LOGS_DIRECT,
    EMIT_LOG_TOPIC,
    RECEIVE_LOGS_TOPIC,
    RPC_SERVER,
    RPC_CLIENT,
    PUBLISHER_CONFIRMS,
    DEMO,
];

/// The trace lines (stderr) that contain every one of `parts`, in order of appearance.
fn trace_lines_with<'a>(stderr: &'a str, parts: &[&str]) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .collect()
}

/// `send --trace`: the usual line on stdout, and on stderr the whole conversation, each
/// line a frame of connection `client#1`.
fn send_traces_every_frame(url: &str) {
    let finished = run(SEND, url, &["--trace"]);
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.stdout, [" [x] Sent 'Hello World!'"]);
    let stderr = &finished.stderr;
    assert!(
        stderr.lines().all(|line| line.contains(" client#1 ")),
        "every line should be a traced frame of the one connection:\n{stderr}"
    );
    for (direction, frame) in [
        ("->", "protocol-header"),
        ("<-", "connection.start "),
        ("->", "connection.start-ok "),
        ("<-", "connection.tune "),
        ("->", "connection.open "),
        ("->", "channel.open"),
        ("->", "queue.declare "),
        ("<-", "queue.declare-ok "),
        ("->", "basic.publish "),
        ("->", "content-header "),
        ("->", "Hello World!"),
        ("->", "connection.close "),
        ("<-", "connection.close-ok"),
    ] {
        assert_eq!(
            trace_lines_with(stderr, &[&format!(" {direction} "), frame]).len(),
            1,
            "one {direction} {frame} frame expected in:\n{stderr}"
        );
    }
}

#[test]
fn every_program_offers_trace_in_its_help() {
    for program in PROGRAMS {
        let output = Command::new(program)
            .arg("--help")
            .output()
            .expect("run --help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{program} --help failed");
        assert!(
            help.contains("--trace"),
            "{program} --help should offer --trace:\n{help}"
        );
    }
}

#[test]
fn send_with_trace_prints_every_frame_on_stderr_on_mini_broker() {
    let broker = MiniBroker::start();
    send_traces_every_frame(&broker.url);
}

#[test]
fn send_with_trace_prints_every_frame_on_stderr_on_rabbitmq() {
    let Some(url) = rabbitmq("send_with_trace_prints_every_frame_on_stderr_on_rabbitmq") else {
        return;
    };
    // A queue of its own would need another program; `hello` is this binary's alone.
    delete_queue(&url, "hello");
    send_traces_every_frame(&url);
    delete_queue(&url, "hello");
}

#[test]
fn send_without_trace_prints_nothing_on_stderr() {
    let broker = MiniBroker::start();
    run_ok(SEND, &broker.url, &[], &[" [x] Sent 'Hello World!'"]);
}

/// `worker --trace` shows the task arrive (basic.deliver and its content) and the ack go.
#[test]
fn worker_with_trace_shows_delivery_and_ack_on_mini_broker() {
    let broker = MiniBroker::start();
    let mut worker = Program::start(WORKER, &broker.url, &["--trace", "--ms-per-dot", "10"]);
    worker.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    run_ok(NEW_TASK, &broker.url, &["Traced."], &[" [x] Sent Traced."]);
    worker.expect_line(" [x] Received Traced.");
    worker.expect_line(" [x] Done");
    worker.interrupt();
    let stderr = worker.stderr();
    for (direction, frame) in [
        ("->", "basic.qos "),
        ("->", "basic.consume "),
        ("<-", "basic.deliver "),
        ("<-", "Traced."),
        ("->", "basic.ack "),
    ] {
        assert_eq!(
            trace_lines_with(&stderr, &[&format!(" {direction} "), frame]).len(),
            1,
            "one {direction} {frame} frame expected in:\n{stderr}"
        );
    }
}
