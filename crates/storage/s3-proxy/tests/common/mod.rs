//! Shared set-up: a real s3s-fs backend, an in-process proxy, clients of both, and captured
//! tracing output.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Mutex, Once};

use veil_s3_proxy::client::S3Client;
use veil_s3_proxy::format::DEFAULT_CHUNK_SIZE;
use veil_s3_proxy::harness::{Backend, find_s3s_fs};
use veil_s3_proxy::keys::RootKey;
use veil_s3_proxy::server::{ProxyConfig, RunningProxy};
use veil_s3_proxy::sigv4::Credentials;

#[derive(Debug)]
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub backend: Backend,
    pub proxy: RunningProxy,
    /// A client of the proxy.
    pub client: S3Client,
    /// A client of the backend alone.
    pub direct: S3Client,
}

pub fn client_credentials() -> Credentials {
    Credentials::new("veil-client", "client-secret-for-tests")
}

pub async fn start_proxy(backend: &Backend, root: u8) -> (RunningProxy, S3Client) {
    let proxy = RunningProxy::start(ProxyConfig {
        backend: backend.addr.to_string(),
        backend_credentials: backend.credentials.clone(),
        client_credentials: client_credentials(),
        root_key: RootKey::from_bytes(&mut [root; 32]).unwrap(),
        chunk_size: DEFAULT_CHUNK_SIZE,
    })
    .await
    .unwrap();
    let client = S3Client::new(proxy.addr.to_string(), client_credentials());
    (proxy, client)
}

pub async fn setup() -> Setup {
    init_logs();
    let binary = find_s3s_fs().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(&binary, &dir.path().join("store")).unwrap();
    let direct = S3Client::new(backend.addr.to_string(), backend.credentials.clone());
    let (proxy, client) = start_proxy(&backend, 0x11).await;
    Setup {
        _dir: dir,
        backend,
        proxy,
        client,
        direct,
    }
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
}

/// The captured log lines that contain every one of `needles`.
pub fn log_lines_with(needles: &[&str]) -> Vec<String> {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    logs.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}
