//! Persistent volumes: which node holds each (its attachment), each volume's freshness anchor,
//! and its key. The CSI controller on this control plane attaches a volume only to an admitted
//! worker that was not removed, one at a time; the key goes only to the node it is attached
//! to, on a connection that attests it afresh; and only that node reads or advances the
//! anchor, which never moves back.
//!
//! The attachments and anchors are public (a generation and a digest reveal nothing of the
//! data) and are kept in the control plane's state file. That file is the host's: the host can
//! put back an older one, and with it older anchors (recorded in the closing notes as a
//! limit; the anchors belong in etcd on the control planes' state volumes).

use std::collections::BTreeMap;

use veil_keys::KeyId;
use veil_wire::proto::{Response, SecretHex, VolumeCommit};
use zeroize::Zeroizing;

use super::{Caller, ControlPlane, refused, unavailable};

/// Why a volume is not attached to a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    /// No node of that name was admitted here.
    #[error("{0}")]
    UnknownNode(String),
    /// The node may not hold it.
    #[error("{0}")]
    Refused(String),
}

/// What the control plane records of a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeRecord {
    /// The node it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<String>,
    /// Its latest commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<VolumeCommit>,
}

/// Volumes by ID.
pub type Volumes = BTreeMap<String, VolumeRecord>;

fn check_id(id: &str) -> Result<(), String> {
    if veil_wire::ids::is_volume_id(id) {
        Ok(())
    } else {
        Err(format!(
            "volume ID {:?}: expected v- and 32 lowercase hex digits",
            id.chars().take(40).collect::<String>()
        ))
    }
}

fn check_commit(c: &VolumeCommit) -> Result<(), String> {
    if c.digest.len() != 64 || !c.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a commit's digest is 64 hex digits".into());
    }
    Ok(())
}

/// Whether `to` may replace `current`: a newer generation, or the same commit again.
fn forward(current: Option<&VolumeCommit>, to: &VolumeCommit) -> Result<(), String> {
    match current {
        Some(c) if to.generation < c.generation => Err(format!(
            "the anchor is at generation {}; generation {} is older",
            c.generation, to.generation
        )),
        Some(c) if to.generation == c.generation && !to.digest.eq_ignore_ascii_case(&c.digest) => {
            Err(format!(
                "the anchor holds another commit at generation {}",
                c.generation
            ))
        }
        _ => Ok(()),
    }
}

