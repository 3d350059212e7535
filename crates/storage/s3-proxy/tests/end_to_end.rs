//! End-to-end: a real s3s-fs, the proxy, and an S3 client speaking SigV4 to the proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use veil_s3_proxy::client::{ClientError, S3Client, full_body};
use veil_s3_proxy::format::{HEADER_LEN, Header, TAG_LEN};
use veil_s3_proxy::sigv4::Credentials;

const CANARY: &[u8] = b"VEIL-CANARY-a7c3f19e";

fn sample(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect();
    for at in [0, len / 3, len / 2, len - CANARY.len()] {
        v[at..at + CANARY.len()].copy_from_slice(CANARY);
    }
    v
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn put(client: &S3Client, bucket: &str, key: &str, data: &[u8]) {
    let headers = vec![
        ("x-amz-meta-owner".to_string(), "alice".to_string()),
        ("content-type".to_string(), "application/x-test".to_string()),
    ];
    client
        .put_object(
            bucket,
            key,
            data.len() as u64,
            headers,
            full_body(data.to_vec()),
        )
        .await
        .unwrap();
}

fn s3_error(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::S3 {
            status,
            code,
            message,
        } => (status.as_u16(), code, message),
        other => panic!("expected an S3 error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_encrypted_at_rest_and_round_trip() {
    let s = common::setup().await;
    s.client.create_bucket("plain").await.unwrap();
    s.client.head_bucket("plain").await.unwrap();
    let data = sample(200_000);
    put(&s.client, "plain", "dir/secret.bin", &data).await;

    // The canary appears nowhere in the backend's files.
    let files = files_under(&s.backend.dir);
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY),
            "canary found in {}",
            f.display()
        );
    }
    let stored = std::fs::read(s.backend.dir.join("plain/dir/secret.bin")).unwrap();
    let header = Header::parse(&stored[..HEADER_LEN]).unwrap();
    assert_eq!(header.plaintext_len, 200_000);
    assert_eq!(stored.len() as u64, header.ciphertext_len());
    assert_eq!(stored.len(), HEADER_LEN + 200_000 + 4 * TAG_LEN);

    // Whole object.
    let back = s
        .client
        .get_object_bytes("plain", "dir/secret.bin", None)
        .await
        .unwrap();
    assert_eq!(&back[..], &data[..]);

    // Ranges: across a chunk boundary, a suffix, an open end, one byte.
    for (range, want) in [
        ("bytes=65530-131100", &data[65530..=131100]),
        ("bytes=-100", &data[data.len() - 100..]),
        ("bytes=199990-", &data[199_990..]),
        ("bytes=131072-131072", &data[131_072..=131_072]),
        ("bytes=0-999999", &data[..]),
    ] {
        let resp = s
            .client
            .get_object("plain", "dir/secret.bin", Some(range))
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        let cr = resp.headers()["content-range"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(cr.ends_with("/200000"), "{range}: {cr}");
        let body = veil_s3_proxy::client::read_body(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], want, "{range}");
    }
    let err = s3_error(
        s.client
            .get_object("plain", "dir/secret.bin", Some("bytes=300000-"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.0, 416);

    // Head: plaintext size, metadata passes through.
    let head = s
        .client
        .head_object("plain", "dir/secret.bin")
        .await
        .unwrap();
    assert_eq!(head.headers()["content-length"], "200000");
    assert_eq!(head.headers()["x-amz-meta-owner"], "alice");
    assert_eq!(head.headers()["content-type"], "application/x-test");
    let get = s
        .client
        .get_object("plain", "dir/secret.bin", None)
        .await
        .unwrap();
    assert_eq!(get.headers()["content-length"], "200000");
    assert_eq!(get.headers()["x-amz-meta-owner"], "alice");
    assert_eq!(get.headers()["etag"], head.headers()["etag"]);

    // List: plaintext sizes.
    put(&s.client, "plain", "empty", b"").await;
    let listing = s.client.list_objects_v2_xml("plain", &[]).await.unwrap();
    let listing = String::from_utf8(listing.to_vec()).unwrap();
    assert!(listing.contains("<Key>dir/secret.bin</Key>"), "{listing}");
    assert!(listing.contains("<Size>200000</Size>"), "{listing}");
    assert!(listing.contains("<Size>0</Size>"), "{listing}");
    assert!(
        s.client
            .get_object_bytes("plain", "empty", None)
            .await
            .unwrap()
            .is_empty()
    );
    let prefixed = s
        .client
        .list_objects_v2_xml("plain", &[("prefix".into(), "dir/".into())])
        .await
        .unwrap();
    let prefixed = String::from_utf8(prefixed.to_vec()).unwrap();
    assert!(!prefixed.contains("<Key>empty</Key>"), "{prefixed}");

    // Buckets.
    let buckets = String::from_utf8(s.client.list_buckets_xml().await.unwrap().to_vec()).unwrap();
    assert!(buckets.contains("<Name>plain</Name>"), "{buckets}");

    // Delete.
    s.client
        .delete_object("plain", "dir/secret.bin")
        .await
        .unwrap();
    s.client.delete_object("plain", "empty").await.unwrap();
    let err = s3_error(
        s.client
            .get_object("plain", "dir/secret.bin", None)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.0, err.1.as_str()), (404, "NoSuchKey"));
    s.client.delete_bucket("plain").await.unwrap();
    assert!(s.client.head_bucket("plain").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_the_proxy_credentials() {
    let s = common::setup().await;
    let wrong = S3Client::new(
        s.proxy.addr.to_string(),
        Credentials::new("veil-client", "not-the-secret"),
    );
    let err = s3_error(wrong.create_bucket("nope").await.unwrap_err());
    assert_eq!(err.0, 403, "{err:?}");
    // The backend's credentials are not the proxy's.
    let backend_creds = S3Client::new(s.proxy.addr.to_string(), s.backend.credentials.clone());
    assert_eq!(
        s3_error(backend_creds.list_buckets_xml().await.unwrap_err()).0,
        403
    );
}

/// Puts an object of three and a half chunks through the proxy; returns its path at rest.
async fn stored(s: &common::Setup, key: &str) -> (Vec<u8>, std::path::PathBuf) {
    let data = sample(3 * 65536 + 1000);
    put(&s.client, "tamper", key, &data).await;
    (data, s.backend.dir.join("tamper").join(key))
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

async fn refused(s: &common::Setup, bucket: &str, key: &str, client: &S3Client) -> String {
    let (status, code, message) = s3_error(client.get_object(bucket, key, None).await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (502, "VeilObjectRejected"),
        "{message}"
    );
    assert!(
        !common::log_lines_with(&["object_rejected", &format!("key={key}")]).is_empty(),
        "no audit line for {key}"
    );
    let _ = s;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_at_rest_is_refused_and_audited() {
    let s = common::setup().await;
    s.client.create_bucket("tamper").await.unwrap();
    s.client.create_bucket("other").await.unwrap();

    // One flipped bit in the first chunk: an S3 error before any data.
    let (_, path) = stored(&s, "flip-first").await;
    edit(&path, |b| b[HEADER_LEN + 100] ^= 0x01);
    let msg = refused(&s, "tamper", "flip-first", &s.client).await;
    assert!(msg.contains("chunk 0: authentication failed"), "{msg}");

    // One flipped bit in a later chunk: the first chunks are served, then the transfer is
    // aborted — the client never receives the bad chunk nor a complete response.
    let (data, path) = stored(&s, "flip-late").await;
    edit(&path, |b| {
        let i = b.len() - 10;
        b[i] ^= 0x80;
    });
    let resp = s
        .client
        .get_object("tamper", "flip-late", None)
        .await
        .unwrap();
    match veil_s3_proxy::client::read_body(resp.into_body(), usize::MAX).await {
        Err(_) => {}
        Ok(body) => panic!(
            "got {} of {} bytes without an error",
            body.len(),
            data.len()
        ),
    }
    assert!(!common::log_lines_with(&["object_rejected", "key=flip-late", "chunk 3"]).is_empty());
    // A range that avoids the bad chunk still works (its chunks authenticate).
    let part = s
        .client
        .get_object_bytes("tamper", "flip-late", Some("bytes=0-99"))
        .await
        .unwrap();
    assert_eq!(&part[..], &data[..100]);

    // Truncation: refused whole, and for ranges.
    let (_, path) = stored(&s, "truncated").await;
    edit(&path, |b| b.truncate(b.len() - 1000 - TAG_LEN));
    let msg = refused(&s, "tamper", "truncated", &s.client).await;
    assert!(msg.contains("object length"), "{msg}");
    assert!(
        s.client
            .get_object("tamper", "truncated", Some("bytes=0-9"))
            .await
            .is_err()
    );
    assert!(s.client.head_object("tamper", "truncated").await.is_err());

    // Copied to another key name (in the same bucket) or to another bucket.
    let (_, path) = stored(&s, "original").await;
    std::fs::copy(&path, s.backend.dir.join("tamper/copied")).unwrap();
    let msg = refused(&s, "tamper", "copied", &s.client).await;
    assert!(msg.contains("chunk 0: authentication failed"), "{msg}");
    std::fs::copy(&path, s.backend.dir.join("other/original")).unwrap();
    let msg = refused(&s, "other", "original", &s.client).await;
    assert!(msg.contains("`key_id`"), "{msg}");
    // The original is still fine.
    assert!(
        s.client
            .get_object_bytes("tamper", "original", None)
            .await
            .is_ok()
    );

    // Header fields: magic and version are named.
    let (_, path) = stored(&s, "bad-magic").await;
    edit(&path, |b| b[0] = b'X');
    let msg = refused(&s, "tamper", "bad-magic", &s.client).await;
    assert!(msg.contains("`magic`"), "{msg}");
    let (_, path) = stored(&s, "bad-version").await;
    edit(&path, |b| b[5] = 9);
    let msg = refused(&s, "tamper", "bad-version", &s.client).await;
    assert!(msg.contains("`version` expected 1, found 9"), "{msg}");
    assert!(s.client.head_object("tamper", "bad-version").await.is_err());

    // A plaintext object written straight to the backend is refused too.
    s.direct
        .put_object("tamper", "plain", 5, vec![], full_body(&b"hello"[..]))
        .await
        .unwrap();
    refused(&s, "tamper", "plain", &s.client).await;

    // Another root key: refused, naming the key id.
    let (_, _) = stored(&s, "keyed").await;
    let (_other_proxy, other_client) = common::start_proxy(&s.backend, 0x22).await;
    let msg = refused(&s, "tamper", "keyed", &other_client).await;
    assert!(msg.contains("`key_id`"), "{msg}");
}
