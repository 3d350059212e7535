//! Clients of Veil's control plane, over attested TLS: the owner's tools and the nodes.
//!
//! [`Session`] speaks the control-plane protocol ([`veil_wire::proto`]): the owner signs what
//! it asks with its key; a node attests, and joins with its TPM through [`JoiningTpm`] (the
//! node's side implements it; this crate holds no TPM library). [`clock`] is the one wall
//! clock of every shell.

pub mod clock;
mod session;

pub use session::{ClientError, Joined, Session};

use veil_appraisal::{NodeClaims, TpmAppraiser};

/// What joining needs of a node's TPM.
pub trait JoiningTpm: Send + Sync {
    /// The EK certificate (DER) and the EK public area (TPMT_PUBLIC).
    fn endorsement(&self) -> Result<(Vec<u8>, Vec<u8>), String>;
    /// Recovers the secret of a credential made for this TPM's EK and AK.
    fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String>;
    /// Extends the cluster ID into the cluster PCR (and records it in the event log).
    fn join_cluster(&self, cluster_id: &[u8]) -> Result<(), String>;
}

impl<T: JoiningTpm + ?Sized> JoiningTpm for std::sync::Arc<T> {
    fn endorsement(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        (**self).endorsement()
    }

    fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        (**self).activate_credential(id_object, encrypted_secret)
    }

    fn join_cluster(&self, cluster_id: &[u8]) -> Result<(), String> {
        (**self).join_cluster(cluster_id)
    }
}

/// A [`TpmAppraiser`] as attested TLS calls it.
#[derive(Debug, Clone, Copy)]
pub struct Appraising<'a>(pub &'a TpmAppraiser);

impl veil_atls::Appraiser for Appraising<'_> {
    type Claims = NodeClaims;

    fn appraise(
        &self,
        evidence: &[u8],
        report_data: &[u8; 64],
    ) -> Result<NodeClaims, veil_atls::AppraiseError> {
        self.0
            .appraise(evidence, report_data)
            .map_err(|e| veil_atls::AppraiseError::Refused(e.to_string()))
    }
}
