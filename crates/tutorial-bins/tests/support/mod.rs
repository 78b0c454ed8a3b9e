//! What the tutorial tests share: a broker to run against (mini-broker in this process, or
//! the RabbitMQ at `AMQP_URL`), and the tutorial programs run as a user runs them, as
//! separate processes whose output is read line by line through a pipe.

// Each test file uses its own part of this module.
#![allow(dead_code)]

pub mod work_queues;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use amqp_client::{Connection, FieldTable, QueueDeclareOptions};

pub const SEND: &str = env!("CARGO_BIN_EXE_send");
pub const RECEIVE: &str = env!("CARGO_BIN_EXE_receive");
pub const NEW_TASK: &str = env!("CARGO_BIN_EXE_new_task");
pub const WORKER: &str = env!("CARGO_BIN_EXE_worker");
pub const EMIT_LOG: &str = env!("CARGO_BIN_EXE_emit_log");
pub const RECEIVE_LOGS: &str = env!("CARGO_BIN_EXE_receive_logs");
pub const EMIT_LOG_DIRECT: &str = env!("CARGO_BIN_EXE_emit_log_direct");
pub const RECEIVE_LOGS_DIRECT: &str = env!("CARGO_BIN_EXE_receive_logs_direct");
pub const EMIT_LOG_TOPIC: &str = env!("CARGO_BIN_EXE_emit_log_topic");
pub const RECEIVE_LOGS_TOPIC: &str = env!("CARGO_BIN_EXE_receive_logs_topic");
pub const RPC_SERVER: &str = env!("CARGO_BIN_EXE_rpc_server");
pub const RPC_CLIENT: &str = env!("CARGO_BIN_EXE_rpc_client");
pub const PUBLISHER_CONFIRMS: &str = env!("CARGO_BIN_EXE_publisher_confirms");
pub const DEMO: &str = env!("CARGO_BIN_EXE_demo");

/// RabbitMQ's tutorial 2 in Python (pika), as the tutorial writes it.
pub const PIKA_NEW_TASK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/new_task.py");
pub const PIKA_WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/worker.py");

/// How long a program may take to print an expected line, or to finish.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A mini-broker running in this test process, on a free port, with its management API
/// (for `mini-broker ctl`) on another.
pub struct MiniBroker {
    pub url: String,
    pub addr: SocketAddr,
    pub mgmt_addr: SocketAddr,
    /// Where it keeps durable queues and persistent messages, if anywhere.
    data_dir: Option<PathBuf>,
    runtime: Option<tokio::runtime::Runtime>,
    broker: Option<mini_broker::RunningBroker>,
}

impl MiniBroker {
    /// A broker that keeps nothing on disk.
    pub fn start() -> MiniBroker {
        MiniBroker::launch(None)
    }

    /// A broker that keeps durable queues and persistent messages in `data_dir`, and finds
    /// them there again after [`MiniBroker::restart`].
    pub fn start_in(data_dir: &Path) -> MiniBroker {
        MiniBroker::launch(Some(data_dir.to_owned()))
    }

