//! A tamper-evident, append-only log, as a component of its own: the Configuration and
//! Attestation Service appends every session change, attestation, secret release and refusal
//! to it, and the Kubernetes API audit will too.
//!
//! - [`merkle`]: RFC 6962 hashing (`SHA-256(0x00 || entry)`, `SHA-256(0x01 || left || right)`),
//!   the hashes of a growing tree, and inclusion and consistency proofs with the verifiers of
//!   RFC 9162 §2.1.3.2 and §2.1.4.2.
//! - [`note`]: C2SP signed notes with Ed25519 keys (the key ID, the verifier key text Go's
//!   `sumdb/note` reads), and [`checkpoint`]: the C2SP `tlog-checkpoint` text they sign.
//! - [`tiles`]: C2SP `tlog-tiles` paths, tiles and entry bundles.
//! - [`log`]: the log on disk (entries appended and synced, a signed checkpoint after each
//!   append, checked against the entries at every open), exported as tiles.
//! - [`group`]: group commit — threads append to one log and wait until their entry is
//!   durable, the log writing whatever queued up in one batch, one sync, one checkpoint.
//! - [`verify`]: what `veil audit verify` does offline with an exported log and the log's
//!   public key: every entry, tile and the checkpoint's signature, a given entry's inclusion,
//!   and that an older checkpoint is a prefix of this one.
//!
//! Every parser here takes untrusted bytes (notes, checkpoints, tile paths, bundles) and
//! returns an error naming what was wrong; each has a fuzz target.

pub mod checkpoint;
pub mod group;
pub mod log;
pub mod merkle;
pub mod note;
pub mod tiles;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use merkle::{Hash, Tree};
pub use note::{NoteSigner, NoteVerifier};

/// What was wrong with a log, a proof, a note or a tile.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlogError {
    /// A note could not be parsed or verified.
    #[error("note: {0}")]
    Note(String),
    /// A checkpoint's text is malformed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A proof does not verify, or cannot be made for these sizes.
    #[error("proof: {0}")]
    Proof(String),
    /// A tile path, tile or entry bundle is malformed.
    #[error("tile: {0}")]
    Tile(String),
    /// The stored log does not match its checkpoint, or an entry is refused.
    #[error("log: {0}")]
    Log(String),
    /// Reading or writing the log's files failed.
    #[error("{path}: {detail}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
}

pub(crate) fn io_error(path: &std::path::Path, e: &std::io::Error) -> TlogError {
    TlogError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}
