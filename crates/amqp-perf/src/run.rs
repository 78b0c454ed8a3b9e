//! One measurement: declare the topology, start the consumers, then the producers, report
//! every second, wait for the last messages, and check that each arrived exactly once.
//!
//! ```text
//!  producer i ──connection──► exchange ──► queue i mod N ──connection──► consumer j (queue j mod N)
//!     stamps (producer, seq, send time)                       reads the stamp: latency, bitset
//! ```
//!
//! Every producer and consumer has a connection of its own, as in PerfTest, and a thread of
//! its own: a current-thread tokio runtime runs the producer (or the consumer's streams)
//! together with its connection's task. A publish is written, and a delivery handed to its
//! stream, without waking another thread; on a loaded machine every such wake-up is a wait
//! for a core, and those waits are what the latency tail is made of. Counters are per task
//! (written by one task, read by the reporter), so the hot paths share no cache line.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Confirmation, Connection,
    ExchangeDeclareOptions, FieldTable, PublishConfirm, QueueDeclareOptions,
};

use crate::args::Args;
use crate::body::{BodyWriter, Stamp};
use crate::histogram::{Histogram, SharedHistogram};
use crate::pacing::{Pacer, Wait};
use crate::report::{Progress, Summary};
use crate::tracker::Tracker;

/// Why a run could not be done; one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// A task running on a thread of its own, in a current-thread runtime of its own: whatever
/// connection the task opens has its connection task on the same thread.
struct Worker<T> {
    thread: std::thread::JoinHandle<T>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts the future `make` returns on a new thread called `name`.
    fn spawn<F, Fut>(name: String, make: F) -> Result<Worker<T>, RunError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RunError(format!("cannot start a runtime for {name}: {e}")))?;
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || runtime.block_on(make()))
            .map_err(|e| RunError(format!("cannot start a thread for {name}: {e}")))?;
        Ok(Worker { thread })
    }

    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the task's result, without blocking the caller's runtime.
    async fn join(self) -> Result<T, RunError> {
        let name = self.thread.thread().name().unwrap_or("worker").to_owned();
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(result)) => Ok(result),
            _ => Err(RunError(format!("{name} panicked"))),
        }
    }
}

/// A counter written by one task and read by the reporter, alone on its cache line.
#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    /// Adds one; only the owning task writes, so no locked instruction is needed.
    #[inline]
    fn bump(&self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct ProducerStats {
    sent: Counter,
    confirmed: Counter,
    nacked: Counter,
}

#[derive(Default)]
struct ConsumerStats {
    received: Counter,
}

/// What the tasks share.
struct Shared {
    epoch: Instant,
    run_tag: u16,
    stop: AtomicBool,
    producers: Vec<ProducerStats>,
    consumers: Vec<ConsumerStats>,
    latency: SharedHistogram,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn sent(&self) -> u64 {
        self.producers.iter().map(|p| p.sent.get()).sum()
    }

    fn confirmed(&self) -> u64 {
        self.producers
            .iter()
            .map(|p| p.confirmed.get() + p.nacked.get())
            .sum()
    }

    fn received(&self) -> u64 {
        self.consumers.iter().map(|c| c.received.get()).sum()
    }
}

/// What one producer did.
struct ProducerResult {
    sent: u64,
    confirmed: u64,
    nacked: u64,
    /// When its last publish went out, and when its last confirm came, ns since the epoch.
    last_publish_ns: u64,
    last_confirm_ns: u64,
    /// At a fixed rate: how late each publish went out.
    lag: Histogram,
    error: Option<String>,
}

/// What one consumer stream saw.
struct ConsumerResult {
    received: u64,
    tracker: Tracker,
    latency: Histogram,
    first_ns: Option<u64>,
    last_ns: u64,
    /// With --latency-log: every message of this run, as received.
    log: Vec<LoggedMessage>,
    error: Option<String>,
}

/// One line of the latency log.
struct LoggedMessage {
    stamp: Stamp,
    received_ns: u64,
}

/// Writes the latency log: the wall-clock time of the run's ns 0, then one line per message.
fn write_latency_log(
    path: &std::path::Path,
    epoch_unix_ns: u128,
    consumers: &[ConsumerResult],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "epoch_unix_ns {epoch_unix_ns}")?;
    for message in consumers.iter().flat_map(|c| &c.log) {
        let stamp = &message.stamp;
        writeln!(
            out,
            "{} {} {} {}",
            stamp.producer, stamp.sequence, stamp.sent_ns, message.received_ns
        )?;
    }
    out.flush()
}

