//! bench-relay: how fast loopback TCP carries large messages from one producer through a
//! middle process to one consumer when the middle process does nothing else: the ceiling of
//! any broker's 1 producer / 1 consumer throughput on this machine, whatever its language.
//!
//! ```text
//! bench-relay [--size 65536] [--seconds 10] [--threads 1|2] [--chunk 1048576] [--batch 16]
//! ```
//!
//! The program starts a copy of itself as the relay (`--serve`, a process of its own, as a
//! broker is), then plays both clients on two threads: the producer writes messages of
//! `size` + 100 octets (a body frame with the method and header frames of a basic.publish
//! around it), `batch` of them per write, as fast as the socket takes them; the consumer
//! reads up to `chunk` octets at a time and discards them. The relay reads up to `chunk`
//! octets from the producer's socket and writes what it read to the consumer's socket:
//!
//! - `--threads 1`: one thread reads a chunk and writes it before reading again (the least
//!   work there can be: one copy in, one copy out, the chunk always hot in cache);
//! - `--threads 2`: a reader thread hands each chunk to a writer thread over a bounded
//!   channel, as a broker's reader and writer tasks do, and gets it back once written (a
//!   pool of 16 chunks, so no memory is allocated or faulted in while it runs).
//!
//! Larger chunks and batches mean fewer system calls per message, and a higher ceiling; the
//! defaults are the best found here (2026-11-27: 1 MiB chunks, 16 messages per write).
//! Both sockets have TCP_NODELAY, as AMQP clients and brokers set it. The clients are
//! cheaper than any AMQP client (no frames built or parsed), so what this measures is an
//! upper bound for a broker with any client. One JSON line: messages per second received,
//! MB/s, and the CPU seconds of the relay and of the clients (user + system, from /proc).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Octets around each body: a basic.publish method frame, a content header frame and the
/// body frame's header and end, roughly.
const FRAMING: usize = 100;
/// Chunks in flight between the relay's reader and writer threads.
const HANDOFF: usize = 16;

/// What a run is made of.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// Body octets per message.
    size: usize,
    seconds: u64,
    /// The relay's threads: 1 or 2.
    threads: usize,
    /// The most the relay and the consumer read at once.
    chunk: usize,
    /// Messages per write of the producer.
    batch: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [serve_flag, threads, chunk, parent] = args.as_slice() {
        if serve_flag == "--serve" {
            let (Ok(threads), Ok(chunk), Ok(parent)) =
                (threads.parse(), chunk.parse(), parent.parse())
            else {
                usage();
            };
            die_with_parent(parent);
            serve(threads, chunk);
            return;
        }
    }
    let mut setup = Setup {
        size: 65536,
        seconds: 10,
        threads: 1,
        chunk: 1024 * 1024,
        batch: 16,
    };
    let mut flags = args.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--size", Some(v)) => setup.size = v,
            ("--seconds", Some(v)) => setup.seconds = v as u64,
            ("--threads", Some(v @ (1 | 2))) => setup.threads = v,
            ("--chunk", Some(v)) if v > 0 => setup.chunk = v,
            ("--batch", Some(v)) if v > 0 => setup.batch = v,
            _ => usage(),
        }
    }
    run(setup);
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-relay [--size N] [--seconds N] [--threads 1|2] [--chunk N] [--batch N]"
    );
    std::process::exit(2);
}

/// The clients' side: start the relay, produce and consume through it, print the result.
fn run(setup: Setup) {
    let mut relay = Relay(start_relay(setup));
    let relay = &mut relay.0;
    let mut ports = String::new();
    let stdout = relay.stdout.take().expect("the relay's stdout is piped");
    BufReader::new(stdout)
        .read_line(&mut ports)
        .expect("the relay tells its ports");
    let (producer_port, consumer_port) = parse_ports(&ports);
    let producer = connect(producer_port);
    let consumer = connect(consumer_port);

    let relay_pid = relay.id().to_string();
    let clients_before = cpu_seconds("self");
    let relay_before = cpu_seconds(&relay_pid);
    let start = Instant::now();
    let consuming = thread::spawn(move || consume(consumer, setup.chunk, start));
    let sent = produce(producer, setup);
    let (received_octets, elapsed) = consuming.join().expect("the consumer thread");
    let relay_cpu = cpu_seconds(&relay_pid) - relay_before;
    let clients_cpu = cpu_seconds("self") - clients_before;

    let Setup {
        size,
        threads,
        chunk,
        batch,
        ..
    } = setup;
    let received = received_octets as f64 / (size + FRAMING) as f64;
    let seconds = elapsed.as_secs_f64();
    println!(
        "{{\"size\": {size}, \"relay_threads\": {threads}, \"chunk\": {chunk}, \"batch\": {batch}, \
         \"sent\": {sent}, \"received\": {received:.0}, \"seconds\": {seconds:.3}, \
         \"receive_rate\": {:.1}, \"receive_mb_s\": {:.1}, \"relay_cpu_s\": {relay_cpu:.2}, \
         \"clients_cpu_s\": {clients_cpu:.2}}}",
        received / seconds,
        received * size as f64 / seconds / 1e6,
    );
}

