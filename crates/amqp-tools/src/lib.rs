//! Tools for looking at AMQP 0-9-1 bytes; see the binaries in `src/bin`.
