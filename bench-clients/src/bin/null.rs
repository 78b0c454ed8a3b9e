//! bench-null: the cheapest consumer there can be, to measure the broker's own ceiling for
//! `--test consume` (src/lib.rs): how fast the broker delivers, and takes acks, when the
//! client costs next to nothing.
//!
//! ```text
//! bench-null --port 5672 --test consume -n 200000 [--qos 1000] [--ack-every 1]
//! ```
//!
//! No async runtime, no allocation per message, one thread, blocking reads of up to 256 KiB:
//! frames are decoded with amqp-codec and thrown away. It fills the queue itself (publishes
//! with confirms, not timed), then consumes with prefetch `qos`:
//!
//! - `--ack-every 1`: one basic.ack frame (`multiple = false`) per delivery, as amqprs and
//!   lapin send them, all the acks of one read in one write: the ceiling of a client that
//!   sends an ack frame per delivery;
//! - `--ack-every N`: one `basic.ack multiple = true` per N deliveries: the ceiling of any
//!   client that coalesces acks (amqp-client's hold goes up to 64);
//! - `--ack-every 0`: no acks at all (`no_ack` consumer): the broker's delivery ceiling.
//!
//! The clock runs from basic.consume to the write of the last ack. Only `--test consume`.

use std::io::{Read, Write};
use std::net::TcpStream;

use amqp_codec::methods::*;
use amqp_codec::{
    frame, sasl, BasicProperties, ContentHeader, FieldTable, Frame, Limits, Method, PROTOCOL_HEADER,
};
use bench_clients::{report, start, Options};
use bytes::{Bytes, BytesMut};

type Error = Box<dyn std::error::Error + Send + Sync>;

const FRAME_MAX: u32 = 131_072;
const READ_SIZE: usize = 256 * 1024;
/// Publishes written before the filler waits for their confirms.
const FILL_WINDOW: u64 = 1000;

fn main() -> Result<(), Error> {
    let options = Options::from_args("null");
    if options.test != "consume" {
        return Err("bench-null only runs --test consume".into());
    }
    if options.ack_every > u64::from(options.qos) {
        // The broker would stop at the prefetch limit before the first ack is due.
        return Err("--ack-every must not exceed --qos".into());
    }
    if options.size + 8 > FRAME_MAX as usize {
        return Err(format!("bodies of at most {} octets (one frame)", FRAME_MAX - 8).into());
    }
    let mut amqp = Amqp::open(&options)?;
    // Channel 1 fills the queue (confirm mode), channel 2 consumes.
    amqp.call(
        1,
        QueueDeclare {
            queue: options.queue.as_str().into(),
            ..Default::default()
        },
    )?;
    amqp.call(
        1,
        QueuePurge {
            queue: options.queue.as_str().into(),
            no_wait: false,
        },
    )?;
    amqp.fill(&options)?;
    amqp.call(2, ChannelOpen)?;
    amqp.call(
        2,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: options.qos,
            global: false,
        },
    )?;
    let clock = start();
    amqp.send(
        2,
        BasicConsume {
            queue: options.queue.as_str().into(),
            no_ack: options.ack_every == 0,
            ..Default::default()
        },
    )?;
    amqp.consume(&options)?;
    report("null", &options, clock.elapsed());
    amqp.call(
        1,
        QueuePurge {
            queue: options.queue.as_str().into(),
            no_wait: false,
        },
    )?;
    amqp.send(0, ConnectionClose::default())?;
    Ok(())
}

/// A blocking AMQP connection that knows just enough.
struct Amqp {
    socket: TcpStream,
    /// What a read takes, before it is appended to `input`.
    scratch: Vec<u8>,
    input: BytesMut,
    output: BytesMut,
    limits: Limits,
}

