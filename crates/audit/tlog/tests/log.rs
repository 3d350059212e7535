//! The log on disk, exported as tiles and verified offline; rewritten, truncated and forked
//! logs caught.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;
use veil_tlog::verify::verify_export;

const ORIGIN: &str = "veil.example/cluster-1/audit";

fn key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[42; 32]).unwrap()
}

fn entry(i: usize) -> Vec<u8> {
    format!("{{\"event\":\"secret_released\",\"n\":{i}}}").into_bytes()
}

fn fill(log: &mut Log, from: usize, to: usize) {
    let entries: Vec<Vec<u8>> = (from..to).map(entry).collect();
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    assert_eq!(log.append(&refs).unwrap(), from as u64);
}

#[test]
fn an_exported_log_verifies_offline_and_proves_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(&dir.path().join("log"), key()).unwrap();
    fill(&mut log, 0, 10);
    let early = log.checkpoint().to_string();
    for k in 1..30 {
        fill(&mut log, k * 10, k * 10 + 10);
    }
    assert_eq!(log.size(), 300);
    let root = log.root();
    drop(log);
    // Reopened: the same log.
    let log = Log::open(&dir.path().join("log"), key()).unwrap();
    assert_eq!((log.size(), log.root()), (300, root));
    assert_eq!(log.entry(123).unwrap(), entry(123));

    let out = dir.path().join("export");
    log.export(&out).unwrap();
    assert!(out.join("tile/0/000").exists() && out.join("tile/0/001.p/44").exists());
    assert!(out.join("tile/entries/001.p/44").exists() && out.join("tile/1/000.p/1").exists());
    let v = verify_export(&out, &key().verifier()).unwrap();
    assert_eq!(v.checkpoint.size, 300);
    assert_eq!(v.entries[299], entry(299));
    let (index, proof) = v.prove_inclusion(&entry(123)).unwrap();
    assert_eq!(index, 123);
    assert_eq!(proof.len(), 9);
    assert!(v.prove_inclusion(b"never logged").is_err());
    let (old, _) = v.check_older(early.as_bytes(), &key().verifier()).unwrap();
    assert_eq!(old.size, 10);
    // Another log's key: the checkpoint does not open.
    let other = NoteSigner::from_seed(ORIGIN, &[43; 32]).unwrap();
    assert!(verify_export(&out, &other.verifier()).is_err());
}

#[test]
fn a_changed_entry_or_tile_in_an_export_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(&dir.path().join("log"), key()).unwrap();
    fill(&mut log, 0, 300);
    let out = dir.path().join("export");
    log.export(&out).unwrap();
    let verifier = key().verifier();

    let bundle = out.join("tile/entries/000");
    let original = std::fs::read(&bundle).unwrap();
    let mut changed = original.clone();
    let at = changed.windows(3).position(|w| w == b"\"n\"").unwrap() + 4;
    changed[at] ^= 1;
    std::fs::write(&bundle, &changed).unwrap();
    let e = verify_export(&out, &verifier).unwrap_err().to_string();
    assert!(e.contains("entry 0 does not hash"), "{e}");
    std::fs::write(&bundle, &original).unwrap();

    let top = out.join("tile/1/000.p/1");
    let mut t = std::fs::read(&top).unwrap();
    t[0] ^= 1;
    std::fs::write(&top, &t).unwrap();
    let e = verify_export(&out, &verifier).unwrap_err().to_string();
    assert!(e.contains("tile/1/000.p/1"), "{e}");
    t[0] ^= 1;
    std::fs::write(&top, &t).unwrap();

    std::fs::remove_file(out.join("tile/0/001.p/44")).unwrap();
    let e = verify_export(&out, &verifier).unwrap_err().to_string();
    assert!(e.contains("tile/0/001.p/44"), "{e}");
}

#[test]
fn a_rewritten_log_fails_against_a_checkpoint_kept_from_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(&dir.path().join("a"), key()).unwrap();
    fill(&mut log, 0, 20);
    let kept = log.checkpoint().to_string();
    // The same key signs a log whose entry 10 differs (its holder rewrote history).
    let mut fork = Log::open(&dir.path().join("b"), key()).unwrap();
    fill(&mut fork, 0, 10);
    fork.append(&[b"rewritten".as_slice()]).unwrap();
    fill(&mut fork, 11, 40);
    let out = dir.path().join("export");
    fork.export(&out).unwrap();
    let v = verify_export(&out, &key().verifier()).unwrap();
    let e = v
        .check_older(kept.as_bytes(), &key().verifier())
        .unwrap_err();
    assert!(e.to_string().contains("not an extension"), "{e}");
    // A log cut below a kept checkpoint: entries were removed.
    let mut short = Log::open(&dir.path().join("c"), key()).unwrap();
    fill(&mut short, 0, 5);
    let out = dir.path().join("export-short");
    short.export(&out).unwrap();
    let v = verify_export(&out, &key().verifier()).unwrap();
    let e = v
        .check_older(kept.as_bytes(), &key().verifier())
        .unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
}

