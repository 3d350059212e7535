//! The Node service, on a worker: it stages a volume by fetching its key from the control
//! plane (over attested TLS, released only to the node the volume is attached to) and running
//! `veil-volume` on its backing file with ext4 at the staging path; it publishes by binding the
//! staging path into the pod's directory. The key goes to the volume process on a pipe and is
//! dropped here; a volume whose file was altered or rolled back is refused at stage, with the
//! check that failed.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use veil_volume::launch::{Launch, LaunchError};
use zeroize::Zeroizing;

use crate::proto::{self, node_service_capability as nsc};
use crate::{DRIVER, backing, check_capability, check_volume_id};

/// Where a node gets a volume's key.
pub trait Keys: Send + Sync + std::fmt::Debug + 'static {
    /// The key of volume `id`, from the control plane; an error names why it was refused.
    fn volume_key(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Zeroizing<[u8; 32]>, String>> + Send;
}

/// The node service's settings.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The node's name (its CSI node ID).
    pub node_id: String,
    /// The disk pool.
    pub pool: PathBuf,
    /// The measured `veil-volume` binary and its SHA-256 (hex).
    pub binary: PathBuf,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// The agent's anchor socket (`veil-volume --anchor agent:<socket>:<id>`).
    pub anchor_socket: PathBuf,
    /// A private directory for the volumes' FUSE mounts and logs.
    pub work: PathBuf,
}

/// How long a volume may take to open (replaying its journal) and mount.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a volume may take to unmount, commit and anchor.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Staged {
    staging: PathBuf,
    child: std::process::Child,
}

/// The Node service.
#[derive(Debug)]
pub struct Node<K> {
    inner: Arc<NodeInner<K>>,
}

impl<K> Clone for Node<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct NodeInner<K> {
    settings: NodeSettings,
    keys: K,
    staged: tokio::sync::Mutex<HashMap<String, Staged>>,
}

pub(crate) fn path_arg(what: &str, p: &str) -> Result<PathBuf, Status> {
    if p.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    let path = PathBuf::from(p);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Status::invalid_argument(format!(
            "{what} {p:?}: expected an absolute path without `..`"
        )));
    }
    Ok(path)
}

/// Whether `path` is a mount point (in this process's mount namespace).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl<K: Keys> Node<K> {
    /// A node service with these settings, getting keys from `keys`.
    pub fn new(settings: NodeSettings, keys: K) -> Self {
        Self {
            inner: Arc::new(NodeInner {
                settings,
                keys,
                staged: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The volumes staged here.
    pub async fn staged(&self) -> Vec<String> {
        self.inner.staged.lock().await.keys().cloned().collect()
    }

    /// Stops every staged volume (the agent stopping).
    pub async fn stop_all(&self) {
        let all: Vec<Staged> = self
            .inner
            .staged
            .lock()
            .await
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            let _ = tokio::task::spawn_blocking(move || {
                veil_volume::launch::stop(s.child, STOP_TIMEOUT)
            })
            .await;
        }
    }

    /// Stages volume `id` at `staging`.
    pub async fn stage(&self, id: &str, staging: &Path) -> Result<(), Status> {
        check_volume_id(id)?;
        let s = &self.inner.settings;
        let mut staged = self.inner.staged.lock().await;
        if let Some(st) = staged.get_mut(id) {
            if let Ok(Some(status)) = st.child.try_wait() {
                tracing::warn!(event = "volume_exited", volume = %id, %status);
                staged.remove(id);
            } else if st.staging == staging {
                return Ok(());
            } else {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is staged at {}, not {}",
                    st.staging.display(),
                    staging.display()
                )));
            }
        }
        let file = backing(&s.pool, id);
        if !file.exists() {
            return Err(Status::not_found(format!(
                "volume {id}: no backing file in the pool"
            )));
        }
        let key = self.inner.keys.volume_key(id).await.map_err(|reason| {
            tracing::warn!(event = "volume_key_refused", volume = %id, %reason);
            Status::permission_denied(format!("the key of volume {id}: {reason}"))
        })?;
        let work = s.work.join(id);
        std::fs::create_dir_all(&work).map_err(internal)?;
        std::fs::create_dir_all(staging).map_err(internal)?;
        let launch = Launch {
            binary: s.binary.clone(),
            sha256: s.sha256.clone(),
            backing: file,
            anchor: format!("agent:{}:{id}", s.anchor_socket.display()),
            log: work.join("volume.log"),
        };
        let fuse = work.join("fuse");
        let ext4 = staging.to_path_buf();
        let opened =
            tokio::task::spawn_blocking(move || launch.serve(&fuse, &ext4, &key, OPEN_TIMEOUT))
                .await
                .map_err(internal)?;
        match opened {
            Ok((child, ready)) => {
                tracing::info!(
                    event = "volume_staged",
                    volume = %id,
                    staging = %staging.display(),
                    generation = %ready.get("generation").map(ToString::to_string).unwrap_or_default(),
                    replayed = %ready.get("replayed").map(ToString::to_string).unwrap_or_default()
                );
                staged.insert(
                    id.to_string(),
                    Staged {
                        staging: staging.to_path_buf(),
                        child,
                    },
                );
                Ok(())
            }
            Err(LaunchError::Refused { check, reason }) => {
                tracing::error!(event = "volume_refused", volume = %id, %check, %reason);
                Err(Status::failed_precondition(format!(
                    "volume {id} refused ({check}): {reason}"
                )))
            }
            Err(e) => Err(Status::internal(format!("volume {id}: {e}"))),
        }
    }

    /// Unstages volume `id`: its volume process unmounts, commits and stops.
    pub async fn unstage(&self, id: &str) -> Result<(), Status> {
        check_volume_id(id)?;
        let st = self.inner.staged.lock().await.remove(id);
        if let Some(st) = st {
            let clean = tokio::task::spawn_blocking(move || {
                veil_volume::launch::stop(st.child, STOP_TIMEOUT)
            })
            .await
            .map_err(internal)?;
            tracing::info!(event = "volume_unstaged", volume = %id, clean);
        }
        Ok(())
    }

    /// Binds the staged volume `id` at `target`.
    pub async fn publish(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        check_volume_id(id)?;
        {
            let staged = self.inner.staged.lock().await;
            match staged.get(id) {
                Some(st) if st.staging == staging => {}
                Some(st) => {
                    return Err(Status::failed_precondition(format!(
                        "volume {id} is staged at {}, not {}",
                        st.staging.display(),
                        staging.display()
                    )));
                }
                None => {
                    return Err(Status::failed_precondition(format!(
                        "volume {id} is not staged on this node"
                    )));
                }
            }
        }
        std::fs::create_dir_all(target).map_err(internal)?;
        if is_mount_point(target) {
            return Ok(());
        }
        use nix::mount::{MsFlags, mount};
        mount(
            Some(staging),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| internal(format!("binding {}: {e}", target.display())))?;
        if readonly {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| internal(format!("read-only {}: {e}", target.display())))?;
        }
        tracing::info!(event = "volume_published", volume = %id, target = %target.display(), readonly);
        Ok(())
    }

    /// Unbinds `target`.
    pub async fn unpublish(&self, id: &str, target: &Path) -> Result<(), Status> {
        check_volume_id(id)?;
        if is_mount_point(target) {
            use nix::mount::{MntFlags, umount2};
            umount2(target, MntFlags::empty())
                .or_else(|_| umount2(target, MntFlags::MNT_DETACH))
                .map_err(|e| internal(format!("unmounting {}: {e}", target.display())))?;
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("{}: {e}", target.display()))),
        }
        Ok(())
    }
}

