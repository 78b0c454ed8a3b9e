//! `amqp-sniff`: a transparent proxy in front of an AMQP 0-9-1 broker that prints every frame.
//!
//! ```sh
//! amqp-sniff                                   # listens on 127.0.0.1:5673, forwards to :5672
//! amqp-sniff --listen 127.0.0.1:5673 --upstream 127.0.0.1:5672 --json
//! amqp-sniff --raw-dump /tmp/capture           # also writes conn-N-client.bin / -server.bin
//! # then point a client at port 5673:
//! python3 send.py   # with pika.ConnectionParameters(port=5673)
//! ```
//!
//! One line per frame on stdout, `->` from the client, `<-` from the server; messages about the
//! proxy itself on stderr. Exit status: 1 when it cannot listen, 2 for a bad command line;
//! otherwise it runs until stopped. See the `amqp_tools::sniff` module for the details.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use amqp_codec::describe::DEFAULT_BODY_LIMIT;
use amqp_codec::trace::Format;
use amqp_tools::sniff::{run, Options};
use clap::Parser;
use tokio::net::TcpListener;

/// Forward AMQP 0-9-1 connections to a broker unchanged, printing every frame both ways.
#[derive(Debug, Parser)]
#[command(name = "amqp-sniff", version)]
struct Args {
    /// Address to accept clients on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5673")]
    listen: String,
    /// The broker to forward to.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5672")]
    upstream: String,
    /// Print one JSON object per frame.
    #[arg(long)]
    json: bool,
    /// Show at most N octets of each body (and, in text, of each long string).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Also write each direction of each connection, raw, to DIR/conn-N-{client,server}.bin.
    #[arg(long, value_name = "DIR")]
    raw_dump: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.raw_dump {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("amqp-sniff: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("amqp-sniff: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    // Tests and scripts read this line for the port when --listen asked for port 0.
    eprintln!(
        "amqp-sniff: listening on {local}, forwarding to {}",
        args.upstream
    );
    let options = Options {
        upstream: args.upstream,
        format: if args.json {
            Format::Json
        } else {
            Format::Text
        },
        body_limit: args.body_limit,
        raw_dump: args.raw_dump,
    };
    match run(listener, options, io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-sniff: {e}");
            ExitCode::FAILURE
        }
    }
}