/// The URI without its password, for messages.
fn redacted(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &uri[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &uri[..scheme + 3],
                    &userinfo[..colon],
                    &uri[at..]
                ),
                None => uri.to_owned(),
            }
        }
        _ => uri.to_owned(),
    }
}

async fn connect(uri: &str) -> Result<Connection, RunError> {
    Connection::open(uri)
        .await
        .map_err(|e| RunError(format!("cannot connect to {}: {e}", redacted(uri))))
}

async fn open_channel(connection: &Connection) -> Result<Channel, RunError> {
    connection
        .create_channel()
        .await
        .map_err(|e| RunError(format!("cannot open a channel: {e}")))
}

/// The queues' names, and whether amqp-perf made the name up (and so deletes them).
fn queue_names(args: &Args) -> (Vec<String>, bool) {
    let (base, generated) = match &args.queue {
        Some(name) => (name.clone(), false),
        None => (format!("amqp-perf-{}", std::process::id()), true),
    };
    let names = if args.queues == 1 {
        vec![base]
    } else {
        (1..=args.queues).map(|i| format!("{base}-{i}")).collect()
    };
    (names, generated)
}

/// Declares the exchange and queues, binds them, and purges named queues.
async fn declare(args: &Args, channel: &Channel, queues: &[String]) -> Result<(), RunError> {
    if args.predeclared {
        return Ok(());
    }
    let fail = |what: String| move |e: amqp_client::Error| RunError(format!("{what}: {e}"));
    if !args.exchange.is_empty() {
        let options = ExchangeDeclareOptions {
            durable: args.durable,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &args.exchange,
                &args.exchange_type,
                options,
                FieldTable::new(),
            )
            .await
            .map_err(fail(format!("cannot declare exchange {}", args.exchange)))?;
    }
    for queue in queues {
        let options = QueueDeclareOptions {
            durable: args.durable,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue, options, FieldTable::new())
            .await
            .map_err(fail(format!("cannot declare queue {queue}")))?;
        if declared.message_count > 0 {
            channel
                .queue_purge(queue)
                .await
                .map_err(fail(format!("cannot purge queue {queue}")))?;
        }
        if !args.exchange.is_empty() {
            let key = args.routing_key.as_deref().unwrap_or(queue);
            channel
                .queue_bind(queue, &args.exchange, key, FieldTable::new())
                .await
                .map_err(fail(format!("cannot bind queue {queue}")))?;
        }
    }
    Ok(())
}

/// Polls a confirm once without waiting.
fn poll_now(confirm: &mut PublishConfirm) -> Poll<Result<Confirmation, amqp_client::Error>> {
    Pin::new(confirm).poll(&mut Context::from_waker(Waker::noop()))
}

struct ProducerPlan {
    index: u16,
    uri: String,
    exchange: String,
    routing_key: String,
    size: usize,
    count: Option<u64>,
    rate: f64,
    burst: u32,
    confirm: Option<usize>,
    persistent: bool,
    mandatory: bool,
}

async fn producer(plan: ProducerPlan, shared: Arc<Shared>) -> ProducerResult {
    let mut result = ProducerResult {
        sent: 0,
        confirmed: 0,
        nacked: 0,
        last_publish_ns: 0,
        last_confirm_ns: 0,
        lag: Histogram::new(),
        error: None,
    };
    if let Err(e) = produce(&plan, &shared, &mut result).await {
        result.error = Some(format!("producer {}: {e}", plan.index));
    }
    result
}

