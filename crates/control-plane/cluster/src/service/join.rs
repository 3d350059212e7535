//! Join and activation: a node whose evidence matched the reference values of its role, whose
//! cluster PCR is zero, whose EK certificate chains to an accepted manufacturer root and whose
//! TPM the owner approved for that role, proves its AK lives in that TPM by activating a
//! credential; then it is admitted.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_tpm::Public;
use veil_attest_tpm::credential::make_credential;
use veil_keys::KeyId;

use super::{
    Caller, ControlPlane, NodeMesh, NodeRecord, Pending, check_signer_under_ek, node_id, refused,
    unavailable,
};
use crate::ca::NodeIdentity;
use veil_client::clock::now;
use veil_wire::proto::{HandOver, MeshJoin, Response, SecretHex};

impl ControlPlane {
    /// `join`: checks everything but the TPM's possession of the AK, and challenges it.
    pub(super) fn join(
        &self,
        caller: &Caller<'_>,
        (role, ek_cert, ek_public, node_key): (&str, &str, &str, &str),
        mesh: Option<&MeshJoin>,
    ) -> Response {
        let Some(p) = caller.peer else {
            return refused("join: the caller is not attested");
        };
        if self.cluster_id().is_none() {
            return unavailable("join: the cluster is not initialised");
        }
        if p.claims.cluster_pcr.is_some() {
            return refused(
                "join: the node's cluster PCR is not zero: it already belongs to a cluster",
            );
        }
        if !p.qualifies_as(role) {
            return refused(format!(
                "join: the node's measurements do not match the reference values of role `{role}`"
            ));
        }
        let der = match decode_hex(ek_cert) {
            Ok(d) => d,
            Err(e) => return refused(format!("join: EK certificate: {e}")),
        };
        let cert = match Certificate::from_der(&der, "EK certificate") {
            Ok(c) => c,
            Err(e) => return refused(format!("join: {e}")),
        };
        let mut path = vec![&cert];
        path.extend(self.trust.ek_intermediates.iter());
        if let Err(e) = verify_chain(&path, &self.trust.ek_roots, now()) {
            return refused(format!("join: EK certificate: {e}"));
        }
        if self.trust.local_roots && !self.trust.reference.insecure_local_roots {
            return refused(
                "join: the EK certificate chains to a local software CA, and the reference values do not accept local roots (insecure_local_roots: false)",
            );
        }
        let ek = match decode_hex(ek_public)
            .map_err(|e| e.to_string())
            .and_then(|d| Public::parse(&d).map_err(|e| e.to_string()))
        {
            Ok(k) => k,
            Err(e) => return refused(format!("join: EK public: {e}")),
        };
        if cert.public_key().ok() != Some(&ek.key) {
            return refused("join: the EK public area is not the key of the EK certificate");
        }
        let ak = match Public::parse(&p.claims.ak_public) {
            Ok(a) => a,
            Err(e) => return refused(format!("join: AK: {e}")),
        };
        if let Err(e) = check_signer_under_ek(&ek, &ak, &p.claims.qualified_signer) {
            return refused(format!("join: {e}"));
        }
        let node_id = node_id(&cert);
        let ek_sha256 = cert.fingerprint();
        let rng = SystemRandom::new();
        let (mut secret, mut seed) = ([0u8; 32], [0u8; 32]);
        if rng.fill(&mut secret).is_err() || rng.fill(&mut seed).is_err() {
            return refused("join: no randomness");
        }
        let made = match make_credential(&ek, &ak.name, &secret, &seed) {
            Ok(m) => m,
            Err(e) => return refused(format!("join: {e}")),
        };
        let node_key = match decode_hex(node_key) {
            Ok(k) if veil_attest_core::x509::public_key_from_spki(&k).is_ok() => k,
            _ => return refused("join: node_key is not a SubjectPublicKeyInfo"),
        };
        let mesh = match mesh {
            None => None,
            Some(m) => match crate::mesh::check_join(m)
                .and_then(|()| crate::mesh::check_bound(&m.public_key, &p.context))
                .and_then(|()| crate::mesh::check_endpoint_source(m, caller.source))
            {
                Ok(()) => Some((m.public_key.clone(), m.endpoint.clone())),
                Err(e) => return refused(format!("join: mesh: {e}")),
            },
        };
        let Ok(mut st) = self.lock_state() else {
            return refused("join: internal error: state lock poisoned");
        };
        if st.removed.contains(&node_id) {
            return refused(format!(
                "join: {node_id} was removed from the cluster by its owner"
            ));
        }
        // The owner decides which TPMs may hold the cluster's keys, and in which role: a
        // genuine TPM of an accepted manufacturer is not enough.
        match &st.approvals {
            Some(a) if a.list.approves(&ek_sha256, role) => {}
            Some(a) => {
                return refused(format!(
                    "join: the owner has not approved this TPM (EK certificate sha256:{}) as `{role}` (approval list serial {}; veil node approve --ek-sha256 {} --role {role})",
                    hex::encode(ek_sha256),
                    a.list.serial,
                    hex::encode(ek_sha256)
                ));
            }
            None => {
                return unavailable(
                    "join: this control plane holds no approval list from the owner",
                );
            }
        }
        tracing::info!(event = "join_challenge", node = %node_id, role);
        st.pending.insert(
            p.claims.ak_spki_sha256,
            Pending {
                node_id,
                role: role.to_string(),
                secret,
                node_key,
                ek_cert: der,
                mesh,
            },
        );
        Response::Challenge {
            id_object: hex::encode(made.id_object),
            encrypted_secret: hex::encode(made.encrypted_secret),
        }
    }

