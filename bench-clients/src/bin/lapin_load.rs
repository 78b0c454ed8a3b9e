//! A lapin load generator that is not the bottleneck: 1 producer connection and 1 consumer
//! connection on one fresh queue, small transient messages, for a fixed time or count.
//! See ../../LAPIN_LOAD.md for how it was used and what it measured.
//!
//! ```text
//! bench-lapin-load [--uri URI] [-z SECONDS | -C COUNT] [-s SIZE] [--publish queued|window]
//!                  [--window W] [-a | -q QOS [--multi-ack N]] [--threads T] [--max-backlog B]
//!                  [--poll-us MICROS] [--json]
//! ```
//!
//! Why not a plain loop: lapin 4.12's `basic_publish` (and `basic_ack`) returns only once its
//! IO thread has written the frames to the socket, so a loop that awaits each publish has one
//! message in flight and pays two cross-thread wake-ups per message. But the first poll of
//! the future already queues the frames for the IO thread, in order. So by default
//! (`--publish queued`) the producer polls each publish future once and drops it: no future
//! is kept, no wake-up comes back per write; only the last publish is awaited (once it is
//! written, all are). `--publish window` is the earlier way: up to `W` publish futures
//! outstanding in a `FuturesUnordered`, each awaited. The consumer acks with
//! `multiple = true` every N deliveries, queued the same way (polled once, dropped; the last,
//! partial batch awaited). With `--max-backlog` the producer sleeps at the cap until the
//! consumer notifies it (every quarter of the cap, at most every 256 messages) instead of
//! waking on every write. The consumer drains what lapin has buffered and then sleeps
//! `--poll-us` (default 1000; 0: woken by lapin's IO thread per delivery, as before).
//!
//! The body carries the sequence number (8 octets, little-endian) and, when there is room, the
//! send time (8 octets, nanoseconds since the run started): the consumer checks that every
//! message arrives exactly once and samples the latency. The producer does not wait for the
//! consumer unless `--max-backlog` is given, so the report says how far ahead it ran: the
//! backlog (published but not yet received) when publishing stopped and at its largest, and
//! the receive rate over the steady window (from 2 s in to the end of publishing).
//!
//! The JSON line (`--json`) has the same numbers as the text report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Receive counts are kept per slot of this length, for the steady-window rate.
const SLOT: Duration = Duration::from_millis(100);
/// The steady window starts this long after the first publish.
const WARM_UP: Duration = Duration::from_secs(2);
/// Every how many messages a latency sample is kept.
const LATENCY_SAMPLE_EVERY: u64 = 64;
/// How long the consumer waits for a delivery once publishing has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags.
#[derive(Debug, Clone)]
struct Options {
    uri: String,
    duration: Option<Duration>,
    count: Option<u64>,
    size: usize,
    window: usize,
    autoack: bool,
    qos: u16,
    multi_ack: u64,
    threads: usize,
    max_backlog: u64,
    publish: PublishMode,
    /// The consumer drains what lapin has buffered and then sleeps this long (default 1 ms);
    /// zero: it waits on the `Consumer` stream and is woken per delivery.
    poll_pause: Duration,
    queue: String,
    json: bool,
}

