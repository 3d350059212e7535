//! What can go wrong with a volume: a verdict on what the host handed us (altered, rolled back,
//! wrong key) or a fault (I/O, the anchor unreachable).

use veil_attest_core::Malformed;

/// A volume refused, or an operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The key does not open this volume (checked before anything else is read).
    #[error("wrong key: the volume's key check does not match this key")]
    WrongKey,
    /// Neither superblock slot is intact.
    #[error("superblock altered: {0}")]
    Superblock(String),
    /// The metadata does not hash to the root the superblock commits to.
    #[error(
        "metadata altered: the tree over metadata copy {copy} has root {found}, the superblock commits to {expected}"
    )]
    Tree {
        /// Which copy was read.
        copy: u64,
        /// The superblock's root (hex).
        expected: String,
        /// The root of what was read (hex).
        found: String,
    },
    /// The backing file is older than its anchor.
    #[error(
        "rolled back: the volume is at generation {found}, its anchor ({anchor}) records generation {anchored}"
    )]
    RolledBack {
        /// The newest intact superblock's generation.
        found: u64,
        /// The anchor's generation.
        anchored: u64,
        /// Where the anchor is.
        anchor: String,
    },
    /// The backing file is a branch the anchor does not know (same generation, other contents).
    #[error(
        "diverged: generation {generation} has superblock digest {found}, its anchor ({anchor}) records {expected}"
    )]
    Diverged {
        /// The generation in question.
        generation: u64,
        /// The anchored digest (hex).
        expected: String,
        /// The digest found (hex).
        found: String,
        /// Where the anchor is.
        anchor: String,
    },
    /// The volume is newer than its anchor by more than one commit: the anchor was rolled
    /// back, or belongs to another volume.
    #[error(
        "anchor behind: the volume is at generation {found}, its anchor ({anchor}) only at {anchored}"
    )]
    AnchorBehind {
        /// The superblock's generation.
        found: u64,
        /// The anchor's generation.
        anchored: u64,
        /// Where the anchor is.
        anchor: String,
    },
    /// A volume that was formatted has no anchor record.
    #[error(
        "no anchor: {0} holds no record of this volume (formatted elsewhere, or the anchor was reset)"
    )]
    NotAnchored(String),
    /// A data block failed authentication: its ciphertext, its place or its version is not the
    /// one written.
    #[error(
        "block {index} altered: its ciphertext does not authenticate under its recorded nonce and tag"
    )]
    BlockAltered {
        /// The data block.
        index: u64,
    },
    /// A structure in the backing file does not parse.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// Outside the volume.
    #[error("out of range: bytes {offset}..{end} of a volume of {capacity} bytes")]
    OutOfRange {
        /// Start of the request.
        offset: u64,
        /// End of the request.
        end: u64,
        /// The volume's size.
        capacity: u64,
    },
    /// The anchor could not be read or advanced.
    #[error("anchor: {0}")]
    Anchor(String),
    /// The backing file failed.
    #[error("backing file: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier failure left the volume unable to take writes safely.
    #[error("volume failed earlier and takes no more writes: {0}")]
    Failed(String),
    /// Crypto failed where it cannot (key setup).
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

impl VolumeError {
    /// A short name of the check that failed, for audit events and reports.
    pub fn check(&self) -> &'static str {
        match self {
            Self::WrongKey => "key",
            Self::Superblock(_) => "superblock",
            Self::Tree { .. } => "tree",
            Self::RolledBack { .. } => "rollback",
            Self::Diverged { .. } => "diverged",
            Self::AnchorBehind { .. } => "anchor-behind",
            Self::NotAnchored(_) => "not-anchored",
            Self::BlockAltered { .. } => "block",
            Self::Malformed(_) => "malformed",
            Self::OutOfRange { .. } => "range",
            Self::Anchor(_) => "anchor",
            Self::Io(_) => "io",
            Self::Failed(_) => "failed",
            Self::Crypto(_) => "crypto",
        }
    }
}
