//! The CAS's secrets driver (`cas.veil.dev`): a pod asks for its configuration with an inline
//! ephemeral volume,
//!
//! ```yaml
//! volumes:
//!   - name: config
//!     csi:
//!       driver: cas.veil.dev
//!       volumeAttributes: {session: acme, service: api}
//! ```
//!
//! and finds, where it mounts it, the service's files at their paths (`/run/secrets/db` as
//! `<mount>/run/secrets/db`), its environment as `environment` (`NAME=value` lines) and its
//! arguments as `command` (one a line). Nothing comes through the Kubernetes API: the volume
//! is a tmpfs of this node, filled from the CAS's release and mounted read-only.
//!
//! Who the pod is comes from kubelet (the pod's name, namespace, UID and service account,
//! which the `CSIDriver`'s `podInfoOnMount` makes it pass) and is checked by the releaser
//! (against the API server, the container runtime's images, the node's TPM and the CAS);
//! the volume's attributes only say what the pod asks for.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::node::{internal, path_arg};
use crate::proto;

/// The pod a volume is for, as kubelet names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its service account.
    pub service_account: String,
}

/// What a volume holds: files by path relative to its root.
pub type Contents = Vec<(String, Vec<u8>)>;

/// Gets a pod's configuration from the CAS.
pub trait Releaser: Send + Sync + std::fmt::Debug + 'static {
    /// The contents of the volume for `pod`, asking for `service` of `session`; an error
    /// names why it was refused.
    fn release(
        &self,
        pod: &PodRef,
        session: &str,
        service: &str,
    ) -> impl Future<Output = Result<Contents, String>> + Send;
}

/// The largest a secrets volume may be.
pub const MAX_VOLUME: usize = 4 << 20;

/// The secrets driver's node service.
#[derive(Debug)]
pub struct SecretsNode<R> {
    node_id: String,
    releaser: Arc<R>,
}

impl<R> Clone for SecretsNode<R> {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            releaser: self.releaser.clone(),
        }
    }
}

fn attr<'a>(ctx: &'a proto::Map, key: &str) -> Result<&'a str, Status> {
    ctx.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "volume attribute {key} is required (an inline volume of a CSIDriver with podInfoOnMount)"
            ))
        })
}

/// Where a release's file goes in the volume: its absolute path, without the leading `/`.
fn relative(path: &str) -> Result<PathBuf, Status> {
    let p = Path::new(path);
    let rel = p
        .strip_prefix("/")
        .map_err(|_| Status::internal(format!("file path {path:?} is not absolute")))?;
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Status::internal(format!(
            "file path {path:?} is not a plain path"
        )));
    }
    Ok(rel.to_path_buf())
}

/// Mounts a tmpfs at `target`, writes `contents`, and makes it read-only.
fn fill(target: &Path, contents: &Contents) -> Result<(), Status> {
    use nix::mount::{MsFlags, mount};
    use std::os::unix::fs::PermissionsExt;
    let total: usize = contents.iter().map(|(_, b)| b.len()).sum();
    if total > MAX_VOLUME {
        return Err(Status::resource_exhausted(format!(
            "the configuration is {total} bytes, at most {MAX_VOLUME}"
        )));
    }
    std::fs::create_dir_all(target).map_err(|e| internal(format!("{}: {e}", target.display())))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let size = format!("size={},mode=0755", MAX_VOLUME + (1 << 20));
    mount(
        Some("veil-cas"),
        target,
        Some("tmpfs"),
        flags,
        Some(size.as_str()),
    )
    .map_err(|e| internal(format!("mounting a tmpfs at {}: {e}", target.display())))?;
    let written = (|| -> Result<(), Status> {
        for (path, bytes) in contents {
            let rel = relative(path)?;
            let dest = target.join(&rel);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| internal(format!("{}: {e}", d.display())))?;
            }
            std::fs::write(&dest, bytes)
                .map_err(|e| internal(format!("{}: {e}", dest.display())))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o444))
                .map_err(|e| internal(format!("{}: {e}", dest.display())))?;
        }
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| internal(format!("remounting {} read-only: {e}", target.display())))
    })();
    if written.is_err() {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
    written
}

impl<R: Releaser> SecretsNode<R> {
    /// The node service of node `node_id`, releasing through `releaser`.
    pub fn new(node_id: &str, releaser: R) -> Self {
        Self {
            node_id: node_id.to_string(),
            releaser: Arc::new(releaser),
        }
    }

