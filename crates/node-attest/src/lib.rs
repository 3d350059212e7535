//! Veil node evidence over attested TLS.
//!
//! [`TpmAttester`] answers an attested-TLS challenge with a quote of the node's Veil PCRs
//! (agent, config, image, cluster ID) whose extraData is the session binding, together with
//! the AK public area and the launch event log. [`TpmAppraiser`] verifies such evidence:
//! AK trusted (bound to an EK at join, pinned since), signature, binding, event log replayed
//! into the quoted PCRs, the cluster-ID PCR, and the reference values of the node's role.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use veil_atls::{Appraiser, Attester};
use veil_attest_core::UnixTime;
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_attest_tpm::{
    EventLog, HashAlg, HexValue, Public, Quote, QuoteEvidence, QuoteSignature, TpmPolicy,
    verify_quote,
};
use veil_reference::ReferenceValues;
use veil_reference::launch::{PCR_CLUSTER_ID, QUOTED_PCRS, cluster_pcr};
use veil_tpm_device::{Bank, NodeTpm};

/// Produces Veil TPM evidence from the node's TPM (with an AK already created).
///
/// Requests that arrive while a quote is being made are batched into the next quote: one TPM
/// signature answers every verifier waiting at that moment, each finding its own binding in the
/// signed batch. A node's TPM signs a quote in milliseconds, so this is what lets one node
/// attest to many peers at once.
#[derive(Debug)]
pub struct TpmAttester {
    tpm: Mutex<NodeTpm>,
    event_log: Vec<u8>,
    queue: Mutex<Queue>,
    served: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<[u8; 64]>,
    leader: bool,
    done: HashMap<[u8; 64], Result<Vec<u8>, String>>,
}

impl TpmAttester {
    /// Uses `tpm` (its AK created) and the launch event log to send with each quote.
    pub fn new(tpm: NodeTpm, event_log: Vec<u8>) -> Self {
        Self {
            tpm: Mutex::new(tpm),
            event_log,
            queue: Mutex::new(Queue::default()),
            served: Condvar::new(),
        }
    }

    fn quote_batch(&self, bindings: Vec<[u8; 64]>) -> Result<Vec<u8>, String> {
        let mut tpm = self
            .tpm
            .lock()
            .map_err(|_| "TPM lock poisoned".to_string())?;
        let q = tpm
            .quote(
                &batch_digest(&bindings),
                &[Bank::Sha1, Bank::Sha256],
                &QUOTED_PCRS,
            )
            .map_err(|e| e.to_string())?;
        TpmEvidence {
            ak_public: tpm.ak_public().to_vec(),
            attest: q.attest,
            signature: q.signature,
            event_log: self.event_log.clone(),
            bindings,
        }
        .to_bytes()
        .map_err(|e| e.to_string())
    }
}

impl Attester for TpmAttester {
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        let poisoned = || "attestation queue poisoned".to_string();
        let mut q = self.queue.lock().map_err(|_| poisoned())?;
        q.pending.push(*report_data);
        loop {
            if let Some(result) = q.done.remove(report_data) {
                return result;
            }
            if !q.leader {
                // Lead: quote everything pending, publish, repeat while requests keep coming.
                q.leader = true;
                while !q.pending.is_empty() {
                    let batch = std::mem::take(&mut q.pending);
                    drop(q);
                    let result = self.quote_batch(batch.clone());
                    q = self.queue.lock().map_err(|_| poisoned())?;
                    for b in batch {
                        q.done.insert(b, result.clone());
                    }
                    self.served.notify_all();
                }
                q.leader = false;
                continue;
            }
            q = self.served.wait(q).map_err(|_| poisoned())?;
        }
    }
}

/// What appraised node evidence establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeClaims {
    /// The reference-value set that matched.
    pub set: String,
    /// SHA-256 of the node's AK SubjectPublicKeyInfo.
    pub ak_spki_sha256: [u8; 32],
    /// Quoted SHA-256 PCR values.
    pub pcrs: Vec<(u32, String)>,
}

/// Appraises Veil TPM evidence for one role.
#[derive(Debug, Clone)]
pub struct TpmAppraiser {
    /// Reference values.
    pub reference: ReferenceValues,
    /// The role the peer must have.
    pub role: String,
    /// AKs trusted (bound to an accepted EK by credential activation): SPKI SHA-256.
    pub trusted_aks: Vec<[u8; 32]>,
    /// The cluster the peer must belong to (`None`: it must belong to none yet).
    pub cluster_id: Option<Vec<u8>>,
    /// Verification time.
    pub now: UnixTime,
}

impl Appraiser for TpmAppraiser {
    type Claims = NodeClaims;

    fn appraise(&self, evidence: &[u8], report_data: &[u8; 64]) -> Result<NodeClaims, String> {
        let ev = TpmEvidence::parse(evidence).map_err(|e| e.to_string())?;
        if !ev.bindings.contains(report_data) {
            return Err(format!(
                "the quote's batch of {} bindings does not contain this session's binding",
                ev.bindings.len()
            ));
        }
        let ak = Public::parse(&ev.ak_public).map_err(|e| format!("AK: {e}"))?;
        let sig = QuoteSignature::from_bytes(&ev.signature, &ak.key).map_err(|e| e.to_string())?;
        let log = EventLog::parse(&ev.event_log).map_err(|e| e.to_string())?;
        let quote = Quote::parse(&ev.attest).map_err(|e| e.to_string())?;
        let pcrs = log.expected_pcrs(&quote.pcr_select);
        let policy = TpmPolicy {
            nonce: Some(HexValue(batch_digest(&ev.bindings).to_vec())),
            ak_spki_sha256: self
                .trusted_aks
                .iter()
                .map(|a| veil_attest_core::Bytes(*a))
                .collect(),
            require_ak_endorsement: true,
            ..TpmPolicy::default()
        };
        let claims = verify_quote(
            &QuoteEvidence {
                attest: &ev.attest,
                signature: &sig,
                ak: &ak.key,
                pcrs: Some(&pcrs),
                event_log: Some(&log),
            },
            None,
            &policy,
            self.now,
        )
        .map_err(|e| e.to_string())?;
        let sha256 = claims
            .pcrs
            .get(&HashAlg::Sha256)
            .cloned()
            .unwrap_or_default();
        let cluster = sha256.get(&PCR_CLUSTER_ID).cloned().unwrap_or_default();
        let want = hex::encode(cluster_pcr(HashAlg::Sha256, self.cluster_id.as_deref()));
        if cluster != want {
            return Err(format!(
                "PCR sha256:{PCR_CLUSTER_ID} (cluster ID): expected {want}, found {cluster}{}",
                if self.cluster_id.is_none() {
                    " (the node already belongs to a cluster)"
                } else {
                    " (the node belongs to another cluster, or to none)"
                }
            ));
        }
        let set = self
            .reference
            .evaluate_tpm(&self.role, &claims)
            .map_err(|e| e.to_string())?
            .to_string();
        Ok(NodeClaims {
            set,
            ak_spki_sha256: claims.ak_spki_sha256.0,
            pcrs: sha256.into_iter().collect(),
        })
    }
}
