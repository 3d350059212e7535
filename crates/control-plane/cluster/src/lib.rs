//! Veil's control-plane services, the server side, over attested TLS (clients are
//! `veil-client`'s; the messages `veil-wire`'s; every decision from bytes `veil-appraisal`'s).
//!
//! - **The owner** (signed by the owner's key, named in this node's measured configuration):
//!   init (the master secret, the salt and the approval list), recovery, approval lists,
//!   cluster reports, node removal and key rotation, acknowledging refusals.
//! - **Join** (node → control plane): evidence appraised against the reference values of the
//!   requested role, cluster PCR zero, EK certificate chained to an accepted manufacturer root,
//!   the quote's signer under that EK, the TPM on the owner's approval list for that role, the
//!   AK activated from a credential only that TPM can activate; then its node ID, the cluster
//!   ID, its state-volume key and node certificate (and, for a control plane, the secrets).
//! - **Keys and the mesh** (joined node): re-appraised on every connection; keys derived under
//!   stable IDs, each released only to the node that owns it.
//! - **This node's TPM** (attested nodes, or the owner): endorsement and credential
//!   activation, once per connection and rate-limited.
//!
//! Every refusal is kept (aggregated, persisted) until the owner acknowledges it.

pub mod ca;
pub mod mesh;
mod service;

pub use service::volumes::{AttachRefused, VolumeRecord};
pub use service::{
    ControlPlane, IDLE_TIMEOUT, KUBE_CREDENTIAL_VALIDITY, KUBE_SERVING_VALIDITY,
    MAX_ACTIVATIONS_PER_SECOND, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE, NodeMesh, NodeRecord,
    Refusal, Trust, prometheus_text,
};
