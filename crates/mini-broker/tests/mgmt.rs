//! The management HTTP API: RabbitMQ's paths, JSON fields, status codes and error bodies,
//! against an in-process broker; and RabbitMQ's own `rabbitmqadmin` run against it
//! unchanged.
//!
//! The `rabbitmqadmin` test needs Debian's rabbitmq-server package (which ships it) and
//! python3; without them it says so and passes, unless `REQUIRE_RABBITMQ=1`.

use std::path::PathBuf;
use std::time::Duration;

use amqp_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};
use mini_broker::{BrokerOptions, RunningBroker};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn broker() -> RunningBroker {
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// An HTTP answer: status, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `Connection: close`; `auth` None sends no Authorization header.
async fn request(
    running: &RunningBroker,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let addr = running.mgmt_addr.expect("management listener");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(credentials) = auth {
        let encoded = base64(credentials.as_bytes());
        head.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn api(running: &RunningBroker, method: &str, path: &str, body: Option<Value>) -> Answer {
    request(running, method, path, Some("guest:guest"), body).await
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Polls the API until `check` holds for the JSON at `path` (deliveries are asynchronous).
async fn eventually(running: &RunningBroker, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = api(running, "GET", path, None).await.json();
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never satisfied the check; last answer: {last}");
}

// ---- authentication ---------------------------------------------------------------------------

#[tokio::test]
async fn api_without_credentials_is_401_with_a_basic_challenge() {
    let running = broker().await;
    let answer = request(&running, "GET", "/api/overview", None, None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Basic realm=\"RabbitMQ Management\"")
    );
    assert!(answer.body.is_empty());
}

#[tokio::test]
async fn api_with_a_bad_password_is_401_login_failed() {
    let running = broker().await;
    let answer = request(&running, "GET", "/api/queues", Some("guest:wrong"), None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.json(),
        json!({"error": "not_authorized", "reason": "Login failed"})
    );
    let unknown = request(&running, "GET", "/api/queues", Some("nobody:guest"), None).await;
    assert_eq!(unknown.status, 401);
}

#[tokio::test]
async fn user_without_management_tags_is_refused() {
    let mut options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    options.config.users.push(mini_broker::config::UserConfig {
        name: "app".into(),
        password: "secret".into(),
        tags: Vec::new(),
        vhosts: vec!["/".into()],
        ..Default::default()
    });
    let running = mini_broker::start(options).await.unwrap();
    let answer = request(&running, "GET", "/api/overview", Some("app:secret"), None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.json(),
        json!({"error": "not_authorised", "reason": "Not management user"})
    );
}

// ---- permissions ---------------------------------------------------------------------------

/// A broker with guest (administrator), `app` (management, its own permissions on `/`) and
/// `idle` (no permissions), and a second vhost.
async fn broker_with_users() -> RunningBroker {
    broker_with_users_in(None).await
}

/// [`broker_with_users`] keeping its state in `data_dir`.
async fn broker_with_users_in(data_dir: Option<std::path::PathBuf>) -> RunningBroker {
    let config = mini_broker::BrokerConfig::from_toml(
        r#"
        vhosts = ["/", "other"]
        [[users]]
        name = "guest"
        password = "guest"
        tags = ["administrator"]
        vhosts = ["/"]
        [[users]]
        name = "app"
        password = "secret"
        tags = ["management"]
        [users.permissions."/"]
        configure = "^app-"
        write = ".*"
        read = ""
        [[users]]
        name = "idle"
        password = "secret"
        "#,
    )
    .unwrap();
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: Some("127.0.0.1:0".parse().unwrap()),
        config,
        data_dir,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn permissions_are_listed_with_rabbitmq_field_names() {
    let running = broker_with_users().await;
    let guest =
        json!({"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"});
    let app = json!({"user": "app", "vhost": "/", "configure": "^app-", "write": ".*", "read": ""});
    let all = api(&running, "GET", "/api/permissions", None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json(), json!([guest.clone(), app.clone()]));
    assert_eq!(
        api(&running, "GET", "/api/users/app/permissions", None)
            .await
            .json(),
        json!([app.clone()])
    );
    assert_eq!(
        api(&running, "GET", "/api/vhosts/%2F/permissions", None)
            .await
            .json(),
        json!([guest, app.clone()])
    );
    assert_eq!(
        api(&running, "GET", "/api/vhosts/other/permissions", None)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        api(&running, "GET", "/api/permissions/%2F/app", None)
            .await
            .json(),
        app
    );
    for missing in [
        "/api/permissions/%2F/idle",
        "/api/users/nobody/permissions",
        "/api/vhosts/nowhere/permissions",
    ] {
        assert_eq!(
            api(&running, "GET", missing, None).await.status,
            404,
            "{missing}"
        );
    }
    let not_admin = request(
        &running,
        "GET",
        "/api/permissions",
        Some("app:secret"),
        None,
    )
    .await;
    assert_eq!(not_admin.status, 401);
    assert_eq!(
        not_admin.json(),
        json!({"error": "not_authorised", "reason": "Not administrator user"})
    );
}

#[tokio::test]
async fn permissions_are_set_and_cleared_and_take_effect_on_amqp_at_once() {
    let running = broker_with_users().await;
    let url = format!("amqp://idle:secret@{}/other", running.amqp_addr);
    assert_eq!(
        Connection::open(&url)
            .await
            .unwrap_err()
            .reply_code()
            .map(|c| c.0),
        Some(530)
    );
    let body = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let created = api(
        &running,
        "PUT",
        "/api/permissions/other/idle",
        Some(body.clone()),
    )
    .await;
    assert_eq!(created.status, 201);
    let replaced = api(&running, "PUT", "/api/permissions/other/idle", Some(body)).await;
    assert_eq!(replaced.status, 204);
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("idle-q", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let narrowed = json!({"configure": "", "write": ".*", "read": ".*"});
    api(
        &running,
        "PUT",
        "/api/permissions/other/idle",
        Some(narrowed),
    )
    .await;
    let err = channel
        .queue_delete("idle-q", false, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "channel closed by the server: 403: ACCESS_REFUSED - access to queue 'idle-q' in vhost 'other' refused for user 'idle' (after queue.delete)"
    );
    let cleared = api(&running, "DELETE", "/api/permissions/other/idle", None).await;
    assert_eq!(cleared.status, 204);
    assert_eq!(
        api(&running, "DELETE", "/api/permissions/other/idle", None)
            .await
            .status,
        404
    );
    assert_eq!(
        Connection::open(&url)
            .await
            .unwrap_err()
            .reply_code()
            .map(|c| c.0),
        Some(530)
    );
}

#[tokio::test]
async fn permissions_set_and_cleared_through_the_api_outlive_a_restart() {
    let dir = std::env::temp_dir().join(format!("mini-broker-mgmt-perms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = broker_with_users_in(Some(dir.clone())).await;
    let idle = json!({"configure": "^idle-", "write": ".*", "read": ""});
    let created = api(&running, "PUT", "/api/permissions/other/idle", Some(idle)).await;
    assert_eq!(created.status, 201);
    // The configuration gives `app` permissions on `/`: cleared here, they stay cleared.
    let cleared = api(&running, "DELETE", "/api/permissions/%2F/app", None).await;
    assert_eq!(cleared.status, 204);
    running.shutdown().await;

    let running = broker_with_users_in(Some(dir.clone())).await;
    let all = api(&running, "GET", "/api/permissions", None).await;
    assert_eq!(
        all.json(),
        json!([
            {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "idle", "vhost": "other", "configure": "^idle-", "write": ".*", "read": ""},
        ])
    );
    let url = format!("amqp://idle:secret@{}/other", running.amqp_addr);
    let connection = Connection::open(&url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let err = channel
        .queue_declare("other-q", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(err.reply_code().map(|c| c.0), Some(403));
    let app = format!("amqp://app:secret@{}/%2f", running.amqp_addr);
    assert_eq!(
        Connection::open(&app)
            .await
            .unwrap_err()
            .reply_code()
            .map(|c| c.0),
        Some(530)
    );
    running.shutdown().await;

    // A file that is not a list of changes stops the broker from starting, naming it.
    std::fs::write(dir.join("permissions.json"), "{\"user\": 1}").unwrap();
    let refused = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await
    .err()
    .expect("a malformed permissions file is refused");
    assert!(
        refused.to_string().contains("permissions.json"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_permission_bodies_are_refused_with_400() {
    let running = broker_with_users().await;
    let full = json!({"configure": ".*", "write": ".*", "read": ".*"});
    for path in [
        "/api/permissions/nowhere/idle",
        "/api/permissions/%2F/nobody",
    ] {
        let answer = api(&running, "PUT", path, Some(full.clone())).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(
            answer.json(),
            json!({"error": "bad_request", "reason": "vhost_or_user_not_found"})
        );
    }
    let missing = api(
        &running,
        "PUT",
        "/api/permissions/%2F/idle",
        Some(json!({"configure": ".*", "write": ".*"})),
    )
    .await;
    assert_eq!(
        missing.json(),
        json!({"error": "bad_request", "reason": "[{key_missing,read}]"})
    );
    let bad = api(
        &running,
        "PUT",
        "/api/permissions/%2F/idle",
        Some(json!({"configure": "(", "write": ".*", "read": ".*"})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("invalid regular expression '('"),
        "{}",
        bad.body
    );
    assert!(running.broker.permissions.lookup("idle", "/").is_none());
}

#[tokio::test]
async fn api_writes_need_the_callers_permissions_as_amqp_does() {
    let running = broker_with_users().await;
    let app = Some("app:secret");
    // configure "^app-": its own queues only.
    let own = request(
        &running,
        "PUT",
        "/api/queues/%2F/app-jobs",
        app,
        Some(json!({})),
    )
    .await;
    assert_eq!(own.status, 201);
    let other = request(
        &running,
        "PUT",
        "/api/queues/%2F/jobs",
        app,
        Some(json!({})),
    )
    .await;
    assert_eq!(other.status, 401);
    assert_eq!(
        other.json(),
        json!({"error": "not_authorised", "reason": "Access refused."})
    );
    // read "": no get.
    let get = request(
        &running,
        "POST",
        "/api/queues/%2F/app-jobs/get",
        app,
        Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    )
    .await;
    assert_eq!(get.status, 400);
    assert_eq!(
        get.json(),
        json!({"error": "bad_request", "reason": "403 ACCESS_REFUSED - access to queue 'app-jobs' in vhost '/' refused for user 'app'"})
    );
    // write ".*": publishing is fine.
    let published = request(
        &running,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        app,
        Some(json!({"routing_key": "app-jobs", "payload": "x", "payload_encoding": "string", "properties": {}})),
    )
    .await;
    assert_eq!(published.json(), json!({"routed": true}));
}

// ---- queues -------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_declared_through_the_api_is_created_then_found_then_checked() {
    let running = broker().await;
    let body = json!({"durable": "false", "auto_delete": false, "arguments": {"x-max-length": 10}});
    let created = api(&running, "PUT", "/api/queues/%2F/jobs", Some(body.clone())).await;
    assert_eq!(created.status, 201);
    let again = api(&running, "PUT", "/api/queues/%2F/jobs", Some(body)).await;
    assert_eq!(again.status, 204);
    let queue = api(&running, "GET", "/api/queues/%2F/jobs", None)
        .await
        .json();
    assert_eq!(queue["name"], "jobs");
    assert_eq!(queue["vhost"], "/");
    assert_eq!(queue["durable"], false);
    assert_eq!(queue["auto_delete"], false);
    assert_eq!(queue["exclusive"], false);
    assert_eq!(queue["arguments"], json!({"x-max-length": 10}));
    assert_eq!(queue["type"], "classic");
    assert_eq!(queue["state"], "running");
    assert_eq!(queue["messages"], 0);
    assert_eq!(queue["consumer_details"], json!([]));

    // The same equivalence check as queue.declare, with RabbitMQ's text.
    let inequivalent = api(
        &running,
        "PUT",
        "/api/queues/%2F/jobs",
        Some(json!({"durable": true, "arguments": {"x-max-length": 10}})),
    )
    .await;
    assert_eq!(inequivalent.status, 400);
    assert_eq!(
        inequivalent.json(),
        json!({"error": "bad_request", "reason": "inequivalent arg 'durable' for queue 'jobs' in vhost '/': received 'true' but current is 'false'"})
    );
    let declared = running
        .broker
        .vhost("/")
        .unwrap()
        .queue(&"jobs".into())
        .expect("declared in the broker");
    assert_eq!(declared.settings.max_length, Some(10));
}

#[tokio::test]
async fn queue_with_ready_and_unacked_messages_counts_both() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare("work", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in 0..3 {
        channel
            .basic_publish(
                "",
                "work",
                BasicProperties::default(),
                format!("m{i}"),
                false,
            )
            .await
            .unwrap();
    }
    let consuming = connection.create_channel().await.unwrap();
    consuming.basic_qos(1, false).await.unwrap();
    let _consumer = consuming
        .basic_consume(
            "work",
            "worker-1",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();

    let queue = eventually(&running, "/api/queues/%2F/work", |q| {
        q["messages_unacknowledged"] == 1
    })
    .await;
    assert_eq!(queue["messages_ready"], 2);
    assert_eq!(queue["messages"], 3);
    assert_eq!(queue["consumers"], 1);
    assert_eq!(queue["message_bytes_ready"], 4);
    assert_eq!(queue["message_bytes_unacknowledged"], 2);
    assert_eq!(queue["consumer_details"][0]["consumer_tag"], "worker-1");

    let consumers = api(&running, "GET", "/api/consumers/%2F", None)
        .await
        .json();
    assert_eq!(consumers.as_array().unwrap().len(), 1);
    let consumer = &consumers[0];
    assert_eq!(consumer["queue"], json!({"name": "work", "vhost": "/"}));
    assert_eq!(consumer["ack_required"], true);
    assert_eq!(consumer["prefetch_count"], 1);
    assert_eq!(consumer["channel_details"]["number"], consuming.id());
    assert_eq!(consumer["channel_details"]["user"], "guest");

    let connections = api(&running, "GET", "/api/connections", None).await.json();
    let connection_json = &connections[0];
    assert_eq!(connection_json["user"], "guest");
    assert_eq!(connection_json["vhost"], "/");
    assert_eq!(connection_json["channels"], 2);
    assert_eq!(connection_json["protocol"], "AMQP 0-9-1");
    let name = connection_json["name"].as_str().unwrap().to_owned();
    assert!(
        name.ends_with(&format!(" -> {}", running.amqp_addr)),
        "{name}"
    );

    let channels = api(&running, "GET", "/api/channels", None).await.json();
    let busy = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == consuming.id())
        .expect("the consuming channel");
    assert_eq!(busy["name"], format!("{name} ({})", consuming.id()));
    assert_eq!(busy["messages_unacknowledged"], 1);
    assert_eq!(busy["consumer_count"], 1);
    assert_eq!(busy["prefetch_count"], 1);

    let overview = api(&running, "GET", "/api/overview", None).await.json();
    assert_eq!(overview["queue_totals"]["messages_ready"], 2);
    assert_eq!(overview["queue_totals"]["messages_unacknowledged"], 1);
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["object_totals"]["channels"], 2);
    assert_eq!(overview["object_totals"]["consumers"], 1);
    assert_eq!(overview["object_totals"]["queues"], 1);
    assert_eq!(overview["object_totals"]["exchanges"], 7);
}

#[tokio::test]
async fn exclusive_queue_of_an_amqp_connection_is_locked_for_the_api() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    channel
        .queue_declare("mine", options, FieldTable::new())
        .await
        .unwrap();
    let queue = api(&running, "GET", "/api/queues/%2F/mine", None)
        .await
        .json();
    assert_eq!(queue["exclusive"], true);
    assert_eq!(
        queue["owner_pid_details"]["peer_port"],
        connection_port(&running).await
    );
    let deleted = api(&running, "DELETE", "/api/queues/%2F/mine", None).await;
    assert_eq!(deleted.status, 400);
    assert!(deleted.json()["reason"]
        .as_str()
        .unwrap()
        .starts_with("cannot obtain exclusive access to locked queue 'mine' in vhost '/'"));
    let got = api(
        &running,
        "POST",
        "/api/queues/%2F/mine/get",
        Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(got.json()["reason"]
        .as_str()
        .unwrap()
        .starts_with("405 RESOURCE_LOCKED - cannot obtain exclusive access"));
}

async fn connection_port(running: &RunningBroker) -> Value {
    api(running, "GET", "/api/connections", None).await.json()[0]["peer_port"].clone()
}

#[tokio::test]
async fn deleting_a_queue_with_if_empty_refuses_a_queue_with_messages() {
    let running = broker().await;
    api(&running, "PUT", "/api/queues/%2F/full", Some(json!({}))).await;
    let publish = json!({"routing_key": "full", "payload": "x", "payload_encoding": "string", "properties": {}});
    api(
        &running,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(publish),
    )
    .await;
    let refused = api(
        &running,
        "DELETE",
        "/api/queues/%2F/full?if-empty=true",
        None,
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["reason"],
        "queue 'full' in vhost '/' not empty"
    );
    let purged = api(&running, "DELETE", "/api/queues/%2F/full/contents", None).await;
    assert_eq!(purged.status, 204);
    let deleted = api(
        &running,
        "DELETE",
        "/api/queues/%2F/full?if-empty=true",
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let gone = api(&running, "DELETE", "/api/queues/%2F/full", None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.json(),
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
}

// ---- exchanges, bindings, publish, get --------------------------------------------------------

#[tokio::test]
async fn exchange_and_binding_declared_through_the_api_route_published_messages() {
    let running = broker().await;
    let created = api(
        &running,
        "PUT",
        "/api/exchanges/%2F/events",
        Some(json!({"type": "topic", "durable": "true"})),
    )
    .await;
    assert_eq!(created.status, 201);
    api(&running, "PUT", "/api/queues/%2F/audit", Some(json!({}))).await;
    let bound = api(
        &running,
        "POST",
        "/api/bindings/%2F/e/events/q/audit",
        Some(json!({"routing_key": "user.#", "arguments": {}})),
    )
    .await;
    assert_eq!(bound.status, 201);
    assert_eq!(bound.header("location"), Some("audit/user.%2523"));

    let exchange = api(&running, "GET", "/api/exchanges/%2F/events", None)
        .await
        .json();
    assert_eq!(exchange["type"], "topic");
    assert_eq!(exchange["durable"], true);
    assert_eq!(exchange["internal"], false);
    let bindings = api(&running, "GET", "/api/bindings/%2F/e/events/q/audit", None)
        .await
        .json();
    assert_eq!(
        bindings,
        json!([{"source": "events", "vhost": "/", "destination": "audit", "destination_type": "queue",
                "routing_key": "user.#", "arguments": {}, "properties_key": "user.%23"}])
    );
    let all = api(&running, "GET", "/api/bindings/%2F", None).await.json();
    assert_eq!(
        all[0]["source"], "",
        "the default exchange's binding comes first"
    );
    assert_eq!(all[0]["destination"], "audit");

    let publish = |key: &str| {
        json!({"routing_key": key, "payload": "hi", "payload_encoding": "string",
               "properties": {"delivery_mode": 2, "headers": {"n": 1}}})
    };
    let routed = api(
        &running,
        "POST",
        "/api/exchanges/%2F/events/publish",
        Some(publish("user.created")),
    )
    .await;
    assert_eq!(routed.json(), json!({"routed": true}));
    let unrouted = api(
        &running,
        "POST",
        "/api/exchanges/%2F/events/publish",
        Some(publish("order.created")),
    )
    .await;
    assert_eq!(unrouted.json(), json!({"routed": false}));

    let got = api(
        &running,
        "POST",
        "/api/queues/%2F/audit/get",
        Some(json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    )
    .await
    .json();
    assert_eq!(
        got,
        json!([{"payload_bytes": 2, "redelivered": false, "exchange": "events", "routing_key": "user.created",
                "message_count": 0, "properties": {"headers": {"n": 1}, "delivery_mode": 2},
                "payload": "hi", "payload_encoding": "string"}])
    );

    let deleted = api(
        &running,
        "DELETE",
        "/api/bindings/%2F/e/events/q/audit/user.%2523",
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let again = api(
        &running,
        "DELETE",
        "/api/bindings/%2F/e/events/q/audit/user.%2523",
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    let gone = api(&running, "DELETE", "/api/exchanges/%2F/events", None).await;
    assert_eq!(gone.status, 204);
    assert!(!running
        .broker
        .vhost("/")
        .unwrap()
        .has_exchange(&"events".into()));
}

#[tokio::test]
async fn get_with_requeue_keeps_messages_in_order_and_marks_them_redelivered() {
    let running = broker().await;
    api(&running, "PUT", "/api/queues/%2F/q", Some(json!({}))).await;
    for payload in ["one", "two"] {
        let body = json!({"routing_key": "q", "payload": payload, "payload_encoding": "string", "properties": {}});
        api(
            &running,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(body),
        )
        .await;
    }
    // Not UTF-8: shown in base64.
    let binary = json!({"routing_key": "q", "payload": "/w==", "payload_encoding": "base64", "properties": {}});
    api(
        &running,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(binary),
    )
    .await;

    let get = |ackmode: &str, count: u32| json!({"count": count.to_string(), "ackmode": ackmode, "encoding": "auto", "truncate": 50000});
    let first = api(
        &running,
        "POST",
        "/api/queues/%2F/q/get",
        Some(get("ack_requeue_true", 2)),
    )
    .await
    .json();
    assert_eq!(first[0]["payload"], "one");
    assert_eq!(first[0]["redelivered"], false);
    assert_eq!(first[0]["message_count"], 2);
    assert_eq!(
        first[0]["properties"],
        json!([]),
        "no properties: an empty list, as RabbitMQ"
    );
    assert_eq!(first[1]["payload"], "two");

    let second = api(
        &running,
        "POST",
        "/api/queues/%2F/q/get",
        Some(get("reject_requeue_false", 5)),
    )
    .await
    .json();
    let payloads: Vec<&str> = second
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["one", "two", "/w=="]);
    assert_eq!(second[0]["redelivered"], true);
    assert_eq!(second[2]["payload_encoding"], "base64");
    let empty = api(
        &running,
        "POST",
        "/api/queues/%2F/q/get",
        Some(get("ack_requeue_true", 1)),
    )
    .await
    .json();
    assert_eq!(empty, json!([]));
    let queue = api(&running, "GET", "/api/queues/%2F/q", None).await.json();
    assert_eq!(queue["messages"], 0);
}

#[tokio::test]
async fn refusals_carry_rabbitmq_statuses_and_texts() {
    let running = broker().await;
    let reserved = api(&running, "PUT", "/api/queues/%2F/amq.mine", Some(json!({}))).await;
    assert_eq!(reserved.status, 401);
    assert_eq!(
        reserved.json(),
        json!({"error": "not_authorised", "reason": "Access refused."})
    );
    let no_exchange = api(
        &running,
        "POST",
        "/api/exchanges/%2F/nope/publish",
        Some(json!({"routing_key": "k", "payload": "x", "payload_encoding": "string", "properties": {}})),
    )
    .await;
    assert_eq!(no_exchange.status, 400);
    assert_eq!(
        no_exchange.json(),
        json!({"error": "bad_request", "reason": "404 NOT_FOUND - no exchange 'nope' in vhost '/'"})
    );
    api(&running, "PUT", "/api/queues/%2F/q", Some(json!({}))).await;
    let bind = api(
        &running,
        "POST",
        "/api/bindings/%2F/e/nope/q/q",
        Some(json!({"routing_key": "k"})),
    )
    .await;
    assert_eq!(bind.status, 404);
    assert_eq!(
        bind.json(),
        json!({"error": "not_found", "reason": "no exchange 'nope' in vhost '/'"})
    );
    let kind = api(
        &running,
        "PUT",
        "/api/exchanges/%2F/x",
        Some(json!({"type": "nonsense"})),
    )
    .await;
    assert_eq!(
        kind.json(),
        json!({"error": "bad_request", "reason": "unknown exchange type 'nonsense'"})
    );
    let missing = api(
        &running,
        "POST",
        "/api/queues/%2F/q/get",
        Some(json!({"count": 1})),
    )
    .await;
    assert_eq!(
        missing.json(),
        json!({"error": "bad_request", "reason": "[{key_missing,ackmode}]"})
    );
    let not_json = request(
        &running,
        "PUT",
        "/api/queues/%2F/q",
        Some("guest:guest"),
        None,
    )
    .await;
    assert_eq!(not_json.status, 204, "an empty body is an empty object");
    let no_vhost = api(&running, "GET", "/api/queues/nowhere", None).await;
    assert_eq!(no_vhost.status, 404);
    let no_queue = api(
        &running,
        "POST",
        "/api/queues/%2F/ghost/get",
        Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    )
    .await;
    assert_eq!(
        no_queue.json(),
        json!({"error": "not_found", "reason": "NOT_FOUND - no queue 'ghost' in vhost '/'"})
    );
}

#[tokio::test]
async fn columns_and_sort_shape_a_listing() {
    let running = broker().await;
    for name in ["b", "a", "c"] {
        api(
            &running,
            "PUT",
            &format!("/api/queues/%2F/{name}"),
            Some(json!({})),
        )
        .await;
    }
    let listed = api(
        &running,
        "GET",
        "/api/queues?columns=name,messages&sort=name&sort_reverse=true",
        None,
    )
    .await
    .json();
    assert_eq!(
        listed,
        json!([{"messages": 0, "name": "c"}, {"messages": 0, "name": "b"}, {"messages": 0, "name": "a"}])
    );
    let overview = api(
        &running,
        "GET",
        "/api/overview?columns=rabbitmq_version,object_totals.queues",
        None,
    )
    .await
    .json();
    assert_eq!(overview["object_totals"]["queues"], 3);
    assert!(overview.get("listeners").is_none());
}

#[tokio::test]
async fn connection_closed_through_the_api_is_closed_with_320() {
    let running = broker().await;
    let connection = Connection::open(&running.url()).await.unwrap();
    let name = api(&running, "GET", "/api/connections", None).await.json()[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!(
        "/api/connections/{}",
        name.replace(' ', "%20").replace('>', "%3E")
    );
    let closed = api(&running, "DELETE", &path, None).await;
    assert_eq!(closed.status, 204);
    for _ in 0..100 {
        if !connection.is_open() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!connection.is_open());
    assert!(connection
        .close_reason()
        .unwrap()
        .to_string()
        .contains("320"));
}

// ---- metrics --------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_expose_queue_depths_and_counts_without_auth() {
    let running = broker().await;
    api(&running, "PUT", "/api/queues/%2F/depth", Some(json!({}))).await;
    let body = json!({"routing_key": "depth", "payload": "x", "payload_encoding": "string", "properties": {}});
    api(
        &running,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(body),
    )
    .await;
    let _connection = Connection::open(&running.url()).await.unwrap();
    let metrics = request(&running, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.body;
    assert!(
        text.contains("# TYPE rabbitmq_queue_messages_ready gauge\n"),
        "{text}"
    );
    assert!(
        text.contains("rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"depth\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("rabbitmq_queue_messages_unacked{vhost=\"/\",queue=\"depth\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("rabbitmq_queue_consumers{vhost=\"/\",queue=\"depth\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("\nrabbitmq_connections 1\n"), "{text}");
    assert!(text.contains("\nrabbitmq_queues 1\n"), "{text}");
}

// ---- rabbitmqadmin, unchanged ---------------------------------------------------------------

/// Debian's rabbitmqadmin, if installed.
fn rabbitmqadmin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("rabbitmqadmin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/bin/rabbitmqadmin".into());
    candidates.push("/usr/sbin/rabbitmqadmin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/rabbitmq/lib") {
        for entry in entries.flatten() {
            if let Ok(plugins) = std::fs::read_dir(entry.path().join("plugins")) {
                for plugin in plugins.flatten() {
                    candidates.push(plugin.path().join("priv/www/cli/rabbitmqadmin"));
                }
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// rabbitmqadmin for `test`, or None after saying SKIPPED (a panic under REQUIRE_RABBITMQ=1).
fn rabbitmqadmin_for(test: &str) -> Option<PathBuf> {
    let tool = rabbitmqadmin();
    if tool.is_none() {
        if std::env::var("REQUIRE_RABBITMQ").as_deref() == Ok("1") {
            panic!("rabbitmqadmin is not installed (REQUIRE_RABBITMQ=1): install rabbitmq-server");
        }
        eprintln!(
            "SKIPPED {test}: rabbitmqadmin is not installed (apt-get install rabbitmq-server)"
        );
    }
    tool
}

/// Runs rabbitmqadmin against the broker; its stdout, after checking it succeeded.
async fn admin(tool: &PathBuf, running: &RunningBroker, args: &[&str]) -> String {
    let port = running.mgmt_addr.unwrap().port().to_string();
    let output = tokio::process::Command::new("python3")
        .arg(tool)
        .args(["-H", "127.0.0.1", "-P", &port])
        .args(args)
        .output()
        .await
        .expect("python3 runs rabbitmqadmin");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "rabbitmqadmin {args:?} failed: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_runs_every_command_unchanged() {
    let Some(tool) = rabbitmqadmin_for("rabbitmqadmin_runs_every_command_unchanged") else {
        return;
    };
    let running = broker().await;
    // An AMQP client with a consumer, for connections, channels and consumers.
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "amqp-side",
            QueueDeclareOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let _consumer = channel
        .basic_consume(
            "amqp-side",
            "amqp-ctag",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();

    assert_eq!(
        admin(
            &tool,
            &running,
            &["declare", "queue", "name=orders", "durable=false"]
        )
        .await,
        "queue declared\n"
    );
    assert_eq!(
        admin(
            &tool,
            &running,
            &["declare", "exchange", "name=shop", "type=topic"]
        )
        .await,
        "exchange declared\n"
    );
    assert_eq!(
        admin(
            &tool,
            &running,
            &[
                "declare",
                "binding",
                "source=shop",
                "destination=orders",
                "routing_key=order.*"
            ]
        )
        .await,
        "binding declared\n"
    );
    assert_eq!(
        admin(
            &tool,
            &running,
            &[
                "publish",
                "exchange=shop",
                "routing_key=order.new",
                "payload=first order"
            ]
        )
        .await,
        "Message published\n"
    );
    assert_eq!(
        admin(
            &tool,
            &running,
            &[
                "publish",
                "exchange=shop",
                "routing_key=nowhere",
                "payload=lost"
            ]
        )
        .await,
        "Message published but NOT routed\n"
    );

    let queues = admin(&tool, &running, &["list", "queues"]).await;
    assert!(queues.contains("| orders    | 1        |"), "{queues}");
    assert!(queues.contains("| amqp-side | 0        |"), "{queues}");
    let exchanges = admin(&tool, &running, &["-q", "-f", "tsv", "list", "exchanges"]).await;
    assert!(exchanges.contains("\nshop\ttopic\n"), "{exchanges}");
    let bindings = admin(&tool, &running, &["-q", "-f", "tsv", "list", "bindings"]).await;
    assert!(bindings.contains("shop\torders\torder.*\n"), "{bindings}");
    assert!(bindings.contains("\torders\torders\n"), "{bindings}");
    let connections = admin(&tool, &running, &["-q", "-f", "tsv", "list", "connections"]).await;
    assert!(connections.contains("\tguest\t1\n"), "{connections}");
    let channels = admin(&tool, &running, &["-q", "-f", "tsv", "list", "channels"]).await;
    assert!(channels.contains(" (1)\tguest\n"), "{channels}");
    let consumers = admin(
        &tool,
        &running,
        &[
            "-q",
            "-f",
            "tsv",
            "list",
            "consumers",
            "consumer_tag",
            "ack_required",
        ],
    )
    .await;
    assert_eq!(consumers, "amqp-ctag\tTrue\n");
    let overview = admin(&tool, &running, &["-q", "-f", "tsv", "show", "overview"]).await;
    assert_eq!(overview, "3.10.8\tmini-broker@localhost\t1\t2\n");

    let got = admin(
        &tool,
        &running,
        &[
            "-q",
            "-f",
            "tsv",
            "get",
            "queue=orders",
            "ackmode=ack_requeue_true",
        ],
    )
    .await;
    assert!(
        got.contains("order.new\tshop\t0\tfirst order\t11\tstring\t\tFalse"),
        "{got}"
    );
    let again = admin(
        &tool,
        &running,
        &[
            "-q",
            "-f",
            "tsv",
            "get",
            "queue=orders",
            "ackmode=ack_requeue_false",
        ],
    )
    .await;
    assert!(
        again.contains("\tTrue"),
        "requeued, so redelivered: {again}"
    );
    assert_eq!(
        admin(&tool, &running, &["-q", "-f", "tsv", "get", "queue=orders"]).await,
        ""
    );

    assert_eq!(
        admin(
            &tool,
            &running,
            &[
                "delete",
                "binding",
                "source=shop",
                "destination_type=queue",
                "destination=orders",
                "properties_key=order.%2A"
            ]
        )
        .await,
        "binding deleted\n"
    );
    assert_eq!(
        admin(&tool, &running, &["delete", "exchange", "name=shop"]).await,
        "exchange deleted\n"
    );
    assert_eq!(
        admin(&tool, &running, &["delete", "queue", "name=orders"]).await,
        "queue deleted\n"
    );
    let vhost = running.broker.vhost("/").unwrap();
    assert!(vhost.queue(&"orders".into()).is_none());
    assert!(!vhost.has_exchange(&"shop".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_lists_declares_and_deletes_permissions() {
    let Some(tool) = rabbitmqadmin_for("rabbitmqadmin_lists_declares_and_deletes_permissions")
    else {
        return;
    };
    let running = broker_with_users().await;
    // rabbitmqadmin shows vhost first, then the other fields sorted by name.
    let listed = admin(&tool, &running, &["-q", "-f", "tsv", "list", "permissions"]).await;
    assert_eq!(listed, "/\t.*\t.*\tguest\t.*\n/\t^app-\t\tapp\t.*\n");
    let declared = admin(
        &tool,
        &running,
        &[
            "declare",
            "permission",
            "vhost=other",
            "user=idle",
            "configure=^idle-",
            "write=.*",
            "read=",
        ],
    )
    .await;
    assert_eq!(declared, "permission declared\n");
    let idle = running.broker.permissions.lookup("idle", "other").unwrap();
    assert_eq!(
        (
            idle.configure.as_str(),
            idle.write.as_str(),
            idle.read.as_str()
        ),
        ("^idle-", ".*", "")
    );
    let listed = admin(&tool, &running, &["-q", "-f", "tsv", "list", "permissions"]).await;
    assert!(listed.ends_with("other\t^idle-\t\tidle\t.*\n"), "{listed}");
    let deleted = admin(
        &tool,
        &running,
        &["delete", "permission", "vhost=other", "user=idle"],
    )
    .await;
    assert_eq!(deleted, "permission deleted\n");
    assert!(running.broker.permissions.lookup("idle", "other").is_none());
}
