//! The volume's on-disk structures, as the host hands them back (it owns the backing file):
//! superblock, journal block, metadata block. Never a panic; whatever parses re-encodes to the
//! same bytes (the formats have no slack a parser could ignore).

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_volume::format::{JournalBlock, Superblock, encode_meta, parse_meta};

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = data.split_first().unwrap_or((&0, &[]));
    match sel % 3 {
        0 => {
            if let Ok(sb) = Superblock::parse(rest) {
                assert_eq!(sb.encode().as_slice(), rest);
            }
        }
        1 => {
            if let Ok(j) = JournalBlock::parse(rest) {
                assert_eq!(j.encode().as_slice(), rest);
            }
        }
        _ => {
            if let Ok(entries) = parse_meta(rest) {
                assert_eq!(encode_meta(&entries).as_slice(), rest);
            }
        }
    }
});
