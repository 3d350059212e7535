//! What a verifier of Veil's audit log reads from elsewhere: signed notes and checkpoints,
//! verifier keys, tile paths, entry bundles and tiles of hashes. The first byte picks the
//! parser; never a panic, and what parses prints back to what was read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_tlog::checkpoint::Checkpoint;
use veil_tlog::note::{self, NoteSigner, NoteVerifier};
use veil_tlog::tiles::{self, Tile};

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let Ok(key) = NoteSigner::from_seed("veil.example/audit", &[1; 32]) else {
                return;
            };
            let _ = note::open(rest, &[key.verifier()]);
            if let Ok(c) = Checkpoint::open(rest, &key.verifier()) {
                assert!(c.to_text().is_ok());
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(c) = Checkpoint::parse(text)
            {
                assert_eq!(c.to_text().ok().as_deref(), Some(text));
            }
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(v) = NoteVerifier::parse(text)
            {
                assert_eq!(NoteVerifier::parse(&v.to_text()).ok(), Some(v));
            }
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(t) = Tile::parse(text)
            {
                assert_eq!(t.path(), text);
            }
        }
        _ => {
            let width = u16::from(rest.first().copied().unwrap_or(1)).max(1);
            let body = rest.get(1..).unwrap_or_default();
            if let Ok(entries) = tiles::parse_bundle(body, width) {
                assert_eq!(tiles::encode_bundle(entries).ok().as_deref(), Some(body));
            }
            let _ = tiles::parse_hashes(body, width);
        }
    }
});
