//! The log on disk, in a directory of its own: `entries` (the entries appended in order, each
//! as a big-endian uint16 length and its bytes, the encoding of an entry bundle) and
//! `checkpoint` (the signed tree head of every entry acknowledged). An append writes and syncs
//! the entries, then the new checkpoint (a temporary file renamed over the old, synced): it is
//! acknowledged only then. An open reads every entry, recomputes the tree, and refuses a log
//! whose entries do not give the checkpoint's root (rewritten, or entries removed); entries
//! past the checkpoint (an append cut short) are dropped.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, Tree, leaf_hash};
use crate::note::NoteSigner;
use crate::tiles::{self, MAX_ENTRY, TileKind};
use crate::{TlogError, io_error};

/// An open log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    signer: NoteSigner,
    entries: std::fs::File,
    /// The offset of each entry's record in `entries`, and the end.
    offsets: Vec<u64>,
    tree: Tree,
    checkpoint: String,
}

fn log_err(why: impl Into<String>) -> TlogError {
    TlogError::Log(why.into())
}

impl Log {
    /// Opens (or creates) the log in `dir`, signing with `signer` (whose name is the log's
    /// origin).
    pub fn open(dir: &Path, signer: NoteSigner) -> Result<Self, TlogError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let path = dir.join("entries");
        let mut entries = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_error(&path, &e))?;
        let mut bytes = Vec::new();
        entries
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(&path, &e))?;
        let cp_path = dir.join("checkpoint");
        let held = match std::fs::read(&cp_path) {
            Ok(note) => {
                let c = Checkpoint::open(&note, &signer.verifier())?;
                let text = String::from_utf8(note).map_err(|_| log_err("checkpoint not UTF-8"))?;
                Some((c, text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&cp_path, &e)),
        };
        let size = held.as_ref().map_or(0, |(c, _)| c.size);
        // The entries the checkpoint covers; what follows was never acknowledged.
        let mut tree = Tree::new();
        let mut offsets = vec![0u64];
        let mut at = 0usize;
        while tree.size() < size
            && let Some(&[hi, lo]) = bytes.get(at..at + 2)
        {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            let Some(entry) = bytes.get(at + 2..at + 2 + len) else {
                break;
            };
            tree.push(entry);
            at += 2 + len;
            offsets.push(at as u64);
        }
        if tree.size() < size {
            return Err(log_err(format!(
                "the checkpoint covers {size} entries, the log holds {}: entries were removed",
                tree.size()
            )));
        }
        if let Some((c, _)) = &held
            && tree.root() != c.root
        {
            return Err(log_err(format!(
                "the first {size} entries give the root {}, the checkpoint says {}: the log was rewritten",
                hex::encode(tree.root()),
                hex::encode(c.root)
            )));
        }
        if at < bytes.len() {
            entries
                .set_len(at as u64)
                .and_then(|()| entries.sync_all())
                .map_err(|e| io_error(&path, &e))?;
        }
        entries
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| io_error(&path, &e))?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            signer,
            entries,
            offsets,
            tree,
            checkpoint: String::new(),
        };
        log.checkpoint = match held {
            Some((_, text)) => text,
            None => log.write_checkpoint()?,
        };
        Ok(log)
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The current signed checkpoint.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    fn write_checkpoint(&self) -> Result<String, TlogError> {
        let c = Checkpoint {
            origin: self.signer.name().to_string(),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: Vec::new(),
        };
        let note = c.sign(&self.signer)?;
        write_synced(&self.dir.join("checkpoint"), note.as_bytes())?;
        Ok(note)
    }

    /// Appends `entries` (each at most 65535 bytes); returns the index of the first. When it
    /// returns they are on disk and covered by the new checkpoint.
    pub fn append(&mut self, entries: &[&[u8]]) -> Result<u64, TlogError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY) {
            return Err(log_err(format!(
                "an entry of {} bytes is larger than {MAX_ENTRY}",
                e.len()
            )));
        }
        let first = self.tree.size();
        let bytes = tiles::encode_bundle(entries.iter().copied())?;
        let path = self.dir.join("entries");
        let start = self.offsets.last().copied().unwrap_or(0);
        let written = self
            .entries
            .write_all(&bytes)
            .and_then(|()| self.entries.sync_data());
        if let Err(e) = written {
            // Back to what the checkpoint covers.
            let _ = self.entries.set_len(start);
            return Err(io_error(&path, &e));
        }
        let mut at = start;
        for e in entries {
            self.tree.push_hash(leaf_hash(e));
            at += 2 + e.len() as u64;
            self.offsets.push(at);
        }
        self.checkpoint = self.write_checkpoint()?;
        Ok(first)
    }

    /// The entry at `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, TlogError> {
        let i = usize::try_from(index).map_err(|_| log_err("index"))?;
        let (Some(&a), Some(&b)) = (self.offsets.get(i), self.offsets.get(i + 1)) else {
            return Err(log_err(format!(
                "no entry {index} in a log of {}",
                self.size()
            )));
        };
        let mut buf = vec![0u8; (b - a) as usize];
        let path = self.dir.join("entries");
        std::os::unix::fs::FileExt::read_exact_at(&self.entries, &mut buf, a)
            .map_err(|e| io_error(&path, &e))?;
        Ok(buf.get(2..).unwrap_or_default().to_vec())
    }

    /// Writes the log as C2SP tiles under `out` (`checkpoint`, `tile/…`), for serving or for
    /// `veil audit verify`.
    pub fn export(&self, out: &Path) -> Result<(), TlogError> {
        for tile in tiles::tiles_for(self.size()) {
            let bytes = match tile.kind {
                TileKind::Hashes(_) => tiles::tile_hashes(&self.tree, &tile)?,
                TileKind::Entries => {
                    let from = tile.index * tiles::WIDTH;
                    let entries: Vec<Vec<u8>> = (from..from + u64::from(tile.width))
                        .map(|i| self.entry(i))
                        .collect::<Result<_, _>>()?;
                    tiles::encode_bundle(entries.iter().map(Vec::as_slice))?
                }
            };
            let path = out.join(tile.path());
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).map_err(|e| io_error(d, &e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| io_error(&path, &e))?;
        }
        let path = out.join("checkpoint");
        std::fs::write(&path, &self.checkpoint).map_err(|e| io_error(&path, &e))
    }
}

/// Writes `bytes` to `path` through a synced temporary file renamed over it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TlogError> {
    let tmp = path.with_extension("tmp");
    let done = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })();
    done.map_err(|e| io_error(path, &e))
}
