//! Sockets: the accept loop, and two tasks per connection.
//!
//! The reader task owns the [`ServerConnection`]: it reads bytes, feeds them in, and runs
//! the connection's timers. The writer task waits for the [`Outbox`] to fill and writes it
//! out, many frames per write. No lock is ever held across an await.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::connection::{ServerConnection, ServerState};
use crate::delivery::Outbox;
use crate::queue::DeadLetters;

/// Accepts connections until `shutdown` turns true; each connection is closed with
/// 320 CONNECTION_FORCED on shutdown.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let broker = broker.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(err) = handle(socket, peer, broker, shutdown).await {
                            tracing::debug!(%peer, "connection ended: {err}");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Serves one connection until it closes.
async fn handle(
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let local = socket.local_addr()?;
    let (mut reader, mut writer) = socket.into_split();
    let outbox = Arc::new(Outbox::new(broker.config.frame_max));
    let mut connection = ServerConnection::new(broker, peer, local, outbox.clone(), Instant::now());
    tracing::debug!(%peer, id = connection.id(), "accepted connection");
    // AMQP_TRACE=1: every frame on stderr; off, both halves are empty Options.
    let (mut trace_in, mut trace_out) =
        amqp_codec::trace::Tracer::with_id("broker", connection.id(), peer).split();

    let writer_outbox = outbox.clone();
    let writer_task = tokio::spawn(async move {
        loop {
            let mut segments = writer_outbox.take();
            if segments.is_empty() {
                if writer_outbox.is_closed() {
                    break;
                }
                writer_outbox.wait().await;
                continue;
            }
            for part in segments.parts() {
                trace_out.trace(part);
            }
            let len = segments.remaining();
            // Vectored writes: large bodies go out from the publisher's frame, uncopied.
            if writer.write_all_buf(&mut segments).await.is_err() {
                writer_outbox.close();
                break;
            }
            writer_outbox.record_written(len);
            writer_outbox.recycle(segments);
            // Queues that stopped delivering while the outbox was full may go on.
            if !writer_outbox.is_full() {
                for queue in writer_outbox.take_paused() {
                    let mut dead = DeadLetters::new();
                    queue.kick(&mut dead);
                }
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut retired = RetiredBuffers::default();
    let mut alarm = broker_alarm(&connection);
    let mut reading_paused = false;
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        connection.force_close(
            "broker forced connection closure with reason 'shutdown'",
            Instant::now(),
        );
    }
    loop {
        if connection.state() == ServerState::Closed {
            break;
        }
        let deadline = connection.poll_timeout();
        let info = connection.info().cloned();
        let forced = async {
            match &info {
                Some(info) => info.force_close.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read_buf(&mut buf), if !reading_paused => match read {
                Ok(0) | Err(_) => {
                    connection.handle_eof();
                    break;
                }
                Ok(n) => {
                    trace_in.trace_tail(&buf, n);
                    connection.handle_input(&mut buf, Instant::now());
                    // Tell a newly opened connection of an alarm already on; stop reading
                    // from a publisher that just published under the alarm.
                    reading_paused = connection.alarm_changed(*alarm.borrow());
                }
            },
            changed = alarm.changed() => {
                if changed.is_ok() {
                    let on = *alarm.borrow_and_update();
                    reading_paused = connection.alarm_changed(on);
                }
            }
            _ = sleep_until(deadline) => {
                if reading_paused {
                    connection.reading_paused(Instant::now());
                }
                connection.handle_timeout(Instant::now());
            }
            _ = forced => {
                let reason = info
                    .as_ref()
                    .and_then(|info| crate::delivery::lock(&info.force_close_reason).clone())
                    .unwrap_or_else(|| "Closed via management plugin".to_owned());
                connection.force_close(&reason, Instant::now());
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                connection.force_close("broker forced connection closure with reason 'shutdown'", Instant::now());
            }
        }
        reserve_for_next_read(&mut buf, &mut retired, outbox.frame_max());
    }
    connection.handle_eof();
    // Let the writer flush what is left (a close, a close-ok), then stop it.
    outbox.close();
    let _ = writer_task.await;
    Ok(())
}

/// Makes room in the read buffer: 64 KiB when less than 4 KiB is free, and at least the
/// whole frame in progress (up to `frame_max` + 8 octets of it), so a large frame is read
/// into one allocation instead of regrowing (and copying) it a read at a time.
///
/// A buffer still referenced by frames handed on (a large body waiting in a queue or an
/// outbox) cannot be reused in place: reading goes on in an earlier such buffer that is free
/// again, or in a new one, and this one is retired until it is free. (Fresh buffers of this
/// size cost page faults every time; reused ones do not.)
fn reserve_for_next_read(buf: &mut BytesMut, retired: &mut RetiredBuffers, frame_max: u32) {
    let mut wanted = 4096;
    // A frame header: type, channel (2), size (4). Anything else (the protocol header) is
    // left to the 4 KiB rule; an oversized size is refused by the connection, not reserved.
    if let [1 | 2 | 3 | 8, _, _, s0, s1, s2, s3, ..] = buf[..] {
        let size = u32::from_be_bytes([s0, s1, s2, s3]);
        let limit = if frame_max == 0 {
            128 * 1024
        } else {
            frame_max
        };
        let frame = usize::try_from(size.min(limit)).unwrap_or(0) + 8;
        wanted = wanted.max(frame.saturating_sub(buf.len()));
    }
    if buf.capacity() - buf.len() < wanted {
        let wanted = wanted.max(64 * 1024);
        if buf.try_reclaim(wanted) {
            return;
        }
        let needed = buf.len() + wanted;
        let mut next = retired
            .take(needed)
            .unwrap_or_else(|| BytesMut::with_capacity(needed));
        next.put_slice(buf);
        let mut old = std::mem::replace(buf, next);
        old.clear();
        retired.put(old);
    }
}

/// Read buffers waiting for the frames sliced from them to be dropped, oldest first.
#[derive(Default)]
struct RetiredBuffers(std::collections::VecDeque<BytesMut>);

impl RetiredBuffers {
    /// The most kept per connection; beyond, the oldest is let go.
    const MAX: usize = 4;

    /// A retired buffer free again with room for `needed` octets.
    fn take(&mut self, needed: usize) -> Option<BytesMut> {
        let at = self.0.iter_mut().position(|old| old.try_reclaim(needed))?;
        self.0.remove(at)
    }

    fn put(&mut self, old: BytesMut) {
        if self.0.len() == Self::MAX {
            self.0.pop_front();
        }
        self.0.push_back(old);
    }
}

/// A receiver of the broker's resource alarms (on while memory or disk is low).
fn broker_alarm(connection: &ServerConnection) -> watch::Receiver<bool> {
    connection.broker().alarm.subscribe()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
