//! Per-vhost permissions (issue #4): every method RabbitMQ guards with configure, write or
//! read permissions, tried by a user who may and by one who may not, through the project's
//! client and once through pika; and the same methods tried against RabbitMQ 3.10 with
//! the same user, names and permissions, comparing each answer (code, text, class, method).
//!
//! The RabbitMQ comparison needs a RabbitMQ at AMQP_URL and its `rabbitmqctl` (to make a
//! throwaway user, deleted afterwards); without them it says SKIPPED, unless
//! REQUIRE_RABBITMQ=1 (as CI sets it): then it fails.

use std::process::Command;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, Error, ExchangeDeclareOptions,
    FieldTable, FieldValue, QueueDeclareOptions, ServerClose,
};
use mini_broker::permissions::Permission;
use mini_broker::{BrokerConfig, BrokerOptions, RunningBroker};

const PASSWORD: &str = "perm-pw";

/// A broker with guest, and `user` with these permissions on `/` (None: no permissions).
async fn broker(user: &str, permissions: Option<(&str, &str, &str)>) -> RunningBroker {
    let table = match permissions {
        Some((configure, write, read)) => format!(
            "[users.permissions.\"/\"]\nconfigure = '{configure}'\nwrite = '{write}'\nread = '{read}'\n"
        ),
        None => String::new(),
    };
    let config = BrokerConfig::from_toml(&format!(
        r#"
        [[users]]
        name = "guest"
        password = "guest"
        tags = ["administrator"]
        vhosts = ["/"]
        [[users]]
        name = "{user}"
        password = "{PASSWORD}"
        {table}
        "#
    ))
    .unwrap();
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn url_of(running: &RunningBroker, user: &str) -> String {
    format!("amqp://{user}:{PASSWORD}@{}/%2f", running.amqp_addr)
}

// ---- the guarded methods --------------------------------------------------------------

/// The queues and exchanges the methods act on, named with a prefix unique to the run.
struct Names {
    queue: String,
    exchange: String,
    other_exchange: String,
    doomed_queue: String,
    doomed_exchange: String,
    new_queue: String,
    new_exchange: String,
    dead_lettering_queue: String,
    alternated_exchange: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        Names {
            queue: format!("{prefix}-q"),
            exchange: format!("{prefix}-x"),
            other_exchange: format!("{prefix}-x2"),
            doomed_queue: format!("{prefix}-q-del"),
            doomed_exchange: format!("{prefix}-x-del"),
            new_queue: format!("{prefix}-q-new"),
            new_exchange: format!("{prefix}-x-new"),
            dead_lettering_queue: format!("{prefix}-q-dlx"),
            alternated_exchange: format!("{prefix}-x-ae"),
        }
    }

    /// Makes (again) what the methods expect to exist, as guest, and removes what they
    /// may have made.
    async fn reset(&self, guest: &Connection) {
        let channel = guest.create_channel().await.unwrap();
        self.remove(guest).await;
        for queue in [&self.queue, &self.doomed_queue] {
            channel
                .queue_declare(queue, QueueDeclareOptions::default(), FieldTable::new())
                .await
                .unwrap();
        }
        for exchange in [&self.exchange, &self.doomed_exchange] {
            channel
                .exchange_declare(
                    exchange,
                    "direct",
                    ExchangeDeclareOptions::default(),
                    FieldTable::new(),
                )
                .await
                .unwrap();
        }
        channel
            .exchange_declare(
                &self.other_exchange,
                "fanout",
                ExchangeDeclareOptions::default(),
                FieldTable::new(),
            )
            .await
            .unwrap();
        channel.close().await.unwrap();
    }

    async fn remove(&self, guest: &Connection) {
        let channel = guest.create_channel().await.unwrap();
        for queue in [
            &self.queue,
            &self.doomed_queue,
            &self.new_queue,
            &self.dead_lettering_queue,
        ] {
            channel.queue_delete(queue, false, false).await.unwrap();
        }
        for exchange in [
            &self.exchange,
            &self.other_exchange,
            &self.doomed_exchange,
            &self.new_exchange,
            &self.alternated_exchange,
        ] {
            channel.exchange_delete(exchange, false).await.unwrap();
        }
        channel.close().await.unwrap();
    }
}