    /// Fills the volume at `target` for the pod and service `ctx` names.
    pub async fn publish(&self, target: &Path, ctx: &proto::Map) -> Result<(), Status> {
        if ctx.get("csi.storage.k8s.io/ephemeral").map(String::as_str) != Some("true") {
            return Err(Status::invalid_argument(
                "cas.veil.dev serves inline ephemeral volumes only",
            ));
        }
        if crate::node::is_mount_point(target) {
            return Ok(());
        }
        let pod = PodRef {
            namespace: attr(ctx, "csi.storage.k8s.io/pod.namespace")?.to_string(),
            name: attr(ctx, "csi.storage.k8s.io/pod.name")?.to_string(),
            uid: attr(ctx, "csi.storage.k8s.io/pod.uid")?.to_string(),
            service_account: attr(ctx, "csi.storage.k8s.io/serviceAccount.name")?.to_string(),
        };
        let session = attr(ctx, "session")?;
        let service = attr(ctx, "service")?;
        let contents = self
            .releaser
            .release(&pod, session, service)
            .await
            .map_err(|why| {
                tracing::warn!(event = "cas_volume_refused", pod = %format!("{}/{}", pod.namespace, pod.name), %session, %service, reason = %why);
                Status::permission_denied(format!("the CAS refused {session}/{service}: {why}"))
            })?;
        let target = target.to_path_buf();
        tokio::task::spawn_blocking(move || fill(&target, &contents))
            .await
            .map_err(internal)??;
        tracing::info!(event = "cas_volume_published", pod = %format!("{}/{}", pod.namespace, pod.name), %session, %service);
        Ok(())
    }

    /// Unmounts and removes the volume at `target`.
    pub fn unpublish(target: &Path) -> Result<(), Status> {
        if crate::node::is_mount_point(target) {
            use nix::mount::{MntFlags, umount2};
            umount2(target, MntFlags::empty())
                .or_else(|_| umount2(target, MntFlags::MNT_DETACH))
                .map_err(|e| internal(format!("unmounting {}: {e}", target.display())))?;
        }
        match std::fs::remove_dir(target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(format!("{}: {e}", target.display()))),
        }
    }
}

#[tonic::async_trait]
impl<R: Releaser> crate::node_server::Node for SecretsNode<R> {
    async fn node_stage_volume(
        &self,
        _: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("cas.veil.dev volumes are not staged"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("cas.veil.dev volumes are not staged"))
    }

    async fn node_publish_volume(
        &self,
        r: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let target = path_arg("target path", &r.target_path)?;
        self.publish(&target, &r.volume_context).await?;
        Ok(Response::new(proto::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let target = path_arg("target path", &r.target_path)?;
        Self::unpublish(&target)?;
        Ok(Response::new(proto::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
        }))
    }
}

/// The secrets driver's sockets in kubelet's directory.
pub fn sockets(kubelet_dir: &Path) -> (PathBuf, PathBuf) {
    let d = crate::SECRETS_DRIVER;
    (
        kubelet_dir.join("plugins").join(d).join("csi.sock"),
        kubelet_dir
            .join("plugins_registry")
            .join(format!("{d}-reg.sock")),
    )
}

/// Serves Identity and Node for `cas.veil.dev` and its registration with kubelet, until
/// `stop` resolves.
pub async fn serve<R: Releaser>(
    kubelet_dir: &Path,
    node: SecretsNode<R>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (endpoint, registration) = sockets(kubelet_dir);
    let csi = crate::bind(&endpoint)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(120))
        .add_service(
            crate::IdentityServer::new(crate::Identity {
                name: crate::SECRETS_DRIVER,
                controller: false,
            })
            .max_decoding_message_size(crate::MAX_MESSAGE),
        )
        .add_service(crate::NodeServer::new(node).max_decoding_message_size(crate::MAX_MESSAGE))
        .serve_with_incoming_shutdown(csi, stopped(rx.clone()));
    let reg =
        crate::registration::serve(&registration, &endpoint, crate::SECRETS_DRIVER, stopped(rx));
    tracing::info!(event = "cas_csi_serving", endpoint = %endpoint.display());
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let (a, b) = tokio::join!(server, reg);
    let _ = std::fs::remove_file(&registration);
    a?;
    b?;
    Ok(())
}

/// The volume's contents for a release: its files at their paths, `environment` and
/// `command`.
pub fn contents(
    files: impl IntoIterator<Item = (String, Vec<u8>)>,
    environment: &std::collections::BTreeMap<String, String>,
    command: &[String],
) -> Contents {
    let mut out: Contents = files.into_iter().collect();
    if !environment.is_empty() {
        let env: String = environment
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        out.push(("/environment".into(), env.into_bytes()));
    }
    if !command.is_empty() {
        let cmd: String = command.iter().map(|a| format!("{a}\n")).collect();
        out.push(("/command".into(), cmd.into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_plain_absolute_paths_go_into_the_volume() {
        assert_eq!(
            relative("/run/secrets/db").unwrap(),
            PathBuf::from("run/secrets/db")
        );
        for bad in ["run/x", "/", "/a/../b"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }
}
