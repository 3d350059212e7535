//! The C2SP `tlog-checkpoint` text: the origin (the log's name), the tree size in decimal, the
//! root hash in base64, each on a line of its own, then optional extension lines.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::TlogError;
use crate::merkle::Hash;
use crate::note::{NoteSigner, NoteVerifier};

/// A tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin (also the name of the key that signs it).
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The root hash.
    pub root: Hash,
    /// Extension lines (without their newlines).
    pub extensions: Vec<String>,
}

fn bad(why: impl Into<String>) -> TlogError {
    TlogError::Checkpoint(why.into())
}

impl Checkpoint {
    /// The note text.
    pub fn to_text(&self) -> Result<String, TlogError> {
        for line in std::iter::once(&self.origin).chain(&self.extensions) {
            if line.is_empty() || line.contains('\n') {
                return Err(bad(format!(
                    "a checkpoint line must be one non-empty line: {line:?}"
                )));
            }
        }
        let mut t = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        Ok(t)
    }

    /// Parses a note text.
    pub fn parse(text: &str) -> Result<Self, TlogError> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err(bad("the text does not end in a newline"));
        };
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad(
                "a checkpoint has at least three lines: origin, size, root",
            ));
        };
        if origin.is_empty() {
            return Err(bad("the origin line is empty"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(format!(
                "the size {size:?} is not a decimal number without leading zeros"
            )));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad(format!("the size {size:?} is too large")))?;
        let raw = STANDARD
            .decode(root)
            .map_err(|_| bad(format!("the root {root:?} is not base64")))?;
        let root: Hash = raw
            .as_slice()
            .try_into()
            .map_err(|_| bad(format!("the root is {} bytes, expected 32", raw.len())))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("an extension line is empty"));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// Signs it as the log (the key's name must be the origin): the signed note.
    pub fn sign(&self, key: &NoteSigner) -> Result<String, TlogError> {
        if key.name() != self.origin {
            return Err(bad(format!(
                "the key {} cannot sign the checkpoint of {}",
                key.name(),
                self.origin
            )));
        }
        key.sign(&self.to_text()?)
    }

    /// Opens a signed checkpoint of the log `log` (its origin is the key's name).
    pub fn open(note: &[u8], log: &NoteVerifier) -> Result<Self, TlogError> {
        let opened = crate::note::open(note, std::slice::from_ref(log))?;
        let c = Self::parse(&opened.text)?;
        if c.origin != log.name() {
            return Err(bad(format!(
                "the checkpoint is of {}, expected {}",
                c.origin,
                log.name()
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_specs_example_parses_and_prints_back() {
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse(text).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20852163);
        assert_eq!(c.to_text().unwrap(), text);
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for (t, why) in [
            ("o\n1\n", "three lines"),
            (
                "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                "leading zeros",
            ),
            (
                "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                "decimal",
            ),
            ("o\n1\nAAAA\n", "expected 32"),
            (
                "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
                "extension",
            ),
            (
                "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                "origin",
            ),
            (
                "o\n99999999999999999999\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                "too large",
            ),
        ] {
            let e = Checkpoint::parse(t).unwrap_err();
            assert!(e.to_string().contains(why), "{t:?}: {e}");
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_the_logs_key_only() {
        let key = NoteSigner::from_seed("veil.example/log", &[3; 32]).unwrap();
        let c = Checkpoint {
            origin: "veil.example/log".into(),
            size: 5,
            root: [9; 32],
            extensions: vec![],
        };
        let note = c.sign(&key).unwrap();
        assert_eq!(
            Checkpoint::open(note.as_bytes(), &key.verifier()).unwrap(),
            c
        );
        let other = NoteSigner::from_seed("veil.example/other", &[3; 32]).unwrap();
        assert!(c.sign(&other).is_err());
        assert!(Checkpoint::open(note.as_bytes(), &other.verifier()).is_err());
    }
}
