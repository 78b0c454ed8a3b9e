//! Sockets: the accept loop, and two tasks per connection.
//!
//! The reader task owns the [`ServerConnection`]: it reads bytes, feeds them in, and runs
//! the connection's timers. The writer task waits for the [`Outbox`] to fill and writes it
//! out, many frames per write. No lock is ever held across an await. A connection the broker
//! ends is closed lingering (see [`close_lingering`]), so that what it still had to say
//! reaches a slow client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

    // However `handle` ends, a bug unwinding through it included, the writer is told to
    // stop, so the socket is closed rather than left open with nothing behind it.
    let _close_outbox = CloseOnDrop(outbox.clone());
    let writer_outbox = outbox.clone();
    let writer_task = tokio::spawn(async move {
        loop {
            // Whether the outbox is closed is read before taking what it holds: what was put
            // in before the close (a close-ok, say) is then in this take, never left behind
            // by a close that came between the take and the check.
            let closed = writer_outbox.is_closed();
            let mut segments = writer_outbox.take();
            if segments.is_empty() {
                if closed {
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

    let mut input = ReadBuffer::new();
    let mut alarm = broker_alarm(&connection);
    let mut reading_paused = false;
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        connection.force_close(
            "broker forced connection closure with reason 'shutdown'",
            Instant::now(),
        );
    }
    let mut timer = Timer::new();
    // The client closed its side, or the socket failed: nothing more will be read.
    let mut input_ended = false;
    loop {
        if connection.state() == ServerState::Closed {
            break;
        }
        timer.want(earliest(connection.poll_timeout(), input.release_at()));
        let info = connection.info().cloned();
        let forced = async {
            match &info {
                Some(info) => info.force_close.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = read_into(&mut reader, &mut input, outbox.frame_max()), if !reading_paused => {
                match read {
                    (Ok(0), _) | (Err(_), _) => {
                        connection.handle_eof();
                        input_ended = true;
                        break;
                    }
                    (Ok(n), limit) => {
                        input.filled(n, limit);
                        trace_in.trace_tail(&input.buf, n);
                        let handshake = connection.state() != ServerState::Open;
                        connection.handle_input(&mut input.buf, Instant::now());
                        input.settle(outbox.frame_max(), Instant::now());
                        if handshake {
                            // No read follows the handshake's soon; many connections
                            // never read again.
                            input.release_if_quiet();
                        }
                        // Tell a newly opened connection of an alarm already on; stop
                        // reading from a publisher that just published under the alarm.
                        reading_paused = connection.alarm_changed(*alarm.borrow());
                    }
                }
            },
            changed = alarm.changed() => {
                if changed.is_ok() {
                    let on = *alarm.borrow_and_update();
                    reading_paused = connection.alarm_changed(on);
                }
            }
            () = timer.fired() => {
                // Whatever is due: the deadlines may have moved on since the timer was set.
                let now = Instant::now();
                if input.release_at().is_some_and(|at| at <= now) {
                    input.release();
                }
                if connection.poll_timeout().is_some_and(|at| at <= now) {
                    if reading_paused {
                        connection.reading_paused(now);
                    }
                    connection.handle_timeout(now);
                }
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
    }
    connection.handle_eof();
    // What the connection held is not needed while the socket closes.
    drop(connection);
    drop(input);
    // Let the writer flush what is left (a close, a close-ok), then stop it.
    outbox.close();
    if input_ended {
        let _ = writer_task.await;
    } else {
        close_lingering(&mut reader, writer_task).await;
    }
    Ok(())
}

/// The longest the writer may take, once the broker has closed a connection, to hand what
/// is left to a client that reads slowly or not at all (see [`close_lingering`]).
const FLUSH_MAX: Duration = Duration::from_secs(10);

/// How long the socket is still read after the flush, for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// What one read takes while the input is dropped.
const DRAIN_CHUNK: usize = 16 * 1024;

/// A lingering close (as Apache httpd's `ap_lingering_close`), for a connection the broker
/// ended while the client may still be sending: after close-ok, a timeout, a frame it will
/// not read past.
///
/// On Linux, closing a socket with input unread (or receiving input after the close) makes
/// the kernel answer with a reset rather than a FIN, and throw away what is still queued to
/// send: a slow reader's last replies and the close-ok would be lost, its stream cut short.
/// So the client's input is read and dropped while the writer hands over what is left (for
/// at most [`FLUSH_MAX`]: a client that reads nothing that long loses the rest), and for
/// [`LINGER`] after, until the client closes its side. Reading meanwhile also keeps a client
/// that is still writing from blocking on a full socket while the writer waits for it to
/// read. Best effort: a client that is still sending after that may still be reset.
async fn close_lingering(reader: &mut OwnedReadHalf, mut writer: JoinHandle<()>) {
    let flush_until = tokio::time::Instant::now() + FLUSH_MAX;
    let mut drain = std::pin::pin!(drain_input(reader));
    let mut input_ended = false;
    loop {
        tokio::select! {
            _ = &mut writer => break,
            () = &mut drain, if !input_ended => input_ended = true,
            () = tokio::time::sleep_until(flush_until) => {
                writer.abort();
                return;
            }
        }
    }
    if !input_ended {
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Reads and drops what the client sends until it closes its side, or the socket fails.
/// The buffer is made only once there is something to read.
async fn drain_input(reader: &mut OwnedReadHalf) {
    if reader.readable().await.is_err() {
        return;
    }
    let mut dropped = vec![0; DRAIN_CHUNK];
    while let Ok(1..) = reader.read(&mut dropped).await {}
}

/// Closes an outbox when dropped.
struct CloseOnDrop(Arc<Outbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Reads into `input`: the octets read, and how many the read could take. A quiet
/// connection has no read buffer: it waits until the socket is readable before it makes one.
async fn read_into(
    reader: &mut OwnedReadHalf,
    input: &mut ReadBuffer,
    frame_max: u32,
) -> (std::io::Result<usize>, usize) {
    if input.buf.capacity() == 0 {
        if let Err(err) = reader.readable().await {
            return (Err(err), 0);
        }
    }
    let limit = input.prepare(frame_max);
    let read = reader.read_buf(&mut (&mut input.buf).limit(limit)).await;
    (read, limit)
}

/// What a read at a frame boundary takes at first and the least it takes; reads there
/// double while they fill what they may take, up to [`READ_MAX`], and come back to this once
/// a read brings less or a large frame comes. Room is made in the read buffer when less than
/// this is free.
const READ_MIN: usize = 1024;

/// The most a read at a frame boundary takes.
const READ_MAX: usize = 64 * 1024;

/// A frame with at least this many octets still to come is read by itself, to its last
/// octet: a read past its end would bring the start of the next frame, which would then be
/// copied to a new buffer when that frame does not fit in what is left of this one.
const LARGE_FRAME_REST: usize = 16 * 1024;

/// The reader's buffer, and how much each read may take.
///
/// Frames are split off the buffer without copying ([`ServerConnection::handle_input`]), and a
/// large message's body stays the slice of the frame it came in, until the last consumer's
/// socket took it. So the buffer is shared with the messages read into it, and making room in
/// it means another buffer and a copy of the frame in progress. Reads are sized to keep that
/// copy small: a large frame is read to its end and no further, and a read at a frame boundary
/// takes little ([`READ_MIN`]) while large frames come, so what is copied is at most the start
/// of one frame. While small frames come, boundary reads grow to [`READ_MAX`], many frames per
/// read.
///
/// A connection gone quiet (its last read brought less than [`READ_MIN`] and every frame in
/// its buffer was taken) gives its buffers up after [`QUIET_RELEASE`] without a read, or at
/// once after a read of its handshake: an idle connection holds no read buffer.
struct ReadBuffer {
    buf: BytesMut,
    /// What a read at a frame boundary, or in a small frame, may take.
    read_size: usize,
    /// The last read brought less than [`READ_MIN`].
    quiet: bool,
    /// Earlier buffers, to read on in once the frames split off them are gone.
    retired: RetiredBuffers,
    /// When the buffers are given up, if no read comes first.
    release_at: Option<Instant>,
}

/// How long a quiet connection keeps its read buffer, waiting for its next read (after the
/// handshake's reads it gives it up at once). Not at once otherwise: a connection that
/// publishes a message every 100 µs is quiet after every read, and waiting for readiness
/// without a buffer, then making one, made its messages' latency worse (`amqp-perf -r 10000`:
/// the median was above main's in 11 of 13 alternating runs, by ~30 µs; with this delay in 4
/// of 7, as without giving the buffer up at all).
const QUIET_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

impl ReadBuffer {
    fn new() -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            read_size: READ_MIN,
            quiet: true,
            retired: RetiredBuffers::default(),
            release_at: None,
        }
    }

    /// Makes room for the next read and returns how much it may take: the rest of a large
    /// frame in progress; otherwise up to `read_size` (and at least the rest of a small
    /// frame), as far as the buffer has room, making room only when less than [`READ_MIN`]
    /// is left.
    fn prepare(&mut self, frame_max: u32) -> usize {
        let rest = rest_of_frame(&self.buf, frame_max);
        if rest >= LARGE_FRAME_REST {
            self.make_room(rest, rest);
            return rest;
        }
        let wanted = rest.max(self.read_size);
        self.make_room(rest.max(READ_MIN), wanted);
        self.spare().min(wanted)
    }

    /// Makes room for `wanted` octets when fewer than `needed` are free: in this buffer if no
    /// frame split off it is still held (moving the frame in progress to its start), else in
    /// an earlier buffer free again, or a new one, with a copy of the frame in progress. This
    /// one is retired until its frames are gone. (Fresh large buffers cost page faults every
    /// time; reused ones do not.)
    fn make_room(&mut self, needed: usize, wanted: usize) {
        if self.spare() >= needed || self.buf.try_reclaim(wanted) {
            return;
        }
        let size = self.buf.len() + wanted;
        let mut next = self
            .retired
            .take(size)
            .unwrap_or_else(|| BytesMut::with_capacity(size));
        next.put_slice(&self.buf);
        // Retired even with no room left: it may still be the whole of a large frame's buffer.
        let mut old = std::mem::replace(&mut self.buf, next);
        old.clear();
        self.retired.put(old);
    }

    fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// A read of `n` octets that could take `limit`: a boundary read that filled it says
    /// more is waiting, so boundary reads may take twice as much; one that brought less
    /// than [`READ_MIN`] says the burst is over.
    fn filled(&mut self, n: usize, limit: usize) {
        self.quiet = n < READ_MIN;
        if n == limit && limit <= self.read_size {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        } else if self.quiet {
            self.read_size = READ_MIN;
        }
    }

    /// After the connection took the complete frames (at `now`): a read that ended in a
    /// large frame makes the boundary reads small. After a read that brought little, once
    /// every frame was taken, the buffers are to be given up unless a read comes within
    /// [`QUIET_RELEASE`].
    fn settle(&mut self, frame_max: u32, now: Instant) {
        if rest_of_frame(&self.buf, frame_max) >= LARGE_FRAME_REST {
            self.read_size = READ_MIN;
        }
        self.release_at = (self.quiet && self.buf.is_empty()).then(|| now + QUIET_RELEASE);
    }

    /// When the buffers are to be given up, if no read comes first.
    fn release_at(&self) -> Option<Instant> {
        self.release_at
    }

    /// Gives the buffers up now if they are to be given up at all.
    fn release_if_quiet(&mut self) {
        if self.release_at.is_some() {
            self.release();
        }
    }

    /// Gives the buffers up (there is nothing in them to keep): a quiet connection holds no
    /// read buffer, and one gone quiet after a burst does not keep the burst's.
    fn release(&mut self) {
        self.buf = BytesMut::new();
        self.retired = RetiredBuffers::default();
        self.release_at = None;
    }
}

/// The octets still to come of the frame whose start is in `buf` (0 when its header is not
/// all there): its size as its header says, up to `frame_max`, plus 8 octets of framing.
/// Anything else than a frame header (the protocol header) counts as nothing; an oversized
/// size is refused by the connection, not reserved.
fn rest_of_frame(buf: &[u8], frame_max: u32) -> usize {
    // A frame header: type, channel (2), size (4).
    let [1 | 2 | 3 | 8, _, _, s0, s1, s2, s3, ..] = *buf else {
        return 0;
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    let limit = if frame_max == 0 {
        128 * 1024
    } else {
        frame_max
    };
    let frame = usize::try_from(size.min(limit)).unwrap_or(0) + 8;
    frame.saturating_sub(buf.len())
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

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One timer for the connection's deadlines (heartbeats, closing, the quiet release of the
/// read buffer), set when a deadline comes that is earlier than the one it is set for, and
/// otherwise left alone. Most reads move a deadline later (the heartbeat check, the quiet
/// release), and setting a tokio timer per read (registering it in the timer wheel and taking
/// it out again) cost more than the read's frames on a busy connection: the timer fires at
/// the old deadline instead, and the loop sets it again for what is then due.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    set_for: Option<Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            set_for: None,
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn want(&mut self, deadline: Option<Instant>) {
        if let Some(at) = next_setting(self.set_for, deadline) {
            self.sleep.as_mut().reset(at.into());
            self.set_for = Some(at);
        }
    }

    /// Completes when the timer set fires (never while it is not set); it is then unset.
    async fn fired(&mut self) {
        if self.set_for.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.set_for = None;
    }
}

/// When a timer set for `set_for` must be set again so as to fire no later than `wanted`:
/// only for an earlier deadline (one that moved later is checked when the timer fires).
fn next_setting(set_for: Option<Instant>, wanted: Option<Instant>) -> Option<Instant> {
    match (set_for, wanted) {
        (_, None) => None,
        (Some(set_for), Some(wanted)) if set_for <= wanted => None,
        (_, wanted) => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_MAX: u32 = 131_072;

    /// A body frame header on channel 1 with a payload of `size` octets.
    fn body_frame_header(size: u32) -> Vec<u8> {
        let mut header = vec![3, 0, 1];
        header.extend_from_slice(&size.to_be_bytes());
        header
    }

    #[test]
    fn the_timer_is_set_again_only_for_an_earlier_deadline() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(next_setting(None, None), None);
        assert_eq!(next_setting(None, Some(later)), Some(later));
        // A deadline that moved later: the timer fires at the old one and is set again then.
        assert_eq!(next_setting(Some(now), Some(later)), None);
        assert_eq!(next_setting(Some(now), Some(now)), None);
        assert_eq!(next_setting(Some(later), Some(now)), Some(now));
        assert_eq!(next_setting(Some(now), None), None);
        assert_eq!(earliest(Some(later), Some(now)), Some(now));
        assert_eq!(earliest(None, Some(later)), Some(later));
        assert_eq!(earliest(None, None), None);
    }

    #[tokio::test]
    async fn the_timer_fires_for_the_earliest_deadline_wanted_and_is_then_unset() {
        let now = Instant::now();
        let mut timer = Timer::new();
        timer.want(Some(now + std::time::Duration::from_secs(3600)));
        timer.want(Some(now));
        assert_eq!(timer.set_for, Some(now));
        timer.want(Some(now + std::time::Duration::from_secs(7200)));
        assert_eq!(
            timer.set_for,
            Some(now),
            "a later deadline leaves the timer as it is"
        );
        timer.fired().await;
        assert_eq!(timer.set_for, None);
        let unset = tokio::time::timeout(std::time::Duration::from_millis(20), timer.fired());
        assert!(unset.await.is_err(), "an unset timer never fires");
    }

    #[test]
    fn a_new_connection_has_no_read_buffer_until_it_reads() {
        let mut input = ReadBuffer::new();
        assert_eq!(input.buf.capacity(), 0);
        assert_eq!(input.prepare(FRAME_MAX), READ_MIN);
        assert!(input.buf.capacity() >= READ_MIN);
    }

    /// A read that brings `octets`, before the connection takes any frame.
    fn read(input: &mut ReadBuffer, octets: &[u8]) {
        let limit = input.prepare(FRAME_MAX);
        assert!(octets.len() <= limit, "a read takes at most {limit} octets");
        input.buf.extend_from_slice(octets);
        input.filled(octets.len(), limit);
        input.settle(FRAME_MAX, Instant::now());
    }

    /// The connection takes the whole buffer (complete frames), then the reader settles.
    fn take_all(input: &mut ReadBuffer) -> bytes::Bytes {
        let frames = input.buf.split().freeze();
        input.settle(FRAME_MAX, Instant::now());
        frames
    }

    #[test]
    fn a_large_frame_in_progress_is_read_to_its_end_and_no_further() {
        let mut input = ReadBuffer::new();
        // A boundary read brought the start of a 65,536-octet body frame: its header and
        // 100 octets of its payload.
        read(
            &mut input,
            &[&body_frame_header(65_536)[..], &[0; 100]].concat(),
        );
        let rest = 65_536 + 8 - 107;
        assert_eq!(input.prepare(FRAME_MAX), rest);
        assert!(input.buf.capacity() - input.buf.len() >= rest);
        // The frame is read and split off whole, its start copied: nothing else was read.
        read(&mut input, &vec![0; rest]);
        let frame = take_all(&mut input);
        assert_eq!(frame.len(), 65_544);
        // The next read, at a frame boundary, is small, in a buffer of its own (the frame
        // still holds the last one).
        assert_eq!(input.prepare(FRAME_MAX), READ_MIN);
        assert!(!input.buf.as_ptr_range().contains(&frame.as_ptr()));
    }

    #[test]
    fn a_buffer_held_by_a_frame_is_read_into_again_once_the_frame_is_gone() {
        let mut input = ReadBuffer::new();
        let header = body_frame_header(65_536);
        read(&mut input, &header);
        read(&mut input, &vec![0; 65_544 - 7]);
        let large = input.buf.as_ptr();
        let frame = take_all(&mut input);
        // While a queue holds the frame, reading goes on elsewhere.
        read(&mut input, &header);
        assert_ne!(input.buf.as_ptr(), large);
        drop(frame);
        // The frame was delivered: its buffer takes the next large frame, no new one.
        assert_eq!(input.prepare(FRAME_MAX), 65_544 - 7);
        assert_eq!(input.buf.as_ptr(), large);
        assert_eq!(&input.buf[..], &header[..]);
    }

    #[test]
    fn boundary_reads_double_while_they_fill_and_shrink_back_when_the_burst_is_over() {
        let mut input = ReadBuffer::new();
        let mut limits = Vec::new();
        for _ in 0..8 {
            let limit = input.prepare(FRAME_MAX);
            limits.push(limit);
            read(&mut input, &vec![0; limit]);
            take_all(&mut input);
        }
        assert_eq!(
            limits,
            [1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 65_536]
        );
        assert_eq!(input.release_at(), None, "kept while busy");
        // A read that brings little: the burst is over, and the buffer grown for it goes
        // once no read came for QUIET_RELEASE.
        input.prepare(FRAME_MAX);
        assert!(input.buf.capacity() > 4 * READ_MIN, "grown for the burst");
        let before = Instant::now();
        read(&mut input, &[0; 100]);
        take_all(&mut input);
        assert!(input
            .release_at()
            .is_some_and(|at| at >= before + QUIET_RELEASE));
        input.release_if_quiet();
        assert_eq!(input.buf.capacity(), 0, "no buffer while quiet");
        assert_eq!(input.prepare(FRAME_MAX), READ_MIN);
    }

    #[test]
    fn a_quiet_connection_keeps_its_buffer_while_a_frame_is_in_progress() {
        let mut input = ReadBuffer::new();
        read(&mut input, &[0; 100]);
        take_all(&mut input);
        assert!(input.release_at().is_some());
        // The next read brings the start of a frame: it is kept, whatever the time.
        read(&mut input, &body_frame_header(10));
        assert_eq!(input.release_at(), None);
        input.release_if_quiet();
        assert_eq!(&input.buf[..], &body_frame_header(10)[..]);
        assert!(input.buf.capacity() > 7);
    }

    #[test]
    fn the_rest_of_a_small_frame_is_read_whole_and_does_not_count_as_a_boundary_read() {
        let mut input = ReadBuffer::new();
        // A frame with 10,000 octets to come (below LARGE_FRAME_REST).
        input.buf.extend_from_slice(&body_frame_header(10_000));
        assert_eq!(input.prepare(FRAME_MAX), 10_008 - 7);
        input.filled(10_008 - 7, 10_008 - 7);
        assert_eq!(input.read_size, READ_MIN);
    }

    #[test]
    fn the_buffer_is_not_regrown_while_a_worthwhile_read_still_fits() {
        let mut input = ReadBuffer::new();
        input.prepare(FRAME_MAX);
        let capacity = input.buf.capacity();
        input.buf.resize(capacity - READ_MIN, 0);
        let start = input.buf.as_ptr();
        assert_eq!(input.prepare(FRAME_MAX), READ_MIN);
        assert_eq!(input.buf.as_ptr(), start, "no new buffer, no copy");
    }

    #[test]
    fn the_size_of_a_frame_is_taken_up_to_frame_max_and_only_from_a_frame_header() {
        assert_eq!(rest_of_frame(&body_frame_header(65_536), FRAME_MAX), 65_537);
        assert_eq!(rest_of_frame(&body_frame_header(u32::MAX), 4096), 4097);
        assert_eq!(rest_of_frame(&body_frame_header(10)[..6], FRAME_MAX), 0);
        assert_eq!(rest_of_frame(b"AMQP\x00\x00\x09\x01", FRAME_MAX), 0);
    }
}
