//! Veil's encrypted volumes: every byte a node writes reaches the host as ciphertext,
//! authenticated and fresh.
//!
//! These machines (and many clouds' confidential VMs) have no device-mapper, so the volume is a
//! userspace block device: the engine ([`volume`]) keeps blocks sealed with AES-256-GCM in a
//! backing file, a Merkle tree over their tags, and a journal that makes every fsync both durable
//! and rollback-proof through a freshness [`anchor`]; [`fuse`] exports it as one file, which a
//! loop device attaches and ext4 formats ([`blockdev`]). The on-disk structures are in
//! [`format`], each with a bounds-checked parser and a fuzz target.
//!
//! What the host can do, and what happens:
//! - read the backing file: it sees ciphertext, sizes and which blocks change;
//! - change, move or swap a block, or put back an older version of it: the read fails
//!   (`block_rejected`), never wrong data;
//! - change the metadata: the tree's root does not match, the mount is refused;
//! - hand back an older copy of the whole file: its generation is older than the anchor, the
//!   mount is refused (`rolled back`);
//! - kill the volume process: every fsync it acknowledged is there after a remount, and every
//!   other write is either there or not.

pub mod anchor;
pub mod blockdev;
pub mod error;
pub mod format;
pub mod fuse;
pub mod io;
pub mod launch;
pub mod tree;
pub mod volume;

pub use anchor::{Anchor, AnchorRequest, Anchored, FileAnchor, SocketAnchor};
pub use error::VolumeError;
pub use format::Geometry;
pub use volume::{MountReport, Volume, VolumeKey};
