//! Prometheus metrics in the text exposition format (version 0.0.4), served on the
//! management listener at `GET /metrics`.
//!
//! Names follow RabbitMQ's `rabbitmq_prometheus` plugin with per-object metrics, so
//! dashboards made for RabbitMQ find them: per queue `rabbitmq_queue_messages_ready`,
//! `rabbitmq_queue_messages_unacked`, `rabbitmq_queue_messages`,
//! `rabbitmq_queue_messages_ready_bytes` and `rabbitmq_queue_consumers`, labelled with
//! `vhost` and `queue`; broker-wide `rabbitmq_connections`, `rabbitmq_channels`,
//! `rabbitmq_consumers`, `rabbitmq_queues`, the memory and disk alarms, free disk space and
//! its limit, and resident memory.
//! These are gauges read from the live state when scraped. The `rabbitmq_global_messages_*_total`
//! counters (received, routed, returned, confirmed, delivered, redelivered, acknowledged) give
//! the message rates through Prometheus's `rate()`.

use std::fmt::Write;

use crate::broker::Broker;
use crate::delivery::lock;

/// One sample: labels and value.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: u64,
}

/// Renders every metric.
pub fn render(broker: &Broker) -> String {
    let mut ready = Vec::new();
    let mut unacked = Vec::new();
    let mut messages = Vec::new();
    let mut ready_bytes = Vec::new();
    let mut consumers = Vec::new();
    let (mut queue_count, mut consumer_total) = (0u64, 0u64);
    for vhost in broker.vhosts() {
        let mut queues: Vec<_> = vhost.read().queues.values().cloned().collect();
        queues.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for queue in queues {
            let (r, u, c, b) = {
                let state = queue.state();
                (
                    state.ready.len() as u64,
                    state.unacked as u64,
                    state.consumers.len() as u64,
                    state.ready_bytes as u64,
                )
            };
            let labels = vec![
                ("vhost", vhost.name.clone()),
                ("queue", queue.name.to_str_lossy().into_owned()),
            ];
            let sample = |value| Sample {
                labels: labels.clone(),
                value,
            };
            ready.push(sample(r));
            unacked.push(sample(u));
            messages.push(sample(r + u));
            ready_bytes.push(sample(b));
            consumers.push(sample(c));
            queue_count += 1;
            consumer_total += c;
        }
    }
    let connections = broker.connections.all();
    let channels: u64 = connections
        .iter()
        .map(|c| lock(&c.channels).len() as u64)
        .sum();
    let single = |value| {
        vec![Sample {
            labels: Vec::new(),
            value,
        }]
    };

    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: &[Sample]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for sample in samples {
            out.push_str(name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    };
    family(
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        &ready,
    );
    family(
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        &unacked,
    );
    family(
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages",
        &messages,
    );
    family(
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready message bodies",
        &ready_bytes,
    );
    family(
        "rabbitmq_queue_consumers",
        "Consumers on a queue",
        &consumers,
    );
    family("rabbitmq_queues", "Queues available", &single(queue_count));
    family(
        "rabbitmq_connections",
        "Connections currently open",
        &single(connections.len() as u64),
    );
    family(
        "rabbitmq_channels",
        "Channels currently open",
        &single(channels),
    );
    family(
        "rabbitmq_consumers",
        "Consumers currently connected",
        &single(consumer_total),
    );
    let alarms = broker.alarms();
    family(
        "rabbitmq_alarms_memory_used_watermark",
        "1 if the memory alarm is in effect",
        &single(u64::from(alarms.memory)),
    );
    family(
        "rabbitmq_alarms_free_disk_space_watermark",
        "1 if the disk alarm is in effect",
        &single(u64::from(alarms.disk)),
    );
    family(
        "rabbitmq_disk_space_available_bytes",
        "Disk space available in bytes",
        &single(broker.disk_free().unwrap_or(0)),
    );
    family(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        &single(broker.disk_free_limit()),
    );
    family(
        "rabbitmq_resident_memory_limit_bytes",
        "Queued message bytes above which publishers are blocked",
        &single(broker.memory_high_watermark()),
    );
    family(
        "rabbitmq_process_resident_memory_bytes",
        "Memory used in bytes",
        &single(resident_memory()),
    );
    // Counters since start: Prometheus derives the rates (rate(...[1m])).
    let stats = broker.stats.snapshot();
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_received_total",
            "Messages published to the broker",
            stats.published,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Messages routed to at least one queue",
            stats.routed,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Mandatory messages returned to their publisher as unroutable",
            stats.returned,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Publisher confirms sent",
            stats.confirmed,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Messages delivered to consumers or fetched with basic.get",
            stats.delivered,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Messages delivered again",
            stats.redelivered,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Deliveries acknowledged by clients",
            stats.acknowledged,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's resident memory in bytes (Linux), 0 where unknown.
pub fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn empty_broker_reports_zero_gauges_and_every_family() {
        let broker = Broker::new(crate::config::BrokerConfig::default());
        let text = render(&broker);
        assert!(text.contains("# TYPE rabbitmq_queue_messages_ready gauge\n"));
        assert!(text.contains("\nrabbitmq_queues 0\n"));
        assert!(text.contains("\nrabbitmq_connections 0\n"));
        assert!(text
            .lines()
            .all(|l| l.starts_with('#') || l.split(' ').count() == 2));
    }
}
