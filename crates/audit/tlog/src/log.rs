//! The log on disk, in a directory of its own: `entries` (the entries appended in order, each
//! as a big-endian uint16 length and its bytes, the encoding of an entry bundle) and
//! `checkpoints`, two slots of [`SLOT`] bytes each holding a signed tree head (a big-endian
//! uint32 length, the note, zeros), written in turn. An append writes and syncs the entries,
//! then the new checkpoint into the slot that does not hold the current one, synced: it is
//! acknowledged only then, and a write torn by a crash leaves the other slot's checkpoint
//! whole (two syncs an append, no rename). An open reads every entry, takes the larger of
//! the checkpoints whose signatures verify, recomputes the tree, and refuses a log whose
//! entries do not give the checkpoint's root (rewritten, or entries removed); entries past
//! the checkpoint (an append cut short) are dropped.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, Tree, leaf_hash};
use crate::note::NoteSigner;
use crate::tiles::{self, MAX_ENTRY, TileKind};
use crate::{TlogError, io_error};

/// The size of each of the two checkpoint slots.
pub const SLOT: u64 = 8192;

/// An open log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    signer: NoteSigner,
    entries: std::fs::File,
    checkpoints: std::fs::File,
    /// The slot the current checkpoint is in.
    slot: u64,
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
        let cp_path = dir.join("checkpoints");
        let fresh = !cp_path.exists();
        let checkpoints = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cp_path)
            .map_err(|e| io_error(&cp_path, &e))?;
        if fresh {
            checkpoints
                .set_len(2 * SLOT)
                .and_then(|()| checkpoints.sync_all())
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| io_error(&cp_path, &e))?;
        }
        let (held, slot) = read_slots(&checkpoints, &cp_path, &signer)?;
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
            checkpoints,
            slot,
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

    /// The log's verifier key.
    pub fn verifier(&self) -> crate::note::NoteVerifier {
        self.signer.verifier()
    }

    /// The current signed checkpoint.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    fn write_checkpoint(&mut self) -> Result<String, TlogError> {
        let c = Checkpoint {
            origin: self.signer.name().to_string(),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: Vec::new(),
        };
        let note = c.sign(&self.signer)?;
        let len = u32::try_from(note.len())
            .ok()
            .filter(|&l| u64::from(l) + 4 <= SLOT)
            .ok_or_else(|| log_err("a checkpoint larger than its slot"))?;
        let mut record = len.to_be_bytes().to_vec();
        record.extend_from_slice(note.as_bytes());
        let next = 1 - self.slot;
        let path = self.dir.join("checkpoints");
        self.checkpoints
            .write_all_at(&record, next * SLOT)
            .and_then(|()| self.checkpoints.sync_data())
            .map_err(|e| io_error(&path, &e))?;
        self.slot = next;
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
        write_export(out, &self.tree, &self.checkpoint, |i| self.entry(i))
    }
}

/// Writes a copy of a log, from its entries (say, as a service gave them) and its signed
/// checkpoint, as C2SP tiles under `out`: what [`Log::export`] writes. Nothing is checked here;
/// [`crate::verify::verify_export`] checks the copy.
pub fn export_entries(out: &Path, entries: &[Vec<u8>], checkpoint: &str) -> Result<(), TlogError> {
    let mut tree = Tree::new();
    for e in entries {
        tree.push(e);
    }
    write_export(out, &tree, checkpoint, |i| {
        usize::try_from(i)
            .ok()
            .and_then(|i| entries.get(i))
            .cloned()
            .ok_or_else(|| log_err(format!("no entry {i}")))
    })
}

fn write_export(
    out: &Path,
    tree: &Tree,
    checkpoint: &str,
    entry: impl Fn(u64) -> Result<Vec<u8>, TlogError>,
) -> Result<(), TlogError> {
    for tile in tiles::tiles_for(tree.size()) {
        let bytes = match tile.kind {
            TileKind::Hashes(_) => tiles::tile_hashes(tree, &tile)?,
            TileKind::Entries => {
                let from = tile.index * tiles::WIDTH;
                let entries: Vec<Vec<u8>> = (from..from + u64::from(tile.width))
                    .map(&entry)
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
    std::fs::write(&path, checkpoint).map_err(|e| io_error(&path, &e))
}

/// The newest checkpoint of the two slots whose signature verifies (`None` for a new log),
/// and the slot it is in.
fn read_slots(
    file: &std::fs::File,
    path: &Path,
    signer: &NoteSigner,
) -> Result<(Option<(Checkpoint, String)>, u64), TlogError> {
    let mut best: Option<(Checkpoint, String, u64)> = None;
    let mut refused = Vec::new();
    for slot in 0..2u64 {
        let mut buf = vec![0u8; SLOT as usize];
        file.read_exact_at(&mut buf, slot * SLOT)
            .map_err(|e| io_error(path, &e))?;
        let len = match buf.get(..4) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]) as usize,
            _ => 0,
        };
        if len == 0 {
            continue;
        }
        let opened = buf
            .get(4..4 + len)
            .ok_or_else(|| log_err(format!("checkpoint slot {slot}: a length of {len}")))
            .and_then(|note| {
                let c = Checkpoint::open(note, &signer.verifier())?;
                let text = String::from_utf8(note.to_vec())
                    .map_err(|_| log_err("a checkpoint that is not UTF-8"))?;
                Ok((c, text))
            });
        match opened {
            Ok((c, text)) => {
                if best.as_ref().is_none_or(|(b, _, _)| c.size > b.size) {
                    best = Some((c, text, slot));
                }
            }
            Err(e) => refused.push(format!("slot {slot}: {e}")),
        }
    }
    match best {
        Some((c, text, slot)) => Ok((Some((c, text)), slot)),
        // Both slots written and neither verifies: not a crash (that tears one at most).
        None if refused.len() == 2 => Err(log_err(format!(
            "no checkpoint verifies: {}",
            refused.join("; ")
        ))),
        None if !refused.is_empty() => Err(log_err(format!(
            "the only checkpoint does not verify: {}",
            refused.join("; ")
        ))),
        None => Ok((None, 1)),
    }
}
