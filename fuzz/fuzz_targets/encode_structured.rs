//! See fuzz/README.md, and amqp_codec::fuzzing::structured for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_codec::fuzzing::structured(data));
