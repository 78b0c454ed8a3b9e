//! The bodies of the cargo-fuzz targets in `fuzz/`.
//!
//! They live in the library so that `cargo test` replays the checked-in corpus on stable Rust
//! (`tests/fuzz_corpus.rs`), and so that what the fuzzer checks is ordinary, reviewed code.
//! A fuzz target reports a broken property by panicking, so panics are allowed here alone.
#![allow(clippy::panic)]

use bytes::BytesMut;

use crate::frame::{decode, Frame, Limits};

/// Small limits, so the fuzzer reaches the frame_max and depth checks quickly.
fn fuzz_limits() -> Limits {
    Limits {
        frame_max: 4096,
        max_table_depth: 8,
    }
}

/// Decodes arbitrary bytes as a stream of frames until an error or the end. Never panics.
pub fn decode_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let limits = fuzz_limits();
    while let Ok(Some(frame)) = decode(&mut buf, &limits) {
        let _ = crate::describe::text(&frame).to_string();
        let _ = crate::describe::json(&frame).to_string();
    }
}

/// Decodes arbitrary bytes; every frame that decodes must encode, and decode again to an equal
/// frame of the predicted size.
pub fn decode_encode_decode(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let limits = fuzz_limits();
    while let Ok(Some(frame)) = decode(&mut buf, &limits) {
        roundtrip(&frame, &limits);
    }
}

/// Encodes a frame and decodes it again: the value, the size and the absence of leftovers
/// must all hold. Panics (for the fuzzer to see) when they do not.
pub fn roundtrip(frame: &Frame, limits: &Limits) {
    let mut out = BytesMut::new();
    match frame.encode(&mut out, 0) {
        Ok(()) => {}
        Err(_) => {
            // Only values built by the fuzzer (not decoded ones) may be unencodable, and then
            // nothing may have been written.
            assert!(out.is_empty(), "a failed encode left bytes behind");
            return;
        }
    }
    assert_eq!(
        out.len(),
        frame.encoded_len(),
        "encoded size differs from the prediction"
    );
    let relaxed = Limits {
        frame_max: 0,
        max_table_depth: limits
            .max_table_depth
            .max(crate::frame::DEFAULT_MAX_TABLE_DEPTH),
    };
    let again = decode(&mut out, &relaxed);
    match again {
        Ok(Some(decoded)) => assert_eq!(&decoded, frame, "decode(encode(frame)) != frame"),
        other => panic!("re-decoding an encoded frame failed: {other:?}"),
    }
    assert!(out.is_empty(), "bytes left over after re-decoding");
}
