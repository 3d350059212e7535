//! The volume engine: encrypted, authenticated, fresh blocks in a backing file the host owns.
//!
//! - **Each data block** is sealed with AES-256-GCM under the volume's data key; its nonce is the
//!   mount's epoch and a counter (never repeated: every mount takes a new epoch and anchors it
//!   before the first write), its AAD the volume ID and the block's index (a block moved to
//!   another place does not open). Nonce and tag live in the metadata, not beside the block.
//! - **The metadata** (nonce and tag of every block) is kept in memory and committed to one of
//!   two copies; a Merkle tree over its blocks gives the root the superblock carries, so a block
//!   replaced by an older version of itself (whose old tag no longer is the recorded one) fails.
//! - **A commit** (every fsync, a full journal, unmount) writes the metadata copy not in use,
//!   syncs, writes the superblock of the next generation in the other slot, syncs, and advances
//!   the anchor. An fsync is acknowledged only then, so what it covers can neither be lost nor
//!   rolled back.
//! - **Between commits** each write first appends its blocks' new entries to the journal (a MAC
//!   per journal block, bound to the generation it follows), then writes the blocks. After a
//!   crash the mount replays the journal: for each block it keeps the newest entry that
//!   authenticates the block as found (the journal entry of a write whose data never landed
//!   does not), so the filesystem above sees each unacknowledged write either done or not done.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::anchor::{Anchor, Anchored};
use crate::error::VolumeError;
use crate::format::{
    BLOCK, ENTRIES_PER_META, Entry, Geometry, JOURNAL_ENTRIES, JOURNAL_MACED, JournalBlock,
    SUPERBLOCK_MACED, Superblock, encode_meta, parse_meta,
};
use crate::io;
use crate::tree::{Tree, leaf};

/// The 32-byte key of a volume (zeroized on drop, never printed).
pub struct VolumeKey(Zeroizing<[u8; 32]>);

impl VolumeKey {
    /// From raw bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// From 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let v = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| "the volume key is not hex".to_string())?,
        );
        let a: [u8; 32] = v.as_slice().try_into().map_err(|_| {
            format!(
                "the volume key must be 32 bytes (64 hex digits), found {}",
                v.len()
            )
        })?;
        Ok(Self::new(a))
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<redacted>)")
    }
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The keys of one volume, derived from its key and its ID.
struct Keys {
    data: LessSafeKey,
    superblock: hmac::Key,
    journal: hmac::Key,
    check: [u8; 32],
}

impl Keys {
    fn derive(key: &VolumeKey, volume_id: &[u8; 16]) -> Result<Self, VolumeError> {
        let prk = Salt::new(HKDF_SHA256, volume_id).extract(key.0.as_ref());
        let expand = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>, VolumeError> {
            let mut out = Zeroizing::new([0u8; 32]);
            prk.expand(&[label], Len32)
                .and_then(|okm| okm.fill(out.as_mut()))
                .map_err(|_| VolumeError::Crypto("HKDF"))?;
            Ok(out)
        };
        let data = UnboundKey::new(&AES_256_GCM, expand(b"veil-volume/v1/data")?.as_ref())
            .map_err(|_| VolumeError::Crypto("AES-256-GCM key"))?;
        let sb = expand(b"veil-volume/v1/superblock")?;
        let jn = expand(b"veil-volume/v1/journal")?;
        let check_key = expand(b"veil-volume/v1/key-check")?;
        let check = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, check_key.as_ref()),
            volume_id,
        );
        let mut c = [0u8; 32];
        c.copy_from_slice(check.as_ref());
        Ok(Self {
            data: LessSafeKey::new(data),
            superblock: hmac::Key::new(hmac::HMAC_SHA256, sb.as_ref()),
            journal: hmac::Key::new(hmac::HMAC_SHA256, jn.as_ref()),
            check: c,
        })
    }

    fn mac(key: &hmac::Key, bytes: &[u8]) -> [u8; 32] {
        let t = hmac::sign(key, bytes);
        let mut m = [0u8; 32];
        m.copy_from_slice(t.as_ref());
        m
    }
}

fn aad(volume_id: &[u8; 16], index: u64) -> Vec<u8> {
    [
        b"veil-volume data".as_slice(),
        volume_id,
        &index.to_be_bytes(),
    ]
    .concat()
}