impl ControlPlane {
    /// The key of volume `id`, for this control plane's own CSI controller (formatting).
    pub fn volume_key_local(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        check_id(id)?;
        let st = self.lock_state()?;
        let secrets = st
            .secrets
            .as_ref()
            .ok_or("the control plane awaits recovery (veil recover)")?;
        let key = secrets
            .derive(&KeyId::volume(id).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(Zeroizing::new(*key.expose()))
    }

    /// Attaches volume `id` to `node`: an admitted worker, not removed, and the volume held by
    /// no other node that is still a member. Refusals are recorded for the report.
    pub fn attach_volume(&self, id: &str, node: &str) -> Result<(), AttachRefused> {
        check_id(id).map_err(AttachRefused::Refused)?;
        let mut st = self.lock_state().map_err(AttachRefused::Refused)?;
        let refusal = if st.removed.contains(node) {
            Some(AttachRefused::Refused(format!(
                "{node} was removed from the cluster by its owner: it holds no volume"
            )))
        } else {
            match st.nodes.get(node) {
                None => Some(AttachRefused::UnknownNode(format!(
                    "{node} is not a node this control plane admitted"
                ))),
                Some(n) if n.role != "worker" => Some(AttachRefused::Refused(format!(
                    "{node} joined as `{}`; volumes attach to workers",
                    n.role
                ))),
                Some(_) => match st.volumes.get(id).and_then(|v| v.attached.clone()) {
                    Some(other) if other != node && !st.removed.contains(&other) => {
                        Some(AttachRefused::Refused(format!(
                            "volume {id} is attached to {other}; it is opened on one node at a time"
                        )))
                    }
                    _ => None,
                },
            }
        };
        if let Some(refusal) = refusal {
            drop(st);
            let reason = refusal.to_string();
            tracing::warn!(event = "volume_attach_refused", volume = %id, node = %node, %reason);
            self.refuse(
                "csi-controller",
                None,
                "volume_attach",
                &format!("volume_attach: {reason}"),
            );
            return Err(refusal);
        }
        let v = st.volumes.entry(id.to_string()).or_default();
        if v.attached.as_deref() != Some(node) {
            v.attached = Some(node.to_string());
            tracing::info!(event = "volume_attached", volume = %id, node = %node);
            self.persist(st);
        }
        Ok(())
    }

    /// Detaches volume `id` from `node` (nothing if another node, or none, holds it).
    pub fn detach_volume(&self, id: &str, node: &str) -> Result<(), String> {
        check_id(id)?;
        let mut st = self.lock_state()?;
        if let Some(v) = st.volumes.get_mut(id)
            && v.attached.as_deref() == Some(node)
        {
            v.attached = None;
            tracing::info!(event = "volume_detached", volume = %id, node = %node);
            self.persist(st);
        }
        Ok(())
    }

    /// Forgets volume `id` (deleted): its attachment and anchor.
    pub fn forget_volume(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        let mut st = self.lock_state()?;
        if st.volumes.remove(id).is_some() {
            self.persist(st);
        }
        Ok(())
    }

    /// Reads or advances volume `id`'s anchor on behalf of this control plane's own CSI
    /// controller (which formats volumes; no node holds them then).
    pub fn volume_anchor_local(
        &self,
        id: &str,
        advance: Option<VolumeCommit>,
    ) -> Result<Option<VolumeCommit>, String> {
        check_id(id)?;
        let mut st = self.lock_state()?;
        let current = st.volumes.get(id).and_then(|v| v.anchor.clone());
        let Some(to) = advance else {
            return Ok(current);
        };
        check_commit(&to)?;
        forward(current.as_ref(), &to)?;
        st.volumes.entry(id.to_string()).or_default().anchor = Some(to);
        self.persist(st);
        Ok(None)
    }

    /// `volume_key`: the key of a volume attached to the caller.
    pub(super) fn volume_key(
        &self,
        caller: &mut Caller<'_>,
        id: &str,
        node_cert: &str,
    ) -> Response {
        let op = "volume_key";
        let node = match self.holder(caller, id, node_cert, op) {
            Ok(n) => n,
            Err(r) => return r,
        };
        match self.volume_key_local(id) {
            Ok(key) => {
                tracing::info!(event = "volume_key_released", node = %node, volume = %id);
                Response::Key {
                    key_id: format!("{}{id}", veil_wire::ids::KEY_VOLUME_PREFIX),
                    key: SecretHex::encode(key.as_ref()),
                }
            }
            Err(e) => unavailable(format!("{op}: {e}")),
        }
    }

    /// `volume_anchor`: the anchor of a volume attached to the caller, read or advanced.
    pub(super) fn volume_anchor(
        &self,
        caller: &mut Caller<'_>,
        id: &str,
        node_cert: &str,
        advance: Option<VolumeCommit>,
    ) -> Response {
        let op = "volume_anchor";
        let node = match self.holder(caller, id, node_cert, op) {
            Ok(n) => n,
            Err(r) => return r,
        };
        let advancing = advance.as_ref().map(|c| c.generation);
        match self.volume_anchor_local(id, advance) {
            Ok(anchored) => Response::VolumeAnchor { anchored },
            Err(e) => {
                tracing::warn!(event = "volume_anchor_refused", node = %node, volume = %id, requested = ?advancing, reason = %e);
                refused(format!("{op}: volume {id}: {e}"))
            }
        }
    }

    /// The attested worker asking about volume `id`, if the volume is attached to it.
    fn holder(
        &self,
        caller: &mut Caller<'_>,
        id: &str,
        node_cert: &str,
        op: &str,
    ) -> Result<String, Response> {
        if let Err(e) = check_id(id) {
            return Err(refused(format!("{op}: {e}")));
        }
        let st = self
            .lock_state()
            .map_err(|e| refused(format!("{op}: {e}")))?;
        let node = self.authenticate(&st, caller, node_cert, op)?;
        if node.role != "worker" {
            return Err(refused(format!(
                "{op}: volumes attach to workers; {} joined as `{}`",
                node.node_id, node.role
            )));
        }
        match st.volumes.get(id).and_then(|v| v.attached.as_deref()) {
            Some(n) if n == node.node_id => Ok(node.node_id),
            Some(other) => Err(refused(format!(
                "{op}: volume {id} is attached to {other}, not to {}",
                node.node_id
            ))),
            None => Err(refused(format!("{op}: volume {id} is attached to no node"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(generation: u64, d: &str) -> VolumeCommit {
        VolumeCommit {
            generation,
            digest: d.repeat(32),
        }
    }

    #[test]
    fn an_anchor_only_moves_forward() {
        forward(None, &c(0, "aa")).unwrap();
        forward(Some(&c(3, "aa")), &c(4, "bb")).unwrap();
        forward(Some(&c(3, "aa")), &c(3, "aa")).unwrap();
        let e = forward(Some(&c(3, "aa")), &c(2, "bb")).unwrap_err();
        assert!(e.contains("generation 2 is older"), "{e}");
        let e = forward(Some(&c(3, "aa")), &c(3, "bb")).unwrap_err();
        assert!(e.contains("another commit at generation 3"), "{e}");
        assert!(check_commit(&c(1, "zz")).is_err());
        assert!(check_id("v-../../etc/passwd").is_err());
        check_id(&format!("v-{}", "0f".repeat(16))).unwrap();
    }
}
