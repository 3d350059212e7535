//! The Controller service, on a control plane: it makes a volume (a backing file in the pool,
//! formatted with the volume's own key, its first anchor recorded by the control plane),
//! deletes one (file and anchor), and attaches a volume to a node only when the control plane
//! says that node may hold it (an attested member, not removed, and no other node holds it).
//! Veil's provisioner and attacher call it in-process; the same object serves CSI gRPC for
//! any other orchestrator and for conformance tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use veil_volume::launch::Launch;
use zeroize::Zeroizing;

use crate::proto::{self, controller_service_capability as csc};
use crate::{DRIVER, backing, check_capability, check_volume_id, volume_id_for};

/// What the controller asks of the control plane.
pub trait Authority: Send + Sync + std::fmt::Debug + 'static {
    /// The key of volume `id` (derived from the master secret; never leaves the control plane
    /// but to the node the volume is attached to).
    fn volume_key(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String>;
    /// Records that `node` holds volume `id`; refused for a node that is not an attested
    /// worker of the cluster, was removed, or while another node holds it.
    fn attach(&self, id: &str, node: &str) -> Result<(), AttachRefused>;
    /// Records that `node` no longer holds volume `id` (nothing if it did not).
    fn detach(&self, id: &str, node: &str) -> Result<(), String>;
    /// Forgets volume `id` (its anchor and attachment): a copy of its file put back later is
    /// refused as unanchored.
    fn forget(&self, id: &str) -> Result<(), String>;
    /// The anchor `veil-volume format` records the new volume's first commit with
    /// (`agent:SOCKET:<id>`).
    fn anchor_for(&self, id: &str) -> String;
}

/// Why a volume is not attached to a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    /// No such node in the cluster.
    #[error("{0}")]
    UnknownNode(String),
    /// The node may not hold it (removed, not a worker, another node holds it).
    #[error("{0}")]
    Refused(String),
}

/// The smallest volume made (ext4 and the volume's journal need room).
pub const MIN_BYTES: i64 = 16 << 20;
/// The size of a volume whose request names none.
pub const DEFAULT_BYTES: i64 = 1 << 30;

/// The Controller service.
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PathBuf,
    binary: PathBuf,
    sha256: String,
    authority: Box<dyn Authority>,
    /// One create or delete at a time (they are rare, and retried by name).
    busy: tokio::sync::Mutex<()>,
}

/// What the pool records of a volume next to its backing file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    name: String,
    capacity_bytes: i64,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The capacity to make for `range`: the required bytes rounded up to a MiB, at least