/// What a mount found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountReport {
    /// The generation the volume was left at (before the mount's own commit).
    pub generation: u64,
    /// The epoch this mount writes under.
    pub epoch: u32,
    /// Writes after the last commit that the journal replayed.
    pub replayed: usize,
    /// Journal entries whose data never landed (the write was cut short).
    pub discarded: usize,
    /// Whether the last commit had reached the anchor (false: it was cut short before).
    pub anchored: bool,
}

/// Counters a volume keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks that failed authentication on read.
    pub rejected_blocks: AtomicU64,
    /// Commits since the mount.
    pub commits: AtomicU64,
    /// Write requests, and the bytes they carried.
    pub writes: AtomicU64,
    /// Bytes written.
    pub written: AtomicU64,
    /// Read requests.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read: AtomicU64,
}

impl Stats {
    /// The counters as JSON, for logs and metrics.
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "rejected_blocks": g(&self.rejected_blocks),
            "commits": g(&self.commits),
            "writes": g(&self.writes),
            "written_bytes": g(&self.written),
            "reads": g(&self.reads),
            "read_bytes": g(&self.read),
        })
    }
}

/// An open volume.
pub struct Volume {
    file: File,
    geo: Geometry,
    keys: Keys,
    sb: Superblock,
    entries: Vec<Entry>,
    tree: Tree,
    tree_dirty: BTreeSet<u64>,
    copy_dirty: [BTreeSet<u64>; 2],
    journal_pos: u64,
    counter: u64,
    dirty: bool,
    anchor: Box<dyn Anchor>,
    pending_anchor: Option<Anchored>,
    failed: Option<String>,
    stats: Stats,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("volume_id", &hex::encode(self.sb.volume_id))
            .field("geometry", &self.geo)
            .field("generation", &self.sb.generation)
            .field("epoch", &self.sb.epoch)
            .field("anchor", &self.anchor.describe())
            .finish_non_exhaustive()
    }
}

fn read_block(file: &File, block: u64) -> Result<[u8; BLOCK], VolumeError> {
    let buf = io::read_at(file, block * BLOCK as u64, BLOCK)?;
    let mut b = [0u8; BLOCK];
    b.copy_from_slice(buf.bytes());
    Ok(b)
}

fn meta_range(entries: &[Entry], m: u64) -> &[Entry] {
    let start = (m * ENTRIES_PER_META) as usize;
    let end = (start + ENTRIES_PER_META as usize).min(entries.len());
    entries.get(start..end).unwrap_or(&[])
}

