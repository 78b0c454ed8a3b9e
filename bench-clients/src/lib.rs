//! What the three client benchmarks share: flags, timing and the one JSON line each prints.
//!
//! ```text
//! bench-<client> --port 5672 --test publish|confirm|consume [-n 1000000] [-s 16]
//!                [--window 1000] [--qos 1000] [--consumer-in main|task]
//! ```
//! - `publish`: N publishes of an s-byte body, no confirms; the clock stops when a synchronous
//!   call on the same channel (a passive queue.declare) returns, so every publish was sent and
//!   processed by the broker, whatever the client buffers.
//! - `confirm`: the same in confirm mode with at most `window` publishes unconfirmed; the
//!   clock stops at the last confirm.
//! - `consume`: the queue is filled with N messages first (not timed); then a consumer with
//!   prefetch `qos` acks every delivery on its own (basic.ack, multiple = false); the clock
//!   runs from basic.consume to the last ack sent. The loop runs in `main`'s own future, as a
//!   `#[tokio::main]` program's usually does; with `--consumer-in task` it runs in a spawned
//!   task instead, on the runtime's worker threads.
//!
//! Each program uses one connection and one channel per role, and its client's usual API.
//!
//! Besides the rate, the line has what the timed part cost the process: `cpu_s` (user + system
//! seconds, all threads) and `switches` (context switches). Against a broker on the same
//! machine, a client's CPU is taken from the broker, and its context switches say how much of
//! that CPU went to handing work between threads rather than to the protocol.

use std::time::{Duration, Instant};

/// The flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub test: String,
    pub messages: u64,
    pub size: usize,
    pub window: u64,
    pub qos: u16,
    pub queue: String,
    /// bench-null only: deliveries per basic.ack frame (1: multiple = false each; 0: no acks,
    /// the consumer is no_ack).
    pub ack_every: u64,
    /// `--consumer-in task`: the consume loop runs in a spawned task, on the runtime's worker
    /// threads, instead of in `main`'s own future (`--consumer-in main`, the default), which
    /// `#[tokio::main]` runs on the main thread, outside the workers.
    pub consumer_task: bool,
}

impl Options {
    /// Parses `std::env::args`; exits with a message on a bad flag.
    pub fn from_args(client: &str) -> Options {
        let mut options = Options {
            host: "127.0.0.1".into(),
            port: 5672,
            test: "publish".into(),
            messages: 1_000_000,
            size: 16,
            window: 1000,
            qos: 1000,
            queue: format!("bench-clients-{client}"),
            ack_every: 1,
            consumer_task: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().unwrap_or_else(|| usage(&flag));
            match flag.as_str() {
                "--host" => options.host = value,
                "--port" => options.port = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--test" => options.test = value,
                "-n" => options.messages = value.parse().unwrap_or_else(|_| usage(&flag)),
                "-s" => options.size = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--window" => options.window = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--qos" => options.qos = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--queue" => options.queue = value,
                "--ack-every" => options.ack_every = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--consumer-in" => {
                    options.consumer_task = match value.as_str() {
                        "main" => false,
                        "task" => true,
                        _ => usage(&flag),
                    }
                }
                _ => usage(&flag),
            }
        }
        if !["publish", "confirm", "consume"].contains(&options.test.as_str()) {
            usage(&options.test);
        }
        options
    }

    /// amqp://guest:guest@host:port/%2f
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}:{}/%2f", self.host, self.port)
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad flag or value near {flag:?}; flags: --host H --port P --test publish|confirm|consume -n N -s SIZE --window W --qos Q --queue NAME --ack-every N (bench-null) --consumer-in main|task"
    );
    std::process::exit(2)
}

/// What the programs' `main`s return.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the consume loop where `--consumer-in` says: awaited in `main`'s own future, on the
/// main thread (the default), or spawned as a task on the runtime's workers, where the
/// client's own tasks run. The loop hands back its consumer, so that every program drops it
/// (which may send basic.cancel) after the clock stops.
pub async fn consume_in<T, F>(options: &Options, consume: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
{
    if options.consumer_task {
        tokio::spawn(consume).await?
    } else {
        consume.await
    }
}

/// Prints the result line: the rate, and what the timed part cost the whole process (all its
/// threads): CPU seconds (user + system) and context switches (voluntary + involuntary).
pub fn report(client: &str, options: &Options, span: Span) {
    let seconds = span.wall.as_secs_f64();
    println!(
        "{{\"client\":\"{client}\",\"test\":\"{}\",\"port\":{},\"messages\":{},\"size\":{},\"seconds\":{seconds:.4},\"rate\":{:.0},\"cpu_s\":{:.3},\"switches\":{}}}",
        options.test,
        options.port,
        options.messages,
        options.size,
        options.messages as f64 / seconds,
        span.cpu_seconds,
        span.switches,
    );
}

/// A stopwatch that also reads the process's CPU time and context switches.
pub struct Clock {
    wall: Instant,
    usage: Usage,
}

/// What a [`Clock`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Wall-clock time.
    pub wall: Duration,
    /// User + system CPU time of every thread of the process.
    pub cpu_seconds: f64,
    /// Context switches of every thread, voluntary (a thread waited) and involuntary (it was
    /// preempted).
    pub switches: u64,
}

impl Clock {
    /// Wall time, CPU time and context switches since [`start`].
    pub fn elapsed(&self) -> Span {
        let now = Usage::now();
        Span {
            wall: self.wall.elapsed(),
            cpu_seconds: now.cpu_seconds - self.usage.cpu_seconds,
            switches: now.switches.saturating_sub(self.usage.switches),
        }
    }
}

/// Starts a [`Clock`].
pub fn start() -> Clock {
    Clock {
        usage: Usage::now(),
        wall: Instant::now(),
    }
}

/// getrusage(RUSAGE_SELF): every thread of the process, live or ended.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_seconds: f64,
    switches: u64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: getrusage only writes the struct it is given, which is plain data; with
        // RUSAGE_SELF and a valid pointer it cannot fail.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        }
    }
}
