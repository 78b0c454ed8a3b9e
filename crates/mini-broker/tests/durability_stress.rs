//! A short crash loop (examples/crash_loop.rs, run here with a few rounds): `kill -9` the
//! broker binary at random moments under confirmed publishing and acked consuming; after
//! each restart nothing confirmed is lost, the queue keeps publish order, and nothing is
//! duplicated except redeliveries. Run the long version with
//! `cargo run --release -p mini-broker --example crash_loop -- --rounds 50`.

#[allow(dead_code)]
#[path = "../examples/crash_loop.rs"]
mod crash_loop;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_confirmed_keeps_order_and_duplicates_only_redeliveries(
) {
    let options = crash_loop::Options {
        rounds: 6,
        publishers: 2,
        min_kill_ms: 50,
        max_kill_ms: 800,
        broker: Some(env!("CARGO_BIN_EXE_mini-broker").into()),
        quiet: true,
        ..crash_loop::Options::defaults()
    };
    let totals = crash_loop::run(&options).await;
    assert!(
        totals.confirmed > 0,
        "the publishers got confirms: {totals:?}"
    );
    assert!(
        totals.drained > 0,
        "the restarts found messages: {totals:?}"
    );
    assert_eq!(totals.lost, 0, "confirmed messages lost: {totals:?}");
    assert_eq!(totals.order, 0, "out of publish order: {totals:?}");
    assert_eq!(totals.duplicates, 0, "duplicates: {totals:?}");
    // After a crash every recovered message is flagged redelivered (a delivery mark may have
    // been lost with the crash), so none comes back unflagged.
    assert_eq!(
        totals.unflagged, 0,
        "redeliveries without redelivered=true: {totals:?}"
    );
}
