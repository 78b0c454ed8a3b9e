//! # amqp-client
//!
//! Work in progress: the sans-IO core is in [`core`].

pub mod core;
pub mod error;
pub mod uri;

pub use error::{Error, ServerClose};
pub use uri::{AmqpUri, AuthMechanism};
