//! Veil's CSI driver: Kubernetes persistent volumes on `veil-volume`.
//!
//! A volume is a backing file in a disk pool every node can reach (the stand-in for a cloud's
//! block store), sealed block by block with AES-256-GCM under a key of its own that the
//! control plane derives from the cluster's master secret. The [`controller`] service (on the
//! control plane) formats and deletes volumes and decides which node a volume is attached
//! to: only an attested member of the cluster, never a removed one, and one node at a time.
//! The [`node`] service (on each worker, registered with kubelet through its plugin
//! registration) fetches a volume's key over attested TLS at stage time, which the control
//! plane releases only to the node the volume is attached to, runs `veil-volume` on it with
//! ext4 at the staging path, and binds it into pods. A volume's freshness anchor is kept by
//! the control plane, so a volume that follows its pod to another node is still checked
//! against its latest commit.

pub mod controller;
pub mod node;
pub mod proto;
pub mod registration;
pub mod secrets;

include!(concat!(env!("OUT_DIR"), "/csi.v1.Identity.rs"));
include!(concat!(env!("OUT_DIR"), "/csi.v1.Controller.rs"));
include!(concat!(env!("OUT_DIR"), "/csi.v1.Node.rs"));
include!(concat!(
    env!("OUT_DIR"),
    "/pluginregistration.Registration.rs"
));

pub use controller_server::ControllerServer;
pub use identity_server::IdentityServer;
pub use node_server::NodeServer;

use sha2::Digest;
use tonic::{Request, Response, Status};

/// The driver's name (in StorageClasses, PersistentVolumes, CSINode).
pub const DRIVER: &str = "volume.veil.dev";
/// The CAS's secrets driver: inline ephemeral volumes holding a workload's configuration.
pub const SECRETS_DRIVER: &str = "cas.veil.dev";

/// The ID of the volume created for `name` (what the provisioner asks for: `pvc-<uid>`):
/// `v-` and 32 hex digits of its SHA-256, so a retried request finds the same volume.
pub fn volume_id_for(name: &str) -> String {
    let d = sha2::Sha256::digest(name.as_bytes());
    format!("v-{}", hex::encode(d.get(..16).unwrap_or_default()))
}

/// Checks a volume ID is one this driver makes (it names files in the pool and keys).
pub fn check_volume_id(id: &str) -> Result<(), Status> {
    if veil_wire::ids::is_volume_id(id) {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "volume ID {:?}: expected v- and 32 lowercase hex digits",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// The backing file of volume `id` in `pool`.
pub fn backing(pool: &std::path::Path, id: &str) -> std::path::PathBuf {
    pool.join(format!("{id}.vol"))
}

/// The Identity service: the driver's name, and whether it serves the controller.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The driver's name.
    pub name: &'static str,
    /// Whether this endpoint also serves the Controller service.
    pub controller: bool,
}

#[tonic::async_trait]
impl identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: self.name.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        use proto::plugin_capability::{Service, ServiceType, Type};
        let capabilities = if self.controller {
            vec![proto::PluginCapability {
                r#type: Some(Type::Service(Service {
                    r#type: ServiceType::ControllerService as i32,
                })),
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        Ok(Response::new(proto::ProbeResponse { ready: Some(true) }))
    }
}

/// Binds a unix socket for gRPC (replacing a stale one), owner-only.
pub fn bind(path: &std::path::Path) -> std::io::Result<tokio_stream::wrappers::UnixListenerStream> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(l))
}

/// The largest request either endpoint decodes.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// What an access mode allows: a single node (writer or reader) only; a volume is opened by
/// one `veil-volume` process at a time.
pub fn check_capability(c: &proto::VolumeCapability) -> Result<(), String> {
    use proto::volume_capability::{AccessType, Mode};
    match &c.access_type {
        Some(AccessType::Mount(m)) if m.fs_type.is_empty() || m.fs_type == "ext4" => {}
        Some(AccessType::Mount(m)) => {
            return Err(format!(
                "file system {:?}: this driver formats ext4 only",
                m.fs_type
            ));
        }
        Some(AccessType::Block(_)) => {
            return Err("raw block volumes are not offered (ext4 mounts only)".into());
        }
        None => return Err("the capability names no access type".into()),
    }
    let mode = c
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => Ok(()),
        other => Err(format!(
            "access mode {other:?}: a volume is opened on one node at a time"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn volume_ids_are_stable_and_checked() {
        let a = volume_id_for("pvc-1");
        assert_eq!(a, volume_id_for("pvc-1"));
        assert_ne!(a, volume_id_for("pvc-2"));
        check_volume_id(&a).unwrap();
        for bad in [
            "",
            "v-",
            "../etc",
            &a[..33],
            &a.to_uppercase(),
            "v-../../../../etc/passwd00",
        ] {
            assert!(check_volume_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_single_node_ext4_mounts_are_accepted() {
        use proto::volume_capability::{AccessMode, AccessType, BlockVolume, Mode, MountVolume};
        let cap = |access: AccessType, mode: Mode| proto::VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        };
        let mount = |fs: &str| {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })
        };
        check_capability(&cap(mount(""), Mode::SingleNodeWriter)).unwrap();
        check_capability(&cap(mount("ext4"), Mode::SingleNodeReaderOnly)).unwrap();
        let e = check_capability(&cap(mount("xfs"), Mode::SingleNodeWriter)).unwrap_err();
        assert!(e.contains("xfs"), "{e}");
        let e = check_capability(&cap(mount(""), Mode::MultiNodeMultiWriter)).unwrap_err();
        assert!(e.contains("MultiNodeMultiWriter"), "{e}");
        let e = check_capability(&cap(
            AccessType::Block(BlockVolume {}),
            Mode::SingleNodeWriter,
        ))
        .unwrap_err();
        assert!(e.contains("block"), "{e}");
    }
}
