//! Tutorial 6, RPC: `rpc_server` and `rpc_client` as separate processes, against
//! mini-broker and RabbitMQ.

mod support;

use support::*;

/// Clients get their own answers, even when they ask at the same time.
fn rpc_answers_each_client(url: &str) {
    let mut server = Program::start(RPC_SERVER, url, &[]);
    server.expect_line(" [x] Awaiting RPC requests");

    run_ok(
        RPC_CLIENT,
        url,
        &["30"],
        &[" [x] Requesting fib(30)", " [.] Got 832040"],
    );
    server.expect_line(" [.] fib(30)");

    let mut clients: Vec<(Program, &str, &str)> =
        [("10", "55"), ("20", "6765"), ("90", "2880067194370816120")]
            .into_iter()
            .map(|(n, answer)| (Program::start(RPC_CLIENT, url, &[n]), n, answer))
            .collect();
    for (client, n, answer) in &mut clients {
        let finished = finish(client);
        let expected = [
            format!(" [x] Requesting fib({n})"),
            format!(" [.] Got {answer}"),
        ];
        if !finished.status.success() || finished.stdout != expected {
            client.fail(&format!("expected {expected:?}"));
        }
    }
    server.interrupt_cleanly();
}

#[test]
fn rpc_answers_each_client_on_mini_broker() {
    let broker = MiniBroker::start();
    rpc_answers_each_client(&broker.url);
}

#[test]
fn rpc_answers_each_client_on_rabbitmq() {
    let Some(url) = rabbitmq("rpc_answers_each_client_on_rabbitmq") else {
        return;
    };
    delete_queue(&url, "rpc_queue");
    rpc_answers_each_client(&url);
    delete_queue(&url, "rpc_queue");
}
