//! Requests and responses of the control-plane services, as JSON frames inside an attested
//! TLS connection. Binary values are hex.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::owner::{OwnerAuth, SignedApprovals};

/// A secret on the wire (hex): zeroized when dropped, and never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHex(String);

impl SecretHex {
    /// Hex of `bytes`.
    pub fn encode(bytes: &[u8]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The hex text (to decode at once into a secret type).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretHex {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A request to the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The owner hands a fresh control-plane node the cluster's master secret and salt, and
    /// the nodes it approves (signed: `init <cluster ID> <SHA-256 of the approvals>`).
    Init {
        /// Master secret (hex, 32 bytes).
        master: SecretHex,
        /// Salt (hex, 32 bytes).
        salt: String,
        /// The owner's approval list.
        approvals: SignedApprovals,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// The owner resupplies the master secret after the control plane restarted (signed:
    /// `recover <cluster ID>`).
    Recover {
        /// Master secret (hex).
        master: SecretHex,
        /// Salt (hex).
        salt: String,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// The owner replaces the approval list (a higher serial than the one held).
    Approve {
        /// The owner's approval list.
        approvals: SignedApprovals,
    },
    /// An attested node asks for the owner's approval list (to check that this control plane
    /// is one the owner approved).
    Approvals,
    /// The owner acknowledges the refusals last seen at or before `up_to` (signed:
    /// `ack-refusals <cluster ID> <up_to>`): they no longer fail `veil verify`.
    AckRefusals {
        /// Seconds since the epoch.
        up_to: i64,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// A node asks to join: its role and TPM endorsement.
    Join {
        /// `control-plane` or `worker`.
        role: String,
        /// EK certificate (hex DER).
        ek_cert: String,
        /// EK public area (hex TPMT_PUBLIC).
        ek_public: String,
        /// The node's own key to certify (hex SubjectPublicKeyInfo DER).
        node_key: String,
        /// The node's mesh (WireGuard) public key and endpoint, made inside the node; sent
        /// over the connection its evidence was just appraised on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mesh: Option<MeshJoin>,
    },
    /// A joining node returns the secret its TPM recovered from the credential.
    Activate {
        /// The secret (hex).
        secret: SecretHex,
    },
    /// An attested node, or the owner (signed: `endorsement`), asks for the control plane's
    /// TPM endorsement (EK certificate, EK, AK).
    Endorsement {
        /// The owner's signature, when the caller is not an attested node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<OwnerAuth>,
    },
    /// An attested node, or the owner (signed: `prove-tpm <SHA-256 of id_object ‖
    /// encrypted_secret>`), asks the control plane to activate a credential made for its EK
    /// and AK. Once per connection, and a few per second in all.
    ProveTpm {
        /// TPM2B_ID_OBJECT contents (hex).
        id_object: String,
        /// TPM2B_ENCRYPTED_SECRET contents (hex).
        encrypted_secret: String,
        /// The owner's signature, when the caller is not an attested node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<OwnerAuth>,
    },
    /// The owner asks for a cluster attestation report bound to its nonce (signed:
    /// `cluster-report <cluster ID> <nonce>`).
    ClusterReport {
        /// 32-byte nonce (hex).
        nonce: String,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// The owner removes a node from the cluster (signed: `remove-node <cluster ID> <node>`):
    /// it is served nothing more and leaves every peer set; it may not join again.
    RemoveNode {
        /// The node.
        node_id: String,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// The owner asks a node to rotate its mesh key (signed: `rotate-mesh-key <cluster ID>
    /// <node>`); it does at its next re-attestation.
    RotateMeshKey {
        /// The node.
        node_id: String,
        /// The owner's signature.
        auth: OwnerAuth,
    },
    /// A joined node registers its new mesh public key (re-attested, like a key request);
    /// the answer is its peer set.
    MeshRekey {
        /// Its node certificate (hex DER).
        node_cert: String,
        /// The new WireGuard public key (base64).
        public_key: String,
    },
    /// A joined node asks for the current mesh peer set (re-attested, like a key request).
    MeshPeers {
        /// Its node certificate (hex DER).
        node_cert: String,
    },
    /// A joined node asks for one of its keys, showing its node certificate (any
    /// control-plane node of the cluster recognises it).
    GetKey {
        /// The key ID.
        key_id: String,
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
    },
    /// A joined worker asks for the key of a persistent volume, showing its node certificate
    /// (re-attested, like a key request): released only to the node the volume is attached to.
    VolumeKey {
        /// The volume's ID (`v-` and 32 hex digits).
        volume_id: String,
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
    },
    /// The worker a persistent volume is attached to reads its freshness anchor, or advances
    /// it to a newer commit (re-attested, like a key request). An anchor only moves forward.
    VolumeAnchor {
        /// The volume's ID.
        volume_id: String,
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
        /// The commit to record, if any: its generation and superblock digest (hex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        advance: Option<VolumeCommit>,
    },
    /// A call to the Configuration and Attestation Service that this control plane runs. Its
    /// authority is the CAS's own (the sessions' keys, a node's attested connection for a
    /// workload's release), not the cluster owner's.
    Cas {
        /// The call.
        call: CasCall,
    },
    /// A joined node reports what it refused of its own: its state volume altered, rolled back
    /// or gone (re-attested, like a key request). Recorded as a refusal in the cluster report,
    /// under the node's name.
    ReportRefusal {
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
        /// What was refused (`state_volume`).
        kind: String,
        /// Why (at most 512 characters are kept).
        reason: String,
    },
    /// A joined worker asks for its Kubernetes credentials (re-attested, like a key request):
    /// certificates for public keys it made itself, whose private halves never leave it.
    KubeCredentials {
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
        /// kubelet's client key (SubjectPublicKeyInfo, hex DER).
        kubelet_client_key: String,
        /// kubelet's serving key (SubjectPublicKeyInfo, hex DER).
        kubelet_serving_key: String,
        /// kube-proxy's client key (SubjectPublicKeyInfo, hex DER).
        proxy_client_key: String,
    },
}

/// A worker's Kubernetes credentials: short-lived certificates from the cluster's Kubernetes
/// CA, for the keys it sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeCredentials {
    /// The Kubernetes cluster CA certificate (PEM).
    pub ca: String,
    /// kubelet's client certificate: `system:node:<node ID>`, group `system:nodes` (PEM).
    pub kubelet_client: String,
    /// kubelet's serving certificate for the node's mesh address (PEM).
    pub kubelet_serving: String,
    /// kube-proxy's client certificate: `system:kube-proxy` (PEM).
    pub proxy_client: String,
    /// When they expire (Unix seconds).
    pub not_after: i64,
    /// The node's name in Kubernetes (its node ID) and address (its mesh address).
    pub node_name: String,
    /// The node's address, which the serving certificate names.
    pub node_address: String,
}

/// A volume's commit as its freshness anchor records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCommit {
    /// The superblock's generation.
    pub generation: u64,
    /// The superblock's SHA-256 (hex).
    pub digest: String,
}

/// A joining node's mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshJoin {
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Where its mesh device listens (IP:port).
    pub endpoint: String,
}

/// One peer of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPeer {
    /// Node ID (`control-plane` for the serving control plane's own device).
    pub node_id: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Where its mesh device listens.
    pub endpoint: String,
    /// Its mesh address.
    pub address: String,
}

/// The cluster's root secret, handed by a control-plane node to another it has attested.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandOver {
    /// Master secret (hex, 32 bytes).
    pub master: SecretHex,
    /// Salt (hex, 32 bytes).
    pub salt: String,
    /// The owner's approval list the handing control plane holds.
    pub approvals: SignedApprovals,
}

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOver(<redacted>)")
    }
}

