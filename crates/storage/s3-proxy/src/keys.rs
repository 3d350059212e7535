//! The proxy's keys: a 32-byte root key, one key per bucket derived from it, one key per object
//! derived from the bucket key and the object's random salt.
//!
//! All derivations are HKDF-SHA256 with labels in the style of `veil-keys` (`veil/<area>/...`):
//!
//! - bucket key = HKDF(salt = `veil/s3/v1`, ikm = root key, info = `veil/s3/bucket/<bucket>`)
//! - key id     = HKDF(salt = `veil/s3/v1`, ikm = bucket key, info = `veil/s3/key-id`), 16 bytes
//! - object key = HKDF(salt = object salt, ikm = bucket key,
//!   info = `veil/s3/object/v1` ‖ u32be(len bucket) ‖ bucket ‖ u32be(len key) ‖ key)
//!
//! Secrets zeroize on drop and print as `<redacted>`.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use zeroize::{Zeroize, Zeroizing};

use crate::format::FormatError;

/// Length of a key id in the object header.
pub const KEY_ID_LEN: usize = 16;

const SALT: &[u8] = b"veil/s3/v1";

/// A problem with the root key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootKeyError {
    /// The text is not hexadecimal.
    #[error("root key: expected 64 hexadecimal characters, found non-hex text")]
    NotHex,
    /// The key has the wrong length.
    #[error("root key: expected 32 bytes, found {found}")]
    Length {
        /// Bytes found.
        found: usize,
    },
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), FormatError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| FormatError::Crypto("HKDF expand"))
}

/// The proxy's 32-byte root key. Zeroizes on drop, never prints.
#[derive(Clone)]
pub struct RootKey(Zeroizing<[u8; 32]>);

impl RootKey {
    /// Takes 32 bytes (the source is zeroized).
    pub fn from_bytes(bytes: &mut [u8]) -> Result<Self, RootKeyError> {
        let found = bytes.len();
        let arr: Result<[u8; 32], _> = (&*bytes).try_into();
        bytes.zeroize();
        arr.map(|a| Self(Zeroizing::new(a)))
            .map_err(|_| RootKeyError::Length { found })
    }

    /// Parses 64 hex characters (surrounding whitespace allowed); the text is zeroized.
    pub fn from_hex(text: &mut String) -> Result<Self, RootKeyError> {
        let decoded = hex::decode(text.trim());
        text.zeroize();
        let mut bytes = Zeroizing::new(decoded.map_err(|_| RootKeyError::NotHex)?);
        Self::from_bytes(&mut bytes)
    }

    /// The key of one bucket.
    pub fn bucket_key(&self, bucket: &str) -> Result<BucketKey, FormatError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let label = format!("veil/s3/bucket/{bucket}");
        hkdf(SALT, &*self.0, &[label.as_bytes()], &mut *key)?;
        let mut id = [0u8; KEY_ID_LEN];
        hkdf(SALT, &*key, &[b"veil/s3/key-id"], &mut id)?;
        Ok(BucketKey { key, id })
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// The key of one bucket, and its public id (written in every object header).
#[derive(Clone)]
pub struct BucketKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_LEN],
}

impl BucketKey {
    /// The public key id (a one-way function of the key).
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// The AES-256-GCM key of one object.
    pub(crate) fn object_key(
        &self,
        salt: &[u8],
        bucket: &str,
        key: &str,
    ) -> Result<LessSafeKey, FormatError> {
        let mut okm = Zeroizing::new([0u8; 32]);
        let bucket_len = u32::try_from(bucket.len())
            .map_err(|_| FormatError::Crypto("bucket name too long"))?
            .to_be_bytes();
        let key_len = u32::try_from(key.len())
            .map_err(|_| FormatError::Crypto("object key too long"))?
            .to_be_bytes();
        let info: [&[u8]; 5] = [
            b"veil/s3/object/v1",
            &bucket_len,
            bucket.as_bytes(),
            &key_len,
            key.as_bytes(),
        ];
        hkdf(salt, &*self.key, &info, &mut *okm)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &*okm)
            .map_err(|_| FormatError::Crypto("AES-256-GCM key"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

impl fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BucketKey(id {}, <redacted>)", hex::encode(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_key_parses_hex_and_rejects_bad_lengths() {
        let mut ok = "00".repeat(32);
        assert!(RootKey::from_hex(&mut ok).is_ok());
        assert!(ok.is_empty());
        let mut short = "00".repeat(31);
        assert_eq!(
            RootKey::from_hex(&mut short).unwrap_err(),
            RootKeyError::Length { found: 31 }
        );
        let mut bad = "zz".repeat(32);
        assert_eq!(
            RootKey::from_hex(&mut bad).unwrap_err(),
            RootKeyError::NotHex
        );
    }

    #[test]
    fn bucket_keys_differ_per_bucket_and_root() {
        let a = RootKey::from_bytes(&mut [1u8; 32]).unwrap();
        let b = RootKey::from_bytes(&mut [2u8; 32]).unwrap();
        assert_ne!(
            a.bucket_key("x").unwrap().id(),
            a.bucket_key("y").unwrap().id()
        );
        assert_ne!(
            a.bucket_key("x").unwrap().id(),
            b.bucket_key("x").unwrap().id()
        );
        assert_eq!(
            a.bucket_key("x").unwrap().id(),
            a.bucket_key("x").unwrap().id()
        );
        assert!(!format!("{a:?}").contains("01"));
    }
}
