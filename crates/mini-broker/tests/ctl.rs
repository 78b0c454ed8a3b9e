//! `mini-broker ctl`: the built binary, run against an in-process broker's management API,
//! prints what `rabbitmqctl` prints (RabbitMQ 3.10), preamble, header and rows.

use std::process::Output;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, FieldValue, QueueDeclareOptions,
};
use mini_broker::{BrokerOptions, RunningBroker};

mod common;
use common::settle;

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Runs `mini-broker ctl --mgmt ADDR ARGS...`.
async fn ctl(running: &RunningBroker, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .arg("ctl")
        .args(["--mgmt", &running.mgmt_addr.unwrap().to_string()])
        .args(args)
        .output()
        .await
        .expect("the mini-broker binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ctl failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_prints_rabbitmqctl_output_for_two_ready_and_one_unacked() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("tasks", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in 0..3 {
        channel
            .basic_publish(
                "",
                "tasks",
                BasicProperties::default(),
                format!("task {i}"),
                false,
            )
            .await
            .unwrap();
    }
    settle(&running, "tasks", 3, 0).await;
    // One fetched and not acked: unacked while this channel stays open.
    let fetched = channel.basic_get("tasks", false).await.unwrap();
    assert!(fetched.is_some());
    settle(&running, "tasks", 2, 1).await;

    let output = ctl(
        &running,
        &[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
    )
    .await;
    // Exactly what `rabbitmqctl list_queues name messages_ready messages_unacknowledged`
    // prints for this queue on RabbitMQ 3.10.
    assert_eq!(
        stdout(&output),
        "Timeout: 60.0 seconds ...\n\
         Listing queues for vhost / ...\n\
         name\tmessages_ready\tmessages_unacknowledged\n\
         tasks\t2\t1\n"
    );
    assert!(output.stderr.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_default_and_flag_columns_print_like_rabbitmqctl() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-length", FieldValue::I32(100));
    arguments.insert("x-queue-type", "classic");
    channel
        .queue_declare(
            "limited",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let default = ctl(&running, &["list_queues"]).await;
    assert_eq!(
        stdout(&default),
        "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\nname\tmessages\nlimited\t0\n"
    );
    let flags = ctl(
        &running,
        &[
            "-q",
            "list_queues",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "consumers",
            "arguments",
        ],
    )
    .await;
    // Arguments in declaration order, in rabbitmqctl's Erlang notation.
    assert_eq!(
        stdout(&flags),
        "name\tdurable\tauto_delete\texclusive\tconsumers\targuments\n\
         limited\ttrue\tfalse\tfalse\t0\t[{\"x-max-length\",100},{\"x-queue-type\",\"classic\"}]\n"
    );
    let silent = ctl(&running, &["list_queues", "-s", "name"]).await;
    assert_eq!(stdout(&silent), "limited\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_bindings_connections_channels_consumers_list_with_default_columns() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare("logs", "fanout", Default::default(), FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_declare("log-q", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    channel
        .queue_bind("log-q", "logs", "", FieldTable::new())
        .await
        .unwrap();
    channel.basic_qos(5, false).await.unwrap();
    let _consumer = channel
        .basic_consume(
            "log-q",
            "log-ctag",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();

    let exchanges = stdout(&ctl(&running, &["list_exchanges"]).await);
    assert!(exchanges.starts_with("Listing exchanges for vhost / ...\nname\ttype\n"));
    assert!(
        exchanges.contains("\n\tdirect\n"),
        "the default exchange: {exchanges}"
    );
    assert!(exchanges.contains("\nlogs\tfanout\n"), "{exchanges}");

    assert_eq!(
        stdout(&ctl(&running, &["list_bindings"]).await),
        "Listing bindings for vhost /...\n\
         source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments\n\
         \texchange\tlog-q\tqueue\tlog-q\t[]\n\
         logs\texchange\tlog-q\tqueue\t\t[]\n"
    );

    let connections = stdout(&ctl(&running, &["list_connections"]).await);
    let mut lines = connections.lines();
    assert_eq!(lines.next(), Some("Listing connections ..."));
    assert_eq!(lines.next(), Some("user\tpeer_host\tpeer_port\tstate"));
    let row: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(row[0], "guest");
    assert_eq!(row[1], "127.0.0.1");
    let peer_port: u16 = row[2].parse().unwrap();
    assert_eq!(row[3], "running");

    let channels = stdout(&ctl(&running, &["list_channels"]).await);
    assert_eq!(
        channels,
        format!(
            "Listing channels ...\n\
             pid\tuser\tconsumer_count\tmessages_unacknowledged\n\
             <mini-broker@localhost.{peer_port}.{}.0>\tguest\t1\t0\n",
            channel.id()
        )
    );

    assert_eq!(
        stdout(&ctl(&running, &["list_consumers"]).await),
        format!(
            "Listing consumers in vhost / ...\n\
             queue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments\n\
             log-q\t<mini-broker@localhost.{peer_port}.{}.0>\tlog-ctag\ttrue\t5\ttrue\t[]\n",
            channel.id()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_prints_only_the_preamble() {
    let running = broker().await;
    let output = ctl(&running, &["list_queues", "-p", "nowhere"]).await;
    assert_eq!(
        stdout(&output),
        "Timeout: 60.0 seconds ...\nListing queues for vhost nowhere ...\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_password_and_unknown_column_fail_with_rabbitmqctl_statuses() {
    let running = broker().await;
    let refused = ctl(&running, &["--password", "wrong", "list_queues"]).await;
    assert_eq!(refused.status.code(), Some(mini_broker::ctl::EXIT_NOPERM));
    assert!(refused.stdout.is_empty());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused user 'guest'"));

    let unknown = ctl(&running, &["list_queues", "name", "bogus"]).await;
    assert_eq!(unknown.status.code(), Some(mini_broker::ctl::EXIT_USAGE));
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .starts_with("Error (argument validation): Info key(s) bogus are not supported\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_fails_with_unavailable() {
    let running = broker().await;
    let port = running.mgmt_addr.unwrap().port();
    running.shutdown().await;
    // Nothing listens there once the broker stopped.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .args([
            "ctl",
            "--mgmt",
            &format!("127.0.0.1:{port}"),
            "-t",
            "5",
            "list_queues",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(mini_broker::ctl::EXIT_UNAVAILABLE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_listings_print_like_rabbitmqctl() {
    let running = broker().await;
    // Exactly what rabbitmqctl 3.10 prints for the default guest.
    assert_eq!(
        stdout(&ctl(&running, &["list_permissions"]).await),
        "Listing permissions for vhost \"/\" ...\nuser\tconfigure\twrite\tread\nguest\t.*\t.*\t.*\n"
    );
    assert_eq!(
        stdout(&ctl(&running, &["list_user_permissions", "guest"]).await),
        "Listing permissions for user \"guest\" ...\nvhost\tconfigure\twrite\tread\n/\t.*\t.*\t.*\n"
    );
    running
        .broker
        .permissions
        .set(mini_broker::permissions::Permission::new("guest", "/", "", "^w", "r.*x").unwrap());
    assert_eq!(
        stdout(&ctl(&running, &["-q", "list_user_permissions", "guest"]).await),
        "vhost\tconfigure\twrite\tread\n/\t\t^w\tr.*x\n"
    );
    // Nothing to list: rabbitmqctl prints an empty line.
    running.broker.permissions.clear("guest", "/");
    assert_eq!(
        stdout(&ctl(&running, &["list_permissions", "-p", "/"]).await),
        "Listing permissions for vhost \"/\" ...\n\n"
    );
    assert_eq!(
        stdout(&ctl(&running, &["-q", "list_user_permissions", "guest"]).await),
        "\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_listings_of_unknown_users_and_vhosts_fail_like_rabbitmqctl() {
    let running = broker().await;
    let user = ctl(&running, &["list_user_permissions", "nobody"]).await;
    assert_eq!(user.status.code(), Some(mini_broker::ctl::EXIT_UNAVAILABLE));
    assert_eq!(
        String::from_utf8_lossy(&user.stdout),
        "Listing permissions for user \"nobody\" ...\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&user.stderr),
        "Error:\n{:no_such_user, \"nobody\"}\n"
    );
    let vhost = ctl(&running, &["list_permissions", "-p", "nowhere"]).await;
    assert_eq!(vhost.status.code(), Some(mini_broker::ctl::EXIT_DATAERR));
    assert_eq!(
        String::from_utf8_lossy(&vhost.stdout),
        "Listing permissions for vhost \"nowhere\" ...\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&vhost.stderr),
        "Virtual host 'nowhere' does not exist\n"
    );
    let no_user = ctl(&running, &["list_user_permissions"]).await;
    assert_eq!(no_user.status.code(), Some(mini_broker::ctl::EXIT_USAGE));
    assert!(String::from_utf8_lossy(&no_user.stderr)
        .starts_with("Error (argument validation): not enough arguments.\n"));
}
