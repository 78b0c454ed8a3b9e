//! What every tutorial program does when the broker is absent, silent, or goes away: one
//! line on stderr and exit code 1, quickly; never a panic, never a hang.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Every program, with the arguments it needs.
const PROGRAMS: [(&str, &[&str]); 13] = [
    (SEND, &[]),
    (RECEIVE, &[]),
    (NEW_TASK, &[]),
    (WORKER, &[]),
    (EMIT_LOG, &[]),
    (RECEIVE_LOGS, &[]),
    (EMIT_LOG_DIRECT, &[]),
    (RECEIVE_LOGS_DIRECT, &["info"]),
    (EMIT_LOG_TOPIC, &[]),
    (RECEIVE_LOGS_TOPIC, &["#"]),
    (RPC_SERVER, &[]),
    (RPC_CLIENT, &[]),
    (PUBLISHER_CONFIRMS, &[]),
];

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

/// A listener that accepts connections and never says a word, like a stuck broker.
fn silent_broker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// Checks a failed run: exit code 1, nothing on stdout but the `expected_stdout` lines,
/// `error: ...` as the only line on stderr, containing `part`.
fn assert_one_line_error(program: &mut Program, expected_stdout: &[&str], part: &str) {
    let finished = finish(program);
    let lines: Vec<&str> = finished.stderr.lines().collect();
    if finished.status.code() != Some(1)
        || finished.stdout != expected_stdout
        || lines.len() != 1
        || !lines[0].starts_with("error: ")
        || !lines[0].contains(part)
    {
        program.fail(&format!(
            "expected exit code 1 and one line `error: ...{part}...`, got {}",
            finished.status
        ));
    }
}

#[test]
fn every_program_without_broker_prints_one_line_error_and_exits_1() {
    let port = closed_port();
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let mut programs: Vec<Program> = PROGRAMS
        .iter()
        .map(|(binary, args)| Program::start(binary, &uri, args))
        .collect();
    let expected = format!("error: cannot connect to amqp://guest:***@127.0.0.1:{port}/%2f: ");
    for program in &mut programs {
        assert_one_line_error(program, &[], &expected);
        if !program.stderr().to_lowercase().contains("refused") {
            program.fail("the error should say the connection was refused");
        }
    }
}

#[test]
fn program_with_silent_broker_gives_up_after_the_uri_connection_timeout() {
    let addr = silent_broker();
    let uri = format!("amqp://guest:guest@{addr}/%2f?connection_timeout=300");
    let started = Instant::now();
    let mut send = Program::start(SEND, &uri, &[]);
    assert_one_line_error(&mut send, &[], "no AMQP handshake within 300 ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn program_with_silent_broker_gives_up_after_five_seconds_by_default() {
    let addr = silent_broker();
    let started = Instant::now();
    let mut worker = Program::start(WORKER, &format!("amqp://{addr}"), &[]);
    assert_one_line_error(&mut worker, &[], "no AMQP handshake within 5000 ms");
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[test]
fn program_without_uri_option_uses_amqp_url() {
    let port = closed_port();
    let mut command = Command::new(SEND);
    command.env("AMQP_URL", format!("amqp://127.0.0.1:{port}/%2f"));
    let mut send = Program::spawn(command);
    assert_one_line_error(
        &mut send,
        &[],
        &format!("cannot connect to amqp://127.0.0.1:{port}/%2f"),
    );
}

#[test]
fn program_with_invalid_uri_says_so() {
    let mut send = Program::start(SEND, "http://localhost/", &[]);
    assert_one_line_error(&mut send, &[], "invalid AMQP URI");
}

#[test]
fn worker_whose_broker_shuts_down_says_why_and_exits_1() {
    let mut broker = MiniBroker::start();
    let mut worker = Program::start(WORKER, &broker.url, &[]);
    worker.expect_line(" [*] Waiting for messages. To exit press CTRL+C");
    broker.shutdown();
    assert_one_line_error(
        &mut worker,
        &[" [*] Waiting for messages. To exit press CTRL+C"],
        "error: connection closed by the server: 320: CONNECTION_FORCED",
    );
}

#[test]
fn receiver_stopped_with_sigterm_exits_cleanly() {
    let broker = MiniBroker::start();
    let mut receiver = Program::start(RECEIVE_LOGS, &broker.url, &[]);
    receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    let status = Command::new("kill")
        .args(["-TERM", &receiver.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let finished = finish(&mut receiver);
    assert!(finished.status.success(), "{}", finished.status);
    assert_eq!(
        finished.stdout.last().map(String::as_str),
        Some("Interrupted")
    );
    assert!(finished.stderr.is_empty(), "{}", finished.stderr);
}
