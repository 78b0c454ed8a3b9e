//! Tutorial 5, Topics: `emit_log_topic` and three `receive_logs_topic` as separate
//! processes, against mini-broker and RabbitMQ.

mod support;

use support::*;

/// `*` matches one word, `#` any number: each receiver gets what its patterns match.
fn topics_route_by_pattern(url: &str) {
    let patterns: [&[&str]; 3] = [&["*.critical"], &["kern.*"], &["#"]];
    let mut receivers: Vec<Program> = patterns
        .iter()
        .map(|patterns| Program::start(RECEIVE_LOGS_TOPIC, url, patterns))
        .collect();
    for receiver in &mut receivers {
        receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    }
    // (routing key, message, which receivers get it); the last one reaches all three, so
    // anything misrouted before it would have arrived by the time it does.
    let sent = [
        (
            "kern.critical",
            unique("A critical kernel error"),
            [true, true, true],
        ),
        ("cron.info", unique("cron ran"), [false, false, true]),
        ("kern.info", unique("kernel says hi"), [false, true, true]),
        (
            "cron.critical",
            unique("cron is on fire"),
            [true, false, true],
        ),
        ("kern.critical", unique("the end"), [true, true, true]),
    ];
    for (key, message, _) in &sent {
        let mut args = vec![*key];
        args.extend(message.split(' '));
        run_ok(
            EMIT_LOG_TOPIC,
            url,
            &args,
            &[&format!(" [x] Sent {key}:{message}")],
        );
    }
    for (i, receiver) in receivers.iter_mut().enumerate() {
        for (key, message, reaches) in &sent {
            if reaches[i] {
                receiver.expect_line(&format!(" [x] {key}:{message}"));
            }
        }
        for (_, message, reaches) in &sent {
            if !reaches[i] && receiver.lines().iter().any(|line| line.contains(message)) {
                receiver.fail(&format!(
                    "received {message:?}, which its pattern does not match"
                ));
            }
        }
        receiver.interrupt_cleanly();
    }
}

/// Without arguments, emit_log_topic sends the tutorial's default.
fn default_key_and_message(url: &str) {
    let mut receiver = Program::start(RECEIVE_LOGS_TOPIC, url, &["anonymous.*"]);
    receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    run_ok(
        EMIT_LOG_TOPIC,
        url,
        &[],
        &[" [x] Sent anonymous.info:Hello World!"],
    );
    receiver.expect_line(" [x] anonymous.info:Hello World!");
    receiver.interrupt_cleanly();
}

#[test]
fn topics_route_by_pattern_on_mini_broker() {
    let broker = MiniBroker::start();
    topics_route_by_pattern(&broker.url);
    default_key_and_message(&broker.url);
}

#[test]
fn topics_route_by_pattern_on_rabbitmq() {
    let Some(url) = rabbitmq("topics_route_by_pattern_on_rabbitmq") else {
        return;
    };
    topics_route_by_pattern(&url);
    default_key_and_message(&url);
}