/// [`MIN_BYTES`], and not above the limit.
pub fn capacity(range: Option<&proto::CapacityRange>) -> Result<i64, Status> {
    let (req, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if req < 0 || limit < 0 {
        return Err(Status::invalid_argument(format!(
            "capacity range: negative bytes (required {req}, limit {limit})"
        )));
    }
    let want = if req == 0 && limit == 0 {
        DEFAULT_BYTES
    } else if req == 0 {
        limit.min(DEFAULT_BYTES)
    } else {
        req
    };
    let mib = 1i64 << 20;
    let rounded = want
        .checked_add(mib - 1)
        .map(|v| v / mib * mib)
        .ok_or_else(|| Status::out_of_range("capacity range: too large"))?
        .max(MIN_BYTES);
    if limit > 0 && rounded > limit {
        return Err(Status::out_of_range(format!(
            "capacity range: {rounded} bytes (at least {MIN_BYTES}, in whole MiB) exceeds the limit of {limit}"
        )));
    }
    Ok(rounded)
}

impl Controller {
    /// A controller making volumes in `pool` with the measured `veil-volume` binary.
    pub fn new(
        pool: PathBuf,
        binary: PathBuf,
        sha256: String,
        authority: Box<dyn Authority>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                binary,
                sha256,
                authority,
                busy: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.inner.pool.join(format!("{id}.json"))
    }

    fn read_manifest(&self, id: &str) -> Option<Manifest> {
        let text = std::fs::read(self.manifest_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Makes the volume for `name` of `bytes` (idempotent: the same name and size gives the
    /// same volume). Returns its ID.
    pub async fn create(&self, name: &str, bytes: i64) -> Result<String, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("CreateVolume: name is empty"));
        }
        let id = volume_id_for(name);
        let _busy = self.inner.busy.lock().await;
        if let Some(m) = self.read_manifest(&id) {
            if m.capacity_bytes != bytes {
                return Err(Status::already_exists(format!(
                    "volume {name} exists with {} bytes, {bytes} asked",
                    m.capacity_bytes
                )));
            }
            return Ok(id);
        }
        std::fs::create_dir_all(&self.inner.pool).map_err(internal)?;
        let key = self
            .inner
            .authority
            .volume_key(&id)
            .map_err(Status::unavailable)?;
        let launch = Launch {
            binary: self.inner.binary.clone(),
            sha256: self.inner.sha256.clone(),
            backing: backing(&self.inner.pool, &id),
            anchor: self.inner.authority.anchor_for(&id),
            log: self.inner.pool.join(format!("{id}.format.log")),
        };
        let mib = u64::try_from(bytes >> 20).map_err(internal)?;
        tokio::task::spawn_blocking(move || launch.format(mib, &key))
            .await
            .map_err(internal)?
            .map_err(|e| Status::internal(format!("formatting {id}: {e}")))?;
        let manifest = serde_json::to_vec(&Manifest {
            name: name.to_string(),
            capacity_bytes: bytes,
        })
        .map_err(internal)?;
        let path = self.manifest_path(&id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, manifest)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(internal)?;
        let _ = std::fs::remove_file(self.inner.pool.join(format!("{id}.format.log")));
        tracing::info!(event = "volume_created", volume = %id, name = %name, bytes);
        Ok(id)
    }

    /// Deletes volume `id`: its backing file, its record and its anchor (idempotent).
    pub async fn delete(&self, id: &str) -> Result<(), Status> {
        check_volume_id(id)?;
        let _busy = self.inner.busy.lock().await;
        for path in [backing(&self.inner.pool, id), self.manifest_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(format!("{}: {e}", path.display()))),
            }
        }
        self.inner
            .authority
            .forget(id)
            .map_err(Status::unavailable)?;
        tracing::info!(event = "volume_deleted", volume = %id);
        Ok(())
    }

    fn exists(&self, id: &str) -> Result<(), Status> {
        check_volume_id(id)?;
        if self.read_manifest(id).is_none() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        Ok(())
    }

    /// Attaches volume `id` to `node`, if the control plane allows it.
    pub fn attach(&self, id: &str, node: &str) -> Result<(), Status> {
        self.exists(id)?;
        if node.is_empty() {
            return Err(Status::invalid_argument("node ID is empty"));
        }
        self.inner.authority.attach(id, node).map_err(|refused| {
            tracing::warn!(event = "volume_attach_refused", volume = %id, node = %node, reason = %refused);
            match refused {
                AttachRefused::UnknownNode(r) => Status::not_found(r),
                AttachRefused::Refused(r) => Status::failed_precondition(r),
            }
        })
    }

    /// Detaches volume `id` from `node`.
    pub fn detach(&self, id: &str, node: &str) -> Result<(), Status> {
        check_volume_id(id)?;
        self.inner
            .authority
            .detach(id, node)
            .map_err(Status::unavailable)
    }
}

fn caps(list: &[csc::RpcType]) -> Vec<proto::ControllerServiceCapability> {
    list.iter()
        .map(|t| proto::ControllerServiceCapability {
            r#type: Some(csc::Type::Rpc(csc::Rpc { r#type: *t as i32 })),
        })
        .collect()
}