impl Options {
    fn from_args() -> Options {
        let mut options = Options {
            uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            duration: None,
            count: None,
            size: 16,
            window: 1000,
            autoack: false,
            qos: 1000,
            multi_ack: 100,
            threads: 2,
            max_backlog: 0,
            publish: PublishMode::Queued,
            poll_pause: Duration::from_millis(1),
            queue: format!("lapin-load-{}", std::process::id()),
            json: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "-a" | "--autoack" => {
                    options.autoack = true;
                    continue;
                }
                "--json" => {
                    options.json = true;
                    continue;
                }
                _ => {}
            }
            let value = args.next().unwrap_or_else(|| usage(&flag));
            let number = |value: &str| value.parse::<u64>().unwrap_or_else(|_| usage(&flag));
            match flag.as_str() {
                "--uri" => options.uri = value,
                "-z" => options.duration = Some(Duration::from_secs(number(&value))),
                "-C" => options.count = Some(number(&value)),
                "-s" => options.size = number(&value) as usize,
                "--window" => options.window = number(&value).max(1) as usize,
                "-q" => options.qos = number(&value) as u16,
                "--multi-ack" => options.multi_ack = number(&value).max(1),
                "--threads" => options.threads = number(&value) as usize,
                "--max-backlog" => options.max_backlog = number(&value),
                "--queue" => options.queue = value,
                "--poll-us" => options.poll_pause = Duration::from_micros(number(&value)),
                "--publish" => {
                    options.publish = match value.as_str() {
                        "window" => PublishMode::Window,
                        "queued" => PublishMode::Queued,
                        _ => usage(&flag),
                    }
                }
                _ => usage(&flag),
            }
        }
        if options.size < 8 {
            usage("-s");
        }
        if options.duration.is_none() && options.count.is_none() {
            options.duration = Some(Duration::from_secs(10));
        }
        if !options.autoack && options.multi_ack > u64::from(options.qos) && options.qos > 0 {
            eprintln!("--multi-ack must not exceed -q: the consumer would wait forever");
            std::process::exit(2);
        }
        options
    }
}

/// How the producer hands its publishes to lapin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishMode {
    /// Up to `--window` publish futures outstanding in a `FuturesUnordered`, each awaited
    /// until lapin's IO thread has written it.
    Window,
    /// Each publish future polled once (which queues its frames for the IO thread) and then
    /// dropped; only the last one is awaited. The backlog cap is the only flow control.
    Queued,
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad flag or value near {flag:?}; flags: --uri URI -z SECONDS -C COUNT -s SIZE (>= 8) \
         --window W -a | -q QOS --multi-ack N --threads T (0: current thread) \
         --max-backlog B --publish window|queued --poll-us MICROS --queue NAME --json"
    );
    std::process::exit(2)
}

/// What the producer and the consumer share.
struct Shared {
    /// The clock every timestamp in a body is relative to.
    epoch: Instant,
    /// Publishes queued for the IO thread so far.
    published: AtomicU64,
    /// Messages received so far.
    received: AtomicU64,
    /// Notified once the producer has queued its last publish (`published` is final then).
    producer_done: Notify,
    /// The largest backlog (published, not yet received) seen by the probe.
    max_backlog: AtomicU64,
    /// Notified by the consumer every `resume_every` messages, for a producer waiting at the
    /// backlog cap.
    consumer_progress: Notify,
    resume_every: u64,
}

impl Shared {
    fn nanos_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What the producer reports.
struct ProducerReport {
    published: u64,
    first_publish: Duration,
    last_publish_written: Duration,
    backlog_waits: u64,
}

/// What the consumer reports.
struct ConsumerReport {
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    last_receive: Duration,
    /// Receive counts per SLOT since the epoch.
    slots: Vec<u64>,
    /// Latency samples in microseconds.
    latencies_us: Vec<u64>,
    timed_out: bool,
}

fn main() -> Result<(), Error> {
    let options = Options::from_args();
    let runtime = if options.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(options))
}

