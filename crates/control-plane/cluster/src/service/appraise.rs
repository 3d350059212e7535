//! How a control plane appraises whoever connects: against every role the reference values
//! know, remembering the AK presented so that a refused caller can be named.

use std::sync::Mutex;

use sha2::{Digest, Sha256};
use veil_appraisal::{Membership, NodeClaims, TpmAppraiser};
use veil_atls::Appraiser;
use veil_attest_core::UnixTime;
use veil_attest_tpm::Public;

use super::Trust;

/// Appraises a peer against every role of the reference values.
pub(super) struct AnyRole<'a> {
    pub trust: &'a Trust,
    pub now: UnixTime,
    /// SHA-256 of the AK SPKI the peer presented, once its evidence was read.
    pub last_ak: Mutex<Option<[u8; 32]>>,
}

/// Claims of a node, with the roles it qualifies for.
#[derive(Debug)]
pub(super) struct Appraised {
    pub claims: NodeClaims,
    /// `(role, matched set)`.
    pub roles: Vec<(String, String)>,
    /// What the node's evidence vouches for (its attested-TLS context).
    pub context: [u8; 32],
}

impl Appraised {
    /// Whether the caller's measurements match `role`.
    pub fn qualifies_as(&self, role: &str) -> bool {
        self.roles.iter().any(|(r, _)| r == role)
    }
}

impl Appraiser for AnyRole<'_> {
    type Claims = Appraised;

    fn appraise(
        &self,
        evidence: &[u8],
        report_data: &[u8; 64],
    ) -> Result<Appraised, veil_atls::AppraiseError> {
        if let Ok(ev) = veil_attest_tpm::evidence::TpmEvidence::parse(evidence)
            && let Ok(ak) = Public::parse(&ev.ak_public)
            && let Ok(spki) = ak.key.spki_der()
            && let Ok(mut last) = self.last_ak.lock()
        {
            *last = Some(Sha256::digest(spki).into());
        }
        let mut roles: Vec<String> = self
            .trust
            .reference
            .sets
            .iter()
            .flat_map(|s| s.roles.keys().cloned())
            .collect();
        roles.sort();
        roles.dedup();
        let mut reasons = Vec::new();
        let mut matched = Vec::new();
        let mut claims = None;
        for role in roles {
            let a = TpmAppraiser {
                reference: self.trust.reference.clone(),
                role: role.clone(),
                trusted_aks: None,
                membership: Membership::Any,
                now: self.now,
            };
            match a.appraise(evidence, report_data) {
                Ok(c) => {
                    matched.push((role, c.set.clone()));
                    claims = Some(c);
                }
                Err(e) => reasons.push(format!("as {role}: {e}")),
            }
        }
        match claims {
            Some(claims) => Ok(Appraised {
                claims,
                roles: matched,
                // Filled in from the connection once the handshake is done.
                context: [0; 32],
            }),
            None => Err(veil_atls::AppraiseError::Refused(reasons.join("; "))),
        }
    }
}
