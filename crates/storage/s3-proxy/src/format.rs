//! The encrypted object format (pure: no I/O). See the crate's README.md for the specification.
//!
//! ```text
//! header (68 bytes) ‖ chunk 0 ‖ chunk 1 ‖ … ‖ chunk n-1
//! chunk i = AES-256-GCM(object key, nonce(i, i == n-1), aad = header, plaintext_i) ‖ tag
//! ```

use std::ops::Range;

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use veil_attest_core::{Malformed, Reader};

use crate::keys::{BucketKey, KEY_ID_LEN};

/// The first bytes of every object.
pub const MAGIC: [u8; 4] = *b"VLS3";
/// The only format version.
pub const VERSION: u16 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 4 + 2 + 2 + KEY_ID_LEN + SALT_LEN + 4 + 8;
/// Length of the per-object salt.
pub const SALT_LEN: usize = 32;
/// Length of each chunk's authentication tag.
pub const TAG_LEN: usize = 16;
/// The default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// The smallest chunk size a header may name.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// The largest chunk size a header may name.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The largest plaintext length a header may name (5 TiB, S3's object limit).
pub const MAX_PLAINTEXT_LEN: u64 = 5 * 1024 * 1024 * 1024 * 1024;

const STRUCTURE: &str = "object header";

/// Why an object or chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A header field is missing or holds a value the format does not allow.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The header names another key (another root key or another bucket).
    #[error(
        "object header: field `key_id` expected {expected}, found {found} (another root key or bucket)"
    )]
    KeyId {
        /// This proxy's key id for the bucket (hex).
        expected: String,
        /// The header's key id (hex).
        found: String,
    },
    /// The stored object does not have the length its header implies (truncated or extended).
    #[error("object length: expected {expected} bytes, found {found}")]
    ObjectLength {
        /// Length implied by the header.
        expected: u64,
        /// Length stored.
        found: u64,
    },
    /// A chunk has the wrong length.
    #[error("chunk {index}: expected {expected} bytes, found {found}")]
    ChunkLength {
        /// Chunk index.
        index: u64,
        /// Expected ciphertext length.
        expected: usize,
        /// Found ciphertext length.
        found: usize,
    },
    /// A chunk index beyond the object.
    #[error("chunk {index}: out of range, the object has {count} chunks")]
    ChunkIndex {
        /// Requested index.
        index: u64,
        /// Chunks in the object.
        count: u64,
    },
    /// A chunk does not authenticate: tampered, reordered, swapped from another object,
    /// truncated, moved to another key name, or encrypted under another key.
    #[error("chunk {index}: authentication failed")]
    ChunkAuth {
        /// Chunk index.
        index: u64,
    },
    /// The plaintext offered for encryption does not have the declared length.
    #[error("plaintext length: expected {expected} bytes, found {found}")]
    PlaintextLength {
        /// Declared length.
        expected: u64,
        /// Length found (so far).
        found: u64,
    },
    /// A cryptographic primitive failed (not a verdict about the object).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// The parsed header of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Id of the bucket key the object is encrypted under.
    pub key_id: [u8; KEY_ID_LEN],
    /// Random per-object salt for the object key.
    pub salt: [u8; SALT_LEN],
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Total plaintext bytes.
    pub plaintext_len: u64,
}

