//! Whole-cluster attestation as it travels: the report a control plane signs (every node it
//! admitted with the evidence it appraised, every refusal the owner has not acknowledged), and
//! the digest its TPM quote covers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// One kind of refusal from one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Where the refused connection came from (its IP address).
    pub source: String,
    /// SHA-256 of the AK SPKI the caller presented (hex), if its evidence could be read.
    pub ak_spki_sha256: Option<String>,
    /// What was refused: `evidence` (the attested connection), `tls`, or the operation
    /// (`join`, `activate`, `get_key`, `mesh`, `rekey`, `owner`, `prove`, …).
    pub kind: String,
    /// The latest reason.
    pub reason: String,
    /// The reason's class (the reason with its values masked): what the entry aggregates on.
    pub class: String,
    /// First seen (seconds since the epoch).
    pub first_seen: i64,
    /// Last seen.
    pub last_seen: i64,
    /// How many times.
    pub count: u64,
}

/// Format version.
pub const REPORT_VERSION: u32 = 4;

/// The report, as the control plane signs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterReport {
    /// Format version.
    pub version: u32,
    /// The cluster (hex).
    pub cluster_id: String,
    /// The owner's nonce (hex).
    pub nonce: String,
    /// When the control plane made it (seconds since the epoch).
    pub created_at: i64,
    /// The serial of the owner's approval list the control plane holds.
    pub approvals_serial: Option<u64>,
    /// Every admitted node.
    pub nodes: Vec<ReportedNode>,
    /// Every refusal the owner has not acknowledged (aggregated per source and kind).
    pub refused: Vec<Refusal>,
    /// The Kubernetes API server this control plane runs, if any: what a kubeconfig that
    /// reaches it must see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<ReportedKubeApi>,
    /// The head of this control plane's CAS audit log, once its CAS is open: the key that signs
    /// the log and its latest checkpoint, so the quote over the report vouches for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cas: Option<ReportedCas>,
}

/// A control plane's CAS audit log, as its signed report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedCas {
    /// The log's verifier key (`<origin>+<key id>+<base64>`).
    pub log_key: String,
    /// Its latest signed checkpoint (a C2SP signed note).
    pub checkpoint: String,
}

/// A control plane's Kubernetes API server, as its signed report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedKubeApi {
    /// SHA-256 (hex) of the Kubernetes cluster CA's SubjectPublicKeyInfo.
    pub ca_key_sha256: String,
    /// SHA-256 (hex) of the serving certificate (DER) the API server presents.
    pub serving_cert_sha256: String,
    /// The addresses it serves on (`host:port`).
    pub addresses: Vec<String>,
}

/// One admitted node in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedNode {
    /// Node ID.
    pub node_id: String,
    /// Role.
    pub role: String,
    /// Reference-value set it matched at join.
    pub set: String,
    /// When it joined.
    pub joined_at: i64,
    /// SHA-256 of its AK SPKI (hex), bound to its EK at join.
    pub ak_spki_sha256: String,
    /// Its EK certificate (hex DER): the TPM the owner must have approved.
    pub ek_cert: String,
    /// The evidence the control plane appraised at join (hex).
    pub join_evidence: String,
    /// Its place in the mesh, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<ReportedMesh>,
}

/// A node's mesh state in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedMesh {
    /// Mesh address.
    pub address: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// When it last re-attested (seconds since the epoch), if since the control plane started.
    pub last_seen: Option<i64>,
    /// Whether it is in the current peer sets.
    pub in_peer_sets: bool,
}

/// A report with the control plane's signature, as `veil verify --save` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    /// The report JSON text.
    pub report: String,
    /// Control-plane TPM evidence (hex).
    pub evidence: String,
}

/// The 64 bytes the control plane's quote must cover for `report`.
pub fn report_digest(report: &[u8]) -> [u8; 64] {
    Sha512::new()
        .chain_update(crate::ids::CLUSTER_REPORT)
        .chain_update(report)
        .finalize()
        .into()
}