/// One guarded method, as a client calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ExchangeDeclare,
    ExchangeDeclarePassive,
    ExchangeDeclareWithAlternate,
    ExchangeDelete,
    QueueDeclare,
    QueueDeclarePassive,
    QueueDeclareServerNamed,
    QueueDeclareWithDeadLetterExchange,
    QueueDelete,
    QueuePurge,
    QueueBind,
    QueueUnbind,
    ExchangeBind,
    ExchangeUnbind,
    PublishToExchange,
    PublishToDefaultExchange,
    Consume,
    Get,
    // Where the permission checks fall among the broker's other refusals.
    QueueBindToDefaultExchange,
    ExchangeBindToDefaultExchange,
    QueueDeclareReservedName,
    ExchangeDeclareReservedName,
    ExchangeDeleteSystemExchange,
    ConsumeFromMissingQueue,
    PublishToMissingExchange,
}

const OPS: [Op; 25] = [
    Op::ExchangeDeclarePassive,
    Op::QueueDeclarePassive,
    Op::QueueDeclare,
    Op::QueueDeclareServerNamed,
    Op::QueueDeclareWithDeadLetterExchange,
    Op::ExchangeDeclare,
    Op::ExchangeDeclareWithAlternate,
    Op::QueueBind,
    Op::QueueUnbind,
    Op::ExchangeBind,
    Op::ExchangeUnbind,
    Op::PublishToExchange,
    Op::PublishToDefaultExchange,
    Op::Consume,
    Op::Get,
    Op::QueuePurge,
    Op::QueueDelete,
    Op::ExchangeDelete,
    Op::QueueBindToDefaultExchange,
    Op::ExchangeBindToDefaultExchange,
    Op::QueueDeclareReservedName,
    Op::ExchangeDeclareReservedName,
    Op::ExchangeDeleteSystemExchange,
    Op::ConsumeFromMissingQueue,
    Op::PublishToMissingExchange,
];

impl Op {
    /// Whether the method meets another refusal than a permission's (a reserved name, the
    /// default exchange, a missing queue) when every permission is granted.
    fn refused_anyway(self) -> bool {
        matches!(
            self,
            Op::QueueBindToDefaultExchange
                | Op::ExchangeBindToDefaultExchange
                | Op::QueueDeclareReservedName
                | Op::ExchangeDeclareReservedName
                | Op::ExchangeDeleteSystemExchange
                | Op::ConsumeFromMissingQueue
                | Op::PublishToMissingExchange
        )
    }

