//! The owner's authority over a cluster: commands and node approvals signed by the owner's key.
//!
//! Every node's measured configuration names the owner's public key (PCR 9 covers the SHA-256
//! of its SubjectPublicKeyInfo), so a control plane knows whose word counts before it holds
//! any secret: only a command the owner signed initialises it, recovers it, makes it report,
//! removes a node, and only an approval list the owner signed says which TPMs may join in
//! which role. Signatures are ECDSA P-256 (the cosign blob format of
//! [`veil_reference::signing`]) over a domain-separated message; a command also carries the
//! time it was made, so an old one is not accepted later, and names the cluster it is for.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_reference::signing;
use zeroize::Zeroizing;

/// How far (seconds) an owner command's timestamp may be from the control plane's clock.
pub const MAX_SKEW_SECS: i64 = 120;

const COMMAND_DOMAIN: &[u8] = b"veil-owner-command-v1\0";
const APPROVALS_DOMAIN: &[u8] = b"veil-owner-approvals-v1\0";

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

/// Why the owner's word was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The command is too old or from the future.
    #[error(
        "the command was made at {at}, {skew}s from this control plane's clock (at most {MAX_SKEW_SECS}s)"
    )]
    Stale {
        /// When it was made.
        at: i64,
        /// How far from now.
        skew: i64,
    },
    /// The signature does not verify with the owner's key.
    #[error("the owner's signature does not verify: {0} (it is not from this cluster's owner)")]
    Signature(String),
    /// An approval list that cannot be used.
    #[error("approvals: {0}")]
    Approvals(String),
    /// The owner's private key cannot sign.
    #[error("owner key: {0}")]
    Key(String),
}

/// The bytes the owner signs for `command` made at `at`.
pub fn command_message(command: &str, at: i64) -> Vec<u8> {
    let mut m = COMMAND_DOMAIN.to_vec();
    m.extend(at.to_string().as_bytes());
    m.push(0);
    m.extend(command.as_bytes());
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

/// The owner's private key (PKCS#8 PEM), held by the owner's tools only.
pub struct OwnerKey {
    private_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerKey(<redacted>)")
    }
}

impl OwnerKey {
    /// The key from its PKCS#8 PEM.
    pub fn from_pem(private_pem: Vec<u8>) -> Result<Self, OwnerError> {
        let key = Self {
            private_pem: Zeroizing::new(private_pem),
        };
        key.sign(b"probe")?;
        Ok(key)
    }

    fn sign(&self, message: &[u8]) -> Result<String, OwnerError> {
        signing::sign(&self.private_pem, message).map_err(|e| OwnerError::Key(e.to_string()))
    }

    /// Signs `command` as made at `at`.
    pub fn authorise(&self, command: &str, at: i64) -> Result<OwnerAuth, OwnerError> {
        Ok(OwnerAuth {
            at,
            signature: self.sign(&command_message(command, at))?,
        })
    }
}