impl Volume {
    /// Formats `file` as an empty volume of `data_blocks` blocks and anchors generation 0.
    /// Whatever the file held is lost; the caller decides whether formatting is allowed.
    pub fn format(
        file: &File,
        key: &VolumeKey,
        geometry: Geometry,
        anchor: &dyn Anchor,
    ) -> Result<(), VolumeError> {
        let mut volume_id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut volume_id).map_err(|_| VolumeError::Crypto("random"))?;
        let keys = Keys::derive(key, &volume_id)?;
        file.set_len(0)?;
        file.set_len(geometry.file_len())?;
        let zero = [0u8; BLOCK];
        let leaves: Vec<[u8; 32]> = (0..geometry.meta_blocks())
            .map(|m| leaf(m, &zero))
            .collect();
        let mut sb = Superblock {
            volume_id,
            geometry,
            generation: 0,
            epoch: 0,
            root: Tree::new(&leaves).root(),
            key_check: keys.check,
            mac: [0; 32],
        };
        let bytes = seal_superblock(&keys, &mut sb);
        io::write_at(file, &io::Buf::from_slice(&bytes), 0)?;
        file.sync_all()?;
        anchor
            .advance(Anchored {
                generation: 0,
                digest: Sha256::digest(bytes).into(),
            })
            .map_err(VolumeError::Anchor)?;
        tracing::info!(
            event = "volume_formatted",
            volume = %hex::encode(volume_id),
            blocks = geometry.data_blocks,
            anchor = %anchor.describe()
        );
        Ok(())
    }

    /// Opens a volume: checks the key, the superblocks, the anchor and the tree (in that order,
    /// so a wrong key is refused before anything else is read), replays the journal, and
    /// commits a new epoch before any write.
    pub fn open(
        file: File,
        key: &VolumeKey,
        anchor: Box<dyn Anchor>,
    ) -> Result<(Self, MountReport), VolumeError> {
        let (sb, keys) = Self::pick_superblock(&file, key)?;
        let geo = sb.geometry;
        let len = file.metadata()?.len();
        if len < geo.file_len() {
            return Err(VolumeError::Superblock(format!(
                "the backing file is {len} bytes, its geometry needs {}",
                geo.file_len()
            )));
        }
        let digest: [u8; 32] = Sha256::digest(sb.encode()).into();
        let desc = anchor.describe();
        let anchored = match anchor.read().map_err(VolumeError::Anchor)? {
            None => return Err(VolumeError::NotAnchored(desc)),
            Some(a) if sb.generation == a.generation => {
                if a.digest != digest {
                    return Err(VolumeError::Diverged {
                        generation: a.generation,
                        expected: hex::encode(a.digest),
                        found: hex::encode(digest),
                        anchor: desc,
                    });
                }
                true
            }
            Some(a) if sb.generation == a.generation + 1 => false,
            Some(a) if sb.generation < a.generation => {
                return Err(VolumeError::RolledBack {
                    found: sb.generation,
                    anchored: a.generation,
                    anchor: desc,
                });
            }
            Some(a) => {
                return Err(VolumeError::AnchorBehind {
                    found: sb.generation,
                    anchored: a.generation,
                    anchor: desc,
                });
            }
        };
        // The committed metadata, checked against the root.
        let copy = sb.generation & 1;
        let mut entries = Vec::with_capacity(geo.data_blocks as usize);
        let mut leaves = Vec::with_capacity(geo.meta_blocks() as usize);
        const BATCH: u64 = 256;
        let mut m = 0;
        while m < geo.meta_blocks() {
            let n = BATCH.min(geo.meta_blocks() - m);
            let chunk = io::read_at(
                &file,
                geo.meta_block(copy, m) * BLOCK as u64,
                n as usize * BLOCK,
            )?;
            for (j, b) in chunk.bytes().chunks_exact(BLOCK).enumerate() {
                leaves.push(leaf(m + j as u64, b));
                entries.extend(parse_meta(b)?);
            }
            m += n;
        }
        entries.truncate(geo.data_blocks as usize);
        let tree = Tree::new(&leaves);
        if tree.root() != sb.root {
            return Err(VolumeError::Tree {
                copy,
                expected: hex::encode(sb.root),
                found: hex::encode(tree.root()),
            });
        }
        let pending_anchor = (!anchored).then_some(Anchored {
            generation: sb.generation,
            digest,
        });
        let mut v = Self {
            file,
            geo,
            keys,
            sb,
            entries,
            tree,
            tree_dirty: BTreeSet::new(),
            copy_dirty: [BTreeSet::new(), BTreeSet::new()],
            journal_pos: 0,
            counter: 0,
            dirty: false,
            anchor,
            pending_anchor,
            failed: None,
            stats: Stats::default(),
        };
        let (replayed, discarded) = v.replay()?;
        let report = MountReport {
            generation: v.sb.generation,
            epoch: v.sb.epoch.checked_add(1).ok_or(VolumeError::Failed(
                "the volume's epochs are exhausted".into(),
            ))?,
            replayed,
            discarded,
            anchored,
        };
        // The copy not in use holds an unknown older state: write all of it at this commit.
        *v.dirty_copy(v.sb.generation + 1) = (0..geo.meta_blocks()).collect();
        v.commit_with_epoch(report.epoch)?;
        tracing::info!(
            event = "volume_mounted",
            volume = %hex::encode(v.sb.volume_id),
            generation = report.generation,
            epoch = report.epoch,
            replayed,
            discarded,
            anchor = %v.anchor.describe()
        );
        Ok((v, report))
    }

    fn pick_superblock(file: &File, key: &VolumeKey) -> Result<(Superblock, Keys), VolumeError> {
        let mut notes = Vec::new();
        let mut keyed = 0;
        let mut best: Option<(Superblock, Keys)> = None;
        for slot in 0..2u64 {
            let bytes = match read_block(file, slot) {
                Ok(b) => b,
                Err(e) => {
                    notes.push(format!("slot {slot}: {e}"));
                    continue;
                }
            };
            let sb = match Superblock::parse(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    notes.push(format!("slot {slot}: {e}"));
                    continue;
                }
            };
            let keys = Keys::derive(key, &sb.volume_id)?;
            if keys.check != sb.key_check {
                notes.push(format!("slot {slot}: key check does not match"));
                continue;
            }
            keyed += 1;
            let macd = bytes.get(..SUPERBLOCK_MACED).unwrap_or_default();
            if Keys::mac(&keys.superblock, macd) != sb.mac {
                notes.push(format!("slot {slot}: MAC does not verify"));
                continue;
            }
            if sb.generation & 1 != slot {
                notes.push(format!(
                    "slot {slot}: holds generation {}, which belongs in slot {}",
                    sb.generation,
                    sb.generation & 1
                ));
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(b, _)| sb.generation > b.generation)
            {
                best = Some((sb, keys));
            }
        }
        match best {
            Some(b) => Ok(b),
            None if keyed == 0 && notes.iter().any(|n| n.contains("key check")) => {
                Err(VolumeError::WrongKey)
            }
            None => Err(VolumeError::Superblock(notes.join("; "))),
        }
    }

    fn replay(&mut self) -> Result<(usize, usize), VolumeError> {
        let mut found: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        for seq in 0..self.geo.journal_blocks {
            let Ok(bytes) = read_block(&self.file, self.geo.journal_block(seq)) else {
                break;
            };
            let Ok(j) = JournalBlock::parse(&bytes) else {
                break;
            };
            let macd = bytes.get(..JOURNAL_MACED).unwrap_or_default();
            if j.generation != self.sb.generation
                || j.seq != seq
                || Keys::mac(&self.keys.journal, macd) != j.mac
            {
                break;
            }
            for (i, e) in j.entries {
                if i >= self.geo.data_blocks {
                    break;
                }
                found.entry(i).or_default().push(e);
            }
        }
        let (mut replayed, mut discarded) = (0, 0);
        for (i, candidates) in found {
            let ct = read_block(&self.file, self.geo.data_block(i))?;
            let committed = self.entry(i);
            let mut adopted = None;
            for (n, e) in candidates.iter().rev().enumerate() {
                if self.opens(i, e, &ct) {
                    adopted = Some(*e);
                    discarded += n;
                    break;
                }
            }
            match adopted {
                Some(e) => {
                    replayed += 1;
                    self.set_entry(i, e);
                }
                None => {
                    discarded += candidates.len();
                    // Neither a journalled write nor the committed one opens the block: it is
                    // left as committed and fails on read, as an altered block does.
                    if !committed.is_unwritten() && !self.opens(i, &committed, &ct) {
                        tracing::warn!(
                            event = "block_rejected",
                            block = i,
                            reason = "no journal entry or committed entry authenticates it"
                        );
                    }
                }
            }
        }
        Ok((replayed, discarded))
    }

    /// The metadata blocks metadata copy `copy` (taken mod 2) lacks.
    fn dirty_copy(&mut self, copy: u64) -> &mut BTreeSet<u64> {
        let [a, b] = &mut self.copy_dirty;
        if copy & 1 == 0 { a } else { b }
    }

    fn entry(&self, i: u64) -> Entry {
        self.entries.get(i as usize).copied().unwrap_or_default()
    }

    fn set_entry(&mut self, i: u64, e: Entry) {
        if let Some(slot) = self.entries.get_mut(i as usize) {
            *slot = e;
        }
        let m = i / ENTRIES_PER_META;
        self.tree_dirty.insert(m);
        for c in &mut self.copy_dirty {
            c.insert(m);
        }
        self.dirty = true;
    }

    fn opens(&self, i: u64, e: &Entry, ct: &[u8; BLOCK]) -> bool {
        let mut b = *ct;
        self.keys
            .data
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(e.nonce),
                Aad::from(aad(&self.sb.volume_id, i)),
                &e.tag,
                &mut b,
            )
            .is_ok()
    }

    /// The volume's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.geo.capacity()
    }

    /// The volume's ID (hex).
    pub fn id(&self) -> String {
        hex::encode(self.sb.volume_id)
    }

    /// The generation of the last commit.
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }

    /// The volume's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn range(&self, offset: u64, len: usize) -> Result<(u64, u64), VolumeError> {
        let end = offset.saturating_add(len as u64);
        if end > self.capacity() {
            return Err(VolumeError::OutOfRange {
                offset,
                end,
                capacity: self.capacity(),
            });
        }
        let first = offset / BLOCK as u64;
        let last = end.div_ceil(BLOCK as u64);
        Ok((first, last))
    }

    /// Reads `len` bytes at `offset`. A block that does not authenticate fails the whole read
    /// (never wrong data) and is an audit event.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, VolumeError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (first, last) = self.range(offset, len)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read.fetch_add(len as u64, Ordering::Relaxed);
        let mut buf = io::read_at(
            &self.file,
            self.geo.data_block(first) * BLOCK as u64,
            ((last - first) as usize) * BLOCK,
        )?;
        for (k, b) in buf.bytes_mut().chunks_exact_mut(BLOCK).enumerate() {
            let i = first + k as u64;
            let e = self.entry(i);
            if e.is_unwritten() {
                b.fill(0);
                continue;
            }
            let ok = self.keys.data.open_in_place_separate_tag(
                Nonce::assume_unique_for_key(e.nonce),
                Aad::from(aad(&self.sb.volume_id, i)),
                &e.tag,
                b,
            );
            if ok.is_err() {
                self.stats.rejected_blocks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "block_rejected",
                    volume = %hex::encode(self.sb.volume_id),
                    block = i,
                    reason = "AES-GCM tag does not verify (altered, moved or rolled back)"
                );
                return Err(VolumeError::BlockAltered { index: i });
            }
        }
        let skip = (offset - first * BLOCK as u64) as usize;
        Ok(buf
            .bytes()
            .get(skip..skip + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    }

    /// Writes `data` at `offset` (partial blocks are read, merged and rewritten). Durable and
    /// fresh only after the next [`Volume::sync`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        if let Some(f) = &self.failed {
            return Err(VolumeError::Failed(f.clone()));
        }
        if data.is_empty() {
            return Ok(());
        }
        let (first, last) = self.range(offset, data.len())?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut buf = io::Buf::zeroed(((last - first) as usize) * BLOCK);
        let plain = buf.bytes_mut();
        let head = (offset - first * BLOCK as u64) as usize;
        let tail_end = head + data.len();
        if head != 0 {
            let b = self.read(first * BLOCK as u64, BLOCK)?;
            if let Some(dst) = plain.get_mut(..BLOCK) {
                dst.copy_from_slice(&b);
            }
        }
        if !tail_end.is_multiple_of(BLOCK) && (last - 1 != first || head == 0) {
            let b = self.read((last - 1) * BLOCK as u64, BLOCK)?;
            let at = plain.len() - BLOCK;
            if let Some(dst) = plain.get_mut(at..) {
                dst.copy_from_slice(&b);
            }
        }
        if let Some(dst) = plain.get_mut(head..tail_end) {
            dst.copy_from_slice(data);
        }
        let mut start = first;
        for chunk in buf.bytes_mut().chunks_mut(JOURNAL_ENTRIES * BLOCK) {
            self.write_sealed(start, chunk)?;
            start += (chunk.len() / BLOCK) as u64;
        }
        Ok(())
    }

    /// Seals and writes up to one journal block's worth of whole blocks starting at `first`.
    fn write_sealed(&mut self, first: u64, chunk: &mut [u8]) -> Result<(), VolumeError> {
        if self.journal_pos >= self.geo.journal_blocks {
            self.sync()?;
        }
        let mut entries = Vec::with_capacity(chunk.len() / BLOCK);
        for (k, b) in chunk.chunks_exact_mut(BLOCK).enumerate() {
            let i = first + k as u64;
            self.counter += 1;
            let mut nonce = [0u8; 12];
            let (hi, lo) = nonce.split_at_mut(4);
            hi.copy_from_slice(&self.sb.epoch.to_be_bytes());
            lo.copy_from_slice(&self.counter.to_be_bytes());
            let tag = self
                .keys
                .data
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(&self.sb.volume_id, i)),
                    b,
                )
                .map_err(|_| VolumeError::Crypto("AES-GCM seal"))?;
            let mut t = [0u8; 16];
            t.copy_from_slice(tag.as_ref());
            entries.push((i, Entry { nonce, tag: t }));
        }
        let mut j = JournalBlock {
            generation: self.sb.generation,
            seq: self.journal_pos,
            entries,
            mac: [0; 32],
        };
        let bytes = j.encode();
        j.mac = Keys::mac(
            &self.keys.journal,
            bytes.get(..JOURNAL_MACED).unwrap_or_default(),
        );
        let bytes = j.encode();
        // The journal first: a write cut short after it leaves the old block, which the
        // committed entry still opens; one cut short before it leaves nothing to replay.
        let journal_at = self.geo.journal_block(self.journal_pos) * BLOCK as u64;
        let data_at = self.geo.data_block(first) * BLOCK as u64;
        let done = io::write_at(&self.file, &io::Buf::from_slice(&bytes), journal_at)
            .and_then(|()| self.file.write_all_at(chunk, data_at));
        if let Err(e) = done {
            // What the journal and the blocks now hold is unknown: no more writes until a
            // remount replays them.
            self.failed = Some(format!("a write failed: {e}"));
            return Err(e.into());
        }
        self.journal_pos += 1;
        for (i, e) in j.entries {
            self.set_entry(i, e);
        }
        Ok(())
    }

    /// Commits everything written so far and advances the anchor: when it returns, those
    /// writes survive a crash and cannot be rolled back.
    pub fn sync(&mut self) -> Result<(), VolumeError> {
        if let Some(f) = &self.failed {
            return Err(VolumeError::Failed(f.clone()));
        }
        if !self.dirty && self.pending_anchor.is_none() {
            return Ok(());
        }
        let epoch = self.sb.epoch;
        self.commit_with_epoch(epoch)
    }

    fn commit_with_epoch(&mut self, epoch: u32) -> Result<(), VolumeError> {
        if let Some(p) = self.pending_anchor {
            self.anchor.advance(p).map_err(VolumeError::Anchor)?;
            self.pending_anchor = None;
        }
        let started = std::time::Instant::now();
        let next = self.sb.generation + 1;
        let copy = next & 1;
        for m in std::mem::take(&mut self.tree_dirty) {
            let bytes = encode_meta(meta_range(&self.entries, m));
            self.tree.set(m as usize, leaf(m, &bytes));
        }
        let dirty: Vec<u64> = self.dirty_copy(copy).iter().copied().collect();
        for run in runs(&dirty) {
            let mut buf = io::Buf::zeroed(run.len() * BLOCK);
            for (&m, dst) in run.iter().zip(buf.bytes_mut().chunks_exact_mut(BLOCK)) {
                dst.copy_from_slice(&encode_meta(meta_range(&self.entries, m)));
            }
            let first = run.first().copied().unwrap_or_default();
            io::write_at(
                &self.file,
                &buf,
                self.geo.meta_block(copy, first) * BLOCK as u64,
            )?;
        }
        self.file.sync_data()?;
        let meta_done = started.elapsed();
        let mut sb = Superblock {
            generation: next,
            epoch,
            root: self.tree.root(),
            ..self.sb.clone()
        };
        let bytes = seal_superblock(&self.keys, &mut sb);
        io::write_at(
            &self.file,
            &io::Buf::from_slice(&bytes),
            copy * BLOCK as u64,
        )?;
        self.file.sync_data()?;
        self.sb = sb;
        self.dirty_copy(copy).clear();
        self.journal_pos = 0;
        self.dirty = false;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let a = Anchored {
            generation: next,
            digest: Sha256::digest(bytes).into(),
        };
        let synced = started.elapsed();
        let anchored = self.anchor.advance(a);
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(500) {
            tracing::warn!(
                event = "volume_commit_slow",
                generation = next,
                meta_blocks = dirty.len(),
                meta_ms = meta_done.as_millis() as u64,
                superblock_ms = (synced - meta_done).as_millis() as u64,
                anchor_ms = (took - synced).as_millis() as u64
            );
        }
        if let Err(e) = anchored {
            self.pending_anchor = Some(a);
            return Err(VolumeError::Anchor(e));
        }
        Ok(())
    }
}

fn seal_superblock(keys: &Keys, sb: &mut Superblock) -> [u8; BLOCK] {
    sb.key_check = keys.check;
    let bytes = sb.encode();
    sb.mac = Keys::mac(
        &keys.superblock,
        bytes.get(..SUPERBLOCK_MACED).unwrap_or_default(),
    );
    sb.encode()
}

/// Splits sorted indices into runs of consecutive ones.
fn runs(sorted: &[u64]) -> Vec<&[u64]> {
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=sorted.len() {
        let breaks = match (sorted.get(k), sorted.get(k - 1)) {
            (Some(a), Some(b)) => *a != b + 1 || k - start >= 256,
            _ => true,
        };
        if breaks {
            if let Some(r) = sorted.get(start..k) {
                out.push(r);
            }
            start = k;
        }
    }
    out
}
