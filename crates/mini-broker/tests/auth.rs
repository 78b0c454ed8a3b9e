//! Users, passwords and vhost permissions from the configuration file.

use amqp_client::{Connection, Error};
use mini_broker::{BrokerConfig, BrokerOptions, RunningBroker};

async fn broker() -> RunningBroker {
    let config = BrokerConfig::from_toml(
        r#"
        vhosts = ["/", "prod"]
        [[users]]
        name = "guest"
        password = "guest"
        tags = ["administrator"]
        vhosts = ["/"]
        [[users]]
        name = "app"
        password = "s3cret"
        vhosts = ["prod"]
        "#,
    )
    .unwrap();
    mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn url(running: &RunningBroker, user: &str, password: &str, vhost: &str) -> String {
    format!("amqp://{user}:{password}@{}/{vhost}", running.amqp_addr)
}

#[tokio::test]
async fn configured_user_opens_its_vhost_with_plain_and_amqplain() {
    let running = broker().await;
    for mechanism in ["PLAIN", "AMQPLAIN"] {
        let connection = Connection::open(&format!(
            "{}?auth_mechanism={mechanism}",
            url(&running, "app", "s3cret", "prod")
        ))
        .await
        .unwrap_or_else(|err| panic!("{mechanism}: {err}"));
        connection.create_channel().await.unwrap();
        connection.close().await.unwrap();
    }
    running.shutdown().await;
}

#[tokio::test]
async fn user_without_permission_on_a_vhost_is_refused_with_530() {
    let running = broker().await;
    let err = Connection::open(&url(&running, "app", "s3cret", "%2f"))
        .await
        .unwrap_err();
    match err {
        Error::ConnectionClosed(close) => {
            assert_eq!(close.code.0, 530);
            assert_eq!(
                close.text,
                "NOT_ALLOWED - access to vhost '/' refused for user 'app'"
            );
        }
        other => panic!("expected 530, got {other}"),
    }
    running.shutdown().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let running = broker().await;
    let err = Connection::open(&url(&running, "app", "wrong", "prod"))
        .await
        .unwrap_err();
    match err {
        Error::AuthenticationFailed(text) => assert!(
            text.starts_with(
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"
            ),
            "{text}"
        ),
        other => panic!("expected an authentication failure, got {other}"),
    }
    running.shutdown().await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let running = broker().await;
    let err = Connection::open(&url(&running, "guest", "guest", "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.reply_code().map(|c| c.0), Some(530), "{err}");
    running.shutdown().await;
}
