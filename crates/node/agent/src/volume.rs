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

use anyhow::Context;
use veil_node_attest::TpmAttester;
use veil_reference::node_config::StateVolumeSettings;
use veil_volume::launch::{Launch, LaunchError};
use veil_volume::{AnchorRequest, Anchored};
use zeroize::Zeroizing;

use crate::AgentConfig;

/// The TPM NV index holding the state volume's anchor (generation, then superblock digest).
pub const STATE_NV_INDEX: u32 = 0x0150_0a00;
/// The state volume's name in the anchor protocol.
pub const STATE_NAME: &str = "state";

/// The node refused its own state volume: altered, rolled back, gone, or not opened; `check`
/// names which check failed.
#[derive(Debug)]
pub struct Refused {
    /// The failed check (`missing`, `rollback`, `start`, … as `veil-volume` names them).
    pub check: String,
    /// What was found.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state volume refused ({}): {}", self.check, self.reason)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// Whether `e` is (or was caused by) a refused state volume.
    pub fn in_chain(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<Self>())
    }
}
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

/// Where anchors of persistent volumes are kept: the control plane (asked over attested TLS
/// by a worker, directly by a control plane's own CSI controller). Reads give the latest
/// commit; an advance records a newer one (refused if it is not newer).
pub type RemoteAnchor = Arc<
    dyn Fn(
            &str,
            Option<veil_wire::proto::VolumeCommit>,
        ) -> Result<Option<veil_wire::proto::VolumeCommit>, String>
        + Send
        + Sync,
>;

fn answer_remote(req: AnchorRequest, remote: &RemoteAnchor) -> String {
    match req {
        AnchorRequest::Read { name } => match remote(&name, None) {
            Ok(None) => "none".into(),
            Ok(Some(c)) => format!("{} {}", c.generation, c.digest),
            Err(e) => format!("error {e}"),
        },
        AnchorRequest::Advance { name, to } => {
            let commit = veil_wire::proto::VolumeCommit {
                generation: to.generation,
                digest: hex::encode(to.digest),
            };
            match remote(&name, Some(commit)) {
                Ok(_) => "ok".into(),
                Err(e) => format!("error {e}"),
            }
        }
    }
}

