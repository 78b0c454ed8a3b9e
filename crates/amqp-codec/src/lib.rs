//! # amqp-codec: AMQP 0-9-1 frames, from bytes and back
//!
//! A pure codec for AMQP 0-9-1 as RabbitMQ speaks it: no sockets, no runtime, no clock. It
//! turns bytes into [`Frame`]s and frames back into bytes, and puts a method's content (header
//! and body frames) back together. The client and the broker of this workspace stand on it.
//!
//! ```text
//!  amqp-client            mini-broker            amqp-dump / amqp-sniff
//!       │                      │                         │
//!       └───── connection and channel state machines ────┘
//!                              │
//!  ┌───────────────────────────▼────────────────────────────────┐
//!  │ amqp-codec   content   (method + header + body ⇄ Command)  │
//!  │              frame     (bytes ⇄ Frame, frame_max checks)   │
//!  │              generated (every method, basic properties)    │
//!  │              wire      (octets, strings, field tables)     │
//!  └────────────────────────────────────────────────────────────┘
//! ```
//!
//! ## Layout
//! - [`frame`]: [`decode`] and [`Frame::encode`]; the frame header is peeked and an oversized
//!   frame refused before its payload is buffered.
//! - [`content`]: [`ContentAssembler`] (frames in, [`Command`]s out) and body splitting.
//! - [`methods`]: one struct per method and the [`Method`] enum, generated from the spec XML
//!   (`spec/amqp0-9-1.rabbit-extended.xml`); [`spec`] describes them at run time.
//! - [`types`]: short and long strings, field tables and values.
//! - [`describe`]: the one-line text and JSON renderings of a frame that `amqp-dump`, the
//!   frame tracer and the sniffer print.
//! - [`trace`]: `AMQP_TRACE=1`: every frame a connection sends and receives, on stderr.
//! - [`sasl`]: PLAIN and AMQPLAIN responses, shared by the client and the broker.
//! - [`tune`]: connection.tune negotiation, shared by the client and the broker.
//! - [`constants`], [`error`]: reply codes, frame types, and errors that know their reply code.
//! - `tokio` (feature `tokio-codec`): a tokio-util `Decoder`/`Encoder` over [`decode`].
//! - [`fuzzing`]: the bodies of the cargo-fuzz targets, so `cargo test` replays their corpus.
//!
//! ## Quick look
//! ```
//! use amqp_codec::{decode, methods::BasicPublish, Frame, Limits, Method};
//! use bytes::BytesMut;
//!
//! let publish = BasicPublish {
//!     exchange: "".into(),
//!     routing_key: "task_queue".into(),
//!     ..Default::default()
//! };
//! let mut buf = BytesMut::new();
//! Frame::Method(1, publish.clone().into()).encode(&mut buf, 131_072).unwrap();
//! let frame = decode(&mut buf, &Limits::default()).unwrap().unwrap();
//! assert_eq!(frame, Frame::Method(1, Method::BasicPublish(publish)));
//! ```
//!
//! ## No input can crash it
//! Outside tests this crate denies `unwrap`, `expect`, `panic!`, indexing and unchecked
//! arithmetic: every length that comes from the wire is checked, tables nest to a bounded depth,
//! and allocation is bounded by `frame_max`.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;
pub mod constants;
pub mod content;
pub mod describe;
pub mod error;
pub mod frame;
pub mod fuzzing;
#[rustfmt::skip]
mod generated;
pub mod sasl;
pub mod spec;
#[cfg(feature = "tokio-codec")]
pub mod tokio;
pub mod trace;
pub mod tune;
pub mod types;
mod wire;

/// One struct per method of the spec, and the [`Method`] enum of them all.
pub mod methods {
    pub use crate::generated::*;
}

pub use constants::{ChannelId, FrameType, ReplyCode, FRAME_END, FRAME_MIN_SIZE, PROTOCOL_HEADER};
pub use content::{
    body_frames, encode_content, Command, Content, ContentAssembler, HeaderOfContent,
};
pub use error::{DecodeError, EncodeError};
pub use frame::{decode, ContentHeader, Frame, Limits, ProtocolHeader};
pub use generated::{BasicProperties, Method};
pub use tune::Tune;
pub use types::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};
