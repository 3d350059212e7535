//! Veil node evidence, appraised: the AK a restricted signing key of a TPM, its quote over
//! the batch holding the caller's binding, the event log replayed into the quoted PCRs, the
//! cluster PCR, and the reference values of the node's role. Pure: no TPM, no network, no
//! clock (the time is a field).

use veil_attest_core::{Malformed, UnixTime};
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_attest_tpm::{
    EventLog, HashAlg, HexValue, Public, Quote, QuoteEvidence, QuoteSignature, TpmError, TpmPolicy,
    verify_quote,
};
use veil_reference::launch::{PCR_CLUSTER_ID, cluster_pcr};
use veil_reference::{NoSetMatches, ReferenceValues};

/// Why node evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppraisalError {
    /// A structure of the evidence is malformed.
    #[error(transparent)]
    Malformed(Malformed),
    /// The AK's public area is malformed.
    #[error("AK: {0}")]
    Ak(Malformed),
    /// The quote, its signature, its key or its event log does not hold.
    #[error(transparent)]
    Quote(TpmError),
    /// The quote was not made for this verifier.
    #[error("the quote's batch of {batch} bindings does not contain this session's binding")]
    Unbound {
        /// Bindings in the batch.
        batch: usize,
    },
    /// The node belongs to another cluster than the one required.
    #[error("PCR sha256:{PCR_CLUSTER_ID} (cluster ID): expected {expected}, found {found} ({why})")]
    ClusterPcr {
        /// Expected value (hex).
        expected: String,
        /// Found (hex).
        found: String,
        /// What that means.
        why: &'static str,
    },
    /// No reference-value set of the node's role accepts its measurements.
    #[error(transparent)]
    Reference(NoSetMatches),
}

/// What appraised node evidence establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeClaims {
    /// The reference-value set that matched.
    pub set: String,
    /// SHA-256 of the node's AK SubjectPublicKeyInfo.
    pub ak_spki_sha256: [u8; 32],
    /// The node's AK public area (TPMT_PUBLIC), for binding it to an EK at join.
    pub ak_public: Vec<u8>,
    /// The quote's qualifiedSigner: the AK's Qualified Name as the TPM computed it (the AK is
    /// restricted, so the TPM made the quote). Checked against the EK once it is known.
    pub qualified_signer: Vec<u8>,
    /// Quoted SHA-256 PCR values.
    pub pcrs: Vec<(u32, String)>,
    /// The cluster the node belongs to: `None` if its cluster PCR is zero, else the PCR value.
    pub cluster_pcr: Option<String>,
    /// The evidence as received (for cluster attestation reports).
    pub evidence: Vec<u8>,
}

/// Which cluster a peer must belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// None yet (cluster PCR zero): a node that may join or be initialised.
    Fresh,
    /// The cluster with this ID.
    Member(Vec<u8>),
    /// Either; the caller decides from [`NodeClaims::cluster_pcr`].
    Any,
}

/// Appraises Veil TPM evidence for one role.
#[derive(Debug, Clone)]
pub struct TpmAppraiser {
    /// Reference values.
    pub reference: ReferenceValues,
    /// The role the peer must have.
    pub role: String,
    /// AKs trusted (bound to an accepted EK by credential activation): SPKI SHA-256. `None`
    /// accepts any AK, for a join, where the AK is bound to an EK right after.
    pub trusted_aks: Option<Vec<[u8; 32]>>,
    /// The cluster the peer must belong to.
    pub membership: Membership,
    /// Verification time.
    pub now: UnixTime,
}

impl TpmAppraiser {
    /// Appraises evidence that must bind `report_data` (an attested-TLS binding, a report
    /// digest): it must be in the batch the quote covers.
    pub fn appraise(
        &self,
        evidence: &[u8],
        report_data: &[u8; 64],
    ) -> Result<NodeClaims, AppraisalError> {
        self.appraise_inner(evidence, Some(report_data))
    }

    /// Appraises evidence recorded by someone else (a control plane's record of a node's
    /// join): everything is checked except the session binding, which only its verifier could
    /// check — the record vouches for that.
    pub fn appraise_recorded(&self, evidence: &[u8]) -> Result<NodeClaims, AppraisalError> {
        self.appraise_inner(evidence, None)
    }

    fn appraise_inner(
        &self,
        evidence: &[u8],
        report_data: Option<&[u8; 64]>,
    ) -> Result<NodeClaims, AppraisalError> {
        let ev = TpmEvidence::parse(evidence).map_err(AppraisalError::Malformed)?;
        if let Some(rd) = report_data
            && !ev.bindings.contains(rd)
        {
            return Err(AppraisalError::Unbound {
                batch: ev.bindings.len(),
            });
        }
        let ak = Public::parse(&ev.ak_public).map_err(AppraisalError::Ak)?;
        // Before anything the key signed is believed: only a restricted signing key of a TPM
        // signs nothing but what the TPM itself computed.
        ak.check_attestation_key().map_err(AppraisalError::Quote)?;
        let sig =
            QuoteSignature::from_bytes(&ev.signature, &ak.key).map_err(AppraisalError::Quote)?;
        let log = EventLog::parse(&ev.event_log).map_err(AppraisalError::Malformed)?;
        let quote = Quote::parse(&ev.attest).map_err(AppraisalError::Malformed)?;
        let pcrs = log.expected_pcrs(&quote.pcr_select);
        let policy = TpmPolicy {
            nonce: Some(HexValue(batch_digest(&ev.bindings).to_vec())),
            ak_spki_sha256: self
                .trusted_aks
                .iter()
                .flatten()
                .map(|a| veil_attest_core::Bytes(*a))
                .collect(),
            require_ak_endorsement: self.trusted_aks.is_some(),
            ..TpmPolicy::default()
        };
        let claims = verify_quote(
            &QuoteEvidence {
                attest: &ev.attest,
                signature: &sig,
                ak: &ak.key,
                ak_qualified_name: None,
                pcrs: Some(&pcrs),
                event_log: Some(&log),
            },
            None,
            &policy,
            self.now,
        )
        .map_err(AppraisalError::Quote)?;
        let sha256 = claims
            .pcrs
            .get(&HashAlg::Sha256)
            .cloned()
            .unwrap_or_default();
        let cluster = sha256.get(&PCR_CLUSTER_ID).cloned().unwrap_or_default();
        let zero = hex::encode(cluster_pcr(HashAlg::Sha256, None));
        let expected = match &self.membership {
            Membership::Fresh => Some((zero.clone(), "the node already belongs to a cluster")),
            Membership::Member(id) => Some((
                hex::encode(cluster_pcr(HashAlg::Sha256, Some(id))),
                "the node belongs to another cluster, or to none",
            )),
            Membership::Any => None,
        };
        if let Some((want, why)) = expected
            && cluster != want
        {
            return Err(AppraisalError::ClusterPcr {
                expected: want,
                found: cluster,
                why,
            });
        }
        let set = self
            .reference
            .evaluate_tpm(&self.role, &claims)
            .map_err(AppraisalError::Reference)?
            .to_string();
        Ok(NodeClaims {
            set,
            ak_spki_sha256: claims.ak_spki_sha256.0,
            ak_public: ev.ak_public.clone(),
            qualified_signer: claims.quote.qualified_signer.clone(),
            pcrs: sha256.into_iter().collect(),
            cluster_pcr: (cluster != zero).then_some(cluster),
            evidence: evidence.to_vec(),
        })
    }
}
