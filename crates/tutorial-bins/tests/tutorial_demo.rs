//! `demo work-queues`: the broker and the tutorial's programs in one process.

mod support;

use std::process::Command;

use support::*;

#[test]
fn demo_work_queues_two_workers_do_all_five_tasks() {
    let mut command = Command::new(DEMO);
    command.args(["work-queues", "--ms-per-dot", "20"]);
    let mut demo = Program::spawn(command);
    let finished = finish(&mut demo);
    if !finished.status.success() || !finished.stderr.is_empty() {
        demo.fail(&format!("exited with {}", finished.status));
    }
    let tasks = [
        "First message.",
        "Second message..",
        "Third message...",
        "Fourth message....",
        "Fifth message.....",
    ];
    let count = |line: &str| finished.stdout.iter().filter(|l| *l == line).count();
    for task in tasks {
        assert_eq!(count(&format!("new_task: [x] Sent {task}")), 1, "{task}");
        let received = count(&format!("worker 1: [x] Received {task}"))
            + count(&format!("worker 2: [x] Received {task}"));
        assert_eq!(received, 1, "{task} should be received once");
    }
    let done = count("worker 1: [x] Done") + count("worker 2: [x] Done");
    assert_eq!(done, 5);
    let summary: Vec<&String> = finished
        .stdout
        .iter()
        .filter(|line| line.contains(" did "))
        .collect();
    assert_eq!(summary.len(), 2, "{:?}", finished.stdout);
    assert!(
        count("worker 1: [x] Done") > 0 && count("worker 2: [x] Done") > 0,
        "both workers should work: {:?}",
        finished.stdout
    );
}

/// `demo --trace`: the frames of both sides, the programs' and the broker's, on stderr.
#[test]
fn demo_with_trace_prints_frames_of_clients_and_broker() {
    let mut command = Command::new(DEMO);
    command.args(["--trace", "work-queues", "--ms-per-dot", "20"]);
    let mut demo = Program::spawn(command);
    let finished = finish(&mut demo);
    if !finished.status.success() {
        demo.fail(&format!("exited with {}", finished.status));
    }
    let published = |role: &str, direction: &str| {
        finished
            .stderr
            .lines()
            .filter(|line| {
                line.contains(role)
                    && line.contains(&format!(" {direction} "))
                    && line.contains(" basic.publish ")
            })
            .count()
    };
    // Five tasks, each sent by a new_task connection and received by the broker.
    assert_eq!(published("client#", "->"), 5, "{}", finished.stderr);
    assert_eq!(published("broker#", "<-"), 5, "{}", finished.stderr);
}
