//! Running `veil-volume` as a process of its own, as the node agent does for its state volume
//! and the CSI node service for a persistent volume: the key goes on its standard input (never
//! an argument or a file), the binary is checked against its measured SHA-256 first, and a
//! refusal comes back with the check that failed. Blocking calls: run them off an async
//! runtime's threads.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest;
use zeroize::Zeroizing;

/// Why a volume did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The volume refused to mount: altered, rolled back, wrong key, unanchored.
    #[error("volume refused ({check}): {reason}")]
    Refused {
        /// The check that failed (as in the `volume_refused` event).
        check: String,
        /// What was wrong.
        reason: String,
    },
    /// The binary is not the measured one.
    #[error("{path} is not the measured veil-volume: SHA-256 {found}, measured {expected}")]
    NotMeasured {
        /// The binary.
        path: PathBuf,
        /// Its SHA-256.
        found: String,
        /// The measured SHA-256.
        expected: String,
    },
    /// It could not be run, or failed otherwise.
    #[error("{0}")]
    Failed(String),
}

/// One `veil-volume` invocation's settings.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The binary, and its measured SHA-256 (hex).
    pub binary: PathBuf,
    /// The SHA-256 the binary must have (hex).
    pub sha256: String,
    /// The backing file.
    pub backing: PathBuf,
    /// The anchor (`agent:SOCKET:NAME` or `file:PATH`).
    pub anchor: String,
    /// Where its standard error (JSON events) is appended.
    pub log: PathBuf,
}

fn failed(what: &str, e: impl std::fmt::Display) -> LaunchError {
    LaunchError::Failed(format!("{what}: {e}"))
}

impl Launch {
    fn check_binary(&self) -> Result<(), LaunchError> {
        let bytes = std::fs::read(&self.binary)
            .map_err(|e| failed(&self.binary.display().to_string(), e))?;
        let found = hex::encode(sha2::Sha256::digest(&bytes));
        if found != self.sha256 {
            return Err(LaunchError::NotMeasured {
                path: self.binary.clone(),
                found,
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }

    fn log(&self) -> Result<std::fs::File, LaunchError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| failed(&self.log.display().to_string(), e))
    }

    fn command(&self, sub: &str) -> Result<Command, LaunchError> {
        self.check_binary()?;
        let mut c = Command::new(&self.binary);
        c.arg(sub)
            .arg("--backing")
            .arg(&self.backing)
            .args(["--anchor", &self.anchor])
            .stdin(Stdio::piped())
            .stderr(self.log()?);
        Ok(c)
    }

    /// Formats the backing file as an empty volume of `size_mib` MiB.
    pub fn format(&self, size_mib: u64, key: &[u8; 32]) -> Result<(), LaunchError> {
        let mut c = self.command("format")?;
        c.args(["--size-mib", &size_mib.to_string()])
            .stdout(Stdio::null());
        let mut child = c.spawn().map_err(|e| failed("veil-volume format", e))?;
        give_key(&mut child, key)?;
        let status = child.wait().map_err(|e| failed("veil-volume format", e))?;
        if !status.success() {
            return Err(LaunchError::Failed(format!(
                "veil-volume format failed: {}",
                self.last_error()
            )));
        }
        Ok(())
    }

    /// Opens the volume, exports it at `fuse` and mounts ext4 at `ext4` (formatting a blank
    /// volume); returns the process and its ready line, once it is mounted. The process stops
    /// with its parent.
    pub fn serve(
        &self,
        fuse: &Path,
        ext4: &Path,
        key: &[u8; 32],
        timeout: Duration,
    ) -> Result<(Child, serde_json::Value), LaunchError> {
        let mut c = self.command("serve")?;
        c.arg("--mount")
            .arg(fuse)
            .arg("--ext4")
            .arg(ext4)
            .arg("--die-with-parent")
            .stdout(Stdio::piped());
        let mut child = c.spawn().map_err(|e| failed("veil-volume serve", e))?;
        give_key(&mut child, key)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LaunchError::Failed("veil-volume serve: no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(r.map(|_| line));
        });
        let line = match rx.recv_timeout(timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(failed("veil-volume serve", e)),
            Err(_) => {
                stop(child, Duration::from_secs(10));
                return Err(LaunchError::Failed(format!(
                    "the volume did not come up within {} s",
                    timeout.as_secs()
                )));
            }
        };
        if line.trim().is_empty() {
            let _ = child.wait();
            return Err(self.refusal());
        }
        let ready = serde_json::from_str(&line).map_err(|e| failed("its ready line", e))?;
        Ok((child, ready))
    }

    fn last_error(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().last().unwrap_or("no output").to_string()
    }

    /// The refusal the process logged last, or its last line.
    fn refusal(&self) -> LaunchError {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let refused = text
            .lines()
            .rev()
            .find(|l| l.contains("\"volume_refused\""))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        match refused {
            Some(v) => {
                let field = |name: &str| {
                    v.pointer(&format!("/fields/{name}"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                LaunchError::Refused {
                    check: field("check"),
                    reason: field("reason"),
                }
            }
            None => LaunchError::Failed(format!(
                "veil-volume stopped before it was ready: {}",
                self.last_error()
            )),
        }
    }
}

fn give_key(child: &mut Child, key: &[u8; 32]) -> Result<(), LaunchError> {
    let line = Zeroizing::new(format!("{}\n", hex::encode(key)));
    child
        .stdin
        .take()
        .ok_or_else(|| LaunchError::Failed("veil-volume: no stdin".into()))?
        .write_all(line.as_bytes())
        .map_err(|e| failed("handing the key to veil-volume", e))
}

/// Stops a served volume (SIGTERM: it unmounts ext4, commits, anchors and detaches), waiting
/// up to `timeout`, then kills it. Returns whether it stopped by itself.
pub fn stop(mut child: Child, timeout: Duration) -> bool {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let until = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Closes every descriptor this process inherited beyond standard input, output and error.
/// The node agent's TPM library opens its connection to the TPM without close-on-exec; a
/// process started by the agent that kept it open would keep the TPM (which serves one
/// connection at a time) from the agent's next connection. Called first thing by `veil-volume`
/// and by the agent's exec shim.
pub fn close_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is among them, already closed: EBADF.
        let _ = nix::unistd::close(fd);
    }
}
