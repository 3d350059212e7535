//! A real S3 backend for tests and benchmarks: an `s3s-fs` process on a free local port.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sigv4::Credentials;

/// How to install the backend used by the tests.
pub const INSTALL_HINT: &str = "cargo install --locked s3s-fs@0.14.1 --features binary";

/// Why the backend could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// `s3s-fs` is not installed.
    #[error(
        "s3s-fs not found (looked at $VEIL_S3S_FS, $PATH and ~/.cargo/bin); install it with `{INSTALL_HINT}`"
    )]
    NotInstalled,
    /// Starting it failed.
    #[error("starting s3s-fs: {0}")]
    Io(#[from] std::io::Error),
    /// It did not start listening.
    #[error("s3s-fs did not listen on {0} within 20 s")]
    NotListening(SocketAddr),
}

/// Finds the `s3s-fs` binary.
pub fn find_s3s_fs() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("VEIL_S3S_FS") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(HarnessError::NotInstalled)
}

/// A running `s3s-fs`; killed when dropped.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The directory it stores objects in (`<dir>/<bucket>/<key>`).
    pub dir: PathBuf,
    /// The credentials it accepts.
    pub credentials: Credentials,
}

impl Backend {
    /// Starts `binary` storing into `dir` (created if missing).
    pub fn start(binary: &Path, dir: &Path) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let credentials = Credentials::new("backend-ak", "backend-secret-key-for-tests");
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &credentials.access_key])
            .args(["--secret-key", credentials.secret_key()])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let backend = Self {
            child,
            addr,
            dir: dir.to_path_buf(),
            credentials,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(HarnessError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(backend)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
