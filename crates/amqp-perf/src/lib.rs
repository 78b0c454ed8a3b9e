//! # amqp-perf: throughput and latency of an AMQP 0-9-1 broker
//!
//! A load generator in the spirit of RabbitMQ PerfTest, on the project's own client: producers
//! publish stamped messages, consumers read the stamps back, and every second a line says how
//! many went out, were confirmed and came back, and how long they took end to end. At the end
//! it checks what it measured: every message sent was received exactly once.
//!
//! ```text
//!  args ─► run ─┬─ producers (one connection and thread each): BodyWriter stamps, basic.publish, confirms
//!               ├─ consumers (one connection and thread each): Stamp::read, Tracker, Histogram, acks
//!               └─ reporter: Progress every second ─► Summary (text or JSON)
//! ```
//!
//! ## Layout
//! - [`args`]: the flags (PerfTest's names).
//! - [`body`]: the 16-byte stamp at the start of each body, and allocation-free bodies.
//! - [`histogram`]: fixed-bucket latency histograms.
//! - [`pacing`]: the schedule of a fixed-rate producer (`-r`).
//! - [`tracker`]: the exactly-once check.
//! - [`run`]: the measurement itself.
//! - [`report`]: progress lines and the summary.

pub mod args;
pub mod body;
pub mod histogram;
pub mod pacing;
pub mod report;
pub mod run;
pub mod tracker;

pub use args::Args;
pub use report::{Progress, Summary};
pub use run::{run, RunError};
