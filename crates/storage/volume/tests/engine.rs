//! The engine on a real backing file: what the host can do to the file, and what the volume
//! says about it. (The FUSE, loop and ext4 stack is in `tests/stack.rs`.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use veil_volume::{
    Anchor, Anchored, FileAnchor, Geometry, Volume, VolumeError, VolumeKey, format::BLOCK,
};

const KEY: [u8; 32] = [0x42; 32];

struct Fixture {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    anchor: PathBuf,
    geo: Geometry,
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

impl Fixture {
    fn new(blocks: u64, journal: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let anchor = dir.path().join("anchor");
        let geo = Geometry::new(blocks, journal).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&backing)
            .unwrap();
        Volume::format(&f, &VolumeKey::new(KEY), geo, &FileAnchor::new(&anchor)).unwrap();
        Self {
            _dir: dir,
            backing,
            anchor,
            geo,
        }
    }

    fn open_with(&self, key: [u8; 32]) -> Result<Volume, VolumeError> {
        Volume::open(
            open_rw(&self.backing),
            &VolumeKey::new(key),
            Box::new(FileAnchor::new(&self.anchor)),
        )
        .map(|(v, _)| v)
    }

    fn open(&self) -> Volume {
        self.open_with(KEY).unwrap()
    }

    fn data_offset(&self, block: u64) -> u64 {
        self.geo.data_block(block) * BLOCK as u64
    }

