//! `mini-broker`: run the broker in the foreground.
//!
//! ```text
//! mini-broker [--listen 127.0.0.1:5672] [--mgmt-listen 127.0.0.1:15672] [--config FILE]
//!             [--data-dir mini-broker-data]
//! RUST_LOG=debug mini-broker      # more logging
//! mini-broker ctl [--mgmt 127.0.0.1:15672] list_queues name messages_ready   # rabbitmqctl's listings
//! rabbitmqadmin -P 15672 list queues                                          # RabbitMQ's own tool
//! ```
//! SIGINT or SIGTERM closes every connection with 320 CONNECTION_FORCED and exits.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mini_broker::{BrokerConfig, BrokerOptions};

/// A single-node AMQP 0-9-1 broker that speaks like RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "mini-broker", version)]
struct Args {
    /// Address for AMQP clients.
    #[arg(long, default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// Address for the management HTTP API (RabbitMQ's, for rabbitmqadmin) and /metrics
    /// [default: 127.0.0.1:15672, skipped with a warning when that port is taken].
    #[arg(long)]
    mgmt_listen: Option<SocketAddr>,
    /// TOML configuration file (users, their permissions, vhosts, limits).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where durable queues, exchanges, bindings and persistent messages are kept.
    #[arg(long, default_value = "mini-broker-data")]
    data_dir: PathBuf,
    /// Start even if a message log segment in the middle is corrupt, losing the rest of it.
    #[arg(long)]
    skip_corrupt: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// rabbitmqctl's listings (list_queues, list_exchanges, list_bindings, list_connections,
    /// list_channels, list_consumers, list_vhosts, list_permissions, list_user_permissions
    /// USER) from a running broker's management API:
    /// ctl [--mgmt ADDR] [--user U] [--password P] [-p VHOST] [-q] [-s] COMMAND [COLUMN...]
    Ctl {
        /// Options, the command and its columns.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    if let Some(Command::Ctl { args }) = &args.command {
        std::process::exit(mini_broker::ctl::run(args));
    }
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
        mgmt_listen: args.mgmt_listen.or_else(default_mgmt_listen),
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

/// RabbitMQ's management port, when it is free: a broker started without `--mgmt-listen`
/// next to another one (or next to RabbitMQ) still starts, without the API.
fn default_mgmt_listen() -> Option<SocketAddr> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15672));
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Some(addr),
        Err(err) => {
            tracing::warn!("no management API: cannot listen on {addr} ({err}); use --mgmt-listen");
            None
        }
    }
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
