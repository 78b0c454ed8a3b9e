//! What the tutorial tests share: a broker to run against (mini-broker in this process, or
//! the RabbitMQ at `AMQP_URL`), and the tutorial programs run as a user runs them, as
//! separate processes whose output is read line by line through a pipe.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
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

/// How long a program may take to print an expected line, or to finish.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A mini-broker running in this test process, on a free port.
pub struct MiniBroker {
    pub url: String,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    broker: Option<mini_broker::RunningBroker>,
}

impl MiniBroker {
    pub fn start() -> MiniBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let broker = runtime
            .block_on(mini_broker::start(mini_broker::BrokerOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Default::default()
            }))
            .expect("mini-broker starts");
        MiniBroker {
            url: broker.url(),
            addr: broker.amqp_addr,
            runtime: Some(runtime),
            broker: Some(broker),
        }
    }

    /// Stops the broker: every connection is closed with 320 CONNECTION_FORCED.
    pub fn shutdown(&mut self) {
        if let (Some(runtime), Some(broker)) = (&self.runtime, self.broker.take()) {
            runtime.block_on(broker.shutdown());
        }
    }
}

impl Drop for MiniBroker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The RabbitMQ URL, or None after saying the test is skipped (a failure when
/// `REQUIRE_RABBITMQ=1`).
pub fn rabbitmq(test: &str) -> Option<String> {
    block_on(integration_tests::rabbitmq_url(test))
}

/// Runs a future on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
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