    async fn run(self, channel: &Channel, n: &Names) -> Result<(), Error> {
        let none = FieldTable::new;
        let declare_exchange = ExchangeDeclareOptions::default();
        let declare_queue = QueueDeclareOptions::default();
        match self {
            Op::ExchangeDeclare => {
                channel
                    .exchange_declare(&n.new_exchange, "direct", declare_exchange, none())
                    .await
            }
            Op::ExchangeDeclarePassive => {
                let passive = ExchangeDeclareOptions {
                    passive: true,
                    ..declare_exchange
                };
                channel
                    .exchange_declare(&n.exchange, "direct", passive, none())
                    .await
            }
            Op::ExchangeDeclareWithAlternate => {
                let mut arguments = FieldTable::new();
                arguments.insert(
                    "alternate-exchange",
                    FieldValue::LongString(n.other_exchange.as_str().into()),
                );
                channel
                    .exchange_declare(
                        &n.alternated_exchange,
                        "direct",
                        declare_exchange,
                        arguments,
                    )
                    .await
            }
            Op::ExchangeDelete => channel.exchange_delete(&n.doomed_exchange, false).await,
            Op::QueueDeclare => channel
                .queue_declare(&n.new_queue, declare_queue, none())
                .await
                .map(drop),
            Op::QueueDeclarePassive => {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..declare_queue
                };
                channel
                    .queue_declare(&n.queue, passive, none())
                    .await
                    .map(drop)
            }
            Op::QueueDeclareServerNamed => {
                // Exclusive, so that RabbitMQ drops it with the connection.
                let exclusive = QueueDeclareOptions {
                    exclusive: true,
                    ..declare_queue
                };
                channel.queue_declare("", exclusive, none()).await.map(drop)
            }
            Op::QueueDeclareWithDeadLetterExchange => {
                let mut arguments = FieldTable::new();
                arguments.insert(
                    "x-dead-letter-exchange",
                    FieldValue::LongString(n.exchange.as_str().into()),
                );
                channel
                    .queue_declare(&n.dead_lettering_queue, declare_queue, arguments)
                    .await
                    .map(drop)
            }
            Op::QueueDelete => channel
                .queue_delete(&n.doomed_queue, false, false)
                .await
                .map(drop),
            Op::QueuePurge => channel.queue_purge(&n.queue).await.map(drop),
            Op::QueueBind => channel.queue_bind(&n.queue, &n.exchange, "k", none()).await,
            Op::QueueUnbind => {
                channel
                    .queue_unbind(&n.queue, &n.exchange, "k", none())
                    .await
            }
            Op::ExchangeBind => {
                channel
                    .exchange_bind(&n.other_exchange, &n.exchange, "k", none())
                    .await
            }
            Op::ExchangeUnbind => {
                channel
                    .exchange_unbind(&n.other_exchange, &n.exchange, "k", none())
                    .await
            }
            Op::PublishToExchange | Op::PublishToDefaultExchange | Op::PublishToMissingExchange => {
                let missing = format!("{}-missing", n.exchange);
                let (exchange, key) = match self {
                    Op::PublishToExchange => (n.exchange.as_str(), "k"),
                    Op::PublishToMissingExchange => (missing.as_str(), "k"),
                    _ => ("", n.queue.as_str()),
                };
                channel
                    .basic_publish(exchange, key, BasicProperties::default(), "m", false)
                    .await?;
                // The refusal closes the channel: the next synchronous call meets it.
                channel.basic_qos(0, false).await
            }
            Op::Consume => channel
                .basic_consume(&n.queue, "", BasicConsumeOptions::default(), none())
                .await
                .map(drop),
            Op::Get => channel.basic_get(&n.queue, true).await.map(drop),
            Op::QueueBindToDefaultExchange => channel.queue_bind(&n.queue, "", "k", none()).await,
            Op::ExchangeBindToDefaultExchange => {
                channel.exchange_bind("", &n.exchange, "k", none()).await
            }
            Op::QueueDeclareReservedName => channel
                .queue_declare("amq.perm-probe", declare_queue, none())
                .await
                .map(drop),
            Op::ExchangeDeclareReservedName => {
                channel
                    .exchange_declare("amq.perm-probe", "direct", declare_exchange, none())
                    .await
            }
            Op::ExchangeDeleteSystemExchange => channel.exchange_delete("amq.direct", false).await,
            Op::ConsumeFromMissingQueue => channel
                .basic_consume(
                    &format!("{}-missing", n.queue),
                    "",
                    BasicConsumeOptions::default(),
                    none(),
                )
                .await
                .map(drop),
        }
    }

    /// What `user`, whose three patterns are empty, meets.
    fn refusal(self, n: &Names, user: &str) -> String {
        let (kind, name, class, method) = match self {
            Op::ExchangeDeclarePassive | Op::QueueDeclarePassive => return "ok".to_owned(),
            Op::QueueDeclareReservedName => {
                return "channel.close 403 (50/10) ACCESS_REFUSED - queue name 'amq.perm-probe' contains reserved prefix 'amq.*'".to_owned()
            }
            Op::ExchangeDeleteSystemExchange => {
                return "channel.close 403 (40/20) ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed".to_owned()
            }
            Op::QueueBindToDefaultExchange => ("queue", n.queue.clone(), 50, 20),
            Op::ExchangeBindToDefaultExchange => ("exchange", "amq.default".to_owned(), 40, 30),
            Op::ExchangeDeclareReservedName => ("exchange", "amq.perm-probe".to_owned(), 40, 10),
            Op::ConsumeFromMissingQueue => ("queue", format!("{}-missing", n.queue), 60, 20),
            Op::PublishToMissingExchange => ("exchange", format!("{}-missing", n.exchange), 60, 40),
            Op::ExchangeDeclare => ("exchange", n.new_exchange.clone(), 40, 10),
            Op::ExchangeDeclareWithAlternate => {
                ("exchange", n.alternated_exchange.clone(), 40, 10)
            }
            Op::ExchangeDelete => ("exchange", n.doomed_exchange.clone(), 40, 20),
            Op::QueueDeclare => ("queue", n.new_queue.clone(), 50, 10),
            Op::QueueDeclareWithDeadLetterExchange => {
                ("queue", n.dead_lettering_queue.clone(), 50, 10)
            }
            Op::QueueDeclareServerNamed => ("queue", "amq.gen-*".to_owned(), 50, 10),
            Op::QueueDelete => ("queue", n.doomed_queue.clone(), 50, 40),
            Op::QueuePurge => ("queue", n.queue.clone(), 50, 30),
            Op::QueueBind => ("queue", n.queue.clone(), 50, 20),
            Op::QueueUnbind => ("queue", n.queue.clone(), 50, 50),
            Op::ExchangeBind => ("exchange", n.other_exchange.clone(), 40, 30),
            Op::ExchangeUnbind => ("exchange", n.other_exchange.clone(), 40, 40),
            Op::PublishToExchange => ("exchange", n.exchange.clone(), 60, 40),
            Op::PublishToDefaultExchange => ("exchange", "amq.default".to_owned(), 60, 40),
            Op::Consume => ("queue", n.queue.clone(), 60, 20),
            Op::Get => ("queue", n.queue.clone(), 60, 70),
        };
        format!(
            "channel.close 403 ({class}/{method}) ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user '{user}'"
        )
    }
}