    fn launch(data_dir: Option<PathBuf>) -> MiniBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let broker = runtime
            .block_on(mini_broker::start(MiniBroker::options(
                any_port,
                any_port,
                data_dir.clone(),
            )))
            .expect("mini-broker starts");
        MiniBroker {
            url: broker.url(),
            addr: broker.amqp_addr,
            mgmt_addr: broker.mgmt_addr.expect("management API address"),
            data_dir,
            runtime: Some(runtime),
            broker: Some(broker),
        }
    }

    fn options(
        listen: SocketAddr,
        mgmt_listen: SocketAddr,
        data_dir: Option<PathBuf>,
    ) -> mini_broker::BrokerOptions {
        mini_broker::BrokerOptions {
            listen,
            mgmt_listen: Some(mgmt_listen),
            data_dir,
            ..Default::default()
        }
    }

    /// Stops the broker: every connection is closed with 320 CONNECTION_FORCED.
    pub fn shutdown(&mut self) {
        if let (Some(runtime), Some(broker)) = (&self.runtime, self.broker.take()) {
            runtime.block_on(broker.shutdown());
        }
    }

    /// Stops the broker (320 CONNECTION_FORCED to every connection, everything on disk) and
    /// starts it again on the same addresses with the same data directory: what a restart
    /// of the RabbitMQ service does to its clients.
    pub fn restart(&mut self) {
        self.shutdown();
        let runtime = self.runtime.as_ref().expect("runtime");
        let options = MiniBroker::options(self.addr, self.mgmt_addr, self.data_dir.clone());
        let broker = runtime
            .block_on(mini_broker::start(options))
            .expect("mini-broker starts again on the same addresses");
        self.broker = Some(broker);
    }

    /// `mini-broker ctl --mgmt <its API> <args...>`: what the command prints, or a panic
    /// with what it printed on stderr. It runs in this process, through the same code as
    /// the `mini-broker ctl` command (the binary belongs to another package).
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["--mgmt".to_owned(), self.mgmt_addr.to_string()];
        all.extend(args.iter().map(|arg| arg.to_string()));
        let options = mini_broker::ctl::parse_args(&all).expect("ctl arguments");
        let (mut out, mut err) = (String::new(), String::new());
        let code = mini_broker::ctl::execute(&options, &mut out, &mut err);
        assert_eq!(code, 0, "mini-broker ctl {args:?} failed: {out}{err}");
        out
    }
}

impl Drop for MiniBroker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker the tests run against, and how to see its queues as the tutorial does, with
/// `list_queues name messages_ready messages_unacknowledged`.
pub enum Broker<'a> {
    /// A mini-broker of this process, its queues listed by `mini-broker ctl`.
    Mini(&'a MiniBroker),
    /// The RabbitMQ of this machine, its queues listed by `rabbitmqctl`; `test` names the
    /// test in messages.
    RabbitMq { url: String, test: &'a str },
}

/// How many messages of a queue are ready and how many are delivered but not acknowledged,
/// as `list_queues name messages_ready messages_unacknowledged` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub ready: u64,
    pub unacked: u64,
}

impl QueueCounts {
    /// Nothing ready, nothing waiting for an ack.
    pub const EMPTY: QueueCounts = QueueCounts {
        ready: 0,
        unacked: 0,
    };
}

