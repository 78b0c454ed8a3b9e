//! Short strings: up to 38 octets kept inline, longer ones as a slice of the frame, the same
//! values either way.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use amqp_codec::ShortString;
use bytes::Bytes;

fn hash_of(value: &ShortString) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// `len` octets of printable text that are not all the same.
fn text(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

#[test]
fn short_strings_held_inline_or_shared_are_equal_ordered_and_hashed_by_their_octets() {
    for len in [0, 1, 31, ShortString::INLINE_CAPACITY, 39, 255] {
        let octets = text(len);
        let copied = ShortString::from(octets.as_str());
        let shared = ShortString::new(Bytes::from(octets.clone()));
        assert_eq!(copied, shared, "{len} octets");
        assert_eq!(copied.cmp(&shared), std::cmp::Ordering::Equal);
        assert_eq!(hash_of(&copied), hash_of(&shared));
        assert_eq!(copied.as_bytes(), octets.as_bytes());
        assert_eq!(copied.len(), len);
        assert_eq!(copied.bytes(), shared.bytes());
        assert_eq!(copied.clone().into_bytes(), Bytes::from(octets.clone()));
        assert_eq!(format!("{copied:?}"), format!("{shared:?}"));
        assert_eq!(copied, octets.as_str());
    }
    let (inline, shared) = (ShortString::from("abc"), ShortString::from_static("abd"));
    assert_eq!(inline.cmp(&shared), std::cmp::Ordering::Less);
    let (shared, inline) = (ShortString::from_static("ab"), ShortString::from("abc"));
    assert_eq!(shared.cmp(&inline), std::cmp::Ordering::Less);
    assert_ne!(ShortString::from("abc"), ShortString::from("abcd"));
    assert_eq!(ShortString::default(), ShortString::from_static(""));
    assert!(ShortString::default().is_empty());
}

#[test]
fn short_string_that_is_not_utf8_shows_its_octets_in_either_form() {
    let octets: &[u8] = &[0xff, 0x00, 0x41];
    let copied = ShortString::from(octets);
    let shared = ShortString::new(Bytes::from_static(octets));
    assert_eq!(format!("{copied:?}"), "ShortString([ff, 00, 41])");
    assert_eq!(format!("{shared:?}"), "ShortString([ff, 00, 41])");
    assert_eq!(copied.as_str(), None);
}
