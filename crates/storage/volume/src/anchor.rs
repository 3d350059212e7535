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

/// A request of the anchor protocol between a volume process and the node agent that keeps its
/// volumes' anchors (in the node's TPM): one request per connection on a unix socket, one line
/// each way.
///
/// ```text
/// read <name>                          -> none | <generation> <sha256 hex> | error <reason>
/// advance <name> <generation> <hex>    -> ok | error <reason>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorRequest {
    /// What the anchor of volume `name` holds.
    Read {
        /// The volume's name (`[a-z0-9-]`, 1 to 64 characters).
        name: String,
    },
    /// Records a newer commit of volume `name`.
    Advance {
        /// The volume's name.
        name: String,
        /// The commit.
        to: Anchored,
    },
}

/// Checks a volume name of the anchor protocol.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "volume name: expected 1 to 64 of [a-z0-9-], found {:?}",
            name.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

impl AnchorRequest {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut it = line.split_whitespace();
        let req = match (it.next(), it.next()) {
            (Some("read"), Some(name)) => Self::Read {
                name: name.to_string(),
            },
            (Some("advance"), Some(name)) => {
                let rest: Vec<&str> = it.by_ref().collect();
                Self::Advance {
                    name: name.to_string(),
                    to: parse_anchor(&rest.join(" "))?,
                }
            }
            _ => {
                return Err(
                    "expected `read <name>` or `advance <name> <generation> <sha256 hex>`".into(),
                );
            }
        };
        if it.next().is_some() {
            return Err("trailing words after the request".into());
        }
        let (Self::Read { name } | Self::Advance { name, .. }) = &req;
        check_name(name)?;
        Ok(req)
    }

    /// The request as a line (with its newline).
    pub fn to_line(&self) -> String {
        match self {
            Self::Read { name } => format!("read {name}\n"),
            Self::Advance { name, to } => format!(
                "advance {name} {} {}\n",
                to.generation,
                hex::encode(to.digest)
            ),
        }
    }
}

/// An anchor kept by the node agent, reached over its unix socket.
#[derive(Debug, Clone)]
pub struct SocketAnchor {
    path: PathBuf,
    name: String,
}

impl SocketAnchor {
    /// The anchor of volume `name` behind the socket at `path`.
    pub fn new(path: impl Into<PathBuf>, name: &str) -> Result<Self, String> {
        check_name(name)?;
        Ok(Self {
            path: path.into(),
            name: name.to_string(),
        })
    }

    fn ask(&self, req: &AnchorRequest) -> Result<String, String> {
        use std::io::{BufRead, Read, Write};
        let err = |e: std::io::Error| format!("anchor socket {}: {e}", self.path.display());
        let mut s = std::os::unix::net::UnixStream::connect(&self.path).map_err(err)?;
        let t = Some(std::time::Duration::from_secs(30));
        s.set_read_timeout(t).map_err(err)?;
        s.set_write_timeout(t).map_err(err)?;
        s.write_all(req.to_line().as_bytes()).map_err(err)?;
        let mut line = String::new();
        std::io::BufReader::new(s.take(4096))
            .read_line(&mut line)
            .map_err(err)?;
        let line = line.trim().to_string();
        if let Some(reason) = line.strip_prefix("error ") {
            return Err(format!("the agent refused: {reason}"));
        }
        Ok(line)
    }
}

impl Anchor for SocketAnchor {
    fn read(&self) -> Result<Option<Anchored>, String> {
        let line = self.ask(&AnchorRequest::Read {
            name: self.name.clone(),
        })?;
        if line == "none" {
            return Ok(None);
        }
        parse_anchor(&line).map(Some)
    }

    fn advance(&self, to: Anchored) -> Result<(), String> {
        let line = self.ask(&AnchorRequest::Advance {
            name: self.name.clone(),
            to,
        })?;
        if line != "ok" {
            return Err(format!("expected `ok` from the agent, found {line:?}"));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("agent {} volume {}", self.path.display(), self.name)
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

    #[test]
    fn protocol_lines_round_trip_and_bad_names_are_refused() {
        let reqs = [
            AnchorRequest::Read {
                name: "state".into(),
            },
            AnchorRequest::Advance {
                name: "pvc-1".into(),
                to: Anchored {
                    generation: 12,
                    digest: [0xab; 32],
                },
            },
        ];
        for r in reqs {
            assert_eq!(AnchorRequest::parse(&r.to_line()).unwrap(), r);
        }
        assert!(
            AnchorRequest::parse("read ../x")
                .unwrap_err()
                .contains("volume name")
        );
        assert!(
            AnchorRequest::parse("read a b")
                .unwrap_err()
                .contains("trailing")
        );
        assert!(AnchorRequest::parse("write a").is_err());
        assert!(AnchorRequest::parse("advance a 1").is_err());
    }
}
