//! What amqp-perf prints: a progress line per second and a summary at the end, as text or
//! as one JSON object.

use std::time::Duration;

use crate::histogram::LatencySummary;
use crate::tracker::Verdict;

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Time since publishing started.
    pub elapsed: Duration,
    /// Publishes per second over the last interval.
    pub sent_rate: f64,
    /// Confirms per second, in confirm mode.
    pub confirmed_rate: Option<f64>,
    /// Deliveries per second, when there are consumers.
    pub received_rate: Option<f64>,
    /// End-to-end latency of the messages received in the interval.
    pub latency: Option<LatencySummary>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "time {:.1}s, sent {:.0} msg/s",
            self.elapsed.as_secs_f64(),
            self.sent_rate
        )?;
        if let Some(rate) = self.confirmed_rate {
            write!(f, ", confirmed {rate:.0} msg/s")?;
        }
        if let Some(rate) = self.received_rate {
            write!(f, ", received {rate:.0} msg/s")?;
        }
        if let Some(latency) = &self.latency {
            write!(
                f,
                ", min/median/75th/95th/99th consumer latency {}/{}/{}/{}/{} µs",
                micros(latency.min),
                micros(latency.median),
                micros(latency.p75),
                micros(latency.p95),
                micros(latency.p99)
            )?;
        }
        Ok(())
    }
}