async fn run(options: Options) -> Result<(), Error> {
    let producer_connection =
        Connection::connect(&options.uri, ConnectionProperties::default()).await?;
    let consumer_connection =
        Connection::connect(&options.uri, ConnectionProperties::default()).await?;
    let producer_channel = producer_connection.create_channel().await?;
    let consumer_channel = consumer_connection.create_channel().await?;
    consumer_channel
        .queue_declare(
            options.queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    if !options.autoack {
        consumer_channel
            .basic_qos(options.qos, BasicQosOptions::default())
            .await?;
    }
    let consumer = consumer_channel
        .basic_consume(
            options.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: options.autoack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
        producer_done: Notify::new(),
        max_backlog: AtomicU64::new(0),
        consumer_progress: Notify::new(),
        // A producer at the cap resumes once a quarter of it (at most 256) has been received.
        resume_every: (options.max_backlog / 4).clamp(1, 256),
    });
    let backlog_probe = tokio::spawn(probe_backlog(shared.clone()));
    let consuming = tokio::spawn(consume(
        consumer_channel.clone(),
        consumer,
        options.clone(),
        shared.clone(),
    ));
    let produced = match options.publish {
        PublishMode::Window => produce_window(&producer_channel, &options, &shared).await,
        PublishMode::Queued => produce_queued(&producer_channel, &options, &shared).await,
    };
    shared.producer_done.notify_one();
    let consumed = consuming.await?;
    backlog_probe.abort();
    let max_backlog = shared.max_backlog.load(Ordering::Relaxed);
    let (produced, consumed) = (produced?, consumed?);

    consumer_channel
        .queue_delete(options.queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    producer_connection.close(200, "bye".into()).await?;
    consumer_connection.close(200, "bye".into()).await?;
    report(&options, &produced, &consumed, max_backlog);
    if consumed.unique != produced.published || consumed.duplicates != 0 {
        return Err(format!(
            "published {} but received {} distinct ({} duplicates)",
            produced.published, consumed.unique, consumed.duplicates
        )
        .into());
    }
    Ok(())
}

/// Publishes until the duration is over or the count is reached, each publish future polled
/// once and dropped: the first poll of lapin's `basic_publish` queues the frames for its IO
/// thread (in order), the rest of the future only waits for the write. The last publish is
/// awaited, so `last_publish_written` is when every frame was written. With `--max-backlog`
/// the producer sleeps at the cap until the consumer says it has made progress.
async fn produce_queued(
    channel: &Channel,
    options: &Options,
    shared: &Shared,
) -> Result<ProducerReport, Error> {
    let deadline = options.duration.map(|duration| Instant::now() + duration);
    let mut body = vec![0u8; options.size];
    let mut sequence = 0u64;
    let mut backlog_waits = 0u64;
    let first_publish = shared.epoch.elapsed();
    let mut check_clock = true;
    while options.count != Some(0) {
        if options.max_backlog > 0
            && sequence.saturating_sub(shared.received.load(Ordering::Relaxed))
                >= options.max_backlog
        {
            backlog_waits += 1;
            shared.published.store(sequence, Ordering::Relaxed);
            shared.consumer_progress.notified().await;
            check_clock = true;
            continue;
        }
        // The message after the deadline (or the count-th) is the last one.
        let last = options.count.is_some_and(|count| sequence + 1 >= count)
            || (check_clock && deadline.is_some_and(|deadline| Instant::now() >= deadline));
        check_clock = false;
        body[..8].copy_from_slice(&sequence.to_le_bytes());
        if options.size >= 16 {
            body[8..16].copy_from_slice(&shared.nanos_since_epoch().to_le_bytes());
        }
        sequence += 1;
        if last {
            // Frames are written in the order they were queued: once this one is written,
            // every message is.
            drop(publish(channel, options, &body).await?);
            break;
        }
        // Not in confirm mode: a ready publish carries only an error worth reading.
        if let Some(queued) = publish(channel, options, &body).now_or_never() {
            drop(queued?);
        }
        // Every 256 publishes, check the clock, publish the count and let other tasks run.
        if sequence.is_multiple_of(256) {
            shared.published.store(sequence, Ordering::Relaxed);
            check_clock = true;
            tokio::task::yield_now().await;
        }
    }
    shared.published.store(sequence, Ordering::Relaxed);
    Ok(ProducerReport {
        published: sequence,
        first_publish,
        last_publish_written: shared.epoch.elapsed(),
        backlog_waits,
    })
}

/// One transient message to the queue through the default exchange.
async fn publish(
    channel: &Channel,
    options: &Options,
    body: &[u8],
) -> lapin::Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            "".into(),
            options.queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
}