/// A response from the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The cluster exists (after init or recovery).
    Cluster {
        /// Cluster ID (hex).
        cluster_id: String,
    },
    /// Prove the AK is in the TPM of that EK: activate this credential.
    Challenge {
        /// TPM2B_ID_OBJECT contents (hex).
        id_object: String,
        /// TPM2B_ENCRYPTED_SECRET contents (hex).
        encrypted_secret: String,
    },
    /// The node is admitted.
    Joined {
        /// Its node ID.
        node_id: String,
        /// The cluster ID (hex) to extend into the cluster PCR.
        cluster_id: String,
        /// The key of its encrypted state volume (hex).
        state_key: SecretHex,
        /// Its node certificate from the cluster CA (hex DER).
        node_cert: String,
        /// The cluster CA certificate (hex DER).
        ca_cert: String,
        /// For a control-plane node only: the cluster's root secret, so it serves as its
        /// peers do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        control_plane: Option<HandOver>,
        /// The node's address on the mesh, if it joined with a mesh key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mesh_address: Option<String>,
    },
    /// A node is removed.
    Removed {
        /// The node.
        node_id: String,
        /// Whether this control plane had admitted it.
        known: bool,
    },
    /// The mesh peers of the asking node: every other attested, joined node.
    MeshPeers {
        /// The peers.
        peers: Vec<MeshPeer>,
        /// The owner asked this node to rotate its mesh key.
        #[serde(default)]
        rotate: bool,
    },
    /// A node will rotate its mesh key at its next re-attestation.
    RotationRequested {
        /// The node.
        node_id: String,
    },
    /// The control plane's TPM endorsement.
    Endorsement {
        /// EK certificate (hex DER).
        ek_cert: String,
        /// EK public area (hex).
        ek_public: String,
        /// AK public area (hex).
        ak_public: String,
    },
    /// The secret recovered from a credential.
    Proof {
        /// The secret (hex).
        secret: SecretHex,
    },
    /// The owner's approval list.
    Approvals {
        /// As the owner signed it.
        approvals: SignedApprovals,
    },
    /// The owner's word was taken (an approval list, an acknowledgement).
    Accepted {
        /// What was done.
        detail: String,
    },
    /// A cluster attestation report, signed by the control plane's TPM.
    Report {
        /// The report (JSON text, as signed).
        report: String,
        /// The control plane's TPM evidence whose batch holds the report's digest (hex).
        evidence: String,
    },
    /// A key.
    Key {
        /// The key ID.
        key_id: String,
        /// The key (hex).
        key: SecretHex,
    },
    /// A worker's Kubernetes credentials.
    Kube(KubeCredentials),
    /// The CAS's answer.
    Cas {
        /// The answer.
        answer: CasAnswer,
    },
    /// A volume's freshness anchor (none: it has no commit recorded).
    VolumeAnchor {
        /// Its latest recorded commit.
        anchored: Option<VolumeCommit>,
    },

    /// Not now: the cluster is not initialised yet, or the control plane awaits recovery.
    /// Nothing is wrong with the caller; it may retry.
    Unavailable {
        /// What the control plane waits for.
        reason: String,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A signature of a CAS request by a session's (or the CAS owner's) Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasSignature {
    /// The public key (base64).
    pub key: String,
    /// The signature (base64) over `veil-cas/v1 <action> <name> <hash hex>\n`.
    pub signature: String,
}