async fn produce(
    plan: &ProducerPlan,
    shared: &Shared,
    result: &mut ProducerResult,
) -> Result<(), RunError> {
    let stats = shared
        .producers
        .get(usize::from(plan.index))
        .ok_or_else(|| RunError("no stats slot".into()))?;
    let connection = connect(&plan.uri).await?;
    let channel = open_channel(&connection).await?;
    if plan.confirm.is_some() {
        channel
            .confirm_select()
            .await
            .map_err(|e| RunError(format!("confirm.select failed: {e}")))?;
    }
    let properties = BasicProperties {
        delivery_mode: Some(if plan.persistent { 2 } else { 1 }),
        ..Default::default()
    };
    let mut writer = BodyWriter::new(plan.size);
    let window = plan.confirm.unwrap_or(0);
    let mut outstanding: VecDeque<PublishConfirm> = VecDeque::with_capacity(window + 1);
    let pacer = Pacer::new(shared.now_ns(), plan.rate, plan.burst);
    let mut sequence = 0u64;
    let outcome: Result<(), RunError> = async {
        loop {
            if shared.stop.load(Ordering::Relaxed) || plan.count.is_some_and(|c| sequence >= c) {
                break;
            }
            let mut now_ns = shared.now_ns();
            if let Some(pacer) = &pacer {
                loop {
                    match pacer.wait(sequence, now_ns) {
                        Wait::Now => break,
                        Wait::Coarse(ahead) => tokio::time::sleep(ahead).await,
                        Wait::Fine(ahead) => {
                            // The connection task writes the last publish first; then the
                            // thread sleeps, on this producer's thread only (see pacing).
                            tokio::task::yield_now().await;
                            std::thread::sleep(ahead);
                        }
                    }
                    now_ns = shared.now_ns();
                }
                result.lag.record(pacer.lag_ns(sequence, now_ns));
            }
            let body = writer.body(Stamp {
                producer: plan.index,
                sequence,
                run: shared.run_tag,
                sent_ns: now_ns,
            });
            let confirm = channel
                .basic_publish(
                    &plan.exchange,
                    &plan.routing_key,
                    properties.clone(),
                    body,
                    plan.mandatory,
                )
                .await
                .map_err(|e| RunError(format!("publish failed: {e}")))?;
            sequence += 1;
            stats.sent.bump();
            if window > 0 {
                outstanding.push_back(confirm);
                // Take the confirms already in, then wait while the window is full.
                loop {
                    let full = outstanding.len() > window;
                    let Some(front) = outstanding.front_mut() else {
                        break;
                    };
                    let outcome = if full {
                        front.await
                    } else {
                        match poll_now(front) {
                            Poll::Ready(outcome) => outcome,
                            Poll::Pending => break,
                        }
                    };
                    outstanding.pop_front();
                    count_confirm(outcome, stats, result)?;
                }
            }
        }
        result.last_publish_ns = shared.now_ns();
        for confirm in outstanding.drain(..) {
            count_confirm(confirm.await, stats, result)?;
        }
        Ok(())
    }
    .await;
    result.sent = sequence;
    result.last_confirm_ns = shared.now_ns();
    if result.last_publish_ns == 0 {
        result.last_publish_ns = result.last_confirm_ns;
    }
    let _ = connection.close().await;
    outcome
}

fn count_confirm(
    outcome: Result<Confirmation, amqp_client::Error>,
    stats: &ProducerStats,
    result: &mut ProducerResult,
) -> Result<(), RunError> {
    match outcome {
        Ok(Confirmation::Ack) | Ok(Confirmation::NotRequested) => {
            result.confirmed += 1;
            stats.confirmed.bump();
        }
        Ok(Confirmation::Nack) => {
            result.nacked += 1;
            stats.nacked.bump();
        }
        Err(e) => return Err(RunError(format!("confirm failed: {e}"))),
    }
    Ok(())
}

struct ConsumerPlan {
    index: u16,
    queue: String,
    autoack: bool,
    multi_ack: u32,
    log: bool,
    producers: usize,
    expected_per_producer: u64,
}