#[test]
fn the_log_on_disk_refuses_rewritten_or_removed_entries_and_drops_an_unacknowledged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = Log::open(&path, key()).unwrap();
    fill(&mut log, 0, 50);
    let root = log.root();
    drop(log);
    let entries = path.join("entries");
    let original = std::fs::read(&entries).unwrap();

    // An append cut short: a partial record, and a whole one no checkpoint covers.
    let mut tail = original.clone();
    tail.extend_from_slice(&[0, 3, b'a', b'b', b'c', 0, 9, b'x']);
    std::fs::write(&entries, &tail).unwrap();
    let log = Log::open(&path, key()).unwrap();
    assert_eq!((log.size(), log.root()), (50, root));
    drop(log);
    assert_eq!(std::fs::read(&entries).unwrap(), original);

    // A rewritten entry.
    let mut changed = original.clone();
    let last = changed.len() - 2;
    changed[last] ^= 1;
    std::fs::write(&entries, &changed).unwrap();
    let e = Log::open(&path, key()).unwrap_err().to_string();
    assert!(e.contains("rewritten"), "{e}");

    // Entries removed.
    std::fs::write(&entries, &original[..original.len() / 2]).unwrap();
    let e = Log::open(&path, key()).unwrap_err().to_string();
    assert!(e.contains("removed"), "{e}");

    // A checkpoint by another key: refused.
    std::fs::write(&entries, &original).unwrap();
    let other = NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap();
    assert!(Log::open(&path, other).is_err());
    // An entry too large for a bundle: refused, nothing written.
    let mut log = Log::open(&path, key()).unwrap();
    assert!(log.append(&[vec![0u8; 70_000].as_slice()]).is_err());
    assert_eq!(log.size(), 50);
}

#[test]
fn concurrent_appends_are_batched_and_each_acknowledged_entry_is_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), key()).unwrap();
    let appender = std::sync::Arc::new(veil_tlog::group::Appender::new(log));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = appender.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        let e = format!("thread {t} entry {i}").into_bytes();
                        (a.append(e.clone()).unwrap(), e)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let per_thread: Vec<Vec<(u64, Vec<u8>)>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    // A thread's next append starts after its last was acknowledged: its entries are in order.
    for t in &per_thread {
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
    }
    let mut acknowledged: Vec<(u64, Vec<u8>)> = per_thread.into_iter().flatten().collect();
    acknowledged.sort();
    let indexes: Vec<u64> = acknowledged.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (0..2000).collect::<Vec<u64>>(), "every index once");
    appender.with_log(|log| {
        assert_eq!(log.size(), 2000);
        for (i, e) in &acknowledged {
            assert_eq!(&log.entry(*i).unwrap(), e);
        }
    });
    drop(appender);
    let reopened = Log::open(dir.path(), key()).unwrap();
    assert_eq!(reopened.size(), 2000);
    let oversized = veil_tlog::group::Appender::new(reopened);
    let err = oversized.append(vec![0u8; 70_000]).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn a_torn_checkpoint_write_falls_back_to_the_other_slot_and_two_bad_slots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), key()).unwrap();
    fill(&mut log, 0, 10);
    fill(&mut log, 10, 15);
    drop(log);
    let path = dir.path().join("checkpoints");
    let good = std::fs::read(&path).unwrap();
    let slot = veil_tlog::log::SLOT as usize;
    // Opened (slot 0), then two appends: slot 1 (10 entries), slot 0 (15 entries).
    let mut torn = good.clone();
    torn[40] ^= 0xff;
    std::fs::write(&path, &torn).unwrap();
    let log = Log::open(dir.path(), key()).unwrap();
    assert_eq!(
        log.size(),
        10,
        "the entries past the surviving checkpoint are dropped"
    );
    drop(log);
    let mut both = good;
    both[40] ^= 0xff;
    both[slot + 40] ^= 0xff;
    std::fs::write(&path, &both).unwrap();
    let err = Log::open(dir.path(), key()).unwrap_err();
    assert!(err.to_string().contains("no checkpoint verifies"), "{err}");
}