fn micros(ns: u64) -> u64 {
    (ns + 500) / 1000
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Producers.
    pub producers: u16,
    /// Consumers.
    pub consumers: u16,
    /// Queues.
    pub queues: usize,
    /// Body size in bytes.
    pub size: usize,
    /// Delivery mode 2.
    pub persistent: bool,
    /// The confirm window, in confirm mode.
    pub confirm: Option<usize>,
    /// Consumer prefetch.
    pub qos: u16,
    /// Deliveries acked at once.
    pub multi_ack: u32,
    /// Consumed without acks.
    pub autoack: bool,
    /// From the start of publishing to the last publish.
    pub publish_seconds: f64,
    /// Messages published.
    pub sent: u64,
    /// Publishes the broker acked.
    pub confirmed: u64,
    /// Publishes the broker nacked.
    pub nacked: u64,
    /// From the start of publishing to the last confirm.
    pub confirm_seconds: f64,
    /// Deliveries.
    pub received: u64,
    /// From the start of publishing to the last delivery.
    pub receive_seconds: f64,
    /// End-to-end latency of every message received.
    pub latency: Option<LatencySummary>,
    /// At a fixed rate (`-r`): how late the publishes went out against their schedule.
    pub schedule_lag: Option<LatencySummary>,
    /// The exactly-once check.
    pub verdict: Verdict,
    /// Messages left in the queues at the end.
    pub queue_depth: u64,
    /// What went wrong in producers and consumers.
    pub errors: Vec<String>,
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Summary {
    /// Whether the run did what it measured: no errors, and (with producers and consumers)
    /// every message received exactly once.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && (!self.checks_delivery() || self.verdict.ok())
    }

    fn checks_delivery(&self) -> bool {
        self.producers > 0 && self.consumers > 0
    }

    /// Publishes per second.
    pub fn send_rate(&self) -> f64 {
        rate(self.sent, self.publish_seconds)
    }

    /// Confirms per second, in confirm mode.
    pub fn confirm_rate(&self) -> Option<f64> {
        self.confirm
            .map(|_| rate(self.confirmed + self.nacked, self.confirm_seconds))
    }

    /// Deliveries per second.
    pub fn receive_rate(&self) -> f64 {
        rate(self.received, self.receive_seconds)
    }

    fn megabytes(&self, per_second: f64) -> f64 {
        per_second * self.size as f64 / 1e6
    }

    /// The one line on delivery: the exactly-once verdict, or what is left in the queues.
    pub fn delivery_line(&self) -> String {
        if self.checks_delivery() {
            self.verdict.describe()
        } else if self.consumers == 0 {
            format!(
                "no consumers: {} messages sent, {} in the queues at the end",
                self.sent, self.queue_depth
            )
        } else {
            format!("no producers: {} messages received", self.received)
        }
    }

    /// The text summary.
    pub fn text(&self) -> String {
        let mut lines = vec![format!(
            "summary: {} producer(s), {} consumer(s), {} queue(s), {} B {} bodies, {}{}",
            self.producers,
            self.consumers,
            self.queues,
            self.size,
            if self.persistent {
                "persistent"
            } else {
                "transient"
            },
            match self.confirm {
                Some(window) => format!("confirms (window {window}), "),
                None => String::new(),
            },
            if self.autoack {
                "autoack".to_owned()
            } else {
                format!(
                    "manual ack (qos {}, multi-ack {})",
                    self.qos, self.multi_ack
                )
            }
        )];
        if self.producers > 0 {
            lines.push(format!(
                "sending rate avg: {:.0} msg/s ({:.1} MB/s), {} messages in {:.2} s",
                self.send_rate(),
                self.megabytes(self.send_rate()),
                self.sent,
                self.publish_seconds
            ));
        }
        if let Some(confirm_rate) = self.confirm_rate() {
            lines.push(format!(
                "confirm rate avg: {confirm_rate:.0} msg/s, {} acked, {} nacked",
                self.confirmed, self.nacked
            ));
        }
        if self.consumers > 0 {
            lines.push(format!(
                "receiving rate avg: {:.0} msg/s ({:.1} MB/s), {} messages in {:.2} s",
                self.receive_rate(),
                self.megabytes(self.receive_rate()),
                self.received,
                self.receive_seconds
            ));
        }
        if let Some(l) = &self.latency {
            lines.push(format!(
                "consumer latency min/median/75th/95th/99th/99.9th/max: {}/{}/{}/{}/{}/{}/{} µs",
                micros(l.min),
                micros(l.median),
                micros(l.p75),
                micros(l.p95),
                micros(l.p99),
                micros(l.p999),
                micros(l.max)
            ));
        }
        if let Some(l) = &self.schedule_lag {
            lines.push(format!(
                "publish lag behind the schedule median/99th/99.9th/max: {}/{}/{}/{} µs",
                micros(l.median),
                micros(l.p99),
                micros(l.p999),
                micros(l.max)
            ));
        }
        lines.push(self.delivery_line());
        for error in &self.errors {
            lines.push(format!("error: {error}"));
        }
        lines.join("\n")
    }

    /// The JSON summary.
    pub fn json(&self) -> serde_json::Value {
        let latency = self.latency.map(latency_json);
        let schedule_lag = self.schedule_lag.map(latency_json);
        let v = &self.verdict;
        serde_json::json!({
            "producers": self.producers,
            "consumers": self.consumers,
            "queues": self.queues,
            "size": self.size,
            "persistent": self.persistent,
            "confirm": self.confirm,
            "qos": self.qos,
            "multi_ack": self.multi_ack,
            "autoack": self.autoack,
            "sent": self.sent,
            "publish_seconds": self.publish_seconds,
            "send_rate": self.send_rate(),
            "send_mb_s": self.megabytes(self.send_rate()),
            "confirmed": self.confirmed,
            "nacked": self.nacked,
            "confirm_rate": self.confirm_rate(),
            "received": self.received,
            "receive_seconds": self.receive_seconds,
            "receive_rate": self.receive_rate(),
            "receive_mb_s": self.megabytes(self.receive_rate()),
            "latency_us": latency,
            "schedule_lag_us": schedule_lag,
            "queue_depth": self.queue_depth,
            "delivery": {
                "checked": self.checks_delivery(),
                "ok": !self.checks_delivery() || v.ok(),
                "received_distinct": v.received_distinct,
                "missing": v.missing,
                "duplicates": v.duplicates,
                "redelivered": v.redelivered,
                "unexpected": v.unexpected,
                "foreign": v.foreign,
                "text": self.delivery_line(),
            },
            "errors": self.errors,
            "ok": self.ok(),
        })
    }
}

/// Percentiles as JSON, in µs.
fn latency_json(l: LatencySummary) -> serde_json::Value {
    serde_json::json!({
        "count": l.count,
        "min": l.min as f64 / 1e3,
        "median": l.median as f64 / 1e3,
        "p75": l.p75 as f64 / 1e3,
        "p95": l.p95 as f64 / 1e3,
        "p99": l.p99 as f64 / 1e3,
        "p999": l.p999 as f64 / 1e3,
        "max": l.max as f64 / 1e3,
    })
}
