//! Persistent volumes through the API, kept by the control plane: the CSIDriver and the
//! default StorageClass, a provisioner (a PVC of the class gets a volume and its PV; a
//! released PV is deleted with its volume) and an attacher (a VolumeAttachment is attached
//! only if the control plane allows that node to hold the volume; its refusal is the
//! attachment's error). The CSI sidecars that usually do this (external-provisioner,
//! external-attacher) are Go programs of their own; the provisioner's module is not served by
//! the module proxy here, so both loops are written against the API with kube-rs and call the
//! driver's controller in-process.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use veil_csi::DRIVER;
use veil_csi::controller::{Controller, capacity};

use crate::addons::apply;

/// The StorageClass Veil makes (the cluster's default).
pub const STORAGE_CLASS: &str = "veil-encrypted";
/// The finalizer the attacher keeps on the VolumeAttachments it attached.
pub const ATTACHER_FINALIZER: &str = "veil.dev/attacher";
/// The annotation naming who provisioned a PV.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Applies the CSIDriver (attachment required: the control plane decides which node holds a
/// volume) and the default StorageClass.
pub async fn apply_driver(client: &Client) -> anyhow::Result<()> {
    apply(
        Api::<CSIDriver>::all(client.clone()),
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": DRIVER},
            "spec": {"attachRequired": true, "podInfoOnMount": false, "volumeLifecycleModes": ["Persistent"], "fsGroupPolicy": "File"}
        }),
    )
    .await?;
    // The CAS's secrets: inline volumes only, kubelet naming the pod (podInfoOnMount).
    apply(
        Api::<CSIDriver>::all(client.clone()),
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": veil_csi::SECRETS_DRIVER},
            "spec": {"attachRequired": false, "podInfoOnMount": true, "volumeLifecycleModes": ["Ephemeral"], "fsGroupPolicy": "None", "requiresRepublish": false}
        }),
    )
    .await?;
    apply(
        Api::<StorageClass>::all(client.clone()),
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "parameters": {"csi.storage.k8s.io/fstype": "ext4"}
        }),
    )
    .await
}

/// Parses a Kubernetes quantity of bytes (`64Mi`, `1G`, `1500`); none for other forms.
pub fn bytes_of(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (digits, suffix) = q.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let mult: i64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// What a round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VolumeSync {
    /// PVs created (by name).
    pub provisioned: Vec<String>,
    /// PVs deleted with their volumes.
    pub deleted: Vec<String>,
    /// VolumeAttachments attached.
    pub attached: Vec<String>,
    /// VolumeAttachments refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// VolumeAttachments detached.
    pub detached: Vec<String>,
}

/// One round: provision pending claims of Veil's classes, delete released volumes, attach and
/// detach. `refused_before` holds the attachments already refused with a reason (not
/// reported again unless the reason changes).
pub async fn reconcile(
    client: &Client,
    controller: &Controller,
    refused_before: &mut BTreeMap<String, String>,
) -> anyhow::Result<VolumeSync> {
    let mut sync = VolumeSync::default();
    let classes: BTreeSet<String> = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|c| c.provisioner == DRIVER)
        .map(|c| c.name_any())
        .collect();
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let existing: BTreeMap<String, PersistentVolume> = pvs
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    for pvc in Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let Some(spec) = &pvc.spec else { continue };
        let class = spec.storage_class_name.clone().unwrap_or_default();
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if !classes.contains(&class)
            || !pending
            || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
            || pvc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(uid) = pvc.metadata.uid.clone() else {
            continue;
        };
        let name = format!("pvc-{uid}");
        if existing.contains_key(&name) {
            continue;
        }
        let requested = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        let Some(req) = bytes_of(&requested) else {
            tracing::warn!(event = "volume_not_provisioned", claim = %pvc.name_any(), requested = %requested, reason = "the requested storage is not a quantity of bytes");
            continue;
        };
        let limit = spec
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| bytes_of(&q.0))
            .unwrap_or(0);
        let bytes = capacity(Some(&veil_csi::proto::CapacityRange {
            required_bytes: req,
            limit_bytes: limit,
        }))
        .map_err(|s| anyhow::anyhow!("{}: {}", pvc.name_any(), s.message()))?;
        let id = controller.create(&name, bytes).await.map_err(|s| {
            anyhow::anyhow!("creating the volume of {}: {}", pvc.name_any(), s.message())
        })?;
        let modes = spec
            .access_modes
            .clone()
            .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: DRIVER}},
            "spec": {
                "capacity": {"storage": bytes.to_string()},
                "accessModes": modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": class,
                "volumeMode": "Filesystem",
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
                "csi": {"driver": DRIVER, "volumeHandle": id, "fsType": "ext4"}
            }
        }))?;
        pvs.create(&PostParams::default(), &pv).await?;
        tracing::info!(event = "volume_provisioned", claim = %pvc.name_any(), pv = %name, volume = %id, bytes);
        sync.provisioned.push(name);
    }
    for (name, pv) in &existing {
        let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(DRIVER);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let spec = pv.spec.as_ref();
        let delete =
            spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        let handle = spec
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.volume_handle.clone());
        if !(ours && released && delete) {
            continue;
        }
        let Some(handle) = handle else { continue };
        controller
            .delete(&handle)
            .await
            .map_err(|s| anyhow::anyhow!("deleting {handle}: {}", s.message()))?;
        pvs.delete(name, &DeleteParams::default()).await?;
        tracing::info!(event = "volume_deleted", pv = %name, volume = %handle);
        sync.deleted.push(name.clone());
    }
    attach_round(client, controller, &existing, refused_before, &mut sync).await?;
    Ok(sync)
}

