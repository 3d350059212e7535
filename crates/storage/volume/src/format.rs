//! The on-disk format: where everything lives in the backing file, and the three structures
//! Veil parses back from it (superblock, journal block, metadata block). Every parser takes
//! attacker-controlled bytes (the host owns the backing file), checks bounds and names the field
//! it refuses; authenticity is checked by the caller with the volume's keys.
//!
//! ```text
//! block 0, 1        superblock slots (generation g lives in slot g mod 2)
//! block 2 ..        journal: J blocks, rewritten from its start after every commit
//! then              metadata copy 0: M = ceil(N / 128) blocks of 128 entries (nonce, tag)
//! then              metadata copy 1 (generation g's metadata is copy g mod 2)
//! then              data: N blocks of AES-256-GCM ciphertext, 4096 bytes each
//! ```

use veil_attest_core::{Malformed, Reader};

/// The size of a block, plaintext and ciphertext alike (the tag lives in the metadata).
pub const BLOCK: usize = 4096;
/// Bytes of one metadata entry: nonce (12), tag (16), reserved (4, zero).
pub const ENTRY: usize = 32;
/// Metadata entries per metadata block.
pub const ENTRIES_PER_META: u64 = (BLOCK / ENTRY) as u64;
/// Bytes of the MAC that ends a superblock or a journal block.
pub const MAC: usize = 32;
/// Entries one journal block holds.
pub const JOURNAL_ENTRIES: usize = (BLOCK - MAC - JOURNAL_HEADER) / JOURNAL_ENTRY;
const JOURNAL_HEADER: usize = 24;
const JOURNAL_ENTRY: usize = 8 + 12 + 16;

/// The superblock's magic.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"VEILVOL1";
/// The journal block's magic.
pub const JOURNAL_MAGIC: [u8; 4] = *b"VJNL";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The largest volume: 2^40 blocks (4 PiB) keeps every offset far from overflow.
pub const MAX_DATA_BLOCKS: u64 = 1 << 40;
/// The largest journal.
pub const MAX_JOURNAL_BLOCKS: u64 = 1 << 20;

/// Where the regions of a volume lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Data blocks (the volume's capacity in blocks).
    pub data_blocks: u64,
    /// Journal blocks.
    pub journal_blocks: u64,
}

impl Geometry {
    /// A geometry, if its sizes are within the format's bounds.
    pub fn new(data_blocks: u64, journal_blocks: u64) -> Result<Self, Malformed> {
        if data_blocks == 0 || data_blocks > MAX_DATA_BLOCKS {
            return Err(Malformed::invalid(
                "volume geometry",
                "data_blocks",
                format!("1..={MAX_DATA_BLOCKS}"),
                data_blocks.to_string(),
            ));
        }
        if journal_blocks == 0 || journal_blocks > MAX_JOURNAL_BLOCKS {
            return Err(Malformed::invalid(
                "volume geometry",
                "journal_blocks",
                format!("1..={MAX_JOURNAL_BLOCKS}"),
                journal_blocks.to_string(),
            ));
        }
        Ok(Self {
            data_blocks,
            journal_blocks,
        })
    }

    /// Metadata blocks per copy.
    pub fn meta_blocks(&self) -> u64 {
        self.data_blocks.div_ceil(ENTRIES_PER_META)
    }

    /// The block where journal block `i` lives.
    pub fn journal_block(&self, i: u64) -> u64 {
        2 + i
    }

    /// The block where metadata block `i` of `copy` (0 or 1) lives.
    pub fn meta_block(&self, copy: u64, i: u64) -> u64 {
        2 + self.journal_blocks + (copy & 1) * self.meta_blocks() + i
    }

    /// The block where data block `i` lives.
    pub fn data_block(&self, i: u64) -> u64 {
        2 + self.journal_blocks + 2 * self.meta_blocks() + i
    }

    /// The backing file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.data_block(self.data_blocks) * BLOCK as u64
    }

    /// The volume's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.data_blocks * BLOCK as u64
    }
}

/// A superblock: what the volume is, and the commit it was left at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Random at format; binds keys, blocks and tree to this volume.
    pub volume_id: [u8; 16],
    /// Where everything lies.
    pub geometry: Geometry,
    /// Commits since format (the anchor records it).
    pub generation: u64,
    /// Mounts since format: the high part of every data nonce written during a mount.
    pub epoch: u32,
    /// The Merkle root over the metadata blocks.
    pub root: [u8; 32],
    /// Proof of the key (HMAC of the volume ID under the key-check key).
    pub key_check: [u8; 32],
    /// HMAC over everything before it (checked by the caller).
    pub mac: [u8; 32],
}

/// The bytes a superblock's MAC covers.
pub const SUPERBLOCK_MACED: usize = BLOCK - MAC;

