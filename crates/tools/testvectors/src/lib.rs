//! Access to `testvectors/` (real hardware evidence with provenance) for tests and benchmarks.

use std::path::PathBuf;

/// The `testvectors/` directory of this repository.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../testvectors")
}

/// The path of a vector file, relative to `testvectors/`.
pub fn path(rel: &str) -> PathBuf {
    dir().join(rel)
}

/// Reads a vector file. Panics with the path if it is missing: vectors are part of the
/// repository, so a missing one is a broken checkout, not a test outcome.
#[allow(clippy::panic)]
pub fn read(rel: &str) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