/// Starts one consumer stream on its own channel; returns the channel and consumer tag (to
/// cancel it) and the task.
async fn start_consumer(
    plan: ConsumerPlan,
    connection: &Connection,
    qos: u16,
    shared: Arc<Shared>,
) -> Result<(Channel, String, tokio::task::JoinHandle<ConsumerResult>), RunError> {
    let channel = open_channel(connection).await?;
    if qos > 0 {
        channel
            .basic_qos(qos, false)
            .await
            .map_err(|e| RunError(format!("basic.qos failed: {e}")))?;
    }
    let options = BasicConsumeOptions {
        no_ack: plan.autoack,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(&plan.queue, "", options, FieldTable::new())
        .await
        .map_err(|e| RunError(format!("cannot consume from {}: {e}", plan.queue)))?;
    let tag = consumer.tag().to_string();
    let task = tokio::spawn(consume(plan, channel.clone(), consumer, shared));
    Ok((channel, tag, task))
}

/// One consumer's thread: opens its connection and streams, says which (for cancelling) or
/// why not through `ready`, then waits for its streams to end and closes the connection.
async fn consumer_connection(
    uri: String,
    plans: Vec<ConsumerPlan>,
    qos: u16,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<Result<Vec<(Channel, String)>, RunError>>,
) -> Result<Vec<ConsumerResult>, RunError> {
    let mut streams = Vec::new();
    let mut tasks = Vec::new();
    let started = async {
        let connection = connect(&uri).await?;
        for plan in plans {
            let (channel, tag, task) =
                start_consumer(plan, &connection, qos, shared.clone()).await?;
            streams.push((channel, tag));
            tasks.push(task);
        }
        Ok::<Connection, RunError>(connection)
    }
    .await;
    let connection = match started {
        Ok(connection) => {
            let _ = ready.send(Ok(streams));
            connection
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let mut results = Vec::new();
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(e) => return Err(RunError(format!("consumer task: {e}"))),
        }
    }
    let _ = connection.close().await;
    Ok(results)
}

async fn consume(
    plan: ConsumerPlan,
    channel: Channel,
    mut consumer: amqp_client::Consumer,
    shared: Arc<Shared>,
) -> ConsumerResult {
    let mut result = ConsumerResult {
        received: 0,
        tracker: Tracker::new(plan.producers, plan.expected_per_producer),
        latency: Histogram::new(),
        first_ns: None,
        last_ns: 0,
        log: Vec::new(),
        error: None,
    };
    let Some(stats) = shared.consumers.get(usize::from(plan.index)) else {
        return result;
    };
    let mut unacked = 0u32;
    let mut last_tag = 0u64;
    while let Some(item) = consumer.next().await {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(e) => {
                result.error = Some(format!("consumer {}: {e}", plan.index));
                break;
            }
        };
        let now_ns = shared.now_ns();
        match Stamp::read(&delivery.body) {
            Some(stamp) if stamp.run == shared.run_tag => {
                result
                    .tracker
                    .record(stamp.producer, stamp.sequence, delivery.redelivered);
                let latency = now_ns.saturating_sub(stamp.sent_ns);
                if plan.log {
                    result.log.push(LoggedMessage {
                        stamp,
                        received_ns: now_ns,
                    });
                }
                result.latency.record(latency);
                shared.latency.record(latency);
            }
            _ => result.tracker.record_foreign(),
        }
        result.received += 1;
        result.first_ns.get_or_insert(now_ns);
        result.last_ns = now_ns;
        stats.received.bump();
        if !plan.autoack {
            unacked += 1;
            last_tag = delivery.delivery_tag;
            if unacked >= plan.multi_ack {
                if let Err(e) = channel.basic_ack(last_tag, plan.multi_ack > 1).await {
                    result.error = Some(format!("consumer {}: ack failed: {e}", plan.index));
                    break;
                }
                unacked = 0;
            }
        }
    }
    if unacked > 0 && result.error.is_none() {
        let _ = channel.basic_ack(last_tag, true).await;
    }
    result
}

