//! Startup order: no AMQP connection is accepted before recovery from `--data-dir` is done
//! (RabbitMQ starts its listeners last). The test holds recovery at a known point by making
//! the definitions file a named pipe: the broker, reading it, waits until the test writes
//! the definitions; meanwhile a connect must be refused, and once they are written the
//! first connection finds the recovered queue with all its messages.
#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amqp_client::{BasicProperties, Confirmation, Connection, FieldTable, QueueDeclareOptions};
use mini_broker::BrokerOptions;

/// Kills the broker process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A durable queue with three persistent, confirmed messages, in `dir`.
async fn prepare(dir: &Path) {
    let running = mini_broker::start(BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    })
    .await
    .unwrap();
    let connection = Connection::open(&running.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("kept", durable, FieldTable::new())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    for n in 0..3 {
        let persistent = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let confirm = channel
            .basic_publish("", "kept", persistent, format!("m{n}"), false)
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    }
    connection.close().await.unwrap();
    running.shutdown().await;
}

/// Opens the pipe for writing once the broker has opened it for reading (until then a
/// non-blocking open fails with ENXIO).
fn open_when_read(fifo: &Path, broker: &mut Child) -> std::fs::File {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rustix::fs::open(
            fifo,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => return std::fs::File::from(fd),
            Err(rustix::io::Errno::NXIO) => {}
            Err(err) => panic!("cannot open the pipe: {err}"),
        }
        if let Ok(Some(status)) = broker.try_wait() {
            panic!("the broker exited before reading its definitions: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the broker never read its definitions"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_refused_until_recovery_is_done() {
    let dir = std::env::temp_dir().join(format!("mini-broker-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    prepare(&dir).await;
    let definitions_file = dir.join("definitions.json");
    let definitions = std::fs::read(&definitions_file).unwrap();
    std::fs::remove_file(&definitions_file).unwrap();
    let made = Command::new("mkfifo")
        .arg(&definitions_file)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mini-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--mgmt-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut broker = Killed(child);
    let pipe = {
        let fifo = definitions_file.clone();
        let broker = &mut broker.0;
        open_when_read(&fifo, broker)
    };

    // The broker is inside recovery, waiting for its definitions: no connection yet.
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect_err("a connect during recovery is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    {
        use std::io::Write;
        let mut pipe = pipe;
        pipe.write_all(&definitions).unwrap();
    }
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let deadline = Instant::now() + Duration::from_secs(30);
    let connection = loop {
        match Connection::open(&url).await {
            Ok(connection) => break connection,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "no connection after recovery: {err}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The first connection finds everything recovered.
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let kept = channel
        .queue_declare("kept", passive, FieldTable::new())
        .await
        .unwrap();
    assert_eq!(kept.message_count, 3);
    connection.close().await.unwrap();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