    fn flip(&self, at: u64) {
        let f = open_rw(&self.backing);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x10;
        f.write_all_at(&b, at).unwrap();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

#[test]
fn writes_survive_a_remount_and_the_backing_file_holds_no_plaintext() {
    let fx = Fixture::new(256, 16);
    let mut v = fx.open();
    let canary = b"VEIL-CANARY-6f1e2d3c".repeat(400);
    v.write(4096 * 3 + 100, &canary).unwrap();
    assert_eq!(v.read(4096 * 3 + 100, canary.len()).unwrap(), canary);
    // Unwritten blocks read as zeros.
    assert_eq!(v.read(4096 * 100, 4096).unwrap(), vec![0u8; 4096]);
    v.sync().unwrap();
    let g = v.generation();
    drop(v);
    let v = fx.open();
    assert!(v.generation() > g);
    assert_eq!(v.read(4096 * 3 + 100, canary.len()).unwrap(), canary);
    let raw = std::fs::read(&fx.backing).unwrap();
    assert!(
        !raw.windows(11).any(|w| w == b"VEIL-CANARY"),
        "plaintext in the backing file"
    );
    // Out of range is refused with the sizes.
    let e = v.read(fx.geo.capacity() - 10, 20).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn a_wrong_key_is_refused_before_anything_else() {
    let fx = Fixture::new(64, 4);
    let e = fx.open_with([0x43; 32]).unwrap_err();
    assert!(matches!(e, VolumeError::WrongKey), "{e}");
    assert_eq!(e.check(), "key");
}

#[test]
fn a_flipped_bit_in_a_data_block_fails_the_read_never_wrong_data() {
    let fx = Fixture::new(64, 4);
    let mut v = fx.open();
    v.write(0, &pattern(1, 4096 * 4)).unwrap();
    v.sync().unwrap();
    drop(v);
    fx.flip(fx.data_offset(2) + 77);
    let v = fx.open();
    assert_eq!(v.read(0, 4096 * 2).unwrap(), pattern(1, 4096 * 2));
    let e = v.read(4096 * 2, 10).unwrap_err();
    assert!(matches!(e, VolumeError::BlockAltered { index: 2 }), "{e}");
    assert!(
        v.read(0, 4096 * 4).is_err(),
        "a read spanning it fails whole"
    );
    assert_eq!(
        v.stats()
            .rejected_blocks
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn swapped_blocks_and_a_block_put_back_to_an_older_version_fail() {
    let fx = Fixture::new(64, 4);
    let mut v = fx.open();
    v.write(0, &pattern(1, 4096 * 2)).unwrap();
    v.sync().unwrap();
    drop(v);
    let f = open_rw(&fx.backing);
    let mut old = vec![0u8; 4096];
    f.read_exact_at(&mut old, fx.data_offset(0)).unwrap();
    // A newer version of block 0, then the old ciphertext put back.
    let mut v = fx.open();
    v.write(0, &pattern(2, 4096)).unwrap();
    v.sync().unwrap();
    drop(v);
    f.write_all_at(&old, fx.data_offset(0)).unwrap();
    let v = fx.open();
    assert!(matches!(
        v.read(0, 4096).unwrap_err(),
        VolumeError::BlockAltered { index: 0 }
    ));
    drop(v);
    // Block 1's ciphertext copied over block 0: it does not open in another place.
    let mut b1 = vec![0u8; 4096];
    f.read_exact_at(&mut b1, fx.data_offset(1)).unwrap();
    f.write_all_at(&b1, fx.data_offset(0)).unwrap();
    let v = fx.open();
    assert!(v.read(0, 4096).is_err());
    assert_eq!(v.read(4096, 4096).unwrap(), pattern(1, 8192)[4096..]);
}

#[test]
fn an_older_copy_of_the_backing_file_is_refused_as_rolled_back() {
    let fx = Fixture::new(64, 4);
    let mut v = fx.open();
    v.write(0, b"first").unwrap();
    v.sync().unwrap();
    drop(v);
    let old = std::fs::read(&fx.backing).unwrap();
    let mut v = fx.open();
    v.write(0, b"second").unwrap();
    v.sync().unwrap();
    drop(v);
    std::fs::write(&fx.backing, &old).unwrap();
    let e = fx.open_with(KEY).unwrap_err();
    assert!(matches!(e, VolumeError::RolledBack { .. }), "{e}");
    assert!(e.to_string().contains("rolled back"), "{e}");
    assert_eq!(e.check(), "rollback");
}

#[test]
fn altered_metadata_and_superblocks_are_refused_with_the_check_that_failed() {
    let fx = Fixture::new(300, 4);
    let mut v = fx.open();
    v.write(0, &pattern(3, 4096 * 200)).unwrap();
    v.sync().unwrap();
    let generation = v.generation();
    drop(v);
    // The metadata copy in use: generation g's is copy g mod 2.
    let copy = generation & 1;
    let at = fx.geo.meta_block(copy, 1) * BLOCK as u64 + 40;
    fx.flip(at);
    let e = fx.open_with(KEY).unwrap_err();
    assert!(matches!(e, VolumeError::Tree { .. }), "{e}");
    fx.flip(at);
    fx.open();
    // Both superblocks altered: nothing to mount.
    let f = fx.open();
    drop(f);
    fx.flip(200);
    fx.flip(4096 + 200);
    let e = fx.open_with(KEY).unwrap_err();
    assert!(matches!(e, VolumeError::Superblock(_)), "{e}");
}

#[derive(Debug)]
struct Fixed(Anchored);
impl Anchor for Fixed {
    fn read(&self) -> Result<Option<Anchored>, String> {
        Ok(Some(self.0))
    }
    fn advance(&self, _: Anchored) -> Result<(), String> {
        Ok(())
    }
    fn describe(&self) -> String {
        "a fixed record".into()
    }
}

#[test]
fn a_branch_the_anchor_does_not_know_and_an_anchor_left_behind_are_refused() {
    let fx = Fixture::new(64, 4);
    for _ in 0..3 {
        drop(fx.open());
    }
    let g = fx.open().generation();
    let open = |a: Anchored| {
        Volume::open(
            open_rw(&fx.backing),
            &VolumeKey::new(KEY),
            Box::new(Fixed(a)),
        )
        .map(|_| ())
    };
    let e = open(Anchored {
        generation: g,
        digest: [1; 32],
    })
    .unwrap_err();
    assert!(matches!(e, VolumeError::Diverged { .. }), "{e}");
    let e = open(Anchored {
        generation: g - 2,
        digest: [1; 32],
    })
    .unwrap_err();
    assert!(matches!(e, VolumeError::AnchorBehind { .. }), "{e}");
    // One commit ahead of the anchor: the commit that was cut short before it was anchored.
    open(Anchored {
        generation: g - 1,
        digest: [1; 32],
    })
    .unwrap();
}

#[test]
fn unsynced_writes_are_replayed_after_a_crash_and_a_cut_write_leaves_the_old_block() {
    let fx = Fixture::new(64, 8);
    let mut v = fx.open();
    v.write(0, &pattern(1, 4096 * 3)).unwrap();
    v.sync().unwrap();
    let f = open_rw(&fx.backing);
    let mut committed = vec![0u8; 4096];
    f.read_exact_at(&mut committed, fx.data_offset(1)).unwrap();
    // Written but not synced, then the process dies (no commit, nothing more written).
    v.write(0, &pattern(2, 4096 * 3)).unwrap();
    std::mem::forget(v);
    // The write of block 1 was cut short after its journal entry: the old ciphertext is back.
    f.write_all_at(&committed, fx.data_offset(1)).unwrap();
    let (v, report) = Volume::open(
        open_rw(&fx.backing),
        &VolumeKey::new(KEY),
        Box::new(FileAnchor::new(&fx.anchor)),
    )
    .unwrap();
    assert_eq!(report.replayed, 2, "{report:?}");
    assert_eq!(report.discarded, 1, "{report:?}");
    assert_eq!(v.read(0, 4096).unwrap(), pattern(2, 4096));
    assert_eq!(v.read(4096, 4096).unwrap(), pattern(1, 8192)[4096..]);
    assert_eq!(v.read(8192, 4096).unwrap(), pattern(2, 4096 * 3)[8192..]);
}

#[test]
fn random_unaligned_writes_across_journal_wraps_match_a_reference() {
    let fx = Fixture::new(128, 2);
    let mut v = fx.open();
    let mut reference = vec![0u8; 128 * 4096];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300u64 {
        let off = next() % (reference.len() as u64 - 1);
        let len = (1 + next() % 20000).min(reference.len() as u64 - off) as usize;
        let data = pattern(round as u8, len);
        v.write(off, &data).unwrap();
        reference[off as usize..off as usize + len].copy_from_slice(&data);
        if round % 37 == 0 {
            v.sync().unwrap();
        }
        if round % 101 == 0 {
            drop(v);
            v = fx.open();
        }
    }
    assert_eq!(v.read(0, reference.len()).unwrap(), reference);
    drop(v);
    assert_eq!(fx.open().read(0, reference.len()).unwrap(), reference);
}
