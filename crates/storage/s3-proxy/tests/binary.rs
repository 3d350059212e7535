//! The `veil-s3-proxy` binary: root key on stdin, credentials from the environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use veil_s3_proxy::client::{S3Client, full_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_with_a_root_key_from_stdin() {
    let s = common::setup().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let creds = common::client_credentials();
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil-s3-proxy"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--backend", &s.backend.addr.to_string()])
        .args(["--root-key-file", "-"])
        .env(
            "VEIL_S3_BACKEND_ACCESS_KEY",
            &s.backend.credentials.access_key,
        )
        .env(
            "VEIL_S3_BACKEND_SECRET_KEY",
            s.backend.credentials.secret_key(),
        )
        .env("VEIL_S3_CLIENT_ACCESS_KEY", &creds.access_key)
        .env("VEIL_S3_CLIENT_SECRET_KEY", creds.secret_key())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let root_hex = "11".repeat(32);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(root_hex.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy binary did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = S3Client::new(format!("127.0.0.1:{port}"), creds);
    client.create_bucket("bin").await.unwrap();
    client
        .put_object("bin", "k", 11, vec![], full_body(&b"hello world"[..]))
        .await
        .unwrap();
    assert_eq!(
        &client.get_object_bytes("bin", "k", None).await.unwrap()[..],
        b"hello world"
    );
    // Same root key as the in-process proxy (0x11…): it reads the binary's objects.
    assert_eq!(
        &s.client.get_object_bytes("bin", "k", None).await.unwrap()[..],
        b"hello world"
    );
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(!logs.contains(&root_hex), "root key in the logs");
}