impl Superblock {
    /// The block's bytes, with `mac` in its place.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        let mut w = Writer(&mut b, 0);
        w.put(&SUPERBLOCK_MAGIC);
        w.put(&VERSION.to_be_bytes());
        w.put(&(BLOCK as u32).to_be_bytes());
        w.put(&self.volume_id);
        w.put(&self.geometry.data_blocks.to_be_bytes());
        w.put(&self.geometry.journal_blocks.to_be_bytes());
        w.put(&self.generation.to_be_bytes());
        w.put(&self.epoch.to_be_bytes());
        w.put(&0u32.to_be_bytes());
        w.put(&self.root);
        w.put(&self.key_check);
        w.1 = SUPERBLOCK_MACED;
        w.put(&self.mac);
        b
    }

    /// Parses a superblock (its MAC is checked by the caller, which holds the key).
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        const S: &str = "volume superblock";
        let mut r = Reader::new(S, b);
        let magic: [u8; 8] = r.array("magic")?;
        if magic == [0; 8] {
            return Err(Malformed::invalid(
                S,
                "magic",
                "VEILVOL1",
                "zeros (never written)",
            ));
        }
        if magic != SUPERBLOCK_MAGIC {
            return Err(Malformed::invalid(
                S,
                "magic",
                "VEILVOL1",
                hex::encode(magic),
            ));
        }
        let version = r.u32_be("version")?;
        if version != VERSION {
            return Err(Malformed::invalid(
                S,
                "version",
                VERSION.to_string(),
                version.to_string(),
            ));
        }
        let block = r.u32_be("block_size")?;
        if block as usize != BLOCK {
            return Err(Malformed::invalid(
                S,
                "block_size",
                BLOCK.to_string(),
                block.to_string(),
            ));
        }
        let volume_id = r.array("volume_id")?;
        let data_blocks = r.u64_be("data_blocks")?;
        let journal_blocks = r.u64_be("journal_blocks")?;
        let geometry = Geometry::new(data_blocks, journal_blocks).map_err(|e| match e {
            Malformed::Invalid {
                field,
                expected,
                found,
                ..
            } => Malformed::Invalid {
                structure: S,
                field,
                expected,
                found,
            },
            other => other,
        })?;
        let generation = r.u64_be("generation")?;
        let epoch = r.u32_be("epoch")?;
        let reserved = r.u32_be("reserved")?;
        if reserved != 0 {
            return Err(Malformed::invalid(S, "reserved", "0", reserved.to_string()));
        }
        let root = r.array("root")?;
        let key_check = r.array("key_check")?;
        let pad = r.take(SUPERBLOCK_MACED - r.offset(), "padding")?;
        if pad.iter().any(|&x| x != 0) {
            return Err(Malformed::invalid(S, "padding", "zeros", "non-zero bytes"));
        }
        let mac = r.array("mac")?;
        r.finish()?;
        Ok(Self {
            volume_id,
            geometry,
            generation,
            epoch,
            root,
            key_check,
            mac,
        })
    }
}

/// One metadata entry: how data block `i` was last sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// The AES-GCM nonce: epoch (4 bytes) then the mount's write counter (8 bytes).
    pub nonce: [u8; 12],
    /// The AES-GCM tag.
    pub tag: [u8; 16],
}

impl Entry {
    /// An entry of a block never written (reads as zeros).
    pub fn is_unwritten(&self) -> bool {
        self.nonce == [0; 12] && self.tag == [0; 16]
    }
}

/// Serialises metadata entries into one metadata block (missing ones are unwritten).
pub fn encode_meta(entries: &[Entry]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    for (slot, e) in b.chunks_exact_mut(ENTRY).zip(entries) {
        let (n, rest) = slot.split_at_mut(12);
        n.copy_from_slice(&e.nonce);
        if let Some(t) = rest.get_mut(..16) {
            t.copy_from_slice(&e.tag);
        }
    }
    b
}

/// Parses a metadata block into its 128 entries.
pub fn parse_meta(b: &[u8]) -> Result<Vec<Entry>, Malformed> {
    const S: &str = "volume metadata block";
    let mut r = Reader::new(S, b);
    let mut out = Vec::with_capacity(ENTRIES_PER_META as usize);
    for _ in 0..ENTRIES_PER_META {
        let nonce = r.array("entry nonce")?;
        let tag = r.array("entry tag")?;
        let reserved = r.u32_be("entry reserved")?;
        if reserved != 0 {
            return Err(Malformed::invalid(
                S,
                "entry reserved",
                "0",
                reserved.to_string(),
            ));
        }
        out.push(Entry { nonce, tag });
    }
    r.finish()?;
    Ok(out)
}

/// A journal block: the entries of writes since the last commit, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBlock {
    /// The generation these writes follow (the journal of an older commit is stale).
    pub generation: u64,
    /// The position of this block in its generation's journal.
    pub seq: u64,
    /// Data block index and its new entry.
    pub entries: Vec<(u64, Entry)>,
    /// HMAC over everything before it (checked by the caller).
    pub mac: [u8; 32],
}

/// The bytes a journal block's MAC covers.
pub const JOURNAL_MACED: usize = BLOCK - MAC;

