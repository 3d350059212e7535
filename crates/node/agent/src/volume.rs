//! The node's encrypted state volume: what its Kubernetes components write (etcd's data,
//! containerd's and kubelet's state) lives on ext4 on a `veil-volume` (AES-256-GCM per block,
//! a Merkle tree over the tags, a journal), so nothing they write reaches the host's disk in
//! plaintext. The key is the node's state-volume key from the control plane (a control plane
//! derives its own), handed to the volume process on a pipe, never written anywhere. The
//! volume's freshness anchor is an NV index of the node's TPM, which this agent keeps for it
//! over a unix socket in the node's private directory: an older copy of the backing file, or
//! one altered, is refused at mount, and the node does not start its components.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use veil_node_attest::TpmAttester;
use veil_reference::node_config::StateVolumeSettings;
use veil_volume::{AnchorRequest, Anchored};
use zeroize::Zeroizing;

use crate::AgentConfig;

/// The TPM NV index holding the state volume's anchor (generation, then superblock digest).
pub const STATE_NV_INDEX: u32 = 0x0150_0a00;
/// The state volume's name in the anchor protocol.
pub const STATE_NAME: &str = "state";
const RECORD: u16 = 40;

fn nv_index(name: &str) -> Option<u32> {
    (name == STATE_NAME).then_some(STATE_NV_INDEX)
}

fn decode(b: &[u8]) -> Result<Anchored, String> {
    let (g, d) = (b.get(..8), b.get(8..40));
    match (g, d, b.len()) {
        (Some(g), Some(d), 40) => Ok(Anchored {
            generation: u64::from_be_bytes(g.try_into().map_err(|_| "generation")?),
            digest: d.try_into().map_err(|_| "digest")?,
        }),
        _ => Err(format!(
            "the NV index holds {} bytes, expected {RECORD}",
            b.len()
        )),
    }
}

fn read_anchor(attester: &TpmAttester, index: u32) -> Result<Option<Anchored>, String> {
    match attester.with_tpm(|t| t.nv_read(index, RECORD))? {
        Ok(None) => Ok(None),
        Ok(Some(b)) => decode(&b).map(Some),
        Err(e) => Err(e.to_string()),
    }
}

/// Answers one request line of the anchor protocol from the node's TPM. An anchor only moves
/// forward: a request to record an older commit (or another at the same generation) is refused.
pub fn answer(line: &str, attester: &TpmAttester) -> String {
    let req = match AnchorRequest::parse(line) {
        Ok(r) => r,
        Err(e) => return format!("error {e}"),
    };
    let (AnchorRequest::Read { name } | AnchorRequest::Advance { name, .. }) = &req;
    let Some(index) = nv_index(name) else {
        return format!("error no anchor for volume {name} on this node");
    };
    let current = match read_anchor(attester, index) {
        Ok(c) => c,
        Err(e) => return format!("error TPM: {e}"),
    };
    match req {
        AnchorRequest::Read { .. } => match current {
            None => "none".into(),
            Some(a) => format!("{} {}", a.generation, hex::encode(a.digest)),
        },
        AnchorRequest::Advance { name, to } => {
            if let Some(c) = current
                && (to.generation < c.generation
                    || (to.generation == c.generation && to.digest != c.digest))
            {
                tracing::warn!(
                    event = "volume_anchor_refused",
                    volume = %name,
                    anchored = c.generation,
                    requested = to.generation,
                    "an anchor only moves forward"
                );
                return format!(
                    "error anchor of {name} is at generation {}; generation {} is not newer",
                    c.generation, to.generation
                );
            }
            let mut rec = [0u8; 40];
            let (g, d) = rec.split_at_mut(8);
            g.copy_from_slice(&to.generation.to_be_bytes());
            d.copy_from_slice(&to.digest);
            match attester.with_tpm(|t| t.nv_write(index, &rec)) {
                Ok(Ok(())) => "ok".into(),
                Ok(Err(e)) => format!("error TPM: {e}"),
                Err(e) => format!("error TPM: {e}"),
            }
        }
    }
}

/// Serves the anchor protocol on a thread of its own, with blocking I/O: the volume's fsyncs
/// wait on it, so it must not wait for the agent's runtime (whose threads a blocking call can
/// hold), and requests are answered one at a time, in order.
fn serve_anchors(listener: std::os::unix::net::UnixListener, attester: Arc<TpmAttester>) {
    use std::io::{BufRead, Read};
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let mut line = String::new();
        let read = match stream.try_clone() {
            Ok(r) => std::io::BufReader::new(r.take(512)).read_line(&mut line),
            Err(e) => Err(e),
        };
        if !matches!(read, Ok(n) if n > 0) {
            continue;
        }
        let reply = answer(&line, &attester);
        let _ = stream.write_all(format!("{reply}\n").as_bytes());
    }
}

fn field(v: &serde_json::Value, name: &str) -> String {
    v.get(name).map(ToString::to_string).unwrap_or_default()
}

/// The mounted state volume: the `veil-volume` process and the anchor socket it uses.
#[derive(Debug)]
pub struct StateVolume {
    child: std::process::Child,
}