/// Answers one request line of the anchor protocol: the state volume's from the node's TPM,
/// a persistent volume's from `remote`. An anchor only moves forward: a request to record an
/// older commit (or another at the same generation) is refused.
pub fn answer(line: &str, attester: &TpmAttester, remote: Option<&RemoteAnchor>) -> String {
    let req = match AnchorRequest::parse(line) {
        Ok(r) => r,
        Err(e) => return format!("error {e}"),
    };
    let (AnchorRequest::Read { name } | AnchorRequest::Advance { name, .. }) = &req;
    let Some(index) = nv_index(name) else {
        return match remote {
            Some(r) if name.starts_with("v-") => answer_remote(req, r),
            _ => format!("error no anchor for volume {name} on this node"),
        };
    };
    // Read, check and write as one step: two requests for the same record must not both
    // pass the check.
    static TPM_RECORD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = TPM_RECORD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// The most anchor requests answered at once; more are refused (`error busy`) and retried by
/// the volume at its next commit.
const MAX_ANCHOR_REQUESTS: usize = 32;

/// Serves the anchor protocol with blocking I/O, on threads of its own: the volumes' fsyncs
/// wait on it, so it must not wait for the agent's runtime (whose threads a blocking call can
/// hold). Each request has a thread: a persistent volume's anchor kept in the control plane's
/// state is written to the state volume, whose commit needs the state volume's anchor from
/// this same socket; answered in turn, the two waited on each other until the volume's
/// 30-second timeout failed its fsync. The TPM's record is read, checked and written under
/// one lock.
fn serve_anchors(listener: std::os::unix::net::UnixListener, attester: Arc<TpmAttester>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_ANCHOR_REQUESTS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(b"error busy: too many anchor requests at once\n");
            continue;
        }
        let (a, n) = (attester.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("volume-anchor".into())
            .spawn(move || {
                answer_stream(stream, &a);
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn answer_stream(mut stream: std::os::unix::net::UnixStream, attester: &TpmAttester) {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    let read = match stream.try_clone() {
        Ok(r) => std::io::BufReader::new(r.take(512)).read_line(&mut line),
        Err(e) => Err(e),
    };
    if !matches!(read, Ok(n) if n > 0) {
        return;
    }
    let started = std::time::Instant::now();
    let reply = answer(&line, attester, REMOTE.get());
    let took = started.elapsed();
    if took > Duration::from_millis(500) {
        // The volume's fsync waits on this: a slow anchor is a slow (or failed) fsync.
        tracing::warn!(event = "volume_anchor_slow", request = %line.trim(), took_ms = took.as_millis() as u64, reply = %reply);
    }
    let _ = stream.write_all(format!("{reply}\n").as_bytes());
}

fn field(v: &serde_json::Value, name: &str) -> String {
    v.get(name).map(ToString::to_string).unwrap_or_default()
}

/// The anchor socket this agent serves, once started.
static ANCHORS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
/// Where persistent volumes' anchors are kept, once known (see [`set_remote`]).
static REMOTE: std::sync::OnceLock<RemoteAnchor> = std::sync::OnceLock::new();

/// Names where persistent volumes' anchors are kept (once: a worker's control planes, or a
/// control plane's own state).
pub fn set_remote(remote: RemoteAnchor) {
    let _ = REMOTE.set(remote);
}

/// Serves the anchor protocol at `<private>/anchor.sock` for the volumes of this node (the
/// state volume from its TPM, persistent volumes from [`set_remote`]'s), on a thread that
/// lives as long as the agent; started once, later calls return the same socket.
pub fn start_anchors(
    cfg: &AgentConfig,
    attester: &Arc<TpmAttester>,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = ANCHORS.get() {
        return Ok(p.clone());
    }
    let sock = crate::kube::private_dir(cfg).join("anchor.sock");
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    let a = attester.clone();
    std::thread::Builder::new()
        .name("volume-anchors".into())
        .spawn(move || serve_anchors(listener, a))
        .context("cannot start the anchor thread")?;
    let _ = ANCHORS.set(sock.clone());
    Ok(sock)
}

/// The mounted state volume: the `veil-volume` process.
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
        let sock = start_anchors(cfg, &attester)?;
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(key.try_into().map_err(|_| {
            anyhow::anyhow!("the state-volume key is {} bytes, expected 32", key.len())
        })?);
        let launch = Launch {
            binary: settings.binary.clone(),
            sha256: settings.sha256.clone(),
            backing: cfg.state_dir.join("state.vol"),
            anchor: format!("agent:{}:{STATE_NAME}", sock.display()),
            log: cfg.state_dir.join("volume.log"),
        };
        if !launch.backing.exists() {
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
                return Err(Refused {
                    check: "missing".into(),
                    reason: format!(
                        "{} is gone, but its anchor in the TPM is at generation {}: the host removed it (not formatting over it)",
                        launch.backing.display(),
                        a.generation
                    ),
                }
                .into());
            }
            let (l, k, mib) = (launch.clone(), key.clone(), settings.size_mib);
            tokio::task::spawn_blocking(move || l.format(mib, &k))
                .await?
                .context("formatting the state volume")?;
            tracing::info!(
                event = "state_volume_formatted",
                size_mib = settings.size_mib
            );
        }
        let data = cfg.state_dir.join("kube");
        std::fs::create_dir_all(&data)?;
        let fuse = crate::kube::private_dir(cfg).join("volume");
        let ext4 = data.clone();
        let opened = tokio::task::spawn_blocking(move || {
            launch.serve(&fuse, &ext4, &key, Duration::from_secs(180))
        })
        .await?;
        let (child, ready) = match opened {
            Ok(v) => v,
            Err(LaunchError::Refused { check, reason }) => {
                tracing::error!(event = "state_volume_refused", check = %check, reason = %reason);
                return Err(Refused { check, reason }.into());
            }
            Err(e) => {
                tracing::error!(event = "state_volume_refused", check = "start", reason = %e);
                return Err(Refused {
                    check: "start".into(),
                    reason: e.to_string(),
                }
                .into());
            }
        };
        tracing::info!(
            event = "state_volume_mounted",
            generation = %field(&ready, "generation"),
            replayed = %field(&ready, "replayed"),
            formatted_ext4 = %field(&ready, "formatted_ext4"),
            mount = %data.display()
        );
        veil_kube::private::node_paths(&data).map_err(anyhow::Error::msg)?;
        Ok(Self { child })
    }

    /// Stops the volume (after the components that write to it): it unmounts, commits and
    /// anchors its last state.
    pub async fn stop(self) {
        let child = self.child;
        let clean = tokio::task::spawn_blocking(move || {
            veil_volume::launch::stop(child, Duration::from_secs(30))
        })
        .await
        .unwrap_or(false);
        if clean {
            tracing::info!(event = "state_volume_stopped");
        } else {
            tracing::warn!(event = "state_volume_stop_timeout");
        }
    }
}