impl Broker<'_> {
    /// The broker's amqp:// URL.
    pub fn url(&self) -> &str {
        match self {
            Broker::Mini(broker) => &broker.url,
            Broker::RabbitMq { url, .. } => url,
        }
    }

    /// The tutorial's command, `list_queues name messages_ready messages_unacknowledged`:
    /// everything it prints.
    pub fn list_queues(&self) -> String {
        let args = [
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ];
        match self {
            Broker::Mini(broker) => broker.ctl(&args),
            Broker::RabbitMq { test, .. } => integration_tests::rabbitmqctl(test, &args)
                .unwrap_or_else(|| panic!("{test}: rabbitmqctl is needed here")),
        }
    }

    /// Waits until `list_queues` shows `queue` with these counts (the broker updates them
    /// when it gets round to it: an ack sent a moment ago, a dead consumer's messages
    /// requeued). Panics with the last listing when it does not within [`PATIENCE`].
    pub fn expect_counts(&self, queue: &str, expected: QueueCounts) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let listing = self.list_queues();
            if queue_counts(&listing, queue) == Some(expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "list_queues should show {queue} with {expected:?} within {PATIENCE:?}, \
                     it shows:\n{listing}"
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The counts of `queue` in what `list_queues name messages_ready messages_unacknowledged`
/// printed: the row whose first column is the name. None when there is no such row.
pub fn queue_counts(listing: &str, queue: &str) -> Option<QueueCounts> {
    listing.lines().find_map(|line| {
        let columns: Vec<&str> = line.split('\t').collect();
        match columns[..] {
            [name, ready, unacked] if name == queue => Some(QueueCounts {
                ready: ready.trim().parse().ok()?,
                unacked: unacked.trim().parse().ok()?,
            }),
            _ => None,
        }
    })
}

/// The RabbitMQ URL, or None after saying the test is skipped (a failure when
/// `REQUIRE_RABBITMQ=1`).
pub fn rabbitmq(test: &str) -> Option<String> {
    block_on(integration_tests::rabbitmq_url(test))
}

/// The RabbitMQ of this machine, as [`rabbitmq`] finds it, with `rabbitmqctl` to list its
/// queues, and a lock held by at most one test of this test binary at a time: the
/// tutorials' queues have fixed names (`hello`, `task_queue`), so the tests that use them
/// on the one RabbitMQ take turns. (cargo runs test binaries one after the other; the
/// tests of one binary run in parallel.)
pub fn rabbitmq_alone(test: &str) -> Option<(Broker<'_>, MutexGuard<'static, ()>)> {
    static RABBITMQ: Mutex<()> = Mutex::new(());
    let url = rabbitmq(test)?;
    integration_tests::rabbitmqctl(test, &["list_vhosts"])?;
    // A test that failed holding the lock poisons it; the next one may go on all the same.
    let guard = RABBITMQ
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some((Broker::RabbitMq { url, test }, guard))
}

/// Runs a future on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Whether Python 3 can import pika. When not, says the test is skipped, or fails when
/// `REQUIRE_RABBITMQ=1` (CI installs pika).
pub fn pika(test: &str) -> bool {
    let imported = Command::new("python3")
        .args(["-c", "import pika"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if imported {
        return true;
    }
    if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") {
        panic!("{test}: REQUIRE_RABBITMQ=1 but python3 cannot import pika (pip install pika)");
    }
    eprintln!("SKIPPED {test}: python3 cannot import pika (pip install pika; REQUIRE_RABBITMQ=1 makes this a failure)");
    false
}

/// How many messages are ready in `queue`, or None when it does not exist.
pub fn ready_messages(url: &str, queue: &str) -> Option<u32> {
    block_on(async {
        let connection = Connection::open(url).await.expect("connect to count");
        let channel = connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue, passive, FieldTable::new())
            .await;
        let _ = connection.close().await;
        declared.ok().map(|queue| queue.message_count)
    })
}

/// Deletes `queue` if it exists: the tutorials' fixed names (hello, task_queue, rpc_queue)
/// must start empty on a shared RabbitMQ.
pub fn delete_queue(url: &str, queue: &str) {
    block_on(async {
        let connection = Connection::open(url).await.expect("connect to delete");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_delete(queue, false, false)
            .await
            .expect("queue.delete");
        let _ = connection.close().await;
    })
}

/// A tutorial program running in its own process.
pub struct Program {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    /// How many lines of `seen` expectations have gone past: the next one looks after them.
    cursor: usize,
    stderr: Arc<Mutex<String>>,
}

impl Program {
    /// Starts `binary --uri <uri> <args...>`.
    pub fn start(binary: &str, uri: &str, args: &[&str]) -> Program {
        let mut command = Command::new(binary);
        command.arg("--uri").arg(uri).args(args);
        Program::spawn(command)
    }

    /// Starts `python3 -u <script> <args...>` with `AMQP_URL=<uri>` (pika's output unbuffered,
    /// so that each line arrives when printed).
    pub fn python(script: &str, uri: &str, args: &[&str], env: &[(&str, &str)]) -> Program {
        let mut command = Command::new("python3");
        command
            .arg("-u")
            .arg(script)
            .args(args)
            .env("AMQP_URL", uri)
            .envs(env.iter().copied());
        Program::spawn(command)
    }

    /// Starts a prepared command, its stdout and stderr piped to this test.
    pub fn spawn(mut command: Command) -> Program {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Program {
            name,
            child,
            lines,
            seen: Vec::new(),
            cursor: 0,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the program wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Takes the lines printed so far without waiting.
    pub fn poll(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The lines printed so far.
    pub fn lines(&mut self) -> &[String] {
        self.poll();
        &self.seen
    }

    /// Waits for a line equal to `expected`, after the lines earlier expectations matched,
    /// and returns its index in `seen`.
    pub fn expect_line(&mut self, expected: &str) -> usize {
        self.expect_matching(expected, |line| line == expected)
    }

    /// Waits for a line containing `part` and returns the line.
    pub fn expect_containing(&mut self, part: &str) -> String {
        let at = self.expect_matching(part, |line| line.contains(part));
        self.seen[at].clone()
    }

    fn expect_matching(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.find(&matches) {
                return at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no line {what:?} within {PATIENCE:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before printing {what:?}"))
                }
            }
        }
    }

    /// The index of the first line after the cursor that matches, moving the cursor past it.
    fn find(&mut self, matches: impl Fn(&str) -> bool) -> Option<usize> {
        let at = self.cursor
            + self.seen[self.cursor..]
                .iter()
                .position(|line| matches(line))?;
        self.cursor = at + 1;
        Some(at)
    }

    /// Panics with everything the program printed.
    pub fn fail(&mut self, why: &str) -> ! {
        self.poll();
        panic!(
            "{}: {why}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr()
        )
    }

    /// Sends SIGINT (Ctrl+C) and waits for the exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        signal(self.pid(), "-INT");
        self.wait()
    }

    /// Sends SIGKILL: the process dies at once, its connection with it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the program to end (at most [`PATIENCE`]) and for its output to be read.
    pub fn wait(&mut self) -> ExitStatus {
        self.wait_within(PATIENCE)
    }

    /// Waits for the program to end (at most `patience`) and for its output to be read.
    pub fn wait_within(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                self.fail(&format!("still running after {patience:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The reader threads end at end of file; take what they read.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        thread::sleep(Duration::from_millis(20));
        status
    }

    /// Waits for a clean exit after Ctrl+C: "Interrupted", exit code 0, nothing on stderr.
    pub fn interrupt_cleanly(&mut self) {
        let status = self.interrupt();
        if !status.success() {
            self.fail(&format!("exited with {status} after Ctrl+C"));
        }
        if self.seen.last().map(String::as_str) != Some("Interrupted") {
            self.fail("did not print Interrupted after Ctrl+C");
        }
        let stderr = self.stderr();
        if !stderr.is_empty() {
            self.fail("wrote on stderr");
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program run to its end.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

/// Runs `binary --uri <uri> <args...>` to its end (at most [`PATIENCE`]).
pub fn run(binary: &str, uri: &str, args: &[&str]) -> Finished {
    let mut program = Program::start(binary, uri, args);
    finish(&mut program)
}

/// Runs `binary --uri <uri> <args...>` and checks that it succeeds printing `expected`.
pub fn run_ok(binary: &str, uri: &str, args: &[&str], expected: &[&str]) {
    let mut program = Program::start(binary, uri, args);
    let finished = finish(&mut program);
    if !finished.status.success() || finished.stdout != expected || !finished.stderr.is_empty() {
        program.fail(&format!(
            "expected success printing {expected:?}, got {}",
            finished.status
        ));
    }
}

/// Waits for a program's end.
pub fn finish(program: &mut Program) -> Finished {
    let status = program.wait();
    Finished {
        status,
        stdout: program.seen.clone(),
        stderr: program.stderr(),
    }
}

/// Waits until one of `programs` prints a line equal to `expected`; returns which.
pub fn expect_from_any(programs: &mut [&mut Program], expected: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (i, program) in programs.iter_mut().enumerate() {
            program.poll();
            if program.find(|line| line == expected).is_some() {
                return i;
            }
        }
        if Instant::now() > deadline {
            let outputs: Vec<String> = programs
                .iter_mut()
                .map(|p| {
                    p.poll();
                    format!("{}:\n{}", p.name, p.seen.join("\n"))
                })
                .collect();
            panic!(
                "no program printed {expected:?} within {PATIENCE:?}\n{}",
                outputs.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `(the one that took it, the other one)`, after [`expect_from_any`] said which took it.
pub fn taker_first<'a>(
    taker: usize,
    first: &'a mut Program,
    second: &'a mut Program,
) -> (&'a mut Program, &'a mut Program) {
    if taker == 0 {
        (first, second)
    } else {
        (second, first)
    }
}

/// A name unique to this run, to tell this test's messages from any other's.
pub fn unique(prefix: &str) -> String {
    integration_tests::unique(prefix)
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}