/// Publishes until the duration is over or the count is reached, with up to `window`
/// publishes outstanding (queued for lapin's IO thread, not yet written).
async fn produce_window(
    channel: &Channel,
    options: &Options,
    shared: &Shared,
) -> Result<ProducerReport, Error> {
    let deadline = options.duration.map(|duration| Instant::now() + duration);
    let mut in_flight = FuturesUnordered::new();
    let mut sequence = 0u64;
    let mut backlog_waits = 0u64;
    let first_publish = shared.epoch.elapsed();
    let mut stopped = false;
    loop {
        while !stopped && in_flight.len() < options.window {
            if options.count.is_some_and(|count| sequence >= count)
                || deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                stopped = true;
                break;
            }
            if options.max_backlog > 0
                && sequence.saturating_sub(shared.received.load(Ordering::Relaxed))
                    >= options.max_backlog
            {
                backlog_waits += 1;
                if in_flight.is_empty() {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                break;
            }
            let mut body = vec![0u8; options.size];
            body[..8].copy_from_slice(&sequence.to_le_bytes());
            if options.size >= 16 {
                body[8..16].copy_from_slice(&shared.nanos_since_epoch().to_le_bytes());
            }
            in_flight.push(async move {
                channel
                    .basic_publish(
                        "".into(),
                        options.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await
            });
            sequence += 1;
            // Every 256 publishes, check the clock and let the futures run.
            if sequence.is_multiple_of(256) {
                break;
            }
        }
        if stopped && in_flight.is_empty() {
            break;
        }
        // Polls the new futures (each queues its frames) and waits for at least one write.
        if let Some(written) = in_flight.next().await {
            // Not in confirm mode: the confirm is ready at once and says nothing.
            drop(written?);
        }
        shared.published.store(sequence, Ordering::Relaxed);
    }
    shared.published.store(sequence, Ordering::Relaxed);
    Ok(ProducerReport {
        published: sequence,
        first_publish,
        last_publish_written: shared.epoch.elapsed(),
        backlog_waits,
    })
}

/// The consumer's bookkeeping, the same whichever way the deliveries arrive: the counts, the
/// exactly-once check, the receive slots, the latency samples and the ack batches.
struct Tally {
    report: ConsumerReport,
    /// Which sequence numbers have arrived.
    seen: Vec<bool>,
    next_expected: u64,
    /// Deliveries since the last ack, and the newest delivery tag.
    unacked: u64,
    last_tag: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            report: ConsumerReport {
                received: 0,
                unique: 0,
                duplicates: 0,
                out_of_order: 0,
                last_receive: Duration::ZERO,
                slots: Vec::new(),
                latencies_us: Vec::new(),
                timed_out: false,
            },
            seen: Vec::new(),
            next_expected: 0,
            unacked: 0,
            last_tag: 0,
        }
    }

    /// Records one delivery. Returns the delivery tag to ack (with `multiple = true`) when an
    /// ack batch is full.
    fn record(
        &mut self,
        delivery: &Delivery,
        options: &Options,
        shared: &Shared,
    ) -> Result<Option<u64>, Error> {
        let report = &mut self.report;
        let now = shared.epoch.elapsed();
        report.received += 1;
        shared.received.store(report.received, Ordering::SeqCst);
        if report.received.is_multiple_of(shared.resume_every) {
            shared.consumer_progress.notify_one();
        }
        report.last_receive = now;
        let slot = (now.as_nanos() / SLOT.as_nanos()) as usize;
        if report.slots.len() <= slot {
            report.slots.resize(slot + 1, 0);
        }
        report.slots[slot] += 1;

        let data = &delivery.data;
        let sequence = data
            .get(..8)
            .and_then(|octets| octets.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("a body shorter than 8 octets")?;
        let index = sequence as usize;
        if self.seen.len() <= index {
            self.seen
                .resize((index + 1).max(self.seen.len() * 2), false);
        }
        if self.seen[index] {
            report.duplicates += 1;
        } else {
            self.seen[index] = true;
            report.unique += 1;
        }
        if sequence != self.next_expected {
            report.out_of_order += 1;
        }
        self.next_expected = sequence + 1;
        if sequence.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            if let Some(sent) = data
                .get(8..16)
                .and_then(|octets| octets.try_into().ok())
                .map(u64::from_le_bytes)
            {
                let latency = (now.as_nanos() as u64).saturating_sub(sent) / 1000;
                report.latencies_us.push(latency);
            }
        }

        if options.autoack {
            return Ok(None);
        }
        self.unacked += 1;
        self.last_tag = delivery.delivery_tag;
        if self.unacked < options.multi_ack {
            return Ok(None);
        }
        self.unacked = 0;
        Ok(Some(self.last_tag))
    }

    /// Acks the last, partial batch (if any) and waits until the ack is written.
    async fn finish(mut self, channel: &Channel) -> Result<ConsumerReport, Error> {
        if self.unacked > 0 {
            self.unacked = 0;
            channel
                .basic_ack(self.last_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(self.report)
    }
}

/// Queues `basic.ack multiple=true` up to `tag` without waiting for the write: as with
/// `produce_queued`, the first poll queues the frame (acks leave in the order queued).
fn queue_ack(channel: &Channel, tag: u64) -> Result<(), Error> {
    let ack = channel.basic_ack(tag, BasicAckOptions { multiple: true });
    if let Some(acked) = ack.now_or_never() {
        acked?;
    }
    Ok(())
}

/// Receives from the `Consumer` stream until every published message is in.
async fn consume(
    channel: Channel,
    mut consumer: lapin::Consumer,
    options: Options,
    shared: Arc<Shared>,
) -> Result<ConsumerReport, Error> {
    let mut tally = Tally::new();
    let producer_done = shared.producer_done.notified();
    tokio::pin!(producer_done);
    let mut published = None;
    let mut idle_since: Option<Instant> = None;
    loop {
        if published.is_some_and(|published| tally.report.received >= published) {
            break;
        }
        let delivery = if !options.poll_pause.is_zero() {
            match consumer.next().now_or_never() {
                Some(delivery) => {
                    idle_since = None;
                    delivery
                }
                None => {
                    // Nothing buffered: look again after a pause instead of being woken by
                    // lapin's IO thread for every delivery.
                    let idle = *idle_since.get_or_insert_with(Instant::now);
                    if published.is_none() {
                        if producer_done.as_mut().now_or_never().is_some() {
                            published = Some(shared.published.load(Ordering::SeqCst));
                        }
                    } else if idle.elapsed() >= DRAIN_TIMEOUT {
                        tally.report.timed_out = true;
                        break;
                    }
                    tokio::time::sleep(options.poll_pause).await;
                    continue;
                }
            }
        } else if published.is_none() {
            tokio::select! {
                biased;
                delivery = consumer.next() => delivery,
                () = &mut producer_done => {
                    published = Some(shared.published.load(Ordering::SeqCst));
                    continue;
                }
            }
        } else {
            match tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
                Ok(delivery) => delivery,
                Err(_) => {
                    tally.report.timed_out = true;
                    break;
                }
            }
        };
        let delivery = match delivery {
            Some(delivery) => delivery?,
            None => return Err("the consumer ended".into()),
        };
        if let Some(tag) = tally.record(&delivery, &options, &shared)? {
            queue_ack(&channel, tag)?;
        }
    }
    tally.finish(&channel).await
}

