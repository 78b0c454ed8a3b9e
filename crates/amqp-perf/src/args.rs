//! Command-line flags, named after RabbitMQ PerfTest's where it has one.

use clap::Parser;

use crate::body::STAMP_LEN;

/// Measures an AMQP 0-9-1 broker: publish, confirm and consume rates, end-to-end latency,
/// and whether every message arrived exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "amqp-perf", version, disable_help_flag = true)]
pub struct Args {
    /// The broker.
    #[arg(
        long,
        short = 'h',
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Producers, each with its own connection and channel.
    #[arg(long = "producers", short = 'x', default_value_t = 1)]
    pub producers: u16,
    /// Consumers, each with its own connection and channel.
    #[arg(long = "consumers", short = 'y', default_value_t = 1)]
    pub consumers: u16,
    /// Body size in bytes (at least 16: the sequence number and send time).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Messages per producer; the run ends when all are consumed.
    #[arg(long = "pmessages", short = 'C')]
    pub pmessages: Option<u64>,
    /// Messages per consumer: the run ends once every consumer has received this many
    /// (useful without producers, to drain a prefilled queue).
    #[arg(long = "cmessages", short = 'D')]
    pub cmessages: Option<u64>,
    /// Seconds to publish for (without -C or -z: until Ctrl-C).
    #[arg(long = "time", short = 'z')]
    pub time: Option<f64>,
    /// Messages per second per producer; 0: as fast as possible.
    #[arg(long, short = 'r', default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: publish N messages at a time, each group on the schedule of its first
    /// message (1: every message on its own schedule, evenly spaced).
    #[arg(long, default_value_t = 1)]
    pub burst: u32,
    /// Message flags: `persistent` (delivery mode 2), `mandatory`.
    #[arg(long = "flag", short = 'f')]
    pub flags: Vec<String>,
    /// Declare the queues (and exchange) durable.
    #[arg(long)]
    pub durable: bool,
    /// Publisher confirms, with at most N publishes awaiting confirmation per producer.
    #[arg(long = "confirm", short = 'c')]
    pub confirm: Option<usize>,
    /// Consumer prefetch (basic.qos); 0: unlimited.
    #[arg(long, short = 'q', default_value_t = 0)]
    pub qos: u16,
    /// Acknowledge every N deliveries at once (basic.ack multiple).
    #[arg(long = "multi-ack", short = 'A', default_value_t = 1)]
    pub multi_ack: u32,
    /// Consume without acknowledgements (no_ack).
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Queue name; with --queues N, the prefix of N names (NAME-1 ... NAME-N). A named queue is
    /// purged first and kept at the end; without a name, amqp-perf-<pid> is used and deleted.
    #[arg(long, short = 'u')]
    pub queue: Option<String>,
    /// How many queues: producer i publishes to queue i mod N, consumer j consumes from
    /// queue j mod N.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Exchange to publish to; the default exchange ("") routes by queue name.
    #[arg(long, short = 'e', default_value = "")]
    pub exchange: String,
    /// Type of the exchange, when one is named.
    #[arg(long, short = 't', default_value = "direct")]
    pub exchange_type: String,
    /// Routing key (default: the queue's name). With a named exchange, the queues are bound
    /// with it.
    #[arg(long, short = 'k')]
    pub routing_key: Option<String>,
    /// Declare nothing and purge nothing: the queues and exchange exist already.
    #[arg(long)]
    pub predeclared: bool,
    /// After publishing stops, how long to wait for the last messages before giving up, in
    /// seconds of no progress.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Write every message's stamp and receive time to FILE, to line them up with a packet
    /// capture (scripts/latency_split.py): a first line `epoch_unix_ns N` (the wall-clock
    /// time of the run's ns 0), then `producer sequence sent_ns received_ns` per message.
    #[arg(long, value_name = "FILE")]
    pub latency_log: Option<std::path::PathBuf>,
    /// Print the summary as one JSON object (progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl Args {
    /// Checks the combination of flags; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.size < STAMP_LEN {
            return Err(format!(
                "--size must be at least {STAMP_LEN} (the sequence number and send time)"
            ));
        }
        if self.producers == 0 && self.consumers == 0 {
            return Err("nothing to do: no producers and no consumers".into());
        }
        if self.queues == 0 {
            return Err("--queues must be at least 1".into());
        }
        if self.confirm == Some(0) {
            return Err("--confirm needs a window of at least 1".into());
        }
        if self.multi_ack == 0 {
            return Err("--multi-ack must be at least 1".into());
        }
        if !self.autoack && self.qos > 0 && self.multi_ack > u32::from(self.qos) {
            return Err(format!(
                "--multi-ack {} exceeds --qos {}: the consumer would wait forever",
                self.multi_ack, self.qos
            ));
        }
        if self.rate < 0.0 || !self.rate.is_finite() {
            return Err("--rate must be 0 or more".into());
        }
        if self.burst == 0 {
            return Err("--burst must be at least 1".into());
        }
        if let Some(time) = self.time {
            if time <= 0.0 || !time.is_finite() {
                return Err("--time must be more than 0".into());
            }
        }
        for flag in &self.flags {
            if flag != "persistent" && flag != "mandatory" {
                return Err(format!(
                    "unknown flag {flag:?} (known: persistent, mandatory)"
                ));
            }
        }
        if self.exchange.is_empty() && self.routing_key.is_some() && self.queues > 1 {
            return Err("--routing-key with the default exchange and several queues would send everything to one queue".into());
        }
        Ok(())
    }

    /// Whether messages are persistent (delivery mode 2).
    pub fn persistent(&self) -> bool {
        self.flags.iter().any(|f| f == "persistent")
    }

    /// Whether publishes are mandatory.
    pub fn mandatory(&self) -> bool {
        self.flags.iter().any(|f| f == "mandatory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("amqp-perf").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn perftest_short_flags_parse() {
        let args = parse(&[
            "-x",
            "2",
            "-y",
            "3",
            "-s",
            "64",
            "-C",
            "1000",
            "-r",
            "50",
            "-f",
            "persistent",
            "-c",
            "100",
            "-q",
            "10",
            "-A",
            "5",
        ]);
        assert_eq!((args.producers, args.consumers, args.size), (2, 3, 64));
        assert_eq!(args.pmessages, Some(1000));
        assert_eq!(args.confirm, Some(100));
        assert_eq!((args.qos, args.multi_ack), (10, 5));
        assert!(args.persistent());
        assert!(args.validate().is_ok());
    }

    #[test]
    fn validate_rejects_body_too_small_for_stamp() {
        let error = parse(&["-s", "8"]).validate().unwrap_err();
        assert!(error.contains("at least 16"), "{error}");
    }

    #[test]
    fn validate_rejects_multi_ack_above_prefetch() {
        let error = parse(&["-q", "10", "-A", "20"]).validate().unwrap_err();
        assert!(error.contains("exceeds --qos"), "{error}");
    }

    #[test]
    fn burst_defaults_to_one_and_zero_is_rejected() {
        assert_eq!(parse(&["-r", "10000"]).burst, 1);
        assert_eq!(parse(&["-r", "10000", "--burst", "10"]).burst, 10);
        assert!(parse(&["--burst", "0"]).validate().is_err());
    }

    #[test]
    fn validate_rejects_unknown_flag() {
        assert!(parse(&["-f", "fast"]).validate().is_err());
    }
}