async fn attach_round(
    client: &Client,
    controller: &Controller,
    pvs: &BTreeMap<String, PersistentVolume>,
    refused_before: &mut BTreeMap<String, String>,
    sync: &mut VolumeSync,
) -> anyhow::Result<()> {
    let api = Api::<VolumeAttachment>::all(client.clone());
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    for va in api.list(&ListParams::default()).await? {
        if va.spec.attacher != DRIVER {
            continue;
        }
        let name = va.name_any();
        let node = va.spec.node_name.clone();
        let pv = va
            .spec
            .source
            .persistent_volume_name
            .clone()
            .unwrap_or_default();
        // The volume: from its PV, which may already be gone when the attachment is deleted.
        let handle = pvs
            .get(&pv)
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.volume_handle.clone());
        let finalizers = va.finalizers().to_vec();
        let ours = finalizers.iter().any(|f| f == ATTACHER_FINALIZER);
        if va.metadata.deletion_timestamp.is_some() {
            if !ours {
                continue;
            }
            if let Some(h) = &handle {
                controller
                    .detach(h, &node)
                    .map_err(|s| anyhow::anyhow!("detaching {h} from {node}: {}", s.message()))?;
            }
            let rest: Vec<String> = finalizers
                .into_iter()
                .filter(|f| f != ATTACHER_FINALIZER)
                .collect();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
            )
            .await?;
            refused_before.remove(&name);
            tracing::info!(event = "volume_detached", attachment = %name, node = %node);
            sync.detached.push(name);
            continue;
        }
        let attached = va.status.as_ref().is_some_and(|s| s.attached);
        if attached {
            continue;
        }
        let Some(handle) = handle else {
            continue;
        };
        if !ours {
            let mut all = finalizers.clone();
            all.push(ATTACHER_FINALIZER.into());
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": all}})),
            )
            .await?;
        }
        match controller.attach(&handle, &node) {
            Ok(()) => {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"attached": true, "attachError": null}})),
                )
                .await?;
                refused_before.remove(&name);
                tracing::info!(event = "volume_attached", attachment = %name, volume = %handle, node = %node);
                sync.attached.push(name);
            }
            Err(s) => {
                let reason = s.message().to_string();
                if refused_before.get(&name) != Some(&reason) {
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"attached": false, "attachError": {"message": reason, "time": now}}})),
                    )
                    .await?;
                    refused_before.insert(name.clone(), reason.clone());
                    sync.refused.push((name, reason));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantities_of_bytes() {
        assert_eq!(bytes_of("64Mi"), Some(64 << 20));
        assert_eq!(bytes_of("1Gi"), Some(1 << 30));
        assert_eq!(bytes_of("100M"), Some(100_000_000));
        assert_eq!(bytes_of("4096"), Some(4096));
        assert_eq!(bytes_of("1.5Gi"), None);
        assert_eq!(bytes_of("Mi"), None);
        assert_eq!(bytes_of("9999999999Ti"), None);
        assert_eq!(bytes_of("1m"), None);
    }
}