/// A call to the CAS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
pub enum CasCall {
    /// Makes these keys the CAS's owner (once), signed by them over the rule's hash.
    Provision {
        /// The owner's rule (JSON: `{"keys": [...], "require": ...}`).
        owner: String,
        /// Its keys' signatures (`provision - <SHA-256 of the rule's canonical JSON>`).
        signatures: Vec<CasSignature>,
    },
    /// Creates or replaces a session.
    Put {
        /// The session document (JSON or YAML).
        document: String,
        /// Whether it replaces the current session (naming it as its predecessor).
        update: bool,
        /// Signatures as the session's rules require.
        signatures: Vec<CasSignature>,
    },
    /// A fresh nonce (for a read's challenge or a workload's evidence).
    Nonce,
    /// Reads a session's document (never its secrets' values).
    Read {
        /// The session's name.
        name: String,
        /// A nonce this CAS issued (hex).
        challenge: String,
        /// Signatures as the session's read rule requires.
        signatures: Vec<CasSignature>,
    },
    /// A joined worker's agent asks for a workload's configuration (re-attested, like a key
    /// request), with evidence bound to a nonce and quoted by its TPM.
    Release {
        /// The node certificate the cluster CA issued at join (hex DER).
        node_cert: String,
        /// The workload evidence (JSON).
        evidence: String,
    },
    /// Every session and secret, sealed.
    Backup,
    /// Replaces every session and secret with a backup's, signed by the backup's owner.
    Restore {
        /// The backup (base64).
        backup: String,
        /// The owner's signatures (`restore - <SHA-256 of the backup>`).
        signatures: Vec<CasSignature>,
    },
    /// The audit log from entry `start` on (as many entries as fit in an answer), with its
    /// signed checkpoint.
    Log {
        /// The first entry wanted.
        start: u64,
    },
}

/// A workload's configuration as released: secret, zeroized when dropped, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// Wraps `text`.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The CAS's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cas", rename_all = "snake_case", deny_unknown_fields)]
pub enum CasAnswer {
    /// Done (provision, restore).
    Done,
    /// The session was stored: its hash.
    Stored {
        /// SHA-256 of its canonical JSON (hex).
        hash: String,
    },
    /// A nonce (hex).
    Nonce {
        /// The nonce.
        nonce: String,
    },
    /// A session's document (canonical JSON).
    Session {
        /// The document.
        document: String,
    },
    /// A workload's configuration (JSON: environment, command, files).
    Released {
        /// The release.
        release: SecretText,
    },
    /// A sealed backup (base64).
    Backup {
        /// The backup.
        backup: String,
    },
    /// Audit-log entries and the checkpoint they are under.
    Log {
        /// The log's verifier key (`<origin>+<key id>+<base64>`).
        verifier_key: String,
        /// The signed checkpoint.
        checkpoint: String,
        /// The index of the first entry given.
        start: u64,
        /// Entries (base64), from `start`.
        entries: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8, finding 8: secrets travelled as plain strings and printed in `Debug`, which
    /// reaches errors and logs.
    #[test]
    fn secrets_on_the_wire_print_redacted() {
        let master = "11".repeat(32);
        let req = Request::Recover {
            master: SecretHex(master.clone()),
            salt: "22".repeat(32),
            auth: OwnerAuth {
                at: 1,
                signature: "sig".into(),
            },
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains(&master), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let resp = Response::Key {
            key_id: "node/n/state".into(),
            key: SecretHex::encode(&[0xab; 32]),
        };
        assert!(!format!("{resp:?}").contains(&"ab".repeat(32)));
        // On the wire it is the hex, as before.
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(&master));
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }
}
