//! The management HTTP API: a compatible subset of RabbitMQ's management plugin.
//!
//! Same paths, same JSON field names, same status codes and error bodies as RabbitMQ 3.10,
//! HTTP basic auth against the broker's users, so that RabbitMQ's own `rabbitmqadmin` runs
//! against it unchanged (`list`, `show overview`, `declare`, `delete`, `publish`, `get`,
//! `close connection`, `purge queue`). `GET /metrics` serves Prometheus text without auth.
//!
//! ```text
//!   TCP ─► http (parse, keep-alive) ─► api (auth, route) ─► VHost methods (as AMQP uses them)
//!                                                      └──► objects (JSON shapes) ─► json
//! ```
//!
//! ## Layout
//! - [`http`]: the HTTP/1.1 server loop, requests and responses, percent and base64 coding.
//! - [`api`]: authentication, routing, and one handler per endpoint.
//! - [`objects`]: the JSON of queues, exchanges, bindings, connections, channels, consumers.
//! - [`json`]: JSON with ordered objects, and field tables to and from JSON.

pub mod api;
pub mod http;
pub mod json;
pub mod objects;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;

/// Serves the management API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    amqp_addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mgmt_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!("management listener has no address: {err}");
            return;
        }
    };
    let api = Arc::new(api::Api {
        broker,
        amqp_addr,
        mgmt_addr,
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let api = api.clone();
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(async move {
                        let result = http::serve_connection(socket, |request| {
                            let api = api.clone();
                            async move { api.handle(&request) }
                        })
                        .await;
                        if let Err(err) = result {
                            tracing::debug!(%peer, "management connection ended: {err}");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!("management accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
