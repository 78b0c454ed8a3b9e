//! Conformance with RabbitMQ 3.10: the behaviour scenarios of `tests/scenarios/scenarios.py`
//! (pika, and a raw socket client where pika hides the wire) print one normalised JSON line
//! per scenario; RabbitMQ's lines are checked in as `tests/scenarios/rabbitmq-3.10.jsonl`.
//!
//! - [`mini_broker_output_matches_the_rabbitmq_reference`] runs them against an in-process
//!   broker and compares every line with the reference, except the differences listed in
//!   [`INTENDED_DIFFERENCES`].
//! - [`rabbitmq_output_still_matches_the_checked_in_reference`] runs them against the live
//!   RabbitMQ (AMQP_URL) and compares with the same file, so that the reference cannot rot.
//!
//! Both need python3 with pika. Without it (or without a RabbitMQ for the second test) they
//! say SKIPPED, unless REQUIRE_RABBITMQ=1 is set (as CI does): then they fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mini_broker::{BrokerOptions, RunningBroker};
use serde_json::Value;

/// What mini-broker answers differently from RabbitMQ on purpose, each with its reason:
/// (scenario, path of the value in the scenario's `result`, why). Values at these paths are
/// left out of the comparison; everything else must be equal.
const INTENDED_DIFFERENCES: &[(&str, &[&str], &str)] = &[
    (
        "connection_start_and_tune",
        &["server_properties", "copyright"],
        "mini-broker does not claim VMware's copyright",
    ),
    (
        "connection_start_and_tune",
        &["server_properties", "information"],
        "mini-broker says what it is",
    ),
    (
        "connection_start_and_tune",
        &["server_properties", "platform"],
        "Rust, not Erlang/OTP",
    ),
    (
        "connection_start_and_tune",
        &["server_properties", "product"],
        "the product is mini-broker, not RabbitMQ (clients that need to tell can)",
    ),
    (
        "connection_start_and_tune",
        &["server_version"],
        "mini-broker's own version, not 3.10.8",
    ),
];

const REFERENCE: &str = "rabbitmq-3.10.jsonl";

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
}

fn required() -> bool {
    std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1")
}

/// Whether python3 can import pika; says SKIPPED (or panics under REQUIRE_RABBITMQ=1) when not.
fn python_with_pika(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        if required() {
            panic!(
                "{test}: REQUIRE_RABBITMQ=1 but python3 with pika is missing (pip install pika)"
            );
        }
        eprintln!("SKIPPED {test}: python3 with pika is missing (pip install pika; REQUIRE_RABBITMQ=1 makes this a failure)");
    }
    found
}

/// Runs scenarios.py against `url` (in a blocking thread: it takes about a minute, mostly
/// waiting for the brokers' 3-second silent closes) and returns its stdout.
async fn run_scenarios(url: String) -> String {
    let script = scenarios_dir().join("scenarios.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(&url)
            .output()
            .expect("run python3 scenarios.py")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "scenarios.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("scenarios.py prints UTF-8")
}

/// The lines of a run, by scenario name, in order.
fn by_scenario(output: &str) -> BTreeMap<String, Value> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            let name = value["scenario"]
                .as_str()
                .expect("a scenario name")
                .to_owned();
            (name, value)
        })
        .collect()
}

fn reference() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(scenarios_dir().join(REFERENCE)).expect("the reference");
    by_scenario(&text)
}