fn check_capabilities(list: &[proto::VolumeCapability]) -> Result<(), Status> {
    if list.is_empty() {
        return Err(Status::invalid_argument("no volume capabilities"));
    }
    for c in list {
        check_capability(c).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl crate::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        r: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let r = r.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("CreateVolume: name is empty"));
        }
        check_capabilities(&r.volume_capabilities)?;
        if r.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "CreateVolume: volumes from snapshots or clones are not offered",
            ));
        }
        let bytes = capacity(r.capacity_range.as_ref())?;
        let id = self.create(&r.name, bytes).await?;
        Ok(Response::new(proto::CreateVolumeResponse {
            volume: Some(proto::Volume {
                capacity_bytes: bytes,
                volume_id: id,
                volume_context: Default::default(),
            }),
        }))
    }

    async fn delete_volume(
        &self,
        r: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let id = r.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("DeleteVolume: volume ID is empty"));
        }
        // A volume ID this driver never made names nothing to delete.
        if check_volume_id(&id).is_ok() {
            self.delete(&id).await?;
        }
        Ok(Response::new(proto::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        r: Request<proto::ControllerPublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.node_id.is_empty() {
            return Err(Status::invalid_argument(
                "ControllerPublishVolume: volume ID and node ID are required",
            ));
        }
        let cap = r.volume_capability.as_ref().ok_or_else(|| {
            Status::invalid_argument("ControllerPublishVolume: no volume capability")
        })?;
        check_capability(cap).map_err(Status::invalid_argument)?;
        self.attach(&r.volume_id, &r.node_id)?;
        Ok(Response::new(proto::ControllerPublishVolumeResponse {
            publish_context: Default::default(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        r: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument(
                "ControllerUnpublishVolume: volume ID is required",
            ));
        }
        if check_volume_id(&r.volume_id).is_ok() {
            self.detach(&r.volume_id, &r.node_id)?;
        }
        Ok(Response::new(proto::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<proto::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<proto::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument(
                "ValidateVolumeCapabilities: volume ID is required",
            ));
        }
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument(
                "ValidateVolumeCapabilities: no volume capabilities",
            ));
        }
        self.exists(&r.volume_id)?;
        let unsupported = r
            .volume_capabilities
            .iter()
            .find_map(|c| check_capability(c).err());
        let response = match unsupported {
            Some(message) => proto::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => proto::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse {
            capabilities: caps(&[
                csc::RpcType::CreateDeleteVolume,
                csc::RpcType::PublishUnpublishVolume,
            ]),
        }))
    }
}

/// Serves Identity and Controller on the unix socket `path` until `stop` resolves.
pub async fn serve(
    path: &std::path::Path,
    controller: Controller,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let incoming = crate::bind(path)?;
    tracing::info!(event = "csi_controller_serving", socket = %path.display(), driver = DRIVER);
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(300))
        .add_service(
            crate::IdentityServer::new(crate::Identity {
                name: DRIVER,
                controller: true,
            })
            .max_decoding_message_size(crate::MAX_MESSAGE),
        )
        .add_service(
            crate::ControllerServer::new(controller).max_decoding_message_size(crate::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn capacity_is_rounded_bounded_and_defaulted() {
        let r = |required_bytes, limit_bytes| proto::CapacityRange {
            required_bytes,
            limit_bytes,
        };
        assert_eq!(capacity(None).unwrap(), DEFAULT_BYTES);
        assert_eq!(capacity(Some(&r(1, 0))).unwrap(), MIN_BYTES);
        assert_eq!(capacity(Some(&r(100 << 20, 0))).unwrap(), 100 << 20);
        assert_eq!(capacity(Some(&r((100 << 20) + 1, 0))).unwrap(), 101 << 20);
        assert_eq!(capacity(Some(&r(0, 64 << 20))).unwrap(), 64 << 20);
        let e = capacity(Some(&r(1, 1 << 20))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("exceeds the limit"), "{}", e.message());
        assert_eq!(
            capacity(Some(&r(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            capacity(Some(&r(i64::MAX, 0))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
    }
}
