//! Offline verification of an exported log (`checkpoint` and `tile/…`, as [`crate::log::Log::export`]
//! writes and a tlog-tiles server serves), with nothing but the log's public key: the
//! checkpoint's signature, every entry against its leaf hash, every tile against the level
//! above, the root against the checkpoint. Then any entry's inclusion, and whether an older
//! checkpoint (one kept from before) is a prefix of this log: a rewritten log fails one of them.

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::merkle::{Tree, leaf_hash, verify_consistency, verify_inclusion};
use crate::note::NoteVerifier;
use crate::tiles::{self, TileKind};
use crate::{TlogError, io_error};

/// An exported log whose every tile and entry checked out against its signed checkpoint.
#[derive(Debug)]
pub struct Verified {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The entries, in order.
    pub entries: Vec<Vec<u8>>,
    tree: Tree,
}

fn bad(why: impl Into<String>) -> TlogError {
    TlogError::Log(why.into())
}

/// The most entries an export may hold here (memory is bounded by it).
pub const MAX_ENTRIES: u64 = 1 << 26;

/// Verifies the log exported under `dir`.
pub fn verify_export(dir: &Path, log: &NoteVerifier) -> Result<Verified, TlogError> {
    let path = dir.join("checkpoint");
    let note = std::fs::read(&path).map_err(|e| io_error(&path, &e))?;
    let checkpoint = Checkpoint::open(&note, log)?;
    let size = checkpoint.size;
    if size > MAX_ENTRIES {
        return Err(bad(format!(
            "the checkpoint covers {size} entries, more than the {MAX_ENTRIES} verified here"
        )));
    }
    let read = |t: &tiles::Tile| -> Result<Vec<u8>, TlogError> {
        let p = dir.join(t.path());
        std::fs::read(&p).map_err(|e| io_error(&p, &e))
    };
    let all = tiles::tiles_for(size);
    let mut tree = Tree::new();
    let mut entries = Vec::new();
    // Level 0 and the bundles, in order: every entry hashes to its leaf.
    for t in all.iter().filter(|t| t.kind == TileKind::Hashes(0)) {
        let hashes = tiles::parse_hashes(&read(t)?, t.width)?;
        let bundle_tile = tiles::Tile {
            kind: TileKind::Entries,
            ..*t
        };
        let bundle = read(&bundle_tile)?;
        let items = tiles::parse_bundle(&bundle, t.width)?;
        for (k, (h, e)) in hashes.iter().zip(items).enumerate() {
            let index = t.index * tiles::WIDTH + k as u64;
            if leaf_hash(e) != *h {
                return Err(bad(format!(
                    "entry {index} does not hash to its leaf in {}",
                    t.path()
                )));
            }
            tree.push_hash(*h);
            entries.push(e.to_vec());
        }
    }
    // Every tile above level 0 holds the hashes of the full tiles below it.
    for t in all
        .iter()
        .filter(|t| !matches!(t.kind, TileKind::Hashes(0) | TileKind::Entries))
    {
        let served = read(t)?;
        let computed = tiles::tile_hashes(&tree, t)?;
        if served != computed {
            return Err(bad(format!(
                "{} does not hold the hashes of the tiles below it",
                t.path()
            )));
        }
    }
    let root = tree.root_at(size)?;
    if root != checkpoint.root {
        return Err(bad(format!(
            "the entries give the root {}, the checkpoint signs {}",
            hex::encode(root),
            hex::encode(checkpoint.root)
        )));
    }
    Ok(Verified {
        checkpoint,
        entries,
        tree,
    })
}

impl Verified {
    /// Proves that `entry` is in the log: its index, with its inclusion proof checked against
    /// the checkpoint's root.
    pub fn prove_inclusion(&self, entry: &[u8]) -> Result<(u64, Vec<crate::Hash>), TlogError> {
        let index = self
            .entries
            .iter()
            .position(|e| e == entry)
            .ok_or_else(|| bad("the entry is not in the log"))? as u64;
        let size = self.checkpoint.size;
        let proof = self.tree.inclusion_proof(index, size)?;
        verify_inclusion(
            &leaf_hash(entry),
            index,
            size,
            &proof,
            &self.checkpoint.root,
        )?;
        Ok((index, proof))
    }

    /// Checks that `older` (a signed checkpoint of the same log kept from before) is a prefix
    /// of this one, with a consistency proof from its size to this one's; returns it and the
    /// proof.
    pub fn check_older(
        &self,
        older: &[u8],
        log: &NoteVerifier,
    ) -> Result<(Checkpoint, Vec<crate::Hash>), TlogError> {
        let old = Checkpoint::open(older, log)?;
        let size = self.checkpoint.size;
        if old.size > size {
            return Err(bad(format!(
                "the older checkpoint covers {} entries, this log only {size}: entries were removed",
                old.size
            )));
        }
        let proof = self.tree.consistency_proof(old.size, size)?;
        verify_consistency(old.size, size, &proof, &old.root, &self.checkpoint.root).map_err(
            |e| {
                bad(format!(
                    "the log is not an extension of the older checkpoint: {e}"
                ))
            },
        )?;
        Ok((old, proof))
    }
}
