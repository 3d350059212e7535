//! C2SP `tlog-tiles`: the tree served as tiles of 256 hashes (`tile/<L>/<N>[.p/<W>]`: level
//! `L` holds the hashes of complete subtrees of `256^L` leaves) and the entries as bundles
//! (`tile/entries/<N>[.p/<W>]`: big-endian uint16 length-prefixed entries), `<N>` written in
//! three-digit path elements, all but the last prefixed `x` (1234067 → `x001/x234/067`).

use crate::TlogError;
use crate::merkle::{Hash, Tree};

/// Hashes in a full tile.
pub const WIDTH: u64 = 256;
/// The height of a tile (log2 of its width).
pub const HEIGHT: u32 = 8;
/// The largest entry a bundle can carry.
pub const MAX_ENTRY: usize = u16::MAX as usize;

fn bad(why: impl Into<String>) -> TlogError {
    TlogError::Tile(why.into())
}

/// What a tile path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// Hashes at tile level `L` (tree level `8·L`).
    Hashes(u8),
    /// An entry bundle.
    Entries,
}

/// A tile: its kind, index and width (256 for a full tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Hashes (at a level) or entries.
    pub kind: TileKind,
    /// The index within its level.
    pub index: u64,
    /// How many hashes or entries (1..=256).
    pub width: u16,
}