    /// `activate`: the node returns the credential's secret; it is admitted.
    pub(super) fn activate(&self, caller: &Caller<'_>, secret: &str) -> Response {
        let Some(p) = caller.peer else {
            return refused("activate: the caller is not attested");
        };
        let Ok(mut st) = self.lock_state() else {
            return refused("activate: internal error: state lock poisoned");
        };
        let Some(pending) = st.pending.remove(&p.claims.ak_spki_sha256) else {
            return refused("activate: no join in progress for this attestation key");
        };
        let given = decode_hex(secret).unwrap_or_default();
        if verify_slices_are_equal(&given, &pending.secret).is_err() {
            return refused(format!(
                "activate: wrong credential secret for {}: the AK is not in the TPM of that EK (a copied EK certificate?)",
                pending.node_id
            ));
        }
        let (Some(secrets), Some(ca), Some(cid)) = (&st.secrets, &st.ca, st.cluster_id) else {
            return unavailable("activate: the control plane awaits recovery");
        };
        let state_key =
            match KeyId::node(&pending.node_id, "state").and_then(|k| secrets.derive(&k)) {
                Ok(k) => k,
                Err(e) => return refused(format!("activate: {e}")),
            };
        let who = NodeIdentity {
            node_id: pending.node_id.clone(),
            role: pending.role.clone(),
            ak_spki_sha256: p.claims.ak_spki_sha256,
        };
        let node_cert = match ca.issue(&who, &pending.node_key) {
            Ok(v) => v,
            Err(e) => return refused(format!("activate: {e}")),
        };
        let ca_cert = ca.cert_der().to_vec();
        // Another control-plane node serves as this one does: it gets the root secret, and
        // the owner's approvals.
        let control_plane = match (pending.role == "control-plane", &st.approvals) {
            (false, _) => None,
            (true, Some(a)) => Some(HandOver {
                master: SecretHex::encode(secrets.master().expose()),
                salt: hex::encode(secrets.salt()),
                approvals: a.signed.clone(),
            }),
            (true, None) => return unavailable("activate: no approval list to hand over"),
        };
        let set = p
            .roles
            .iter()
            .find(|(r, _)| *r == pending.role)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let mesh = match (&pending.mesh, st.mesh_net) {
            (Some((key, endpoint)), Some(net)) => {
                match crate::mesh::allocate(net, &st.nodes, &pending.node_id) {
                    Ok(address) => Some(NodeMesh {
                        public_key: key.clone(),
                        endpoint: endpoint.clone(),
                        address,
                    }),
                    Err(e) => return refused(format!("activate: mesh: {e}")),
                }
            }
            _ => None,
        };
        let mesh_address = mesh.as_ref().map(|m| m.address.to_string());
        st.last_seen.insert(pending.node_id.clone(), now().0);
        st.nodes.insert(
            pending.node_id.clone(),
            NodeRecord {
                node_id: pending.node_id.clone(),
                role: pending.role.clone(),
                ak_spki_sha256: p.claims.ak_spki_sha256,
                ek_cert: pending.ek_cert.clone(),
                join_evidence: p.claims.evidence.clone(),
                set,
                joined_at: now(),
                mesh,
            },
        );
        self.persist(st);
        tracing::info!(event = "node_joined", node = %pending.node_id, role = %pending.role);
        tracing::info!(event = "key_released", node = %pending.node_id, key_id = %format!("node/{}/state", pending.node_id));
        if control_plane.is_some() {
            tracing::info!(event = "master_secret_handed_over", node = %pending.node_id);
        }
        Response::Joined {
            node_id: pending.node_id,
            cluster_id: cid.to_string(),
            state_key: SecretHex::encode(state_key.expose()),
            node_cert: hex::encode(node_cert),
            ca_cert: hex::encode(ca_cert),
            control_plane,
            mesh_address,
        }
    }
}