impl JournalBlock {
    /// The block's bytes, with `mac` in its place.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        let mut w = Writer(&mut b, 0);
        w.put(&JOURNAL_MAGIC);
        w.put(&(self.entries.len() as u32).to_be_bytes());
        w.put(&self.generation.to_be_bytes());
        w.put(&self.seq.to_be_bytes());
        for (i, e) in self.entries.iter().take(JOURNAL_ENTRIES) {
            w.put(&i.to_be_bytes());
            w.put(&e.nonce);
            w.put(&e.tag);
        }
        w.1 = JOURNAL_MACED;
        w.put(&self.mac);
        b
    }

    /// Parses a journal block (its MAC is checked by the caller).
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        const S: &str = "volume journal block";
        let mut r = Reader::new(S, b);
        let magic: [u8; 4] = r.array("magic")?;
        if magic != JOURNAL_MAGIC {
            return Err(Malformed::invalid(S, "magic", "VJNL", hex::encode(magic)));
        }
        let count = r.u32_be("count")? as usize;
        if count == 0 || count > JOURNAL_ENTRIES {
            return Err(Malformed::invalid(
                S,
                "count",
                format!("1..={JOURNAL_ENTRIES}"),
                count.to_string(),
            ));
        }
        let generation = r.u64_be("generation")?;
        let seq = r.u64_be("seq")?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let i = r.u64_be("entry block")?;
            let nonce = r.array("entry nonce")?;
            let tag = r.array("entry tag")?;
            entries.push((i, Entry { nonce, tag }));
        }
        let pad = r.take(JOURNAL_MACED - r.offset(), "padding")?;
        if pad.iter().any(|&x| x != 0) {
            return Err(Malformed::invalid(S, "padding", "zeros", "non-zero bytes"));
        }
        let mac = r.array("mac")?;
        r.finish()?;
        Ok(Self {
            generation,
            seq,
            entries,
            mac,
        })
    }
}

/// Writes fields in order into a block that has room for them (the layouts above are fixed and
/// fit; a field that would not is dropped rather than panicking, and the tests show none is).
struct Writer<'a>(&'a mut [u8; BLOCK], usize);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(self.1..self.1 + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.1 += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            volume_id: [7; 16],
            geometry: Geometry::new(1000, 16).unwrap(),
            generation: 42,
            epoch: 3,
            root: [1; 32],
            key_check: [2; 32],
            mac: [3; 32],
        }
    }

    #[test]
    fn geometry_lays_regions_end_to_end() {
        let g = Geometry::new(1000, 16).unwrap();
        assert_eq!(g.meta_blocks(), 8);
        assert_eq!(g.journal_block(0), 2);
        assert_eq!(g.meta_block(0, 0), 18);
        assert_eq!(g.meta_block(1, 0), 26);
        assert_eq!(g.data_block(0), 34);
        assert_eq!(g.file_len(), 1034 * 4096);
        assert!(Geometry::new(0, 1).is_err());
        assert!(Geometry::new(1, 0).is_err());
        assert!(Geometry::new(MAX_DATA_BLOCKS + 1, 1).is_err());
    }

    #[test]
    fn superblock_round_trips_and_names_what_it_refuses() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::parse(&b).unwrap(), s);
        let refuse = |at: usize, v: u8, field: &str| {
            let mut c = b;
            c[at] ^= v;
            let e = Superblock::parse(&c).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        refuse(0, 1, "magic");
        refuse(11, 1, "version");
        refuse(14, 1, "block_size");
        refuse(32, 0xff, "data_blocks");
        refuse(60, 1, "reserved");
        refuse(200, 1, "padding");
        let e = Superblock::parse(&[0; BLOCK]).unwrap_err().to_string();
        assert!(e.contains("never written"), "{e}");
        let e = Superblock::parse(&b[..100]).unwrap_err().to_string();
        assert!(e.contains("needs"), "{e}");
    }

    #[test]
    fn metadata_and_journal_round_trip() {
        let entries: Vec<Entry> = (0..128u8)
            .map(|i| Entry {
                nonce: [i; 12],
                tag: [i.wrapping_add(1); 16],
            })
            .collect();
        assert_eq!(parse_meta(&encode_meta(&entries)).unwrap(), entries);
        let mut bad = encode_meta(&entries);
        bad[31] = 1;
        assert!(
            parse_meta(&bad)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );

        let j = JournalBlock {
            generation: 9,
            seq: 4,
            entries: (0..JOURNAL_ENTRIES as u64)
                .map(|i| (i * 3, entries[i as usize % 128]))
                .collect(),
            mac: [5; 32],
        };
        assert_eq!(JournalBlock::parse(&j.encode()).unwrap(), j);
        let mut bad = j.encode();
        bad[7] = 0;
        bad[6] = 0;
        bad[5] = 0;
        bad[4] = 0;
        assert!(
            JournalBlock::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("count")
        );
        assert_eq!(JOURNAL_ENTRIES, 112);
    }
}
