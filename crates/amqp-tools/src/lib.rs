//! # amqp-tools: looking at AMQP 0-9-1 bytes
//!
//! Command-line tools for people learning or debugging AMQP 0-9-1. Each tool is a thin binary
//! in `src/bin` over a library module here, so its logic is tested without a process.
//!
//! ```text
//!  amqp-dump, amqp-sniff (src/bin)     args, files, sockets, stdin/stdout, exit status
//!       │             │
//!  dump::run     sniff::run            bytes in chunks ⇄ frames ⇄ one line each
//!       │             │
//!  amqp_codec::{decode, describe, trace}
//! ```
//!
//! ## Layout
//! - [`dump`]: `amqp-dump`, an AMQP byte stream (raw or hex) printed one frame per line, as
//!   text or JSON.
//! - [`sniff`]: `amqp-sniff`, a transparent proxy in front of a broker that prints every frame
//!   of every connection going through it.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod dump;
pub mod sniff;
