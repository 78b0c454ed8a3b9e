//! Shared helpers of the cross-crate and interop tests in `tests/`.
//!
//! Tests that need a RabbitMQ call [`rabbitmq_url`]: it returns the broker's URL when one
//! answers at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), and otherwise
//! says the test is skipped, or fails when `REQUIRE_RABBITMQ=1` (as CI sets it), so that CI
//! never skips silently.

use std::time::Duration;

/// The default broker address of the tests.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The RabbitMQ URL to test against, or None (after saying so) when none is reachable.
///
/// # Panics
/// When `REQUIRE_RABBITMQ=1` and no broker answers.
pub async fn rabbitmq_url(test: &str) -> Option<String> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
    let address = socket_address(&url);
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&address)
        )
        .await,
        Ok(Ok(_))
    );
    if reachable {
        return Some(url);
    }
    if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") {
        panic!("{test}: REQUIRE_RABBITMQ=1 but no RabbitMQ answers at {address} (AMQP_URL={url})");
    }
    eprintln!("SKIPPED {test}: no RabbitMQ at {address}; set AMQP_URL or start one (REQUIRE_RABBITMQ=1 makes this a failure)");
    None
}

/// `host:port` of an amqp:// URL, without parsing more than needed.
fn socket_address(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host_port.ends_with(']');
    let host_port = if host_port.is_empty() {
        "localhost"
    } else {
        host_port
    };
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// A name unique to this test run, for queues and exchanges that must not collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with one more query parameter (`heartbeat=5`), whether or not it has a query already.
pub fn with_query(url: &str, parameter: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{parameter}")
}

/// Runs `rabbitmqctl` with `args` and returns its standard output, or None (after saying so)
/// when there is no `rabbitmqctl` on this machine (a remote `AMQP_URL`): tests that steer the
/// broker are then skipped, or fail when `REQUIRE_RABBITMQ=1`.
///
/// # Panics
/// When `rabbitmqctl` runs and fails, or is missing while `REQUIRE_RABBITMQ=1`.
pub fn rabbitmqctl(test: &str, args: &[&str]) -> Option<String> {
    match std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
    {
        Ok(output) if output.status.success() => {
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(output) => panic!(
            "{test}: rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") => {
            panic!("{test}: REQUIRE_RABBITMQ=1 but rabbitmqctl cannot run: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED {test}: rabbitmqctl cannot run ({err}); it needs a local RabbitMQ");
            None
        }
    }
}
