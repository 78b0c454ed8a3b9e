//! amqp-perf against a mini-broker started in the test process: the runs complete, the
//! exactly-once check passes, and an unreachable broker gives a one-line error.

use std::net::SocketAddr;
use std::process::Command;

use amqp_perf::{run, Args};
use clap::Parser;
use mini_broker::{BrokerOptions, RunningBroker};

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await
    .expect("broker starts")
}

fn args(uri: &str, flags: &[&str]) -> Args {
    let mut argv = vec!["amqp-perf", "--uri", uri, "--quiet"];
    argv.extend_from_slice(flags);
    Args::try_parse_from(argv).expect("flags parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_autoack_receives_every_message_exactly_once() {
    let broker = broker().await;
    let summary = run(&args(&broker.url(), &["-C", "5000", "-a"]), |_| {})
        .await
        .expect("run completes");
    assert_eq!(summary.sent, 5000);
    assert_eq!(summary.received, 5000);
    assert!(summary.ok(), "{}", summary.text());
    assert_eq!(
        summary.delivery_line(),
        "all 5000 messages received exactly once"
    );
    assert_eq!(summary.latency.map(|l| l.count), Some(5000));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_a_fixed_rate_counts_the_schedule_lag_of_every_publish() {
    let broker = broker().await;
    for burst in ["1", "10"] {
        let flags = ["-C", "300", "-r", "2000", "--burst", burst, "-a"];
        let summary = run(&args(&broker.url(), &flags), |_| {})
            .await
            .expect("run completes");
        assert!(summary.ok(), "{}", summary.text());
        assert_eq!(summary.received, 300);
        assert_eq!(summary.schedule_lag.map(|l| l.count), Some(300));
    }
    let unpaced = run(&args(&broker.url(), &["-C", "300", "-a"]), |_| {})
        .await
        .expect("run completes");
    assert!(unpaced.schedule_lag.is_none());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_log_has_the_epoch_then_one_line_per_message_with_its_stamp() {
    let broker = broker().await;
    let path = std::env::temp_dir().join(format!("amqp-perf-log-{}.txt", std::process::id()));
    let log = path.to_str().expect("utf-8 temp path");
    let flags = ["-x", "2", "-C", "250", "-a", "--latency-log", log];
    let summary = run(&args(&broker.url(), &flags), |_| {})
        .await
        .expect("run completes");
    assert!(summary.ok(), "{}", summary.text());
    let text = std::fs::read_to_string(&path).expect("log written");
    let _ = std::fs::remove_file(&path);
    let mut lines = text.lines();
    let epoch = lines.next().expect("epoch line");
    assert!(epoch.starts_with("epoch_unix_ns "), "{epoch}");
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let fields: Vec<u64> = line
            .split(' ')
            .map(|f| f.parse().expect("numbers"))
            .collect();
        let [producer, sequence, sent_ns, received_ns] = fields[..] else {
            panic!("four fields: {line}");
        };
        assert!(received_ns >= sent_ns, "{line}");
        assert!(seen.insert((producer, sequence)), "twice: {line}");
    }
    let expected: std::collections::BTreeSet<(u64, u64)> =
        (0..2).flat_map(|p| (0..250).map(move |q| (p, q))).collect();
    assert_eq!(seen, expected);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_confirms_manual_acks_and_two_producers_counts_every_confirm() {
    let broker = broker().await;
    let flags = [
        "-x",
        "2",
        "-y",
        "2",
        "-C",
        "2000",
        "-c",
        "50",
        "-q",
        "100",
        "-A",
        "10",
        "-s",
        "100",
        "-f",
        "persistent",
    ];
    let summary = run(&args(&broker.url(), &flags), |_| {})
        .await
        .expect("run completes");
    assert_eq!(summary.sent, 4000);
    assert_eq!(summary.confirmed, 4000);
    assert_eq!(summary.nacked, 0);
    assert_eq!(summary.received, 4000);
    assert!(summary.ok(), "{}", summary.text());
    assert_eq!(summary.json()["delivery"]["ok"], true);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_consumers_leaves_messages_in_named_queue() {
    let broker = broker().await;
    let flags = [
        "-y",
        "0",
        "-C",
        "300",
        "-c",
        "100",
        "--queue",
        "perf-backlog",
    ];
    let summary = run(&args(&broker.url(), &flags), |_| {})
        .await
        .expect("run completes");
    assert_eq!(summary.queue_depth, 300);
    assert!(summary.delivery_line().contains("300 in the queues"));
    // A consumer-only run drains part of it and stops at its count.
    let flags = [
        "-x",
        "0",
        "-D",
        "200",
        "--queue",
        "perf-backlog",
        "--predeclared",
    ];
    let summary = run(&args(&broker.url(), &flags), |_| {})
        .await
        .expect("consumer-only run completes");
    assert!(summary.received >= 200, "{}", summary.text());
    assert!(summary.ok(), "{}", summary.text());
    // A second run purges the backlog first, so its check still passes.
    let summary = run(
        &args(&broker.url(), &["-C", "100", "--queue", "perf-backlog"]),
        |_| {},
    )
    .await
    .expect("second run completes");
    assert!(summary.ok(), "{}", summary.text());
    assert_eq!(summary.received, 100);
    broker.shutdown().await;
}

#[test]
fn binary_exits_non_zero_with_one_line_when_broker_unreachable() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_amqp-perf"))
        .args(["--uri", &format!("amqp://guest:guest@127.0.0.1:{port}/%2f")])
        .args(["-C", "10"])
        .output()
        .expect("amqp-perf runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("amqp-perf: cannot connect to amqp://guest:***@127.0.0.1:"));
}
