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
use veil_reference::launch::{PCR_CLUSTER_ID, QUOTED_PCRS, cluster_event, cluster_pcr};
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
    event_log: Mutex<EventLog>,
    queue: Mutex<Queue>,
    served: Condvar,
    context: Mutex<[u8; 32]>,
    /// Whether the last quote succeeded.
    healthy: std::sync::atomic::AtomicBool,
    /// Quotes that failed even after reconnecting.
    failures: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<[u8; 64]>,
    leader: bool,
    done: HashMap<[u8; 64], Result<Vec<u8>, String>>,
}

impl TpmAttester {
    /// Uses `tpm` (its AK created) and the launch event log to send with each quote.
    pub fn new(tpm: NodeTpm, event_log: EventLog) -> Self {
        Self {
            tpm: Mutex::new(tpm),
            event_log: Mutex::new(event_log),
            queue: Mutex::new(Queue::default()),
            served: Condvar::new(),
            context: Mutex::new([0; 32]),
            healthy: std::sync::atomic::AtomicBool::new(true),
            failures: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the TPM answered the last quote (after one reconnection, if needed): a node
    /// whose TPM cannot quote cannot attest, and its health check says so.
    pub fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Quotes that failed even after reconnecting to the TPM.
    pub fn quote_failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets what this node's evidence vouches for from now on (e.g. the hash of its mesh
    /// key), on every attested connection it makes or accepts.
    pub fn set_context(&self, context: [u8; 32]) {
        if let Ok(mut c) = self.context.lock() {
            *c = context;
        }
    }

    /// Runs `f` with the node's TPM (for endorsement reads and credential activation).
    pub fn with_tpm<R>(&self, f: impl FnOnce(&mut NodeTpm) -> R) -> Result<R, String> {
        let mut tpm = self
            .tpm
            .lock()
            .map_err(|_| "TPM lock poisoned".to_string())?;
        Ok(f(&mut tpm))
    }

    /// Extends the cluster ID into the cluster PCR and records it in the event log: from now
    /// on this node belongs to that cluster (for life: the PCR resets only with the TPM).
    pub fn join_cluster(&self, cluster_id: &[u8]) -> Result<(), String> {
        let event = cluster_event(cluster_id);
        let digest = |i: usize| {
            event
                .digests
                .get(i)
                .map(|(_, d)| d.clone())
                .unwrap_or_default()
        };
        let sha1: [u8; 20] = digest(0).try_into().map_err(|_| "SHA-1 digest length")?;
        let sha256: [u8; 32] = digest(1).try_into().map_err(|_| "SHA-256 digest length")?;
        let mut tpm = self
            .tpm
            .lock()
            .map_err(|_| "TPM lock poisoned".to_string())?;
        let mut log = self
            .event_log
            .lock()
            .map_err(|_| "log lock poisoned".to_string())?;
        tpm.extend(PCR_CLUSTER_ID, &sha1, &sha256)
            .map_err(|e| e.to_string())?;
        log.events.push(event);
        Ok(())
    }

    fn quote_batch(&self, bindings: Vec<[u8; 64]>) -> Result<Vec<u8>, String> {
        let mut tpm = self
            .tpm
            .lock()
            .map_err(|_| "TPM lock poisoned".to_string())?;
        // The log is read under the TPM lock, so it matches the PCRs the quote covers.
        let event_log = self
            .event_log
            .lock()
            .map_err(|_| "log lock poisoned".to_string())?
            .to_bytes();
        let digest = batch_digest(&bindings);
        let quote =
            |tpm: &mut NodeTpm| tpm.quote(&digest, &[Bank::Sha1, Bank::Sha256], &QUOTED_PCRS);
        // A failed quote may be a broken connection (the TPM restarted, descriptors ran out):
        // reconnect, with the same AK, and try once more before reporting unhealthy.
        let q = match quote(&mut tpm) {
            Ok(q) => q,
            Err(first) => {
                tracing::warn!(error = %first, "quote failed; reconnecting to the TPM");
                match tpm.reconnect().and_then(|()| quote(&mut tpm)) {
                    Ok(q) => q,
                    Err(e) => {
                        self.failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.healthy
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        return Err(format!("quote: {first}; after reconnecting: {e}"));
                    }
                }
            }
        };
        self.healthy
            .store(true, std::sync::atomic::Ordering::Relaxed);
        TpmEvidence {
            ak_public: tpm.ak_public().to_vec(),
            attest: q.attest,
            signature: q.signature,
            event_log,
            bindings,
        }
        .to_bytes()
        .map_err(|e| e.to_string())
    }
}

impl Attester for TpmAttester {
    fn context(&self) -> [u8; 32] {
        self.context.lock().map(|c| *c).unwrap_or([0; 32])
    }

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
    /// Appraises evidence recorded by someone else (a control plane's record of a node's
    /// join): everything is checked except the session binding, which only its verifier could
    /// check — the record vouches for that.
    pub fn appraise_recorded(&self, evidence: &[u8]) -> Result<NodeClaims, String> {
        self.appraise_inner(evidence, None)
    }

    fn appraise_inner(
        &self,
        evidence: &[u8],
        report_data: Option<&[u8; 64]>,
    ) -> Result<NodeClaims, String> {
        let ev = TpmEvidence::parse(evidence).map_err(|e| e.to_string())?;
        if let Some(rd) = report_data
            && !ev.bindings.contains(rd)
        {
            return Err(format!(
                "the quote's batch of {} bindings does not contain this session's binding",
                ev.bindings.len()
            ));
        }
        let ak = Public::parse(&ev.ak_public).map_err(|e| format!("AK: {e}"))?;
        // Before anything the key signed is believed: only a restricted signing key of a TPM
        // signs nothing but what the TPM itself computed.
        ak.check_attestation_key().map_err(|e| e.to_string())?;
        let sig = QuoteSignature::from_bytes(&ev.signature, &ak.key).map_err(|e| e.to_string())?;
        let log = EventLog::parse(&ev.event_log).map_err(|e| e.to_string())?;
        let quote = Quote::parse(&ev.attest).map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
        let sha256 = claims
            .pcrs
            .get(&HashAlg::Sha256)
            .cloned()
            .unwrap_or_default();
        let cluster = sha256.get(&PCR_CLUSTER_ID).cloned().unwrap_or_default();
        let zero = hex::encode(cluster_pcr(HashAlg::Sha256, None));
        let expected = match &self.membership {
            Membership::Fresh => Some((zero.clone(), " (the node already belongs to a cluster)")),
            Membership::Member(id) => Some((
                hex::encode(cluster_pcr(HashAlg::Sha256, Some(id))),
                " (the node belongs to another cluster, or to none)",
            )),
            Membership::Any => None,
        };
        if let Some((want, why)) = expected
            && cluster != want
        {
            return Err(format!(
                "PCR sha256:{PCR_CLUSTER_ID} (cluster ID): expected {want}, found {cluster}{why}"
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
            ak_public: ev.ak_public.clone(),
            qualified_signer: claims.quote.qualified_signer.clone(),
            pcrs: sha256.into_iter().collect(),
            cluster_pcr: (cluster != zero).then_some(cluster),
            evidence: evidence.to_vec(),
        })
    }
}

impl Appraiser for TpmAppraiser {
    type Claims = NodeClaims;

    fn appraise(&self, evidence: &[u8], report_data: &[u8; 64]) -> Result<NodeClaims, String> {
        self.appraise_inner(evidence, Some(report_data))
    }
}
