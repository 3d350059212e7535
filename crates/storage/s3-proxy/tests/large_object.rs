//! A 64 MiB object round-trips through the proxy with bounded memory (its own test binary, so
//! that the peak resident size measured is this test's).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use veil_s3_proxy::bench::{get_digest, pattern_digest, pattern_stream};
use veil_s3_proxy::client::stream_body;
use veil_s3_proxy::format::Header;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_round_trip_with_bounded_memory() {
    let s = common::setup().await;
    s.client.create_bucket("large").await.unwrap();
    let len: u64 = 64 * 1024 * 1024;
    let expected = pattern_digest(len).await;
    let before = peak_rss_kib();
    s.client
        .put_object(
            "large",
            "big",
            len,
            vec![],
            stream_body(pattern_stream(len)),
        )
        .await
        .unwrap();
    let (found, digest) = get_digest(&s.client, "large", "big").await.unwrap();
    let after = peak_rss_kib();
    assert_eq!(found, len);
    assert_eq!(digest, expected);
    let stored = std::fs::metadata(s.backend.dir.join("large/big"))
        .unwrap()
        .len();
    let header = Header {
        key_id: [0; 16],
        salt: [0; 32],
        chunk_size: 65536,
        plaintext_len: len,
    };
    assert_eq!(stored, header.ciphertext_len());
    let growth_mib = (after.saturating_sub(before)) / 1024;
    eprintln!("peak RSS before {before} KiB, after {after} KiB (growth {growth_mib} MiB)");
    assert!(
        growth_mib < 24,
        "peak RSS grew by {growth_mib} MiB for a 64 MiB object"
    );
}
