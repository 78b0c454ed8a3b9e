//! Idle connections: opens N AMQP connections (handshake done, no channel), holds them, and
//! closes them when told to, so the broker's memory per idle connection can be measured from
//! outside (`bench/compare` reads the broker's RSS before and while they are held).
//!
//! ```text
//! bench-idle --uri amqp://guest:guest@127.0.0.1:5672/%2f -n 10000 [--parallel 64]
//! ```
//! Prints one JSON line when every connection is open (or when the broker refused to take
//! more: `opened` says how many it took, `error` the first failure), then holds them until a
//! line (or end of file) arrives on stdin, closes them all (connection.close) and prints a
//! second JSON line. Needs a file-descriptor limit above N (`ulimit -n`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use amqp_client::Connection;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

struct Options {
    uri: String,
    connections: usize,
    parallel: usize,
}

fn options() -> Options {
    let mut options = Options {
        uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        connections: 10_000,
        parallel: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--uri" => options.uri = value,
            "-n" => options.connections = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--parallel" => options.parallel = value.parse().unwrap_or_else(|_| usage(&flag)),
            _ => usage(&flag),
        }
    }
    options.parallel = options.parallel.max(1);
    options
}

fn usage(flag: &str) -> ! {
    eprintln!("bad flag or value near {flag:?}; flags: --uri URI -n CONNECTIONS --parallel P");
    std::process::exit(2)
}

/// JSON string literal (the error texts are the only free text printed).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::main]
async fn main() {
    let options = options();
    let opened: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    // `parallel` openers, each opening connections one after the other until N are open
    // or one open fails (the broker is out of file descriptors or memory).
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut openers = Vec::new();
    for _ in 0..options.parallel {
        let (uri, opened, first_error, failed, next) = (
            options.uri.clone(),
            opened.clone(),
            first_error.clone(),
            failed.clone(),
            next.clone(),
        );
        let total = options.connections;
        openers.push(tokio::spawn(async move {
            while !failed.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < total {
                match Connection::open(&uri).await {
                    Ok(connection) => opened.lock().await.push(connection),
                    Err(error) => {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().await.get_or_insert(error.to_string());
                    }
                }
            }
        }));
    }
    for opener in openers {
        let _ = opener.await;
    }
    let open_seconds = clock.elapsed().as_secs_f64();
    let count = opened.lock().await.len();
    let error = first_error
        .lock()
        .await
        .as_deref()
        .map_or("null".to_owned(), quoted);
    println!(
        "{{\"event\":\"open\",\"requested\":{},\"opened\":{count},\"seconds\":{open_seconds:.3},\"error\":{error}}}",
        options.connections
    );

    // Hold them until told to close.
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;

    let clock = Instant::now();
    let connections = std::mem::take(&mut *opened.lock().await);
    let mut closers = Vec::new();
    for chunk in connections.chunks(connections.len().div_ceil(options.parallel).max(1)) {
        let chunk = chunk.to_vec();
        closers.push(tokio::spawn(async move {
            let mut closed = 0usize;
            for connection in chunk {
                if connection.close().await.is_ok() {
                    closed += 1;
                }
            }
            closed
        }));
    }
    let mut closed = 0;
    for closer in closers {
        closed += closer.await.unwrap_or(0);
    }
    println!(
        "{{\"event\":\"closed\",\"closed\":{closed},\"seconds\":{:.3}}}",
        clock.elapsed().as_secs_f64()
    );
}