/// User + system CPU seconds of a process ("self" or a pid) so far, from /proc (in clock
/// ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15 of the line, 11 and 12 (from 0) after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Has the kernel kill the relay when the process that started it ends, even by SIGKILL
/// (a driver's timeout), when `Relay`'s drop cannot run; exits at once if it has already
/// ended, or if the kernel refuses.
fn die_with_parent(parent: u32) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this thread's parent-death signal (SIGKILL
    // ends the whole process); getppid only reads.
    let (set, parent_now) = unsafe {
        (
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            libc::getppid(),
        )
    };
    if set != 0 || u32::try_from(parent_now).ok() != Some(parent) {
        std::process::exit(1);
    }
}

/// The relay process, killed and reaped however `run` ends (a failed connect, a panic), so
/// that it never outlives the run holding its ports.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(setup: Setup) -> Child {
    let me = std::env::current_exe().expect("the path of this program");
    Command::new(me)
        .args([
            "--serve",
            &setup.threads.to_string(),
            &setup.chunk.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the relay")
}

fn parse_ports(line: &str) -> (u16, u16) {
    let mut ports = line.split_whitespace().map(|p| p.parse().expect("a port"));
    (
        ports.next().expect("producer port"),
        ports.next().expect("consumer port"),
    )
}

fn connect(port: u16) -> TcpStream {
    let socket = TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
    socket.set_nodelay(true).expect("TCP_NODELAY");
    socket
}

/// Writes whole messages, `batch` per write, until the time is over; returns how many.
fn produce(mut socket: TcpStream, setup: Setup) -> u64 {
    let batch = vec![0x5a; setup.batch * (setup.size + FRAMING)];
    let duration = Duration::from_secs(setup.seconds);
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < duration {
        socket.write_all(&batch).expect("write to the relay");
        sent += setup.batch as u64;
    }
    // The relay sees the end of the stream and closes the consumer's socket in turn.
    sent
}

/// Reads until the relay closes; returns the octets read and when the last of them came.
fn consume(mut socket: TcpStream, chunk: usize, start: Instant) -> (u64, Duration) {
    let mut buffer = vec![0; chunk];
    let mut octets = 0;
    let mut last = start.elapsed();
    loop {
        match socket.read(&mut buffer) {
            Ok(0) | Err(_) => return (octets, last),
            Ok(n) => {
                octets += n as u64;
                last = start.elapsed();
            }
        }
    }
}

/// The relay: tells its two ports on stdout, takes one producer and one consumer, carries
/// the producer's octets to the consumer until the producer is done.
fn serve(threads: usize, chunk: usize) {
    let from_producer = TcpListener::bind("127.0.0.1:0").expect("bind");
    let to_consumer = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!(
        "{} {}",
        from_producer.local_addr().expect("port").port(),
        to_consumer.local_addr().expect("port").port()
    );
    std::io::stdout().flush().expect("tell the ports");
    let (input, _) = from_producer.accept().expect("the producer");
    let (output, _) = to_consumer.accept().expect("the consumer");
    input.set_nodelay(true).expect("TCP_NODELAY");
    output.set_nodelay(true).expect("TCP_NODELAY");
    if threads == 1 {
        relay_in_one_thread(input, output, chunk);
    } else {
        relay_in_two_threads(input, output, chunk);
    }
}

fn relay_in_one_thread(mut input: TcpStream, mut output: TcpStream, size: usize) {
    let mut chunk = vec![0; size];
    loop {
        match input.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if output.write_all(&chunk[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn relay_in_two_threads(mut input: TcpStream, mut output: TcpStream, size: usize) {
    // Chunks go to the writer with the length read and come back, so no chunk is allocated
    // (and page-faulted) or cleared again: the pool is the HANDOFF chunks made here.
    let (full, to_write) = mpsc::sync_channel::<(Vec<u8>, usize)>(HANDOFF);
    let (empty, to_fill) = mpsc::sync_channel::<Vec<u8>>(HANDOFF);
    for _ in 0..HANDOFF {
        empty.send(vec![0; size]).expect("the pool has room");
    }
    let reader = thread::spawn(move || {
        for mut chunk in to_fill {
            match input.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if full.send((chunk, n)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    for (chunk, n) in to_write {
        if output.write_all(&chunk[..n]).is_err() {
            break;
        }
        // Back to the reader; once it has seen the end, the chunks still queued are written
        // all the same.
        let _ = empty.send(chunk);
    }
    let _ = reader.join();
}
