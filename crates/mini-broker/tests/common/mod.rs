//! What several test files of this crate share.

use std::time::Duration;

use mini_broker::RunningBroker;

/// Waits until the broker's queue (in vhost `/`) has these ready and unacked counts, for at
/// most 2 s; panics with the counts it has otherwise.
pub async fn settle(running: &RunningBroker, queue: &str, ready: usize, unacked: usize) {
    let queue = running
        .broker
        .vhost("/")
        .unwrap()
        .queue(&queue.into())
        .unwrap();
    for _ in 0..200 {
        {
            let state = queue.state();
            if state.ready.len() == ready && state.unacked == unacked {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state = queue.state();
    panic!(
        "the queue never reached {ready} ready and {unacked} unacked: {} and {}",
        state.ready.len(),
        state.unacked
    );
}
