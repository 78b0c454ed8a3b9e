//! `mini-broker`: run the broker in the foreground.
//!
//! ```text
//! mini-broker [--listen 127.0.0.1:5672] [--config FILE] [--data-dir mini-broker-data]
//! RUST_LOG=debug mini-broker      # more logging
//! ```
//! SIGINT or SIGTERM closes every connection with 320 CONNECTION_FORCED and exits.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mini_broker::{BrokerConfig, BrokerOptions};

/// A single-node AMQP 0-9-1 broker that speaks like RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "mini-broker", version)]
struct Args {
    /// Address for AMQP clients.
    #[arg(long, default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// TOML configuration file (users, vhosts, limits).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where durable queues, exchanges, bindings and persistent messages are kept.
    #[arg(long, default_value = "mini-broker-data")]
    data_dir: PathBuf,
    /// Start even if a message log segment in the middle is corrupt, losing the rest of it.
    #[arg(long)]
    skip_corrupt: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match BrokerConfig::from_file(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("mini-broker: {err}");
                std::process::exit(2);
            }
        },
        None => BrokerConfig::default(),
    };
    let running = match mini_broker::start(BrokerOptions {
        listen: args.listen,
        config,
        data_dir: Some(args.data_dir.clone()),
        skip_corrupt: args.skip_corrupt,
    })
    .await
    {
        Ok(running) => running,
        Err(err) => {
            eprintln!(
                "mini-broker: cannot start (listening on {}, data in {}): {err}",
                args.listen,
                args.data_dir.display()
            );
            std::process::exit(1);
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