/// Runs the measurement the flags describe. Progress lines go to `progress`.
pub async fn run(args: &Args, mut progress: impl FnMut(&Progress)) -> Result<Summary, RunError> {
    args.validate().map_err(RunError)?;
    let epoch = Instant::now();
    let epoch_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run_tag = (std::process::id() as u16)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(0));
    let (queues, generated) = queue_names(args);
    let setup = connect(&args.uri).await?;
    let setup_channel = open_channel(&setup).await?;
    declare(args, &setup_channel, &queues).await?;

    let shared = Arc::new(Shared {
        epoch,
        run_tag,
        stop: AtomicBool::new(false),
        producers: (0..args.producers)
            .map(|_| ProducerStats::default())
            .collect(),
        consumers: (0..args.consumers)
            .map(|_| ConsumerStats::default())
            .collect(),
        latency: SharedHistogram::new(),
    });

    // Consumers first, so nothing is published before they listen. Consumer j takes queue
    // j mod N; with fewer consumers than queues, consumer j also takes j + y, j + 2y, ...
    let mut consumers = Vec::new();
    let mut streams = Vec::new();
    let expected_per_producer = args.pmessages.unwrap_or(1 << 16);
    for j in 0..args.consumers {
        let mut mine: Vec<usize> = (usize::from(j)..queues.len())
            .step_by(usize::from(args.consumers))
            .collect();
        if mine.is_empty() {
            mine.push(usize::from(j) % queues.len());
        }
        let plans = mine
            .into_iter()
            .map(|q| ConsumerPlan {
                index: j,
                queue: queues[q].clone(),
                autoack: args.autoack,
                multi_ack: args.multi_ack,
                log: args.latency_log.is_some(),
                producers: usize::from(args.producers),
                expected_per_producer,
            })
            .collect();
        let (ready, started) = tokio::sync::oneshot::channel();
        let (uri, qos, shared) = (args.uri.clone(), args.qos, shared.clone());
        consumers.push(Worker::spawn(format!("consumer {j}"), move || {
            consumer_connection(uri, plans, qos, shared, ready)
        })?);
        match started.await {
            Ok(Ok(mine)) => streams.extend(mine),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(RunError(format!("consumer {j} ended before it started"))),
        }
    }

    let stop_on_signal = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let start_ns = shared.now_ns();
    if let Some(seconds) = args.time {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            shared.stop.store(true, Ordering::Relaxed);
        });
    }
    let mut producers = Vec::new();
    for i in 0..args.producers {
        let queue = &queues[usize::from(i) % queues.len()];
        let plan = ProducerPlan {
            index: i,
            uri: args.uri.clone(),
            exchange: args.exchange.clone(),
            routing_key: args.routing_key.clone().unwrap_or_else(|| queue.clone()),
            size: args.size,
            count: args.pmessages,
            rate: args.rate,
            burst: args.burst,
            confirm: args.confirm,
            persistent: args.persistent(),
            mandatory: args.mandatory(),
        };
        let shared = shared.clone();
        producers.push(Worker::spawn(format!("producer {i}"), move || {
            producer(plan, shared)
        })?);
    }

    // Report every second; once the producers are done, wait for the consumers to catch up.
    let drain_timeout = Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut drain: Option<(u64, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        if now >= next_report {
            next_report += Duration::from_secs(1);
            let (sent, confirmed, received) =
                (shared.sent(), shared.confirmed(), shared.received());
            let seconds = now.duration_since(last.0).as_secs_f64();
            progress(&Progress {
                elapsed: Duration::from_nanos(shared.now_ns().saturating_sub(start_ns)),
                sent_rate: (sent - last.1) as f64 / seconds,
                confirmed_rate: args.confirm.map(|_| (confirmed - last.2) as f64 / seconds),
                received_rate: (args.consumers > 0).then_some((received - last.3) as f64 / seconds),
                latency: shared.latency.take().summary(),
            });
            last = (now, sent, confirmed, received);
        }
        let producers_done = producers.iter().all(|p| p.is_finished());
        let consumed_enough = args
            .cmessages
            .is_some_and(|n| shared.consumers.iter().all(|c| c.received.get() >= n));
        if args.producers == 0 {
            if shared.stop.load(Ordering::Relaxed) || consumed_enough {
                break;
            }
            continue;
        }
        if !producers_done {
            continue;
        }
        if args.consumers == 0 {
            break;
        }
        let received = shared.received();
        if received >= shared.sent() {
            break;
        }
        match drain {
            Some((seen, since)) if seen == received => {
                if now.duration_since(since) >= drain_timeout {
                    break;
                }
            }
            _ => drain = Some((received, now)),
        }
    }
    stop_on_signal.abort();
    shared.stop.store(true, Ordering::Relaxed);

    let mut producer_results = Vec::new();
    for worker in producers {
        producer_results.push(worker.join().await?);
    }
    for (channel, tag) in &streams {
        let _ = channel.basic_cancel(tag).await;
    }
    let mut consumer_results = Vec::new();
    for worker in consumers {
        consumer_results.extend(worker.join().await??);
    }

    // What is left in the queues (the whole backlog, when nobody consumed).
    let mut queue_depth = 0u64;
    for queue in &queues {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(declared) = setup_channel
            .queue_declare(queue, options, FieldTable::new())
            .await
        {
            queue_depth += u64::from(declared.message_count);
        }
    }
    if generated && !args.predeclared {
        for queue in &queues {
            let _ = setup_channel.queue_delete(queue, false, false).await;
        }
    }
    let _ = setup.close().await;

    if let Some(path) = &args.latency_log {
        write_latency_log(path, epoch_unix_ns, &consumer_results).map_err(|e| {
            RunError(format!(
                "cannot write the latency log {}: {e}",
                path.display()
            ))
        })?;
    }

    let mut tracker = Tracker::new(usize::from(args.producers), 0);
    let mut schedule_lag = Histogram::new();
    for p in &producer_results {
        schedule_lag.merge(&p.lag);
    }
    let mut latency = Histogram::new();
    for c in &consumer_results {
        tracker.merge(&c.tracker);
        latency.merge(&c.latency);
    }
    let sent_per_producer: Vec<u64> = producer_results.iter().map(|p| p.sent).collect();
    let nacked = producer_results.iter().map(|p| p.nacked).sum();
    let seconds_since = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
    let publish_end = producer_results.iter().map(|p| p.last_publish_ns).max();
    let confirm_end = producer_results.iter().map(|p| p.last_confirm_ns).max();
    let receive_start = if args.producers == 0 {
        consumer_results.iter().filter_map(|c| c.first_ns).min()
    } else {
        Some(start_ns)
    };
    let receive_end = consumer_results.iter().map(|c| c.last_ns).max();
    Ok(Summary {
        producers: args.producers,
        consumers: args.consumers,
        queues: queues.len(),
        size: args.size,
        persistent: args.persistent(),
        confirm: args.confirm,
        qos: args.qos,
        multi_ack: args.multi_ack,
        autoack: args.autoack,
        publish_seconds: publish_end.map_or(0.0, |end| seconds_since(start_ns, end)),
        sent: sent_per_producer.iter().sum(),
        confirmed: producer_results.iter().map(|p| p.confirmed).sum(),
        nacked,
        confirm_seconds: confirm_end.map_or(0.0, |end| seconds_since(start_ns, end)),
        received: consumer_results.iter().map(|c| c.received).sum(),
        receive_seconds: match (receive_start, receive_end) {
            (Some(start), Some(end)) => seconds_since(start, end),
            _ => 0.0,
        },
        latency: latency.summary(),
        schedule_lag: schedule_lag.summary(),
        verdict: tracker.verdict(&sent_per_producer, nacked),
        queue_depth,
        errors: producer_results
            .iter()
            .filter_map(|p| p.error.clone())
            .chain(consumer_results.iter().filter_map(|c| c.error.clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_password_only() {
        assert_eq!(
            redacted("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redacted("amqp://host"), "amqp://host");
    }

    #[test]
    fn counter_bump_adds_one() {
        let counter = Counter::default();
        counter.bump();
        counter.bump();
        assert_eq!(counter.get(), 2);
    }
}