impl Amqp {
    /// Connects, authenticates as guest (PLAIN), tunes (no heartbeats), opens vhost `/` and
    /// channel 1.
    fn open(options: &Options) -> Result<Amqp, Error> {
        let socket = TcpStream::connect((options.host.as_str(), options.port))?;
        socket.set_nodelay(true)?;
        let mut amqp = Amqp {
            socket,
            scratch: vec![0; READ_SIZE],
            input: BytesMut::with_capacity(READ_SIZE),
            output: BytesMut::with_capacity(READ_SIZE),
            limits: Limits::with_frame_max(FRAME_MAX),
        };
        amqp.socket.write_all(&PROTOCOL_HEADER)?;
        amqp.expect_reply(0)?; // connection.start
        amqp.send(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: sasl::plain_response("guest", "guest"),
                locale: "en_US".into(),
            },
        )?;
        let Method::ConnectionTune(tune) = amqp.expect_reply(0)? else {
            return Err("expected connection.tune".into());
        };
        amqp.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: FRAME_MAX.min(tune.frame_max.max(4096)),
                heartbeat: 0,
            },
        )?;
        amqp.call(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            },
        )?;
        amqp.call(1, ChannelOpen)?;
        Ok(amqp)
    }

    /// Publishes `options.messages` bodies on channel 1 in confirm mode, waiting for the
    /// confirms of each window before the next.
    fn fill(&mut self, options: &Options) -> Result<(), Error> {
        self.call(1, ConfirmSelect { nowait: false })?;
        let body = Bytes::from(vec![0u8; options.size]);
        let mut published = 0;
        let mut confirmed = 0;
        while published < options.messages {
            let window = FILL_WINDOW.min(options.messages - published);
            for _ in 0..window {
                self.put(Frame::Method(
                    1,
                    BasicPublish {
                        routing_key: options.queue.as_str().into(),
                        ..Default::default()
                    }
                    .into(),
                ));
                self.put(Frame::Header(
                    1,
                    ContentHeader::basic(body.len() as u64, BasicProperties::default()),
                ));
                // An empty body has no body frame (spec 4.2.6.2).
                if !body.is_empty() {
                    self.put(Frame::Body(1, body.clone()));
                }
            }
            self.flush()?;
            published += window;
            while confirmed < published {
                match self.next_frame()? {
                    Frame::Method(1, Method::BasicAck(ack)) => {
                        confirmed = confirmed.max(ack.delivery_tag)
                    }
                    other => return Err(format!("while filling: {other:?}").into()),
                }
            }
        }
        Ok(())
    }

    /// Takes `options.messages` deliveries on channel 2 and acks them as `--ack-every` says.
    /// A delivery is whole once its body is: at its header when the body is empty, else at
    /// the body frame that completes it.
    fn consume(&mut self, options: &Options) -> Result<(), Error> {
        let mut received = 0;
        let mut last_tag = 0;
        let mut body_to_come = 0;
        let mut unacked = 0;
        while received < options.messages {
            self.read()?;
            while let Some(frame) = frame::decode(&mut self.input, &self.limits)? {
                let whole = match frame {
                    Frame::Method(2, Method::BasicDeliver(deliver)) => {
                        last_tag = deliver.delivery_tag;
                        false
                    }
                    Frame::Header(2, header) => {
                        body_to_come = header.body_size;
                        body_to_come == 0
                    }
                    Frame::Body(2, body) => {
                        body_to_come = body_to_come.saturating_sub(body.len() as u64);
                        body_to_come == 0
                    }
                    // A late confirm of the fill, consume-ok: nothing to do.
                    Frame::Method(1, Method::BasicAck(_))
                    | Frame::Method(2, Method::BasicConsumeOk(_)) => false,
                    other => return Err(format!("while consuming: {other:?}").into()),
                };
                if !whole {
                    continue;
                }
                received += 1;
                unacked += 1;
                if options.ack_every == 0 {
                    // A no_ack consumer: nothing to send.
                } else if options.ack_every == 1 {
                    self.put_ack(last_tag, false);
                    unacked = 0;
                } else if unacked >= options.ack_every || received == options.messages {
                    self.put_ack(last_tag, true);
                    unacked = 0;
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    fn put_ack(&mut self, delivery_tag: u64, multiple: bool) {
        self.put(Frame::Method(
            2,
            BasicAck {
                delivery_tag,
                multiple,
            }
            .into(),
        ));
    }

    /// Sends a method and returns the reply on the same channel.
    fn call(&mut self, channel: u16, method: impl Into<Method>) -> Result<Method, Error> {
        self.send(channel, method)?;
        self.expect_reply(channel)
    }

    fn send(&mut self, channel: u16, method: impl Into<Method>) -> Result<(), Error> {
        self.put(Frame::Method(channel, method.into()));
        self.flush()
    }

    /// The next frame, which must be a method on `channel` (a connection.close or
    /// channel.close from the broker is an error).
    fn expect_reply(&mut self, channel: u16) -> Result<Method, Error> {
        match self.next_frame()? {
            Frame::Method(on, method) if on == channel => match method {
                Method::ConnectionClose(close) => Err(format!("{close:?}").into()),
                Method::ChannelClose(close) => Err(format!("{close:?}").into()),
                method => Ok(method),
            },
            other => Err(format!("expected a method on channel {channel}: {other:?}").into()),
        }
    }

    fn next_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = frame::decode(&mut self.input, &self.limits)? {
                return Ok(frame);
            }
            self.read()?;
        }
    }

    /// One read, appended to the input. Through `scratch`: copying the n octets read costs
    /// less than zero-filling 256 KiB of the input for each read (`Read` wants initialised
    /// memory).
    fn read(&mut self) -> Result<(), Error> {
        let n = self.socket.read(&mut self.scratch)?;
        if n == 0 {
            return Err("the broker closed the connection".into());
        }
        self.input.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    fn put(&mut self, frame: Frame) {
        frame
            .encode(&mut self.output, FRAME_MAX)
            .expect("these frames encode");
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.socket.write_all(&self.output)?;
        self.output.clear();
        Ok(())
    }
}
