//! The owner's word, as it travels: the signature on one command (and the text of every
//! command), and the signed list of TPMs the owner approved per role. Signing and checking
//! are `veil-appraisal`'s; these are the formats.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far (seconds) an owner command's timestamp may be from the control plane's clock.
pub const MAX_SKEW_SECS: i64 = 120;

/// Format version of an approval list.
pub const APPROVALS_VERSION: u32 = 1;

/// The owner's signature on one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerAuth {
    /// When the owner made the command (seconds since the epoch).
    pub at: i64,
    /// Base64 DER ECDSA P-256 signature over [`command_message`].
    pub signature: String,
}

/// The bytes the owner signs for `command` made at `at`.
pub fn command_message(command: &str, at: i64) -> Vec<u8> {
    let mut m = crate::ids::OWNER_COMMAND.to_vec();
    m.extend(at.to_string().as_bytes());
    m.push(0);
    m.extend(command.as_bytes());
    m
}

/// The bytes the owner signs for an approval list `document`.
pub fn approvals_message(document: &str) -> Vec<u8> {
    let mut m = crate::ids::OWNER_APPROVALS.to_vec();
    m.extend(document.as_bytes());
    m
}

/// The text of each owner command, as both sides build it from the request: what the owner
/// signs, and so what the control plane checks. Each names the cluster it is for (but `init`,
/// whose cluster ID the control plane derives from the secrets it is given).
pub mod commands {
    /// Initialise with these secrets (their cluster ID) and this approval list.
    pub fn init(cluster_id: &str, approvals_sha256: &str) -> String {
        format!("init {cluster_id} {approvals_sha256}")
    }
    /// Resupply the master secret.
    pub fn recover(cluster_id: &str) -> String {
        format!("recover {cluster_id}")
    }
    /// A cluster report over this nonce.
    pub fn cluster_report(cluster_id: &str, nonce_hex: &str) -> String {
        format!("cluster-report {cluster_id} {nonce_hex}")
    }
    /// Remove a node.
    pub fn remove_node(cluster_id: &str, node_id: &str) -> String {
        format!("remove-node {cluster_id} {node_id}")
    }
    /// Rotate a node's mesh key.
    pub fn rotate_mesh_key(cluster_id: &str, node_id: &str) -> String {
        format!("rotate-mesh-key {cluster_id} {node_id}")
    }
    /// Acknowledge the refusals last seen at or before `up_to`.
    pub fn ack_refusals(cluster_id: &str, up_to: i64) -> String {
        format!("ack-refusals {cluster_id} {up_to}")
    }
    /// Show the TPM endorsement.
    pub fn endorsement() -> String {
        "endorsement".into()
    }
    /// Activate this credential (named by the SHA-256 of its two parts, hex as sent).
    pub fn prove_tpm(id_object_hex: &str, encrypted_secret_hex: &str) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::new()
            .chain_update(id_object_hex.as_bytes())
            .chain_update(b"\0")
            .chain_update(encrypted_secret_hex.as_bytes())
            .finalize();
        format!("prove-tpm {}", hex::encode(d))
    }
}

/// The TPMs the owner approved, by the SHA-256 of their EK certificate, each for one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// Format version.
    pub version: u32,
    /// The cluster (hex).
    pub cluster_id: String,
    /// Increases with every new list: a control plane never goes back to a lower one.
    pub serial: u64,
    /// The approved nodes.
    pub nodes: Vec<ApprovedNode>,
}

/// One approved TPM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovedNode {
    /// SHA-256 of its EK certificate (hex).
    pub ek_sha256: String,
    /// The role it may join as.
    pub role: String,
    /// A name for people (not checked).
    #[serde(default)]
    pub name: String,
}

impl Approvals {
    /// Whether the TPM with EK certificate `ek_sha256` may join as `role`.
    pub fn approves(&self, ek_sha256: &[u8; 32], role: &str) -> bool {
        let ek = hex::encode(ek_sha256);
        self.nodes
            .iter()
            .any(|n| n.ek_sha256 == ek && n.role == role)
    }
}

/// An approval list as the owner signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedApprovals {
    /// The list (JSON text, as signed).
    pub document: String,
    /// Base64 DER ECDSA P-256 signature over the domain ‖ document.
    pub signature: String,
}

impl SignedApprovals {
    /// SHA-256 of the document (hex), as owner commands name it.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.document.as_bytes()))
    }
}