/// Writes `n` in three-digit path elements.
pub fn encode_index(n: u64) -> String {
    let mut groups = vec![n % 1000];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i == last {
                format!("{g:03}")
            } else {
                format!("x{g:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Tile {
    /// Its path below the log's prefix.
    pub fn path(&self) -> String {
        let level = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".into(),
        };
        let mut p = format!("tile/{level}/{}", encode_index(self.index));
        if u64::from(self.width) < WIDTH {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path below the log's prefix.
    pub fn parse(path: &str) -> Result<Self, TlogError> {
        if path.len() > 128 {
            return Err(bad("the tile path is too long"));
        }
        let Some(rest) = path.strip_prefix("tile/") else {
            return Err(bad(format!("{path:?} does not start with tile/")));
        };
        let (level, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad(format!("{path:?} has no index")))?;
        let kind = if level == "entries" {
            TileKind::Entries
        } else {
            let canonical = !level.is_empty()
                && level.bytes().all(|b| b.is_ascii_digit())
                && (level == "0" || !level.starts_with('0'));
            let l: u8 = level
                .parse()
                .ok()
                .filter(|l| canonical && *l <= 63)
                .ok_or_else(|| bad(format!("the level {level:?} is not 0..63")))?;
            TileKind::Hashes(l)
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let canonical =
                    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) && !w.starts_with('0');
                let w: u16 = w
                    .parse()
                    .ok()
                    .filter(|w| canonical && (1..WIDTH as u16).contains(w))
                    .ok_or_else(|| bad(format!("the width {w:?} is not 1..255")))?;
                (i, w)
            }
            None => (rest, WIDTH as u16),
        };
        let elements: Vec<&str> = index.split('/').collect();
        let mut n: u64 = 0;
        for (i, e) in elements.iter().enumerate() {
            let digits = if i + 1 == elements.len() {
                Some(*e)
            } else {
                e.strip_prefix('x')
            };
            let d = digits
                .filter(|d| d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad(format!("the index element {e:?} is malformed")))?;
            let v: u64 = d.parse().map_err(|_| bad("the index is not a number"))?;
            n = n
                .checked_mul(1000)
                .and_then(|n| n.checked_add(v))
                .ok_or_else(|| bad("the index is too large"))?;
        }
        let tile = Self {
            kind,
            index: n,
            width,
        };
        // One spelling per tile: a leading `x000/` element is not another name for it.
        if tile.path() != path {
            return Err(bad(format!(
                "{path:?} is not the canonical path of its tile"
            )));
        }
        Ok(tile)
    }

    /// The leaves that a tile of hashes at `level` with this index covers start at.
    fn tree_level(level: u8) -> u32 {
        u32::from(level) * HEIGHT
    }
}

/// The tiles (of hashes at every level, and the entry bundles) of a tree of `size` leaves.
pub fn tiles_for(size: u64) -> Vec<Tile> {
    let mut out = Vec::new();
    let mut level: u8 = 0;
    // Hashes at tree level 8·L: the complete subtrees of 256^L leaves.
    loop {
        let shift = Tile::tree_level(level);
        let count = if shift >= 64 { 0 } else { size >> shift };
        if count == 0 {
            break;
        }
        for kind in std::iter::once(TileKind::Hashes(level))
            .chain((level == 0).then_some(TileKind::Entries))
        {
            let full = count / WIDTH;
            for index in 0..full {
                out.push(Tile {
                    kind,
                    index,
                    width: WIDTH as u16,
                });
            }
            let rest = count % WIDTH;
            if rest > 0 {
                out.push(Tile {
                    kind,
                    index: full,
                    width: rest as u16,
                });
            }
        }
        level += 1;
    }
    out
}

/// The contents of a tile of hashes, from `tree`.
pub fn tile_hashes(tree: &Tree, tile: &Tile) -> Result<Vec<u8>, TlogError> {
    let TileKind::Hashes(level) = tile.kind else {
        return Err(bad("an entry bundle holds entries, not hashes"));
    };
    let tl = Tile::tree_level(level);
    let mut out = Vec::with_capacity(usize::from(tile.width) * 32);
    for i in 0..u64::from(tile.width) {
        let h = tree
            .stored(tl, tile.index * WIDTH + i)
            .ok_or_else(|| bad(format!("the tree has no hash for {}", tile.path())))?;
        out.extend_from_slice(&h);
    }
    Ok(out)
}

/// Splits a tile of hashes.
pub fn parse_hashes(bytes: &[u8], width: u16) -> Result<Vec<Hash>, TlogError> {
    if bytes.len() != usize::from(width) * 32 {
        return Err(bad(format!(
            "a tile of width {width} is {} bytes, found {}",
            usize::from(width) * 32,
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// Encodes entries as a bundle.
pub fn encode_bundle<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, TlogError> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| {
            bad(format!(
                "an entry of {} bytes does not fit a bundle",
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits a bundle of `width` entries.
pub fn parse_bundle(bytes: &[u8], width: u16) -> Result<Vec<&[u8]>, TlogError> {
    let mut out = Vec::with_capacity(usize::from(width));
    let mut rest = bytes;
    while !rest.is_empty() {
        let (Some(&[hi, lo]), Some(tail)) = (rest.get(..2), rest.get(2..)) else {
            return Err(bad("the bundle ends inside an entry's length"));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(entry) = tail.get(..len) else {
            return Err(bad(format!(
                "entry {} announces {len} bytes, {} remain",
                out.len(),
                tail.len()
            )));
        };
        out.push(entry);
        rest = tail.get(len..).unwrap_or_default();
        if out.len() > usize::from(width) {
            return Err(bad(format!("the bundle holds more than {width} entries")));
        }
    }
    if out.len() != usize::from(width) {
        return Err(bad(format!(
            "the bundle holds {} entries, expected {width}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_as_the_spec_writes_them() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(1000), "x001/000");
        let t = Tile {
            kind: TileKind::Hashes(1),
            index: 1234067,
            width: 17,
        };
        assert_eq!(t.path(), "tile/1/x001/x234/067.p/17");
        assert_eq!(Tile::parse(&t.path()).unwrap(), t);
        let e = Tile::parse("tile/entries/x001/000").unwrap();
        assert_eq!((e.kind, e.index, e.width), (TileKind::Entries, 1000, 256));
        for p in [
            "tile/0/x000/001",
            "tile/01/000",
            "tile/64/000",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/017",
            "tile/0/1",
            "tile/0/001/002",
            "tiles/0/000",
            "tile/0/x99999999999999999/000",
        ] {
            assert!(Tile::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn the_specs_tree_of_70000_leaves() {
        // 273 full level-0 tiles, one of width 112, one full level-1 tile, one of width 17,
        // one level-2 tile of width 1 (and the entry bundles beside level 0).
        let tiles = tiles_for(70_000);
        let count = |kind, width: u16| {
            tiles
                .iter()
                .filter(|t| t.kind == kind && t.width == width)
                .count()
        };
        assert_eq!(count(TileKind::Hashes(0), 256), 273);
        assert_eq!(count(TileKind::Hashes(0), 112), 1);
        assert_eq!(count(TileKind::Hashes(1), 256), 1);
        assert_eq!(count(TileKind::Hashes(1), 17), 1);
        assert_eq!(count(TileKind::Hashes(2), 1), 1);
        assert_eq!(count(TileKind::Entries, 256), 273);
        assert_eq!(tiles.len(), 273 * 2 + 2 + 1 + 1 + 1);
        let t256 = tiles_for(256);
        assert!(t256.contains(&Tile {
            kind: TileKind::Hashes(1),
            index: 0,
            width: 1
        }));
    }

    #[test]
    fn bundles_round_trip_and_bad_ones_are_refused() {
        let entries: Vec<&[u8]> = vec![b"a", b"", b"hello"];
        let b = encode_bundle(entries.iter().copied()).unwrap();
        assert_eq!(parse_bundle(&b, 3).unwrap(), entries);
        assert!(parse_bundle(&b, 2).is_err());
        assert!(parse_bundle(&b, 4).is_err());
        assert!(parse_bundle(&b[..b.len() - 1], 3).is_err());
        assert!(parse_bundle(&[0], 1).is_err());
        assert!(encode_bundle([vec![0u8; 70_000].as_slice()]).is_err());
    }
}
