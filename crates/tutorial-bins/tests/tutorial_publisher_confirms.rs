//! Tutorial 7, Publisher confirms: `publisher_confirms` against mini-broker and RabbitMQ.

mod support;

use std::time::Duration;

use support::*;

/// The three strategies each print one line, as the Java tutorial does.
fn three_strategies_report_their_time(url: &str) {
    let mut program = Program::start(PUBLISHER_CONFIRMS, url, &["--messages", "1200"]);
    // One round trip per message for the first strategy: 1,200 take under a second, but
    // several seconds on a busy machine.
    let status = program.wait_within(Duration::from_secs(40));
    let finished = Finished {
        status,
        stdout: program.seen.clone(),
        stderr: program.stderr(),
    };
    if !finished.status.success() || !finished.stderr.is_empty() {
        program.fail(&format!("exited with {}", finished.status));
    }
    let prefixes = [
        "Published 1,200 messages individually in ",
        "Published 1,200 messages in batch in ",
        "Published 1,200 messages and handled confirms asynchronously in ",
    ];
    assert_eq!(finished.stdout.len(), 3, "{:?}", finished.stdout);
    for (line, prefix) in finished.stdout.iter().zip(prefixes) {
        let millis = line
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(" ms"))
            .unwrap_or_else(|| panic!("{line:?} should be {prefix}<n> ms"));
        assert!(
            !millis.is_empty() && millis.chars().all(|c| c.is_ascii_digit() || c == ','),
            "{line:?}"
        );
    }
}

#[test]
fn publisher_confirms_three_strategies_report_their_time_on_mini_broker() {
    let broker = MiniBroker::start();
    three_strategies_report_their_time(&broker.url);
}

#[test]
fn publisher_confirms_three_strategies_report_their_time_on_rabbitmq() {
    let Some(url) = rabbitmq("publisher_confirms_three_strategies_report_their_time_on_rabbitmq")
    else {
        return;
    };
    three_strategies_report_their_time(&url);
}