fn required_capability(c: Option<&proto::VolumeCapability>) -> Result<(), Status> {
    let c = c.ok_or_else(|| Status::invalid_argument("volume capability is required"))?;
    check_capability(c).map_err(Status::invalid_argument)
}

fn required_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("volume ID is required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl<K: Keys> crate::node_server::Node for Node<K> {
    async fn node_stage_volume(
        &self,
        r: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        required_id(&r.volume_id)?;
        let staging = path_arg("staging target path", &r.staging_target_path)?;
        required_capability(r.volume_capability.as_ref())?;
        self.stage(&r.volume_id, &staging).await?;
        Ok(Response::new(proto::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        r: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        required_id(&r.volume_id)?;
        path_arg("staging target path", &r.staging_target_path)?;
        self.unstage(&r.volume_id).await?;
        Ok(Response::new(proto::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        r: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        required_id(&r.volume_id)?;
        let staging = path_arg("staging target path", &r.staging_target_path)?;
        let target = path_arg("target path", &r.target_path)?;
        required_capability(r.volume_capability.as_ref())?;
        self.publish(&r.volume_id, &staging, &target, r.readonly)
            .await?;
        Ok(Response::new(proto::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        required_id(&r.volume_id)?;
        let target = path_arg("target path", &r.target_path)?;
        self.unpublish(&r.volume_id, &target).await?;
        Ok(Response::new(proto::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: vec![proto::NodeServiceCapability {
                r#type: Some(nsc::Type::Rpc(nsc::Rpc {
                    r#type: nsc::RpcType::StageUnstageVolume as i32,
                })),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: self.inner.settings.node_id.clone(),
            max_volumes_per_node: 16,
        }))
    }
}

/// The node plugin's sockets in kubelet's directory (`--root-dir`): its CSI endpoint and its
/// registration socket, which kubelet's plugin watcher finds.
pub fn sockets(kubelet_dir: &Path) -> (PathBuf, PathBuf) {
    (
        kubelet_dir.join("plugins").join(DRIVER).join("csi.sock"),
        kubelet_dir
            .join("plugins_registry")
            .join(format!("{DRIVER}-reg.sock")),
    )
}

/// Serves Identity and Node on the CSI endpoint and the registration service next to it,
/// until `stop` resolves; then stops every staged volume.
pub async fn serve<K: Keys>(
    kubelet_dir: &Path,
    node: Node<K>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (endpoint, registration) = sockets(kubelet_dir);
    let csi = crate::bind(&endpoint)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let node_server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(300))
        .add_service(
            crate::IdentityServer::new(crate::Identity {
                name: DRIVER,
                controller: false,
            })
            .max_decoding_message_size(crate::MAX_MESSAGE),
        )
        .add_service(
            crate::NodeServer::new(node.clone()).max_decoding_message_size(crate::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(csi, stopped(rx.clone()));
    // Registration last: kubelet connects to the endpoint as soon as it finds it.
    let reg_server = crate::registration::serve(&registration, &endpoint, DRIVER, stopped(rx));
    tracing::info!(event = "csi_node_serving", endpoint = %endpoint.display(), registration = %registration.display());
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let (a, b) = tokio::join!(node_server, reg_server);
    let _ = std::fs::remove_file(&registration);
    node.stop_all().await;
    a?;
    b?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_must_be_absolute_without_parent_steps() {
        path_arg("p", "/var/lib/kubelet/x").unwrap();
        for bad in ["", "relative/x", "/a/../b"] {
            let e = path_arg("target path", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/surely/not/mounted/here")));
    }
}
