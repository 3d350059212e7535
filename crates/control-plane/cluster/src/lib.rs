//! Veil's control-plane services over attested TLS.
//!
//! - **Init** (owner → first control-plane node): the master secret and salt; the node derives
//!   the cluster ID and extends it into its cluster PCR.
//! - **Join** (node → control plane): the node's evidence is appraised against the reference
//!   values of its role; its cluster PCR must be zero; its EK certificate must chain to an
//!   accepted manufacturer root; its AK is bound to that EK by a credential only that TPM can
//!   activate. Then it receives its node ID, the cluster ID and its state-volume key.
//! - **Keys** (joined node → control plane): keys derived under stable IDs, each released
//!   only to the node that owns it, over a connection appraised just now.
//! - **Recover** (owner → restarted control plane): the master secret again; accepted only if
//!   it derives the same cluster ID.

pub mod ca;
pub mod mesh;
mod service;

pub use service::{
    ControlPlane, IDLE_TIMEOUT, MAX_ACTIVATIONS_PER_SECOND, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE, NodeMesh, NodeRecord, Refusal, Trust, check_signer_under_ek,
    node_id, prometheus_text, spki_sha256,
};
