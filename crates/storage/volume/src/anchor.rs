//! Freshness anchors: somewhere the host cannot roll back that records the last commit of a
//! volume (its generation and the digest of its superblock). Every commit advances the anchor
//! before an fsync is acknowledged, so an older copy of the backing file (an older generation) or
//! another branch of it (the same generation, another superblock) is refused at mount.
//!
//! On a node the anchor is the node's TPM or its control plane (the agent provides them); the
//! file anchor here is for tests and benchmarks and is rollback-protected only as far as the
//! directory it lives in is out of the host's reach — on a local cluster it is not.

use std::path::PathBuf;

/// What an anchor records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchored {
    /// The generation of the last commit.
    pub generation: u64,
    /// SHA-256 of that commit's superblock.
    pub digest: [u8; 32],
}

/// A record the host cannot roll back.
pub trait Anchor: Send + Sync + std::fmt::Debug {
    /// What the anchor holds, or `None` if this volume was never anchored here.
    fn read(&self) -> Result<Option<Anchored>, String>;
    /// Records a newer commit. Must be durable when it returns.
    fn advance(&self, to: Anchored) -> Result<(), String>;
    /// Where the anchor is, for messages ("file /x", "TPM NV index 0x…").
    fn describe(&self) -> String;
}

/// An anchor in a file (written atomically: a temporary file, fsync, rename, fsync of the
/// directory). Insecure where the host can write the directory: say so where it is used.
#[derive(Debug, Clone)]
pub struct FileAnchor {
    path: PathBuf,
}

impl FileAnchor {
    /// An anchor at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Anchor for FileAnchor {
    fn read(&self) -> Result<Option<Anchored>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("anchor {}: {e}", self.path.display())),
        };
        parse_anchor(&text)
            .map(Some)
            .map_err(|e| format!("anchor {}: {e}", self.path.display()))
    }

    fn advance(&self, to: Anchored) -> Result<(), String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("anchor {}: {e}", self.path.display());
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(format!("{} {}\n", to.generation, hex::encode(to.digest)).as_bytes())
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Parses the text form `<generation> <digest hex>`.
pub fn parse_anchor(text: &str) -> Result<Anchored, String> {
    let mut it = text.split_whitespace();
    let (Some(g), Some(d), None) = (it.next(), it.next(), it.next()) else {
        return Err("expected `<generation> <sha256 hex>`".into());
    };
    let generation = g
        .parse()
        .map_err(|_| format!("generation: expected a number, found {g:?}"))?;
    let digest = hex::decode(d)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| format!("digest: expected 64 hex digits, found {d:?}"))?;
    Ok(Anchored { generation, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_anchor_round_trips_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let a = FileAnchor::new(d.path().join("anchor"));
        assert_eq!(a.read().unwrap(), None);
        let to = Anchored {
            generation: 7,
            digest: [9; 32],
        };
        a.advance(to).unwrap();
        assert_eq!(a.read().unwrap(), Some(to));
        std::fs::write(d.path().join("anchor"), "x y").unwrap();
        assert!(a.read().unwrap_err().contains("generation"));
        assert!(parse_anchor("1 abcd").unwrap_err().contains("digest"));
    }
}