/// Blanks the value at `path` of a scenario's result. `server_properties` is a list of
/// `[key, [type, value]]` pairs (wire order kept), so a path step into it names a key.
fn blank(result: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = result;
    for step in parents {
        node = match node {
            Value::Object(map) => match map.get_mut(*step) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    match node {
        Value::Object(map) => {
            if let Some(value) = map.get_mut(*last) {
                *value = Value::Null;
            }
        }
        Value::Array(pairs) => {
            for pair in pairs {
                if pair.get(0).and_then(Value::as_str) == Some(*last) {
                    if let Some(value) = pair.get_mut(1) {
                        *value = Value::Null;
                    }
                }
            }
        }
        _ => {}
    }
}

/// The differences between two runs, one line per differing scenario key; `allowed`
/// differences are left out.
fn differences(
    expected: &BTreeMap<String, Value>,
    actual: &BTreeMap<String, Value>,
    allowed: &[(&str, &[&str], &str)],
) -> Vec<String> {
    let mut found = Vec::new();
    for (name, want) in expected {
        let Some(got) = actual.get(name) else {
            found.push(format!("{name}: missing from the output"));
            continue;
        };
        let (mut want, mut got) = (want.clone(), got.clone());
        for (scenario, path, _why) in allowed {
            if scenario == name {
                blank(&mut want["result"], path);
                blank(&mut got["result"], path);
            }
        }
        if want == got {
            continue;
        }
        match (want.get("result"), got.get("result")) {
            (Some(Value::Object(w)), Some(Value::Object(g))) => {
                let keys: std::collections::BTreeSet<&String> = w.keys().chain(g.keys()).collect();
                for key in keys {
                    if w.get(key) != g.get(key) {
                        found.push(format!(
                            "{name}.{key}:\n    expected {}\n    got      {}",
                            w.get(key).unwrap_or(&Value::Null),
                            g.get(key).unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
            _ => found.push(format!("{name}:\n    expected {want}\n    got      {got}")),
        }
    }
    for name in actual.keys() {
        if !expected.contains_key(name) {
            found.push(format!("{name}: not in the reference"));
        }
    }
    found
}

async fn broker(data_dir: &std::path::Path) -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(data_dir.to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_broker_output_matches_the_rabbitmq_reference() {
    let test = "mini_broker_output_matches_the_rabbitmq_reference";
    if !python_with_pika(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mini-broker-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = broker(&dir).await;
    let output = run_scenarios(running.url()).await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let found = differences(&reference(), &by_scenario(&output), INTENDED_DIFFERENCES);
    assert!(
        found.is_empty(),
        "mini-broker differs from RabbitMQ 3.10 in {} place(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_output_still_matches_the_checked_in_reference() {
    let test = "rabbitmq_output_still_matches_the_checked_in_reference";
    let Some(url) = rabbitmq_url(test).await else {
        return;
    };
    if !python_with_pika(test) {
        return;
    }
    let output = run_scenarios(url).await;
    let found = differences(&reference(), &by_scenario(&output), &[]);
    assert!(
        found.is_empty(),
        "RabbitMQ no longer gives the checked-in {REFERENCE} ({} difference(s)); re-record it \
         if RabbitMQ changed on purpose:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn differences_ignore_only_the_allowed_paths() {
    let line = |product: &str, ttl: &str| {
        format!(
            r#"{{"scenario": "connection_start_and_tune", "result": {{"server_properties": [["product", ["S", "{product}"]]], "ttl": "{ttl}"}}}}"#
        )
    };
    let reference = by_scenario(&line("RabbitMQ", "1"));
    let allowed: &[(&str, &[&str], &str)] = &[(
        "connection_start_and_tune",
        &["server_properties", "product"],
        "test",
    )];
    assert!(differences(&reference, &by_scenario(&line("mini-broker", "1")), allowed).is_empty());
    let found = differences(&reference, &by_scenario(&line("mini-broker", "2")), allowed);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("connection_start_and_tune.ttl"));
    assert_eq!(
        differences(&reference, &by_scenario(&line("mini-broker", "1")), &[]).len(),
        1
    );
}

/// The RabbitMQ to compare with (AMQP_URL, default guest on localhost), by the rules of the
/// workspace's tests/lib.rs: None (after saying SKIPPED) when none answers, a panic under
/// REQUIRE_RABBITMQ=1.
async fn rabbitmq_url(test: &str) -> Option<String> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let address = if host_port.rsplit_once(':').is_some() {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&address)
        )
        .await,
        Ok(Ok(_))
    );
    if reachable {
        return Some(url);
    }
    if required() {
        panic!("{test}: REQUIRE_RABBITMQ=1 but no RabbitMQ answers at {address} (AMQP_URL={url})");
    }
    eprintln!("SKIPPED {test}: no RabbitMQ at {address}; set AMQP_URL or start one (REQUIRE_RABBITMQ=1 makes this a failure)");
    None
}
