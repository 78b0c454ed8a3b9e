//! `mini-broker`: run the broker in the foreground.
//!
//! ```text
//! mini-broker [--listen 127.0.0.1:5672] [--config FILE]
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
    })
    .await
    {
        Ok(running) => running,
        Err(err) => {
            eprintln!("mini-broker: cannot listen on {}: {err}", args.listen);
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