impl StateVolume {
    /// Opens (or, the first time, formats) the state volume with `key` and mounts it where
    /// the components keep their data (`<state_dir>/kube`), then binds the node's machine-wide
    /// paths into it. Fails, naming the check, if the volume was altered or rolled back.
    pub async fn start(
        cfg: &AgentConfig,
        settings: &StateVolumeSettings,
        key: &[u8],
        attester: Arc<TpmAttester>,
    ) -> anyhow::Result<Self> {
        let sha = veil_kube::supervise::file_sha256(&settings.binary)
            .with_context(|| format!("{}", settings.binary.display()))?;
        if hex::encode(sha) != settings.sha256 {
            bail!(
                "{} is not the measured veil-volume: SHA-256 {}, measured {}",
                settings.binary.display(),
                hex::encode(sha),
                settings.sha256
            );
        }
        let private = crate::kube::private_dir(cfg);
        let sock = private.join("anchor.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .with_context(|| format!("cannot listen on {}", sock.display()))?;
        let a = attester.clone();
        // The thread lives as long as the agent: a volume stopped and started again (secrets
        // lost and regained) binds a new socket and the old thread's listener is gone with
        // its file.
        std::thread::Builder::new()
            .name("volume-anchors".into())
            .spawn(move || serve_anchors(listener, a))
            .context("cannot start the anchor thread")?;
        let child = Self::open(cfg, settings, key, &attester, &sock).await?;
        Ok(Self { child })
    }

    async fn open(
        cfg: &AgentConfig,
        settings: &StateVolumeSettings,
        key: &[u8],
        attester: &Arc<TpmAttester>,
        sock: &std::path::Path,
    ) -> anyhow::Result<std::process::Child> {
        let backing = cfg.state_dir.join("state.vol");
        let anchor = format!("agent:{}:{STATE_NAME}", sock.display());
        let key_line = Zeroizing::new(format!("{}\n", hex::encode(key)));
        let log_path = cfg.state_dir.join("volume.log");
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
        };
        if !backing.exists() {
            let a = attester.clone();
            let anchored = tokio::task::spawn_blocking(move || read_anchor(&a, STATE_NV_INDEX))
                .await?
                .map_err(anyhow::Error::msg)?;
            if let Some(a) = anchored {
                tracing::error!(
                    event = "state_volume_refused",
                    check = "missing",
                    anchored = a.generation
                );
                bail!(
                    "state volume refused: {} is gone, but its anchor in the TPM is at generation {}: the host removed it (not formatting over it)",
                    backing.display(),
                    a.generation
                );
            }
            let mut c = std::process::Command::new(&settings.binary)
                .args(["format", "--size-mib", &settings.size_mib.to_string()])
                .arg("--backing")
                .arg(&backing)
                .args(["--anchor", &anchor])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(log()?)
                .spawn()
                .context("cannot run veil-volume format")?;
            c.stdin
                .take()
                .context("stdin")?
                .write_all(key_line.as_bytes())?;
            let status = tokio::task::spawn_blocking(move || c.wait()).await??;
            if !status.success() {
                bail!("veil-volume format failed (see {})", log_path.display());
            }
            tracing::info!(
                event = "state_volume_formatted",
                size_mib = settings.size_mib
            );
        }
        let data = cfg.state_dir.join("kube");
        std::fs::create_dir_all(&data)?;
        let mut child = std::process::Command::new(&settings.binary)
            .arg("serve")
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(crate::kube::private_dir(cfg).join("volume"))
            .args(["--anchor", &anchor])
            .arg("--ext4")
            .arg(&data)
            .arg("--die-with-parent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log()?)
            .spawn()
            .context("cannot run veil-volume serve")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(key_line.as_bytes())?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                    .map(|_| line)
            }),
        )
        .await
        .context("the state volume did not come up within 180 s")???;
        if line.trim().is_empty() {
            let _ = child.wait();
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let refused = text
                .lines()
                .rev()
                .find(|l| l.contains("\"volume_refused\""))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
            let (check, reason) = match &refused {
                Some(v) => (
                    v.pointer("/fields/check")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("unknown")
                        .to_string(),
                    v.pointer("/fields/reason")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ),
                None => (
                    "start".to_string(),
                    text.lines().last().unwrap_or("no output").to_string(),
                ),
            };
            tracing::error!(event = "state_volume_refused", check = %check, reason = %reason);
            bail!("state volume refused ({check}): {reason}");
        }
        let ready: serde_json::Value =
            serde_json::from_str(&line).context("veil-volume's ready line")?;
        tracing::info!(
            event = "state_volume_mounted",
            generation = %field(&ready, "generation"),
            replayed = %field(&ready, "replayed"),
            formatted_ext4 = %field(&ready, "formatted_ext4"),
            mount = %data.display()
        );
        veil_kube::private::node_paths(&data).map_err(anyhow::Error::msg)?;
        Ok(child)
    }

    /// Stops the volume (after the components that write to it): it unmounts, commits and
    /// anchors its last state.
    pub async fn stop(self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child;
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let r = child.wait();
                (child, r)
            }),
        )
        .await;
        if let Ok(Ok((_, Ok(status)))) = &waited {
            tracing::info!(event = "state_volume_stopped", status = %status);
        } else {
            tracing::warn!(event = "state_volume_stop_timeout");
        }
    }
}
