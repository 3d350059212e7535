//! Writes the seed corpus of the `s3_object` fuzz target into `fuzz-seeds/` (run with
//! `cargo test -p veil-s3-proxy --test fuzz_seeds -- --ignored`). The seeds are objects sealed
//! under the fuzz target's key (root key 07…07, bucket `b`, object `k`), prefixed by the
//! target's mode byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use veil_s3_proxy::format::{MIN_CHUNK_SIZE, encrypt_object};
use veil_s3_proxy::keys::RootKey;

#[test]
#[ignore = "regenerates checked-in files"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket_key = RootKey::from_bytes(&mut [7u8; 32])
        .unwrap()
        .bucket_key("b")
        .unwrap();
    for len in [0usize, 10, 1024, 2500] {
        let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let sealed = encrypt_object(&bucket_key, "b", "k", MIN_CHUNK_SIZE, &plain).unwrap();
        for (mode, body) in [(0u8, &sealed), (1, &plain), (2, &sealed)] {
            let mut seed = vec![mode];
            seed.extend_from_slice(body);
            std::fs::write(dir.join(format!("mode{mode}-len{len}.bin")), seed).unwrap();
        }
    }
}
