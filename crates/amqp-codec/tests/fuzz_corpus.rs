//! Replays the checked-in cargo-fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! functions the fuzz targets call (`amqp_codec::fuzzing`), on stable Rust. A regression that
//! the fuzzer once found, and whose input was kept in the corpus, fails here.

use std::fs;
use std::path::PathBuf;

use amqp_codec::fuzzing;

/// Every file of `fuzz/corpus/<target>`, sorted by name; fails if there are none, so the
/// replay cannot pass by finding nothing.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

/// Runs `check` on every file of the target's corpus; a panic names the file that caused it.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, data) in &files {
        if std::panic::catch_unwind(|| check(data)).is_err() {
            panic!(
                "fuzz/corpus/{target}/{} fails",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    files.len()
}

#[test]
fn decode_frame_corpus_replays_without_a_broken_property() {
    let replayed = replay("decode_frame", fuzzing::decode_frames);
    assert!(replayed > 0);
}

#[test]
fn decode_roundtrip_corpus_replays_without_a_broken_property() {
    let replayed = replay("decode_roundtrip", fuzzing::decode_encode_decode);
    assert!(replayed > 0);
}

#[test]
fn encode_structured_corpus_replays_without_a_broken_property() {
    let replayed = replay("encode_structured", fuzzing::structured);
    assert!(replayed > 0);
}

/// The decode corpora hold real AMQP conversations, not only noise: at least one of their
/// files must decode to several frames without an error (the seeds from
/// `fuzz/examples/seed_corpus.rs` do).
#[test]
fn decode_corpora_hold_whole_conversations() {
    for target in ["decode_frame", "decode_roundtrip"] {
        let longest = corpus(target)
            .iter()
            .map(|(_, data)| frames_before_error(data))
            .max()
            .unwrap_or(0);
        assert!(
            longest >= 4,
            "no file of fuzz/corpus/{target} decodes to 4 frames or more"
        );
    }
}

fn frames_before_error(data: &[u8]) -> usize {
    let mut buf = bytes::BytesMut::from(data);
    let mut count = 0;
    while let Ok(Some(_)) = amqp_codec::decode(&mut buf, &amqp_codec::Limits::default()) {
        count += 1;
    }
    count
}
