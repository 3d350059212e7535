//! The S3 proxy's object parser, fed what the S3 backend holds (whoever controls the backend
//! controls these bytes): never a panic, never a plaintext but from an object this bucket key
//! sealed under this name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_s3_proxy::format::{
    HEADER_LEN, Header, MIN_CHUNK_SIZE, decrypt_object, encrypt_object, plaintext_len_of_stored,
};
use veil_s3_proxy::keys::RootKey;

fuzz_target!(|data: &[u8]| {
    let Ok(root) = RootKey::from_bytes(&mut [7u8; 32]) else {
        return;
    };
    let Ok(bucket_key) = root.bucket_key("b") else {
        return;
    };
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    match mode % 3 {
        // The bytes as a stored object, with this bucket's key id patched in so that parsing
        // reaches the chunks.
        0 => {
            let mut stored = rest.to_vec();
            for (dst, src) in stored.iter_mut().skip(8).zip(bucket_key.id()) {
                *dst = src;
            }
            if let Ok(plain) = decrypt_object(&bucket_key, "b", "k", &stored) {
                let header = Header::parse(stored.get(..HEADER_LEN).unwrap_or_default());
                assert_eq!(
                    header.map(|h| h.plaintext_len).ok(),
                    Some(plain.len() as u64)
                );
            }
        }
        // The bytes as plaintext: round-trips, and one flipped bit (chosen by the input) or a
        // moved name is refused.
        1 => {
            let Ok(sealed) = encrypt_object(&bucket_key, "b", "k", MIN_CHUNK_SIZE, rest) else {
                return;
            };
            assert_eq!(
                decrypt_object(&bucket_key, "b", "k", &sealed)
                    .ok()
                    .as_deref(),
                Some(rest)
            );
            assert!(decrypt_object(&bucket_key, "b", "k2", &sealed).is_err());
            let bit = rest.iter().fold(0usize, |acc, b| {
                acc.wrapping_mul(31).wrapping_add(usize::from(*b))
            }) % (sealed.len() * 8);
            let mut flipped = sealed;
            if let Some(byte) = flipped.get_mut(bit / 8) {
                *byte ^= 1 << (bit % 8);
            }
            assert!(decrypt_object(&bucket_key, "b", "k", &flipped).is_err());
        }
        // Header parsing and the length/range arithmetic on arbitrary values.
        _ => {
            if let Ok(h) = Header::parse(rest.get(..HEADER_LEN).unwrap_or(rest)) {
                let len = h.ciphertext_len();
                assert_eq!(
                    plaintext_len_of_stored(len, h.chunk_size),
                    Some(h.plaintext_len)
                );
                let tail = rest.get(HEADER_LEN..).unwrap_or_default();
                let a = tail
                    .iter()
                    .take(8)
                    .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                let b = tail
                    .iter()
                    .skip(8)
                    .take(8)
                    .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                if h.plaintext_len > 0 {
                    let start = a % h.plaintext_len;
                    let end = start + 1 + b % (h.plaintext_len - start);
                    let plan = h.plan_range(start..end);
                    assert_eq!(plan.len, end - start);
                    assert!(plan.ciphertext.end <= len);
                }
            }
        }
    }
});
