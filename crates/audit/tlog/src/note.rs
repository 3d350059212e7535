//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys: a text ending in a newline, a
//! blank line, and signature lines `— <name> base64(key ID || signature)`. The key ID is the
//! first four bytes of `SHA-256(name || 0x0A || 0x01 || public key)`; a verifier key is written
//! `<name>+<key ID, 8 hex digits>+base64(0x01 || public key)`, as Go's `sumdb/note` reads it.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::TlogError;

/// The signature type byte of Ed25519.
const ED25519_TYPE: u8 = 0x01;
/// The largest note accepted (the spec asks for at least 16 signatures to be taken).
pub const MAX_NOTE: usize = 64 * 1024;
/// The most signature lines accepted.
pub const MAX_SIGNATURES: usize = 64;
const DASH: &str = "\u{2014} ";

fn bad(why: impl Into<String>) -> TlogError {
    TlogError::Note(why.into())
}

/// Whether `name` can name a key: non-empty, no Unicode space, no `+`.
pub fn check_name(name: &str) -> Result<(), TlogError> {
    if name.is_empty() {
        return Err(bad("the key name is empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || *c == '+' || c.is_control())
    {
        return Err(bad(format!("the key name {name:?} holds {c:?}")));
    }
    Ok(())
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public);
    let d: [u8; 32] = h.finalize().into();
    let [a, b, c, e, ..] = d;
    u32::from_be_bytes([a, b, c, e])
}

/// A key that signs notes.
pub struct NoteSigner {
    name: String,
    id: u32,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// The signer `name` with the Ed25519 key of `seed` (32 bytes, RFC 8032).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, TlogError> {
        check_name(name)?;
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| bad("the Ed25519 seed was refused"))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, &public),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier of this key.
    pub fn verifier(&self) -> NoteVerifier {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.key.public_key().as_ref());
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            public,
        }
    }

    /// Signs `text` (which must end in a newline and be a valid note text): the whole note.
    pub fn sign(&self, text: &str) -> Result<String, TlogError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(sig.as_ref());
        Ok(format!(
            "{text}\n{DASH}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// A key whose signatures are verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    public: [u8; 32],
}

impl NoteVerifier {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// Parses `<name>+<key ID hex>+<base64(0x01 || public key)>`, checking that the ID is the
    /// one the name and key give.
    pub fn parse(text: &str) -> Result<Self, TlogError> {
        let text = text.trim_end_matches('\n');
        // The name and the ID hold no `+`; the base64 key may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a verifier key is <name>+<hex key ID>+<base64 key>"));
        };
        check_name(name)?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("the key ID {id:?} is not 8 hex digits")));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key ID is not hex"))?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| bad("the verifier key is not base64"))?;
        let (Some(&ED25519_TYPE), Some(pk)) = (raw.first(), raw.get(1..)) else {
            return Err(bad(format!(
                "only Ed25519 keys (type 0x01) are taken, found type {:?}",
                raw.first()
            )));
        };
        let public: [u8; 32] = pk
            .try_into()
            .map_err(|_| bad(format!("an Ed25519 key is 32 bytes, found {}", pk.len())))?;
        let want = key_id(name, &public);
        if want != id {
            return Err(bad(format!(
                "the key ID {id:08x} is not the one of this name and key ({want:08x})"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            id,
            public,
        })
    }

    /// The verifier key's text form.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(&self.public);
        format!("{}+{:08x}+{}", self.name, self.id, STANDARD.encode(raw))
    }

    fn verifies(&self, text: &str, sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.public)
            .verify(text.as_bytes(), sig)
            .is_ok()
    }
}

fn check_text(text: &str) -> Result<(), TlogError> {
    if !text.ends_with('\n') {
        return Err(bad("a note's text must end in a newline"));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        return Err(bad(format!(
            "a note must not hold the control character {c:?}"
        )));
    }
    Ok(())
}

/// A note whose signature by a known key verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The text (ending in its newline).
    pub text: String,
    /// The names of the known keys that signed it.
    pub signed_by: Vec<String>,
}

