//! A node's side of its evidence: [`TpmAttester`] answers an attested-TLS challenge with a
//! quote of the node's PCRs (boot chain, agent, config, image, cluster ID) whose extraData is
//! the session binding, together with the AK public area and the event log. Appraising that
//! evidence is `veil-appraisal`'s (pure, no TPM).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use veil_atls::Attester;
use veil_attest_tpm::EventLog;
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_reference::launch::{PCR_CLUSTER_ID, QUOTED_PCRS, cluster_event};
use veil_tpm_device::{Bank, NodeTpm};

/// The appraisal of node evidence, which is pure (see `veil-appraisal`).
pub use veil_appraisal::{AppraisalError, Membership, NodeClaims, TpmAppraiser};

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
        let asked = std::time::Instant::now();
        let mut tpm = self
            .tpm
            .lock()
            .map_err(|_| "TPM lock poisoned".to_string())?;
        let waited = asked.elapsed();
        let r = f(&mut tpm);
        let took = asked.elapsed();
        if took > std::time::Duration::from_millis(500) {
            tracing::warn!(
                event = "tpm_slow",
                waited_ms = waited.as_millis() as u64,
                took_ms = took.as_millis() as u64
            );
        }
        Ok(r)
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

    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, veil_atls::AttestError> {
        let poisoned = || "attestation queue poisoned".to_string();
        let mut q = self.queue.lock().map_err(|_| poisoned())?;
        q.pending.push(*report_data);
        loop {
            if let Some(result) = q.done.remove(report_data) {
                return result.map_err(veil_atls::AttestError);
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

impl veil_client::JoiningTpm for TpmAttester {
    fn endorsement(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        self.with_tpm(|t| {
            Ok::<_, veil_tpm_device::TpmDeviceError>((t.ek_certificate()?, t.load_ek()?))
        })?
        .map_err(|e| e.to_string())
    }

    fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.with_tpm(|t| t.activate_credential(id_object, encrypted_secret))?
            .map_err(|e| e.to_string())
    }

    fn join_cluster(&self, cluster_id: &[u8]) -> Result<(), String> {
        TpmAttester::join_cluster(self, cluster_id)
    }
}
