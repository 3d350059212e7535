//! Requests and responses of the control-plane services, as JSON frames inside an attested
//! TLS connection. Binary values are hex.

use serde::{Deserialize, Serialize};

/// A request to the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The owner hands a fresh control-plane node the cluster's master secret and salt.
    Init {
        /// Master secret (hex, 32 bytes).
        master: String,
        /// Salt (hex, 32 bytes).
        salt: String,
    },
    /// The owner resupplies the master secret after the control plane restarted.
    Recover {
        /// Master secret (hex).
        master: String,
        /// Salt (hex).
        salt: String,
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
        secret: String,
    },
    /// Anyone asks the control plane for its TPM endorsement (EK certificate, EK, AK).
    Endorsement,
    /// Anyone asks the control plane to activate a credential made for its EK and AK.
    ProveTpm {
        /// TPM2B_ID_OBJECT contents (hex).
        id_object: String,
        /// TPM2B_ENCRYPTED_SECRET contents (hex).
        encrypted_secret: String,
    },
    /// The owner asks for a cluster attestation report bound to its nonce.
    ClusterReport {
        /// 32-byte nonce (hex).
        nonce: String,
    },
    /// The owner removes a node from the cluster: it is served nothing more and leaves every
    /// peer set; it may not join again.
    RemoveNode {
        /// The node.
        node_id: String,
        /// When the owner made the command (seconds since the epoch).
        at: i64,
        /// HMAC-SHA256 under the owner-commands key (hex).
        mac: String,
    },
    /// The owner asks a node to rotate its mesh key (it does at its next re-attestation).
    RotateMeshKey {
        /// The node.
        node_id: String,
        /// When the owner made the command (seconds since the epoch).
        at: i64,
        /// HMAC-SHA256 under the owner-commands key (hex).
        mac: String,
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
    pub master: String,
    /// Salt (hex, 32 bytes).
    pub salt: String,
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
        state_key: String,
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
        secret: String,
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
        key: String,
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
