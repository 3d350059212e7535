//! What joined nodes ask for: their keys, their mesh peers, a new mesh key, and the owner's
//! approval list. Each request is authenticated afresh: evidence on this connection (cluster
//! PCR = this cluster, measurements of its role) and a node certificate of this cluster's CA
//! naming the AK that attested the connection.

use veil_attest_core::bytes::decode_hex;
use veil_keys::{KeyId, Owner};
use veil_reference::launch::cluster_pcr;

use super::{Caller, ControlPlane, State, refused, unavailable};
use crate::ca::NodeIdentity;
use veil_client::clock::now;
use veil_wire::proto::{Response, SecretHex};

impl ControlPlane {
    /// Who a joined node is (see the module documentation).
    fn authenticate(
        &self,
        st: &State,
        caller: &mut Caller<'_>,
        node_cert: &str,
        op: &str,
    ) -> Result<NodeIdentity, Response> {
        let Some(p) = caller.peer else {
            return Err(refused(format!("{op}: the caller is not attested")));
        };
        let (Some(ca), Some(cid)) = (&st.ca, st.cluster_id) else {
            return Err(unavailable(format!(
                "{op}: the control plane awaits recovery (veil recover)"
            )));
        };
        let Ok(cert) = decode_hex(node_cert) else {
            return Err(refused(format!("{op}: node_cert is not hex")));
        };
        let node = match &caller.cert_cache {
            Some((der, who)) if *der == cert => who.clone(),
            _ => match ca.verify(&cert, now()) {
                Ok(who) => {
                    caller.cert_cache = Some((cert, who.clone()));
                    who
                }
                Err(e) => return Err(refused(format!("{op}: {e}"))),
            },
        };
        if st.removed.contains(&node.node_id) {
            return Err(refused(format!(
                "{op}: {} was removed from the cluster by its owner",
                node.node_id
            )));
        }
        if node.ak_spki_sha256 != p.claims.ak_spki_sha256 {
            return Err(refused(format!(
                "{op}: the node certificate of {} names AK {}, but AK {} attested this connection",
                node.node_id,
                hex::encode(node.ak_spki_sha256.get(..6).unwrap_or_default()),
                hex::encode(p.claims.ak_spki_sha256.get(..6).unwrap_or_default())
            )));
        }
        let want = hex::encode(cluster_pcr(veil_attest_tpm::HashAlg::Sha256, Some(&cid.0)));
        if p.claims.cluster_pcr.as_deref() != Some(want.as_str()) {
            return Err(refused(format!(
                "{op}: the caller's cluster PCR does not hold this cluster's ID"
            )));
        }
        if !p.qualifies_as(&node.role) {
            return Err(refused(format!(
                "{op}: the caller no longer matches the reference values of role `{}`",
                node.role
            )));
        }
        Ok(node)
    }

    /// `get_key`: one of the node's own keys.
    pub(super) fn get_key(
        &self,
        caller: &mut Caller<'_>,
        key_id: &str,
        node_cert: &str,
    ) -> Response {
        let Ok(mut st) = self.lock_state() else {
            return refused("get_key: internal error: state lock poisoned");
        };
        let node = match self.authenticate(&st, caller, node_cert, "get_key") {
            Ok(n) => n,
            Err(r) => return r,
        };
        let Some(secrets) = &st.secrets else {
            return unavailable("get_key: the control plane awaits recovery (veil recover)");
        };
        let id = match KeyId::parse(key_id) {
            Ok(k) => k,
            Err(e) => return refused(format!("get_key: {e}")),
        };
        if id.owner() != Owner::Node(node.node_id.clone()) {
            return refused(format!(
                "get_key: key `{}` does not belong to {}",
                id.as_str(),
                node.node_id
            ));
        }
        let key = match secrets.derive(&id) {
            Ok(k) => k,
            Err(e) => return refused(format!("get_key: {e}")),
        };
        tracing::info!(event = "key_released", node = %node.node_id, key_id = %id.as_str());
        st.last_seen.insert(node.node_id.clone(), now().0);
        Response::Key {
            key_id: id.as_str().to_string(),
            key: SecretHex::encode(key.expose()),
        }
    }

    /// `mesh_peers`: the node's current peer set (and whether to rotate its key).
    pub(super) fn mesh_peers(&self, caller: &mut Caller<'_>, node_cert: &str) -> Response {
        let Ok(mut st) = self.lock_state() else {
            return refused("mesh: internal error: state lock poisoned");
        };
        let node = match self.authenticate(&st, caller, node_cert, "mesh") {
            Ok(n) => n,
            Err(r) => return r,
        };
        st.last_seen.insert(node.node_id.clone(), now().0);
        Response::MeshPeers {
            peers: st.peer_set(Some(&node.node_id)),
            rotate: st.rotate.contains(&node.node_id),
        }
    }

    /// `mesh_rekey`: the node registers a new mesh key its evidence on this connection
    /// vouches for.
    pub(super) fn mesh_rekey(
        &self,
        caller: &mut Caller<'_>,
        node_cert: &str,
        public_key: String,
    ) -> Response {
        let Ok(mut st) = self.lock_state() else {
            return refused("rekey: internal error: state lock poisoned");
        };
        let node = match self.authenticate(&st, caller, node_cert, "rekey") {
            Ok(n) => n,
            Err(r) => return r,
        };
        let context = caller.peer.map(|p| p.context);
        let Some(m) = st
            .nodes
            .get_mut(&node.node_id)
            .and_then(|n| n.mesh.as_mut())
        else {
            return refused(format!("rekey: {} has no mesh key here", node.node_id));
        };
        if let Err(e) = crate::mesh::check_join(&veil_wire::proto::MeshJoin {
            public_key: public_key.clone(),
            endpoint: m.endpoint.clone(),
        })
        .and_then(|()| {
            context.map_or(Err("not attested".into()), |c| {
                crate::mesh::check_bound(&public_key, &c)
            })
        }) {
            return refused(format!("rekey: {e}"));
        }
        m.public_key = public_key;
        st.rotate.remove(&node.node_id);
        st.last_seen.insert(node.node_id.clone(), now().0);
        let peers = st.peer_set(Some(&node.node_id));
        self.persist(st);
        tracing::info!(event = "mesh_key_rotated", node = %node.node_id);
        Response::MeshPeers {
            peers,
            rotate: false,
        }
    }

    /// `approvals`: the owner's approval list, to an attested node (which checks that this
    /// control plane is one the owner approved).
    pub(super) fn approvals(&self, caller: &Caller<'_>) -> Response {
        if caller.peer.is_none() {
            return refused("approvals: the caller is not attested");
        }
        match self.lock_state().map(|st| st.approvals.clone()) {
            Ok(Some(a)) => Response::Approvals {
                approvals: a.signed,
            },
            Ok(None) => unavailable("approvals: this control plane holds no approval list"),
            Err(e) => refused(e),
        }
    }
}