/// What a method met, comparable between brokers: `ok`, or the close with server-named
/// queue names blanked.
fn outcome(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(Error::ChannelClosed(close)) => format!("channel.close {}", describe(&close)),
        Err(Error::ConnectionClosed(close)) => format!("connection.close {}", describe(&close)),
        Err(other) => format!("error {other}"),
    }
}

fn describe(close: &ServerClose) -> String {
    format!(
        "{} ({}/{}) {}",
        close.code.0,
        close.class_id,
        close.method_id,
        blank_server_names(&close.text.to_string())
    )
}

/// `amq.gen-` and its 22 random characters become `amq.gen-*`.
fn blank_server_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("amq.gen-") {
        out.push_str(&rest[..at]);
        out.push_str("amq.gen-*");
        let tail = &rest[at + "amq.gen-".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Runs every method, each on a fresh channel, after resetting the objects.
async fn outcomes(url: &str, guest: &Connection, names: &Names) -> Vec<(Op, String)> {
    names.reset(guest).await;
    let connection = Connection::open(url)
        .await
        .unwrap_or_else(|err| panic!("{url}: {err}"));
    let mut results = Vec::new();
    for op in OPS {
        let channel = connection.create_channel().await.unwrap();
        let result = op.run(&channel, names).await;
        let _ = channel.close().await;
        results.push((op, outcome(result)));
    }
    let _ = connection.close().await;
    results
}

// ---- mini-broker alone ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_with_every_permission_may_do_everything() {
    let running = broker("full", Some((".*", ".*", ".*"))).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let names = Names::new("perm");
    for (op, outcome) in outcomes(&url_of(&running, "full"), &guest, &names).await {
        if op.refused_anyway() {
            assert!(!outcome.contains("refused for user"), "{op:?}: {outcome}");
        } else {
            assert_eq!(outcome, "ok", "{op:?}");
        }
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_with_empty_patterns_is_refused_everything_but_passive_declares() {
    let running = broker("nobody", Some(("", "", ""))).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let names = Names::new("perm");
    for (op, outcome) in outcomes(&url_of(&running, "nobody"), &guest, &names).await {
        assert_eq!(outcome, op.refusal(&names, "nobody"), "{op:?}");
    }
    // Nothing was made or removed.
    let vhost = running.broker.vhost("/").unwrap();
    assert!(vhost.queue(&names.doomed_queue.as_str().into()).is_some());
    assert!(vhost.has_exchange(&names.doomed_exchange.as_str().into()));
    assert!(vhost.queue(&names.new_queue.as_str().into()).is_none());
    assert!(!vhost.has_exchange(&names.new_exchange.as_str().into()));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_searched_for_in_names() {
    // "q-new" occurs in "perm-q-new" (not anchored); "^q" does not match "perm-q".
    let running = broker("app", Some(("q-new", "^q", ""))).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let names = Names::new("perm");
    let results = outcomes(&url_of(&running, "app"), &guest, &names).await;
    let of = |wanted: Op| {
        results
            .iter()
            .find(|(op, _)| *op == wanted)
            .map(|(_, outcome)| outcome.clone())
            .unwrap()
    };
    assert_eq!(of(Op::QueueDeclare), "ok");
    assert!(
        of(Op::QueueBind).contains("access to queue 'perm-q' in vhost '/'"),
        "{}",
        of(Op::QueueBind)
    );
    assert!(of(Op::ExchangeDeclare).starts_with("channel.close 403"));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_checks_write_on_the_queue_before_read_on_the_exchange() {
    let running = broker("binder", Some(("", ".*", ""))).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let names = Names::new("perm");
    names.reset(&guest).await;
    let connection = Connection::open(&url_of(&running, "binder")).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let refused = outcome(Op::QueueBind.run(&channel, &names).await);
    assert_eq!(
        refused,
        "channel.close 403 (50/20) ACCESS_REFUSED - access to exchange 'perm-x' in vhost '/' refused for user 'binder'"
    );
    // Write is enough to publish, to a named exchange or the default one.
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(
        outcome(Op::PublishToDefaultExchange.run(&channel, &names).await),
        "ok"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_exchange_needs_read_on_the_queue_and_write_on_the_exchange() {
    let running = broker("dlx", Some((".*", "", ".*"))).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let names = Names::new("perm");
    names.reset(&guest).await;
    let connection = Connection::open(&url_of(&running, "dlx")).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(
        outcome(Op::QueueDeclareWithDeadLetterExchange.run(&channel, &names).await),
        "channel.close 403 (50/10) ACCESS_REFUSED - access to exchange 'perm-x' in vhost '/' refused for user 'dlx'"
    );
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(
        outcome(Op::ExchangeDeclareWithAlternate.run(&channel, &names).await),
        "channel.close 403 (40/10) ACCESS_REFUSED - access to exchange 'perm-x2' in vhost '/' refused for user 'dlx'"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_permissions_in_the_vhost_is_refused_at_connection_open() {
    let running = broker("stranger", None).await;
    let err = Connection::open(&url_of(&running, "stranger"))
        .await
        .unwrap_err();
    assert_eq!(
        outcome(Err(err)),
        "connection.close 530 (10/40) NOT_ALLOWED - access to vhost '/' refused for user 'stranger'"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_changed_while_connected_apply_to_the_next_method() {
    let running = broker("changing", Some((".*", ".*", ".*"))).await;
    let connection = Connection::open(&url_of(&running, "changing"))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("mine", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    running
        .broker
        .permissions
        .set(Permission::new("changing", "/", ".*", ".*", "^theirs$").unwrap());
    let err = channel.basic_get("mine", true).await.unwrap_err();
    assert_eq!(
        outcome(Err(err)),
        "channel.close 403 (60/70) ACCESS_REFUSED - access to queue 'mine' in vhost '/' refused for user 'changing'"
    );
    running.shutdown().await;
}

/// Whether python3 can import pika; says SKIPPED (or panics under REQUIRE_RABBITMQ=1).
fn python_with_pika(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        if required() {
            panic!("{test}: REQUIRE_RABBITMQ=1 but python3 with pika is missing");
        }
        eprintln!("SKIPPED {test}: python3 with pika is missing (pip install pika)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_publisher_without_write_permission_sees_the_channel_closed() {
    if !python_with_pika("pika_publisher_without_write_permission_sees_the_channel_closed") {
        return;
    }
    let running = broker("reader", Some(("", "", ".*"))).await;
    let script = format!(
        r#"
import pika
params = pika.ConnectionParameters("127.0.0.1", {port}, "/", pika.PlainCredentials("reader", "{PASSWORD}"))
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.basic_publish("", "anywhere", b"m")
try:
    channel.queue_declare("anywhere", passive=True)
    print("no error")
except pika.exceptions.ChannelClosedByBroker as e:
    print(e.reply_code, e.reply_text)
connection.close()
"#,
        port = running.amqp_addr.port()
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'reader'\n"
    );
    running.shutdown().await;
}

// ---- against RabbitMQ -----------------------------------------------------------------

fn required() -> bool {
    std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1")
}

/// RabbitMQ's URL, when one answers and `rabbitmqctl` runs; otherwise None after saying
/// SKIPPED (or a panic under REQUIRE_RABBITMQ=1).
async fn rabbitmq(test: &str) -> Option<String> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let reachable = tokio::time::timeout(std::time::Duration::from_secs(5), Connection::open(&url))
        .await
        .is_ok_and(|r| r.is_ok());
    let ctl = Command::new("rabbitmqctl")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if reachable && ctl {
        return Some(url);
    }
    let why = if reachable {
        "rabbitmqctl cannot run"
    } else {
        "no RabbitMQ answers at AMQP_URL"
    };
    if required() {
        panic!("{test}: REQUIRE_RABBITMQ=1 but {why} ({url})");
    }
    eprintln!("SKIPPED {test}: {why} ({url}); REQUIRE_RABBITMQ=1 makes this a failure");
    None
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `url` with another user.
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_rabbitmq_for_the_same_user_names_and_permissions() {
    let test = "refusals_match_rabbitmq_for_the_same_user_names_and_permissions";
    let Some(rabbit_url) = rabbitmq(test).await else {
        return;
    };
    let user = format!("perm-probe-{}", std::process::id());
    let names = Names::new(&user);
    // Configure only, write only, read only, none: each method's first refusal shows.
    let sets = [
        ("", "", ""),
        (".*", "", ""),
        ("", ".*", ""),
        ("", "", ".*"),
        (".*", ".*", ".*"),
    ];

    rabbitmqctl(&["add_user", &user, PASSWORD]);
    let rabbit_guest = Connection::open(&rabbit_url).await.unwrap();
    let mut rabbit = Vec::new();
    for (configure, write, read) in sets {
        rabbitmqctl(&["set_permissions", "-p", "/", &user, configure, write, read]);
        rabbit.push(outcomes(&as_user(&rabbit_url, &user), &rabbit_guest, &names).await);
    }
    rabbitmqctl(&["clear_permissions", "-p", "/", &user]);
    let rabbit_open = Connection::open(&as_user(&rabbit_url, &user))
        .await
        .map(drop);
    names.remove(&rabbit_guest).await;
    rabbitmqctl(&["delete_user", &user]);

    let running = broker(&user, None).await;
    let guest = Connection::open(&running.url()).await.unwrap();
    let mut ours = Vec::new();
    for (configure, write, read) in sets {
        running
            .broker
            .permissions
            .set(Permission::new(&user, "/", configure, write, read).unwrap());
        ours.push(outcomes(&url_of(&running, &user), &guest, &names).await);
    }
    running.broker.permissions.clear(&user, "/");
    let our_open = Connection::open(&url_of(&running, &user)).await.map(drop);
    running.shutdown().await;

    for (set, (theirs, ours)) in sets.iter().zip(rabbit.iter().zip(&ours)) {
        for ((op, rabbit_outcome), (_, our_outcome)) in theirs.iter().zip(ours) {
            assert_eq!(
                our_outcome, rabbit_outcome,
                "{op:?} with permissions {set:?}"
            );
        }
    }
    assert_eq!(outcome(our_open), outcome(rabbit_open));
}