/// Checks that the owner (public key `owner_key`, PEM) signed `command` within
/// [`MAX_SKEW_SECS`] of `now`.
pub fn check(
    owner_key: &[u8],
    command: &str,
    auth: &OwnerAuth,
    now: i64,
) -> Result<(), OwnerError> {
    let skew = now - auth.at;
    if skew.abs() > MAX_SKEW_SECS {
        return Err(OwnerError::Stale { at: auth.at, skew });
    }
    signing::verify(
        owner_key,
        &command_message(command, auth.at),
        &auth.signature,
    )
    .map_err(|e| OwnerError::Signature(e.to_string()))
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
    /// Signs `approvals` with the owner's key.
    pub fn sign(approvals: &Approvals, key: &OwnerKey) -> Result<Self, OwnerError> {
        let document =
            serde_json::to_string(approvals).map_err(|e| OwnerError::Approvals(e.to_string()))?;
        let mut m = APPROVALS_DOMAIN.to_vec();
        m.extend(document.as_bytes());
        Ok(Self {
            signature: key.sign(&m)?,
            document,
        })
    }

    /// The list, if the owner (`owner_key`, PEM) signed it for cluster `cluster_id` (hex).
    pub fn verify(&self, owner_key: &[u8], cluster_id: &str) -> Result<Approvals, OwnerError> {
        let a = self.verify_for_any_cluster(owner_key)?;
        if a.cluster_id != cluster_id {
            return Err(OwnerError::Approvals(format!(
                "the list is for cluster {}, not {cluster_id}",
                a.cluster_id
            )));
        }
        Ok(a)
    }

    /// The list, if the owner signed it, whichever cluster it is for (the caller checks
    /// [`Approvals::cluster_id`]).
    pub fn verify_for_any_cluster(&self, owner_key: &[u8]) -> Result<Approvals, OwnerError> {
        let mut m = APPROVALS_DOMAIN.to_vec();
        m.extend(self.document.as_bytes());
        signing::verify(owner_key, &m, &self.signature)
            .map_err(|e| OwnerError::Signature(e.to_string()))?;
        let a: Approvals = serde_json::from_str(&self.document)
            .map_err(|e| OwnerError::Approvals(e.to_string()))?;
        if a.version != APPROVALS_VERSION {
            return Err(OwnerError::Approvals(format!(
                "version: expected {APPROVALS_VERSION}, found {}",
                a.version
            )));
        }
        Ok(a)
    }

    /// SHA-256 of the document (hex), as owner commands name it.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.document.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (OwnerKey, String) {
        let (sk, pk) = signing::generate_key().unwrap();
        (OwnerKey::from_pem(sk.into_bytes()).unwrap(), pk)
    }

    #[test]
    fn only_the_owner_now_for_this_command() {
        let (sk, pk) = keys();
        let auth = sk.authorise("remove-node c node-1", 1000).unwrap();
        check(pk.as_bytes(), "remove-node c node-1", &auth, 1010).unwrap();
        assert!(matches!(
            check(pk.as_bytes(), "remove-node c node-2", &auth, 1010),
            Err(OwnerError::Signature(_))
        ));
        let (_, other) = keys();
        assert!(check(other.as_bytes(), "remove-node c node-1", &auth, 1010).is_err());
        assert!(matches!(
            check(pk.as_bytes(), "remove-node c node-1", &auth, 2000),
            Err(OwnerError::Stale { .. })
        ));
        let moved = OwnerAuth { at: 1001, ..auth };
        assert!(check(pk.as_bytes(), "remove-node c node-1", &moved, 1010).is_err());
    }

    #[test]
    fn approvals_are_the_owners_and_the_clusters() {
        let (sk, pk) = keys();
        let a = Approvals {
            version: APPROVALS_VERSION,
            cluster_id: "c1".into(),
            serial: 1,
            nodes: vec![ApprovedNode {
                ek_sha256: hex::encode([7u8; 32]),
                role: "worker".into(),
                name: "w".into(),
            }],
        };
        let s = SignedApprovals::sign(&a, &sk).unwrap();
        let back = s.verify(pk.as_bytes(), "c1").unwrap();
        assert!(back.approves(&[7; 32], "worker"));
        assert!(!back.approves(&[7; 32], "control-plane"));
        assert!(!back.approves(&[8; 32], "worker"));
        assert!(s.verify(pk.as_bytes(), "c2").is_err());
        let mut t = s.clone();
        t.document = t.document.replace("worker", "control-plane");
        assert!(matches!(
            t.verify(pk.as_bytes(), "c1"),
            Err(OwnerError::Signature(_))
        ));
        // A command signature is not an approval signature, and the reverse.
        let auth = sk.authorise(&s.document, 0).unwrap();
        let forged = SignedApprovals {
            signature: auth.signature,
            ..s
        };
        assert!(forged.verify(pk.as_bytes(), "c1").is_err());
    }
}
