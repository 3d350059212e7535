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
use veil_kube::pki::{Leaf, Usage};
use veil_wire::proto::{KubeCredentials, Response, SecretHex};

/// How long a worker's Kubernetes certificates last. Workers re-attest every few seconds and
/// renew them well before; a removed node's or one that stopped attesting lapse within this.
pub const KUBE_CREDENTIAL_VALIDITY: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// How long a kubelet's serving certificate lasts unless configured otherwise: longer than its
/// client credentials, because kubelet 1.34 takes a new one only when it restarts (it answers
/// only on its mesh address, which leaves every peer set when the node is removed).
pub const KUBE_SERVING_VALIDITY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl ControlPlane {
    /// Who a joined node is (see the module documentation).
    pub(super) fn authenticate(
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

    /// `report_refusal`: what a joined node refused of its own, recorded under its name.
    pub(super) fn report_refusal(
        &self,
        caller: &mut Caller<'_>,
        node_cert: &str,
        kind: &str,
        reason: &str,
    ) -> Response {
        let op = "report_refusal";
        const KINDS: &[&str] = &["state_volume"];
        if !KINDS.contains(&kind) {
            return refused(format!(
                "{op}: kind {:?}: expected one of {KINDS:?}",
                kind.chars().take(40).collect::<String>()
            ));
        }
        let node = {
            let Ok(st) = self.lock_state() else {
                return refused(format!("{op}: internal error: state lock poisoned"));
            };
            match self.authenticate(&st, caller, node_cert, op) {
                Ok(n) => n,
                Err(r) => return r,
            }
        };
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        tracing::error!(event = "node_refusal", node = %node.node_id, kind, %reason);
        self.refuse(
            &caller.source.to_string(),
            caller.ak_hex(),
            kind,
            &format!("{kind}: {} refused its own {kind}: {reason}", node.node_id),
        );
        Response::Accepted {
            detail: format!("{kind} refusal of {} recorded", node.node_id),
        }
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

    /// `kube_credentials`: a worker's kubelet and kube-proxy certificates, for keys it made,
    /// valid for [`KUBE_CREDENTIAL_VALIDITY`] unless configured otherwise: a node that stops re-attesting, or is removed,
    /// holds no Kubernetes credential for longer than that.
    pub(super) fn kube_credentials(
        &self,
        caller: &mut Caller<'_>,
        node_cert: &str,
        keys: [&str; 3],
    ) -> Response {
        let op = "kube_credentials";
        let Ok(mut st) = self.lock_state() else {
            return refused(format!("{op}: internal error: state lock poisoned"));
        };
        let node = match self.authenticate(&st, caller, node_cert, op) {
            Ok(n) => n,
            Err(r) => return r,
        };
        if node.role != "worker" {
            return refused(format!(
                "{op}: only workers run a kubelet; {} joined as `{}`",
                node.node_id, node.role
            ));
        }
        let Some(pki) = st.kube.clone() else {
            return unavailable(format!(
                "{op}: the control plane awaits recovery (veil recover)"
            ));
        };
        let address = st
            .nodes
            .get(&node.node_id)
            .and_then(|n| n.mesh.as_ref())
            .map(|m| m.address.to_string())
            .or_else(|| {
                st.foreign
                    .iter()
                    .find(|p| p.node_id == node.node_id)
                    .map(|p| p.address.clone())
            });
        let Some(address) = address.and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()) else {
            return refused(format!(
                "{op}: no mesh address is known for {} (a kubelet serves on the mesh only)",
                node.node_id
            ));
        };
        let mut spki = Vec::new();
        for (name, k) in [
            "kubelet_client_key",
            "kubelet_serving_key",
            "proxy_client_key",
        ]
        .iter()
        .zip(keys)
        {
            match decode_hex(k) {
                Ok(v) => spki.push(v),
                Err(_) => return refused(format!("{op}: {name} is not hex")),
            }
        }
        let v = self.kube_credential_validity;
        let user = veil_kube::pki::node_user(&node.node_id);
        let leaves = [
            Leaf::client(&user, &["system:nodes"], v),
            Leaf {
                common_name: user.clone(),
                organizations: vec!["system:nodes".into()],
                dns: vec![node.node_id.clone()],
                ips: vec![address.into()],
                usage: Usage::Server,
                validity: self.kube_serving_validity,
            },
            Leaf::client("system:kube-proxy", &[], v),
        ];
        let mut certs = Vec::new();
        for ((leaf, key), name) in
            leaves
                .iter()
                .zip(&spki)
                .zip(["kubelet client", "kubelet serving", "kube-proxy client"])
        {
            match pki.cluster.issue_for(leaf, key) {
                Ok(c) => certs.push(c),
                Err(e) => return refused(format!("{op}: {name}: {e}")),
            }
        }
        let not_after = now().0 + i64::try_from(v.as_secs()).unwrap_or(0);
        st.last_seen.insert(node.node_id.clone(), now().0);
        tracing::info!(event = "kube_credentials_issued", node = %node.node_id, not_after);
        let [kubelet_client, kubelet_serving, proxy_client]: [String; 3] = match certs.try_into() {
            Ok(c) => c,
            Err(_) => return refused(format!("{op}: internal error")),
        };
        Response::Kube(KubeCredentials {
            ca: pki.cluster.cert_pem().to_string(),
            kubelet_client,
            kubelet_serving,
            proxy_client,
            not_after,
            node_name: node.node_id,
            node_address: address.to_string(),
        })
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
