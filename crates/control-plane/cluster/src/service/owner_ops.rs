//! The owner's operations. Each is accepted only with the owner's signature (by the key in
//! this node's measured configuration), over a command that names the cluster; an approval
//! list is signed as a whole. None needs the caller to attest: the owner's workstation has no
//! TPM, and its key is what makes it the owner.

use veil_attest_core::bytes::decode_hex;
use veil_keys::ClusterId;

use super::{ControlPlane, HeldApprovals, refused, secrets_from, unavailable};
use veil_appraisal::owner::{OwnerAuth, SignedApprovals, commands};
use veil_client::clock::now;
use veil_wire::proto::Response;

impl ControlPlane {
    /// Checks the owner signed `command`.
    pub(super) fn owner_signed(
        &self,
        op: &str,
        command: &str,
        auth: &OwnerAuth,
    ) -> Result<(), Response> {
        veil_appraisal::owner::check(&self.trust.owner_key, command, auth, now().0)
            .map_err(|e| refused(format!("{op}: {e}")))
    }

    /// The cluster ID, or "not initialised".
    fn initialised(&self, op: &str) -> Result<ClusterId, Response> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.cluster_id)
            .ok_or_else(|| unavailable(format!("{op}: the cluster is not initialised")))
    }

    /// `init`: the owner hands a fresh control plane the master secret and salt, and the nodes
    /// it approves. The cluster ID derived from the secrets is extended into the cluster PCR.
    pub(super) fn init(
        &self,
        master: &str,
        salt: &str,
        approvals: SignedApprovals,
        auth: &OwnerAuth,
    ) -> Response {
        let secrets = match secrets_from(master, salt) {
            Ok(s) => s,
            Err(e) => return refused(format!("init: {e}")),
        };
        let Ok(cid) = secrets.cluster_id() else {
            return refused("init: key derivation failed");
        };
        if let Err(r) = self.owner_signed(
            "init",
            &commands::init(&cid.to_string(), &approvals.digest()),
            auth,
        ) {
            return r;
        }
        let list = match veil_appraisal::owner::verify_approvals(
            &approvals,
            &self.trust.owner_key,
            &cid.to_string(),
        ) {
            Ok(l) => l,
            Err(e) => return refused(format!("init: {e}")),
        };
        let Ok(_serial) = self.owner_ops.lock() else {
            return refused("init: internal error: lock poisoned");
        };
        if self.cluster_id().is_some() {
            return refused(
                "init: the cluster is already initialised (use recover after a restart)",
            );
        }
        if let Err(e) = self.attester.join_cluster(&cid.0) {
            return refused(format!("init: cannot extend the cluster PCR: {e}"));
        }
        let Ok(mut st) = self.lock_state() else {
            return refused("init: internal error: state lock poisoned");
        };
        if let Err(e) = st.hold(secrets) {
            return refused(format!("init: {e}"));
        }
        st.cluster_id = Some(cid);
        st.pcr_bound = true;
        st.approvals = Some(HeldApprovals {
            list,
            signed: approvals,
        });
        self.persist(st);
        tracing::info!(event = "cluster_initialised", cluster_id = %cid);
        Response::Cluster {
            cluster_id: cid.to_string(),
        }
    }

    /// `recover`: the master secret again, after every control plane restarted. It must
    /// derive this node's cluster ID.
    pub(super) fn recover(&self, master: &str, salt: &str, auth: &OwnerAuth) -> Response {
        let cid = match self.initialised("recover") {
            Ok(c) => c,
            Err(_) => return refused("recover: the cluster is not initialised: use init"),
        };
        if let Err(r) = self.owner_signed("recover", &commands::recover(&cid.to_string()), auth) {
            return r;
        }
        let secrets = match secrets_from(master, salt) {
            Ok(s) => s,
            Err(e) => return refused(format!("recover: {e}")),
        };
        match secrets.cluster_id() {
            Ok(c) if c == cid => {}
            Ok(c) => {
                return refused(format!(
                    "recover: this master secret belongs to cluster {c}, not to cluster {cid}"
                ));
            }
            Err(_) => return refused("recover: key derivation failed"),
        }
        let Ok(_serial) = self.owner_ops.lock() else {
            return refused("recover: internal error: lock poisoned");
        };
        let bound = match self.lock_state() {
            Ok(st) if st.secrets.is_some() => {
                return refused("recover: the control plane holds its secrets: nothing to recover");
            }
            Ok(st) => st.pcr_bound,
            Err(e) => return refused(e),
        };
        if !bound && let Err(e) = self.attester.join_cluster(&cid.0) {
            return refused(format!("recover: cannot extend the cluster PCR: {e}"));
        }
        let Ok(mut st) = self.lock_state() else {
            return refused("recover: internal error: state lock poisoned");
        };
        st.pcr_bound = true;
        if let Err(e) = st.hold(secrets) {
            return refused(format!("recover: {e}"));
        }
        tracing::info!(event = "cluster_recovered", cluster_id = %cid);
        Response::Cluster {
            cluster_id: cid.to_string(),
        }
    }

    /// `approve`: a new approval list (signed as a whole; never an older one).
    pub(super) fn approve(&self, approvals: SignedApprovals) -> Response {
        let Ok(mut st) = self.lock_state() else {
            return refused("approve: internal error: state lock poisoned");
        };
        if st.cluster_id.is_none() {
            return unavailable("approve: the cluster is not initialised");
        }
        match st.take_approvals(&self.trust.owner_key, approvals) {
            Ok(serial) => {
                self.persist(st);
                tracing::info!(event = "approvals_updated", serial);
                Response::Accepted {
                    detail: format!("approval list serial {serial}"),
                }
            }
            Err(e) => refused(format!("approve: {e}")),
        }
    }

    /// `ack-refusals`: the owner has seen the refusals last seen at or before `up_to`.
    pub(super) fn ack_refusals(&self, up_to: i64, auth: &OwnerAuth) -> Response {
        let cid = match self.initialised("ack-refusals") {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(r) = self.owner_signed(
            "ack-refusals",
            &commands::ack_refusals(&cid.to_string(), up_to),
            auth,
        ) {
            return r;
        }
        let Ok(mut st) = self.lock_state() else {
            return refused("ack-refusals: internal error: state lock poisoned");
        };
        let n = st.refusals.acknowledge(up_to);
        self.persist(st);
        tracing::info!(event = "refusals_acknowledged", up_to, count = n);
        Response::Accepted {
            detail: format!("{n} refusal entries acknowledged"),
        }
    }

    /// `remove-node`: the node is served nothing more, leaves every peer set, never rejoins.
    pub(super) fn remove_node(&self, node_id: String, auth: &OwnerAuth) -> Response {
        let cid = match self.initialised("remove") {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(r) = self.owner_signed(
            "remove",
            &commands::remove_node(&cid.to_string(), &node_id),
            auth,
        ) {
            return r;
        }
        let Ok(mut st) = self.lock_state() else {
            return refused("remove: internal error: state lock poisoned");
        };
        let known = st.nodes.remove(&node_id).is_some();
        st.last_seen.remove(&node_id);
        st.removed.insert(node_id.clone());
        self.persist(st);
        tracing::info!(event = "node_removed", node = %node_id, known);
        Response::Removed { node_id, known }
    }

    /// `rotate-mesh-key`: the node makes a new mesh key at its next re-attestation.
    pub(super) fn rotate_mesh_key(&self, node_id: String, auth: &OwnerAuth) -> Response {
        let cid = match self.initialised("rotate") {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(r) = self.owner_signed(
            "rotate",
            &commands::rotate_mesh_key(&cid.to_string(), &node_id),
            auth,
        ) {
            return r;
        }
        let Ok(mut st) = self.lock_state() else {
            return refused("rotate: internal error: state lock poisoned");
        };
        if st.nodes.get(&node_id).is_none_or(|n| n.mesh.is_none()) {
            return refused(format!("rotate: no node {node_id} with a mesh key here"));
        }
        st.rotate.insert(node_id.clone());
        tracing::info!(event = "mesh_rotation_requested", node = %node_id);
        Response::RotationRequested { node_id }
    }

    /// `cluster-report`: the admitted nodes with their join evidence, and the refusals the
    /// owner has not acknowledged, signed by this node's TPM over the owner's nonce.
    pub(super) fn cluster_report(&self, nonce: String, auth: &OwnerAuth) -> Response {
        let cid = match self.initialised("report") {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(r) = self.owner_signed(
            "report",
            &commands::cluster_report(&cid.to_string(), &nonce),
            auth,
        ) {
            return r;
        }
        if decode_hex(&nonce).map(|n| n.len()) != Ok(32) {
            return refused("report: the nonce must be 32 bytes of hex");
        }
        // The CAS's log head (the CAS opened if it can be: its lock comes before the state's).
        let cas = self.cas_head();
        let text = {
            let Ok(st) = self.lock_state() else {
                return refused("report: internal error: state lock poisoned");
            };
            let t = now().0;
            let report = veil_wire::report::ClusterReport {
                version: veil_wire::report::REPORT_VERSION,
                cluster_id: cid.to_string(),
                nonce,
                created_at: t,
                approvals_serial: st.approvals.as_ref().map(|a| a.list.serial),
                nodes: st
                    .nodes
                    .values()
                    .map(|n| veil_wire::report::ReportedNode {
                        node_id: n.node_id.clone(),
                        role: n.role.clone(),
                        set: n.set.clone(),
                        joined_at: n.joined_at.0,
                        ak_spki_sha256: hex::encode(n.ak_spki_sha256),
                        ek_cert: hex::encode(&n.ek_cert),
                        join_evidence: hex::encode(&n.join_evidence),
                        mesh: n.mesh.as_ref().map(|m| {
                            let seen = st.last_seen.get(&n.node_id).copied();
                            veil_wire::report::ReportedMesh {
                                address: m.address.to_string(),
                                public_key: m.public_key.clone(),
                                last_seen: seen,
                                in_peer_sets: seen.is_some_and(|s| s >= t - super::MESH_FRESH_SECS),
                            }
                        }),
                    })
                    .collect(),
                refused: st.refusals.entries().to_vec(),
                kubernetes: st.kube_api.clone(),
                cas,
            };
            match serde_json::to_string(&report) {
                Ok(t) => t,
                Err(_) => return refused("report: cannot encode"),
            }
        };
        // The TPM signs without the state lock held.
        let digest = veil_wire::report::report_digest(text.as_bytes());
        match veil_atls::Attester::attest(self.attester.as_ref(), &digest) {
            Ok(evidence) => Response::Report {
                report: text,
                evidence: hex::encode(evidence),
            },
            Err(e) => refused(format!("report: cannot sign: {e}")),
        }
    }
}