/// Opens `note`: parses it, ignores signatures of unknown keys, and verifies those of
/// `known`. Refused if a known key's signature fails, or if none of them signed.
pub fn open(note: &[u8], known: &[NoteVerifier]) -> Result<Opened, TlogError> {
    if note.len() > MAX_NOTE {
        return Err(bad(format!(
            "the note is {} bytes, more than {MAX_NOTE}",
            note.len()
        )));
    }
    let note = std::str::from_utf8(note).map_err(|_| bad("the note is not UTF-8"))?;
    check_text(note)?;
    // The text ends at the last blank line.
    let Some(at) = note.rfind("\n\n") else {
        return Err(bad("no blank line separates the text from the signatures"));
    };
    let (text, sigs) = (&note[..=at], &note[at + 2..]);
    if sigs.is_empty() {
        return Err(bad("the note has no signature"));
    }
    let lines: Vec<&str> = sigs.split_terminator('\n').collect();
    if !sigs.ends_with('\n') {
        return Err(bad("the last signature line does not end in a newline"));
    }
    if lines.len() > MAX_SIGNATURES {
        return Err(bad(format!(
            "the note has {} signatures, more than {MAX_SIGNATURES}",
            lines.len()
        )));
    }
    let mut signed_by = Vec::new();
    for line in lines {
        let Some(rest) = line.strip_prefix(DASH) else {
            return Err(bad(format!(
                "a signature line must start with an em dash: {line:?}"
            )));
        };
        let Some((name, sig)) = rest.split_once(' ') else {
            return Err(bad(format!(
                "a signature line is `— name signature`: {line:?}"
            )));
        };
        check_name(name)?;
        let blob = STANDARD
            .decode(sig)
            .map_err(|_| bad(format!("the signature of {name} is not base64")))?;
        let (Some(&[a, b, c, d]), Some(sig)) = (blob.get(..4), blob.get(4..)) else {
            return Err(bad(format!("the signature of {name} is too short")));
        };
        let id = u32::from_be_bytes([a, b, c, d]);
        let Some(key) = known.iter().find(|k| k.name == name && k.id == id) else {
            continue;
        };
        if !key.verifies(text, sig) {
            return Err(bad(format!(
                "the signature of {name} (key {id:08x}) does not verify"
            )));
        }
        if !signed_by.iter().any(|n| n == name) {
            signed_by.push(name.to_string());
        }
    }
    if signed_by.is_empty() {
        return Err(bad(format!(
            "no known key signed the note (known: {})",
            known
                .iter()
                .map(|k| format!("{}+{:08x}", k.name, k.id))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Opened {
        text: text.to_string(),
        signed_by,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signed_note_opens_with_its_key_only() {
        let s = NoteSigner::from_seed("veil.example/audit", &[7; 32]).unwrap();
        let note = s.sign("hello\nworld\n").unwrap();
        let v = NoteVerifier::parse(&s.verifier().to_text()).unwrap();
        assert_eq!(v, s.verifier());
        let o = open(note.as_bytes(), std::slice::from_ref(&v)).unwrap();
        assert_eq!(o.text, "hello\nworld\n");
        assert_eq!(o.signed_by, vec!["veil.example/audit".to_string()]);
        // Another key of the same name: ignored, so nothing known signed.
        let other = NoteSigner::from_seed("veil.example/audit", &[8; 32]).unwrap();
        assert!(open(note.as_bytes(), &[other.verifier()]).is_err());
        // A changed text: the known key's signature fails.
        let forged = note.replacen("world", "w0rld", 1);
        let e = open(forged.as_bytes(), std::slice::from_ref(&v)).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // Cosigned by an unknown key: still opens.
        let extra = other.sign("hello\nworld\n").unwrap();
        let sig_line = extra.lines().last().unwrap();
        let both = format!("{note}{sig_line}\n");
        assert_eq!(open(both.as_bytes(), &[v]).unwrap().signed_by.len(), 1);
    }

    #[test]
    fn every_verifier_key_text_parses_back_even_when_its_base64_holds_a_plus() {
        let mut plus = 0;
        for seed in 0..=255u8 {
            let v = NoteSigner::from_seed("veil.example/audit", &[seed; 32])
                .unwrap()
                .verifier();
            let text = v.to_text();
            plus += usize::from(text.matches('+').count() > 2);
            assert_eq!(NoteVerifier::parse(&text).unwrap(), v, "{text}");
        }
        assert!(plus > 0, "some key's base64 holds a +");
    }

    #[test]
    fn a_note_signed_elsewhere_opens_and_ours_is_byte_identical() {
        // Signed with Python's `cryptography` (OpenSSL's Ed25519), the key ID and verifier key
        // computed there from the spec (the seed is 32 bytes of 0x01).
        let vkey = "veil.example/audit+30a2c349+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c";
        let note = "veil.example/audit\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n\u{2014} veil.example/audit MKLDSe6mfL9U0FN+6j1kVzMTri/wUB2N32rjzJQECdOQszx6pxx1gYINwz1+BBgBqrtMS+V2RXxJ1AcYXBTPk+GXpww=\n";
        let v = NoteVerifier::parse(vkey).unwrap();
        assert!(open(note.as_bytes(), std::slice::from_ref(&v)).is_ok());
        let ours = NoteSigner::from_seed("veil.example/audit", &[1; 32]).unwrap();
        assert_eq!(ours.verifier().to_text(), vkey);
        let text = "veil.example/audit\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
        assert_eq!(ours.sign(text).unwrap(), note);
    }

    #[test]
    fn malformed_notes_and_keys_name_what_is_wrong() {
        let s = NoteSigner::from_seed("n", &[1; 32]).unwrap();
        let v = s.verifier();
        for (note, why) in [
            ("no blank line\n— n AAAA\n", "blank line"),
            ("text\n\n", "no signature"),
            ("text\n\nnot a signature\n", "em dash"),
            ("text\n\n— n !!!\n", "base64"),
            ("text\n\n— n AAA=\n", "too short"),
            ("te\u{7}xt\n\n— n AAAA\n", "control"),
        ] {
            let e = open(note.as_bytes(), std::slice::from_ref(&v)).unwrap_err();
            assert!(e.to_string().contains(why), "{note:?}: {e}");
        }
        assert!(s.sign("no newline").is_err());
        assert!(NoteSigner::from_seed("a b", &[1; 32]).is_err());
        let text = v.to_text();
        let wrong_id = format!("n+00000000+{}", text.rsplit('+').next().unwrap());
        assert!(
            NoteVerifier::parse(&wrong_id)
                .unwrap_err()
                .to_string()
                .contains("key ID")
        );
        assert!(NoteVerifier::parse("n+1234").is_err());
    }
}