impl Header {
    /// Serialises the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields: [&[u8]; 7] = [
            &MAGIC,
            &VERSION.to_be_bytes(),
            &0u16.to_be_bytes(),
            &self.key_id,
            &self.salt,
            &self.chunk_size.to_be_bytes(),
            &self.plaintext_len.to_be_bytes(),
        ];
        let mut pos = 0;
        for field in fields {
            for (dst, src) in out.iter_mut().skip(pos).zip(field) {
                *dst = *src;
            }
            pos += field.len();
        }
        out
    }

    /// Parses exactly [`HEADER_LEN`] bytes, checking every field.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(STRUCTURE, bytes);
        let magic: [u8; 4] = r.array("magic")?;
        if magic != MAGIC {
            return Err(r
                .invalid("magic", hex::encode(MAGIC), hex::encode(magic))
                .into());
        }
        let version = r.u16_be("version")?;
        if version != VERSION {
            return Err(r
                .invalid("version", VERSION.to_string(), version.to_string())
                .into());
        }
        let flags = r.u16_be("flags")?;
        if flags != 0 {
            return Err(r.invalid("flags", "0", flags.to_string()).into());
        }
        let key_id = r.array("key_id")?;
        let salt = r.array("salt")?;
        let chunk_size = r.u32_be("chunk_size")?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(r
                .invalid(
                    "chunk_size",
                    format!("{MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
                    chunk_size.to_string(),
                )
                .into());
        }
        let plaintext_len = r.u64_be("plaintext_len")?;
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(r
                .invalid(
                    "plaintext_len",
                    format!("at most {MAX_PLAINTEXT_LEN}"),
                    plaintext_len.to_string(),
                )
                .into());
        }
        r.finish()?;
        Ok(Self {
            key_id,
            salt,
            chunk_size,
            plaintext_len,
        })
    }

    /// Number of chunks: at least one (an empty object has one empty chunk, so that its
    /// header is authenticated too).
    pub fn chunk_count(&self) -> u64 {
        self.plaintext_len
            .div_ceil(u64::from(self.chunk_size))
            .max(1)
    }

    /// Plaintext length of chunk `index` (which must be below [`Self::chunk_count`]).
    pub fn chunk_plain_len(&self, index: u64) -> usize {
        let cs = u64::from(self.chunk_size);
        let start = index.saturating_mul(cs);
        let len = self.plaintext_len.saturating_sub(start).min(cs);
        // `len` is at most `chunk_size`, a u32.
        usize::try_from(len).unwrap_or(usize::MAX)
    }

    /// Ciphertext length of chunk `index`.
    pub fn chunk_cipher_len(&self, index: u64) -> usize {
        self.chunk_plain_len(index).saturating_add(TAG_LEN)
    }

    /// Offset of chunk `index` in the stored object.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        HEADER_LEN as u64 + index * (u64::from(self.chunk_size) + TAG_LEN as u64)
    }

    /// The stored length of the whole object.
    pub fn ciphertext_len(&self) -> u64 {
        HEADER_LEN as u64 + self.plaintext_len + TAG_LEN as u64 * self.chunk_count()
    }

    /// Which chunks, and which bytes of them, serve the plaintext range `range` (non-empty,
    /// within the object).
    pub fn plan_range(&self, range: Range<u64>) -> RangePlan {
        let cs = u64::from(self.chunk_size);
        let end = range.end.min(self.plaintext_len);
        let start = range.start.min(end);
        let first_chunk = start / cs;
        let last_chunk = (end.saturating_sub(1) / cs).max(first_chunk);
        let ct_start = self.chunk_offset(first_chunk);
        let ct_end = self.chunk_offset(last_chunk) + self.chunk_cipher_len(last_chunk) as u64;
        RangePlan {
            first_chunk,
            last_chunk,
            skip: usize::try_from(start - first_chunk * cs).unwrap_or(0),
            len: end - start,
            ciphertext: ct_start..ct_end,
            plaintext: start..end,
        }
    }
}

/// How to serve a plaintext byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    /// First chunk to fetch and decrypt.
    pub first_chunk: u64,
    /// Last chunk (inclusive).
    pub last_chunk: u64,
    /// Plaintext bytes of the first chunk to drop.
    pub skip: usize,
    /// Plaintext bytes to return.
    pub len: u64,
    /// Stored byte range to fetch.
    pub ciphertext: Range<u64>,
    /// Plaintext range served.
    pub plaintext: Range<u64>,
}

/// The plaintext length of a stored object of `stored_len` bytes written with `chunk_size`
/// (for listings, where only stored sizes are known), or `None` if no object of that chunk
/// size has this length.
pub fn plaintext_len_of_stored(stored_len: u64, chunk_size: u32) -> Option<u64> {
    let body = stored_len.checked_sub(HEADER_LEN as u64)?;
    let per_chunk = u64::from(chunk_size) + TAG_LEN as u64;
    let count = body.div_ceil(per_chunk).max(1);
    let plain = body.checked_sub(count * TAG_LEN as u64)?;
    let header = Header {
        key_id: [0; KEY_ID_LEN],
        salt: [0; SALT_LEN],
        chunk_size,
        plaintext_len: plain,
    };
    (header.ciphertext_len() == stored_len).then_some(plain)
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    for (dst, src) in n.iter_mut().zip(index.to_be_bytes()) {
        *dst = src;
    }
    if let Some(flag) = n.last_mut() {
        *flag = u8::from(last);
    }
    Nonce::assume_unique_for_key(n)
}

