//! Tutorial 4, Routing: `emit_log_direct` and two `receive_logs_direct` as separate
//! processes, against mini-broker and RabbitMQ.

mod support;

use support::*;

/// Each receiver gets the severities it bound, and only those.
fn direct_routes_by_severity(url: &str) {
    let mut problems = Program::start(RECEIVE_LOGS_DIRECT, url, &["warning", "error"]);
    let mut infos = Program::start(RECEIVE_LOGS_DIRECT, url, &["info"]);
    for receiver in [&mut problems, &mut infos] {
        receiver.expect_line(" [*] Waiting for logs. To exit press CTRL+C");
    }
    let info = unique("info");
    let error = unique("Run. Run. Or it will explode");
    let warning = unique("warning");
    // Sent last, to each receiver: anything misrouted before it would arrive before it.
    let end_of_problems = unique("end of problems");
    let end_of_infos = unique("end of infos");
    for (severity, message) in [
        ("info", &info),
        ("error", &error),
        ("warning", &warning),
        ("error", &end_of_problems),
        ("info", &end_of_infos),
    ] {
        let mut args = vec![severity];
        args.extend(message.split(' '));
        run_ok(
            EMIT_LOG_DIRECT,
            url,
            &args,
            &[&format!(" [x] Sent {severity}:{message}")],
        );
    }
    problems.expect_line(&format!(" [x] error:{error}"));
    problems.expect_line(&format!(" [x] warning:{warning}"));
    problems.expect_line(&format!(" [x] error:{end_of_problems}"));
    infos.expect_line(&format!(" [x] info:{info}"));
    infos.expect_line(&format!(" [x] info:{end_of_infos}"));
    for (receiver, foreign) in [
        (&mut problems, vec![&info, &end_of_infos]),
        (&mut infos, vec![&error, &warning, &end_of_problems]),
    ] {
        if receiver.lines().iter().any(|line| {
            foreign
                .iter()
                .any(|message| line.contains(message.as_str()))
        }) {
            receiver.fail("received a severity it did not bind");
        }
        receiver.interrupt_cleanly();
    }
}

/// receive_logs_direct needs at least one severity, as the tutorial's does.
#[test]
fn receive_logs_direct_without_severity_prints_usage_and_fails() {
    let finished = run(RECEIVE_LOGS_DIRECT, "amqp://127.0.0.1:1", &[]);
    assert!(!finished.status.success());
    assert!(finished.stdout.is_empty());
    assert!(finished.stderr.contains("Usage"), "{}", finished.stderr);
}

#[test]
fn routing_direct_routes_by_severity_on_mini_broker() {
    let broker = MiniBroker::start();
    direct_routes_by_severity(&broker.url);
}

#[test]
fn routing_direct_routes_by_severity_on_rabbitmq() {
    let Some(url) = rabbitmq("routing_direct_routes_by_severity_on_rabbitmq") else {
        return;
    };
    direct_routes_by_severity(&url);
}