/// Samples the backlog (published, not yet received) every SLOT into `max_backlog`.
async fn probe_backlog(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(SLOT);
    loop {
        ticks.tick().await;
        let published = shared.published.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        shared
            .max_backlog
            .fetch_max(published.saturating_sub(received), Ordering::Relaxed);
    }
}

fn report(
    options: &Options,
    produced: &ProducerReport,
    consumed: &ConsumerReport,
    max_backlog: u64,
) {
    let secs = |duration: Duration| duration.as_secs_f64();
    let publish_span = secs(produced.last_publish_written - produced.first_publish);
    let end_to_end_span = secs(consumed.last_receive.saturating_sub(produced.first_publish));
    let sent_rate = produced.published as f64 / publish_span.max(1e-9);
    let end_to_end_rate = consumed.received as f64 / end_to_end_span.max(1e-9);
    // The steady window: whole slots from WARM_UP to the end of publishing.
    let first_slot = ((produced.first_publish + WARM_UP).as_nanos() / SLOT.as_nanos()) as usize;
    let last_slot = (produced.last_publish_written.as_nanos() / SLOT.as_nanos()) as usize;
    let steady: u64 = consumed
        .slots
        .get(first_slot..last_slot.min(consumed.slots.len()))
        .map(|slots| slots.iter().sum())
        .unwrap_or(0);
    let steady_span = last_slot.saturating_sub(first_slot) as f64 * secs(SLOT);
    let steady_rate = if steady_span > 0.0 {
        steady as f64 / steady_span
    } else {
        f64::NAN
    };
    let drain = end_to_end_span - publish_span;
    let mut latencies = consumed.latencies_us.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[index]
    };
    let mode = if options.autoack {
        "autoack".to_string()
    } else {
        format!("ack qos {} multi-ack {}", options.qos, options.multi_ack)
    };
    if options.json {
        println!(
            "{{\"mode\":\"{mode}\",\"size\":{},\"publish\":\"{:?}\",\"window\":{},\
             \"threads\":{},\"poll_us\":{},\
             \"published\":{},\"received\":{},\"unique\":{},\"duplicates\":{},\
             \"out_of_order\":{},\"timed_out\":{},\"publish_s\":{publish_span:.3},\
             \"end_to_end_s\":{end_to_end_span:.3},\"drain_s\":{drain:.3},\
             \"sent_rate\":{sent_rate:.0},\"end_to_end_rate\":{end_to_end_rate:.0},\
             \"steady_receive_rate\":{steady_rate:.0},\"max_backlog\":{max_backlog},\
             \"backlog_waits\":{},\"latency_p50_us\":{},\"latency_p99_us\":{},\
             \"latency_max_us\":{}}}",
            options.size,
            options.publish,
            options.window,
            options.threads,
            options.poll_pause.as_micros(),
            produced.published,
            consumed.received,
            consumed.unique,
            consumed.duplicates,
            consumed.out_of_order,
            consumed.timed_out,
            produced.backlog_waits,
            percentile(0.5),
            percentile(0.99),
            latencies.last().copied().unwrap_or(0),
        );
    } else {
        println!(
            "lapin-load {mode}, {} B, publish {:?} (window {}), poll {} µs: published {} in {publish_span:.2} s \
             ({sent_rate:.0} msg/s); received {} ({} distinct, {} duplicates, {} out of order{}) \
             end to end in {end_to_end_span:.2} s ({end_to_end_rate:.0} msg/s); steady receive \
             rate {steady_rate:.0} msg/s; drain after publishing {drain:.2} s; largest backlog \
             {max_backlog}; latency p50 {} µs, p99 {} µs, max {} µs",
            options.size,
            options.publish,
            options.window,
            options.poll_pause.as_micros(),
            produced.published,
            consumed.received,
            consumed.unique,
            consumed.duplicates,
            consumed.out_of_order,
            if consumed.timed_out {
                ", TIMED OUT"
            } else {
                ""
            },
            percentile(0.5),
            percentile(0.99),
            latencies.last().copied().unwrap_or(0),
        );
    }
}
