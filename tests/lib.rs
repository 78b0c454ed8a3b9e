//! Cross-crate and interop tests live in this package's `tests/` folder.