/// The cipher of one object: its key and its header (the AAD of every chunk).
pub struct ObjectCipher {
    key: LessSafeKey,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
}

impl std::fmt::Debug for ObjectCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCipher")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl ObjectCipher {
    /// A cipher for a new object with a fresh random salt.
    pub fn for_new_object(
        bucket_key: &BucketKey,
        bucket: &str,
        key: &str,
        chunk_size: u32,
        plaintext_len: u64,
    ) -> Result<Self, FormatError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| FormatError::Crypto("random salt"))?;
        let header = Header {
            key_id: bucket_key.id(),
            salt,
            chunk_size,
            plaintext_len,
        };
        // Validate our own header the way a reader will.
        let header_bytes = header.encode();
        Header::parse(&header_bytes)?;
        Self::with_header(bucket_key, bucket, key, header)
    }

    /// The cipher of a stored object, from its header bytes.
    pub fn for_stored_object(
        bucket_key: &BucketKey,
        bucket: &str,
        key: &str,
        header_bytes: &[u8],
    ) -> Result<Self, FormatError> {
        let header = Header::parse(header_bytes)?;
        if header.key_id != bucket_key.id() {
            return Err(FormatError::KeyId {
                expected: hex::encode(bucket_key.id()),
                found: hex::encode(header.key_id),
            });
        }
        Self::with_header(bucket_key, bucket, key, header)
    }

    fn with_header(
        bucket_key: &BucketKey,
        bucket: &str,
        key: &str,
        header: Header,
    ) -> Result<Self, FormatError> {
        Ok(Self {
            key: bucket_key.object_key(&header.salt, bucket, key)?,
            header_bytes: header.encode(),
            header,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header's bytes.
    pub fn header_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.header_bytes
    }

    fn check_index(&self, index: u64) -> Result<bool, FormatError> {
        let count = self.header.chunk_count();
        if index >= count {
            return Err(FormatError::ChunkIndex { index, count });
        }
        Ok(index + 1 == count)
    }

    /// Encrypts chunk `index`, whose plaintext must have exactly its expected length.
    pub fn seal_chunk(&self, index: u64, plaintext: &[u8]) -> Result<Vec<u8>, FormatError> {
        let last = self.check_index(index)?;
        let expected = self.header.chunk_plain_len(index);
        if plaintext.len() != expected {
            return Err(FormatError::ChunkLength {
                index,
                expected,
                found: plaintext.len(),
            });
        }
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(nonce(index, last), Aad::from(&self.header_bytes), &mut buf)
            .map_err(|_| FormatError::Crypto("AES-256-GCM seal"))?;
        Ok(buf)
    }

    /// Authenticates and decrypts chunk `index`; nothing of an unauthenticated chunk is
    /// returned.
    pub fn open_chunk(&self, index: u64, ciphertext: &[u8]) -> Result<Vec<u8>, FormatError> {
        let last = self.check_index(index)?;
        let expected = self.header.chunk_cipher_len(index);
        if ciphertext.len() != expected {
            return Err(FormatError::ChunkLength {
                index,
                expected,
                found: ciphertext.len(),
            });
        }
        let mut buf = ciphertext.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce(index, last), Aad::from(&self.header_bytes), &mut buf)
            .map_err(|_| FormatError::ChunkAuth { index })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Encrypts a whole object held in memory (tests, fuzzing, small objects).
pub fn encrypt_object(
    bucket_key: &BucketKey,
    bucket: &str,
    key: &str,
    chunk_size: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let cipher =
        ObjectCipher::for_new_object(bucket_key, bucket, key, chunk_size, plaintext.len() as u64)?;
    let mut out = cipher.header_bytes().to_vec();
    let mut rest = plaintext;
    for index in 0..cipher.header().chunk_count() {
        let (chunk, tail) = rest.split_at(cipher.header().chunk_plain_len(index).min(rest.len()));
        out.extend_from_slice(&cipher.seal_chunk(index, chunk)?);
        rest = tail;
    }
    Ok(out)
}

/// Parses, authenticates and decrypts a whole stored object held in memory.
pub fn decrypt_object(
    bucket_key: &BucketKey,
    bucket: &str,
    key: &str,
    stored: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let header_bytes = stored.get(..HEADER_LEN).unwrap_or(stored);
    let cipher = ObjectCipher::for_stored_object(bucket_key, bucket, key, header_bytes)?;
    let header = cipher.header();
    if header.ciphertext_len() != stored.len() as u64 {
        return Err(FormatError::ObjectLength {
            expected: header.ciphertext_len(),
            found: stored.len() as u64,
        });
    }
    let mut out = Vec::new();
    let mut rest = stored.get(HEADER_LEN..).unwrap_or_default();
    for index in 0..header.chunk_count() {
        let (chunk, tail) = rest.split_at(header.chunk_cipher_len(index).min(rest.len()));
        out.extend_from_slice(&cipher.open_chunk(index, chunk)?);
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootKey;

    const CS: u32 = MIN_CHUNK_SIZE;

    fn bucket_key(root: u8, bucket: &str) -> BucketKey {
        RootKey::from_bytes(&mut [root; 32])
            .unwrap()
            .bucket_key(bucket)
            .unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_interesting_length() {
        let bk = bucket_key(1, "b");
        for len in [0, 1, 1023, 1024, 1025, 4096, 5000] {
            let pt = sample(len);
            let ct = encrypt_object(&bk, "b", "k", CS, &pt).unwrap();
            let header = Header::parse(&ct[..HEADER_LEN]).unwrap();
            assert_eq!(ct.len() as u64, header.ciphertext_len());
            assert_eq!(
                plaintext_len_of_stored(ct.len() as u64, CS),
                Some(len as u64)
            );
            assert_eq!(decrypt_object(&bk, "b", "k", &ct).unwrap(), pt);
        }
    }

    #[test]
    fn header_round_trips_and_names_bad_fields() {
        let h = Header {
            key_id: [9; KEY_ID_LEN],
            salt: [7; SALT_LEN],
            chunk_size: DEFAULT_CHUNK_SIZE,
            plaintext_len: 12345,
        };
        let bytes = h.encode();
        assert_eq!(Header::parse(&bytes).unwrap(), h);
        let cases: [(usize, &str); 5] = [
            (0, "magic"),
            (4, "version"),
            (7, "flags"),
            (HEADER_LEN - 12, "chunk_size"),
            (HEADER_LEN - 8, "plaintext_len"),
        ];
        for (offset, field) in cases {
            let mut bad = bytes;
            bad[offset] ^= 0x80;
            let err = Header::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        let err = Header::parse(&bytes[..10]).unwrap_err().to_string();
        assert!(err.contains("`flags`") || err.contains("`key_id`"), "{err}");
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            Header::parse(&long),
            Err(FormatError::Malformed(Malformed::Trailing { .. }))
        ));
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bk = bucket_key(1, "b");
        let ct = encrypt_object(&bk, "b", "k", CS, &sample(2500)).unwrap();
        for i in 0..ct.len() * 8 {
            let mut bad = ct.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decrypt_object(&bk, "b", "k", &bad).is_err(), "bit {i}");
        }
    }

    #[test]
    fn truncation_and_extension_are_refused() {
        let bk = bucket_key(1, "b");
        let ct = encrypt_object(&bk, "b", "k", CS, &sample(2500)).unwrap();
        let header = Header::parse(&ct[..HEADER_LEN]).unwrap();
        // Drop the last chunk and rewrite the header to claim fewer bytes: chunk 0 was
        // authenticated with the original header.
        let mut forged = Header {
            plaintext_len: 2048,
            ..header.clone()
        }
        .encode()
        .to_vec();
        forged.extend_from_slice(&ct[HEADER_LEN..header.chunk_offset(2) as usize]);
        assert!(matches!(
            decrypt_object(&bk, "b", "k", &forged),
            Err(FormatError::ChunkAuth { index: 0 })
        ));
        // Plain truncation.
        for cut in [1, TAG_LEN, CS as usize + TAG_LEN] {
            assert!(matches!(
                decrypt_object(&bk, "b", "k", &ct[..ct.len() - cut]),
                Err(FormatError::ObjectLength { .. })
            ));
        }
        let mut longer = ct.clone();
        longer.push(0);
        assert!(decrypt_object(&bk, "b", "k", &longer).is_err());
    }

    #[test]
    fn reordered_and_swapped_chunks_are_refused() {
        let bk = bucket_key(1, "b");
        let pt = sample(3 * CS as usize);
        let ct = encrypt_object(&bk, "b", "k", CS, &pt).unwrap();
        let other = encrypt_object(&bk, "b", "k", CS, &pt).unwrap();
        let h = Header::parse(&ct[..HEADER_LEN]).unwrap();
        let c = |buf: &[u8], i: u64| {
            buf[h.chunk_offset(i) as usize..h.chunk_offset(i) as usize + h.chunk_cipher_len(i)]
                .to_vec()
        };
        // Swap chunks 0 and 1.
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend(c(&ct, 1));
        swapped.extend(c(&ct, 0));
        swapped.extend(c(&ct, 2));
        assert!(matches!(
            decrypt_object(&bk, "b", "k", &swapped),
            Err(FormatError::ChunkAuth { index: 0 })
        ));
        // Chunk 1 from another object (same bucket, key and plaintext, other salt).
        let mut mixed = ct[..HEADER_LEN].to_vec();
        mixed.extend(c(&ct, 0));
        mixed.extend(c(&other, 1));
        mixed.extend(c(&ct, 2));
        assert!(matches!(
            decrypt_object(&bk, "b", "k", &mixed),
            Err(FormatError::ChunkAuth { index: 1 })
        ));
    }

    #[test]
    fn moved_objects_and_other_keys_are_refused() {
        let bk = bucket_key(1, "b");
        let ct = encrypt_object(&bk, "b", "k", CS, b"hello").unwrap();
        assert!(matches!(
            decrypt_object(&bk, "b", "k2", &ct),
            Err(FormatError::ChunkAuth { index: 0 })
        ));
        // Another bucket has another key, hence another key id.
        let other_bucket = bucket_key(1, "c");
        assert!(matches!(
            decrypt_object(&other_bucket, "c", "k", &ct),
            Err(FormatError::KeyId { .. })
        ));
        let other_root = bucket_key(2, "b");
        let err = decrypt_object(&other_root, "b", "k", &ct).unwrap_err();
        assert!(err.to_string().contains("`key_id`"), "{err}");
    }

    #[test]
    fn range_plans_cover_exactly_the_chunks_needed() {
        let h = Header {
            key_id: [0; KEY_ID_LEN],
            salt: [0; SALT_LEN],
            chunk_size: CS,
            plaintext_len: 5000,
        };
        let p = h.plan_range(0..5000);
        assert_eq!(
            (p.first_chunk, p.last_chunk, p.skip, p.len),
            (0, 4, 0, 5000)
        );
        assert_eq!(p.ciphertext, HEADER_LEN as u64..h.ciphertext_len());
        let p = h.plan_range(1000..1030);
        assert_eq!(
            (p.first_chunk, p.last_chunk, p.skip, p.len),
            (0, 1, 1000, 30)
        );
        let p = h.plan_range(2048..2049);
        assert_eq!((p.first_chunk, p.last_chunk, p.skip, p.len), (2, 2, 0, 1));
        let p = h.plan_range(4999..5000);
        assert_eq!((p.first_chunk, p.last_chunk), (4, 4));
        assert_eq!(p.ciphertext.end, h.ciphertext_len());
    }

    #[test]
    fn chunk_api_rejects_bad_indices_and_lengths() {
        let bk = bucket_key(1, "b");
        let c = ObjectCipher::for_new_object(&bk, "b", "k", CS, 10).unwrap();
        assert!(matches!(
            c.seal_chunk(1, &[0; 10]),
            Err(FormatError::ChunkIndex { index: 1, count: 1 })
        ));
        assert!(matches!(
            c.seal_chunk(0, &[0; 9]),
            Err(FormatError::ChunkLength {
                expected: 10,
                found: 9,
                ..
            })
        ));
        assert!(matches!(
            c.open_chunk(0, &[0; 3]),
            Err(FormatError::ChunkLength {
                expected: 26,
                found: 3,
                ..
            })
        ));
    }
}
