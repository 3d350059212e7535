//! The Configuration and Attestation Service on this control plane. It opens once the
//! cluster's secrets are held and the control plane knows where its state lives (beside the
//! state file, or on the encrypted state volume once sealed): its database key derives from the
//! master secret (`cluster/cas-v1`, so any control plane opens a copy), its audit log's signing
//! key from this node's (`node/<id>/cas-audit-log`, so each control plane's log is its own).
//!
//! A workload's release comes from a joined worker's agent over its attested connection
//! (authenticated like a key request), with evidence the agent's TPM quoted: the quote is
//! appraised here against the same reference values, the same AK and the cluster's ID, over
//! the evidence's binding. CAS refusals go to the CAS's audit log, not the cluster's report.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_appraisal::{Membership, TpmAppraiser};
use veil_attest_core::x509::Certificate;
use veil_cas::CasError;
use veil_cas::database::Database;
use veil_cas::policy::{Rule, Signature};
use veil_cas::service::Cas;
use veil_cas::workload::{Evidence, NodeAppraiser, NodeFacts};
use veil_client::clock::now;
use veil_keys::KeyId;
use veil_tlog::group::Appender;
use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;
use veil_wire::proto::{CasAnswer, CasCall, CasSignature, Response, SecretText};

use super::{Caller, ControlPlane, Trust, refused, unavailable};
use crate::ca::NodeIdentity;

/// The most bytes of log entries in one answer (frames are at most 1 MiB).
const LOG_PAGE_BYTES: usize = 512 * 1024;

/// Appraises a workload's quote as coming from the node that sent the request.
struct FromNode<'a> {
    trust: &'a Trust,
    node: &'a NodeIdentity,
    cluster_id: Vec<u8>,
}

impl NodeAppraiser for FromNode<'_> {
    fn appraise(&self, node: &str, quote: &[u8], binding: &[u8; 64]) -> Result<NodeFacts, String> {
        if node != self.node.node_id {
            return Err(format!(
                "the evidence names node {node}, but {} sent it",
                self.node.node_id
            ));
        }
        let a = TpmAppraiser {
            reference: self.trust.reference.clone(),
            role: self.node.role.clone(),
            trusted_aks: Some(vec![self.node.ak_spki_sha256]),
            membership: Membership::Member(self.cluster_id.clone()),
            now: now(),
        };
        let claims = a
            .appraise(quote, binding)
            .map_err(|e| format!("its quote: {e}"))?;
        Ok(NodeFacts {
            reference_set: claims.set,
            tee: "tpm".into(),
            tcb: None,
        })
    }
}

fn signatures(s: Vec<CasSignature>) -> Vec<Signature> {
    s.into_iter()
        .map(|s| Signature {
            key: s.key,
            signature: s.signature,
        })
        .collect()
}

fn answer(a: CasAnswer) -> Response {
    Response::Cas { answer: a }
}

fn cas_refused(e: &CasError) -> Response {
    refused(format!("cas: {e}"))
}

impl ControlPlane {
    /// Where the CAS keeps its database and log, if this control plane keeps state.
    fn cas_dir(&self) -> Result<std::path::PathBuf, Response> {
        let beside = |p: &std::path::Path| p.parent().map(|d| d.join("cas"));
        let dir = match &self.sealed {
            Some(sealed) => match sealed.lock().ok().and_then(|s| s.clone()) {
                Some(path) => beside(&path),
                None => {
                    return Err(unavailable(
                        "cas: the state volume is not mounted yet".to_string(),
                    ));
                }
            },
            None => self.state_file.as_deref().and_then(beside),
        };
        dir.ok_or_else(|| unavailable("cas: this control plane keeps no state".to_string()))
    }

    /// The CAS, opened on first use.
    pub(super) fn cas(&self) -> Result<Arc<Cas>, Response> {
        let mut slot = self
            .cas
            .lock()
            .map_err(|_| refused("cas: internal error: lock poisoned"))?;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let (secrets, cid) = {
            let st = self.lock_state().map_err(refused)?;
            match (&st.secrets, st.cluster_id) {
                (Some(s), Some(c)) => (s.clone(), c),
                _ => {
                    return Err(unavailable(
                        "cas: the control plane awaits recovery (veil recover)".to_string(),
                    ));
                }
            }
        };
        let dir = self.cas_dir()?;
        let fail = |what: &str, e: &dyn std::fmt::Display| refused(format!("cas: {what}: {e}"));
        let node_id = self
            .own_endorsement()
            .and_then(|e| {
                Certificate::from_der(&e.ek_cert, "EK certificate")
                    .map_err(|e| e.to_string())
                    .map(|c| veil_appraisal::endorsement::node_id(&c))
            })
            .map_err(|e| fail("this node's ID", &e))?;
        let derive = |id: &str| {
            KeyId::parse(id)
                .map_err(|e| e.to_string())
                .and_then(|k| secrets.derive(&k).map_err(|e| e.to_string()))
                .map_err(|e| fail("keys", &e))
        };
        let root = derive(veil_wire::ids::KEY_CAS_ROOT)?;
        let log_seed = derive(&format!(
            "node/{node_id}/{}",
            veil_wire::ids::KEY_CAS_AUDIT_LOG
        ))?;
        let cid = cid.to_string();
        let origin = format!(
            "{}/{}/{node_id}",
            veil_wire::ids::CAS_LOG_ORIGIN_PREFIX,
            cid.get(..16).unwrap_or(&cid)
        );
        std::fs::create_dir_all(&dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
        let signer =
            NoteSigner::from_seed(&origin, log_seed.expose()).map_err(|e| fail("log", &e))?;
        let log = Log::open(&dir.join("log"), signer).map_err(|e| fail("log", &e))?;
        let db = Database::open(&dir.join("cas.redb"), root.expose())
            .map_err(|e| fail("database", &e))?;
        let cas = Arc::new(Cas::open(db, Appender::new(log)).map_err(|e| fail("open", &e))?);
        tracing::info!(event = "cas_opened", dir = %dir.display(), %origin, "the CAS serves");
        *slot = Some(cas.clone());
        Ok(cas)
    }

    /// The CAS's log key and latest checkpoint, for the signed report (opening the CAS if it
    /// can be opened now).
    pub(super) fn cas_head(&self) -> Option<veil_wire::report::ReportedCas> {
        let cas = self.cas().ok()?;
        Some(cas.log().with_log(|l| veil_wire::report::ReportedCas {
            log_key: l.verifier().to_text(),
            checkpoint: l.checkpoint().to_string(),
        }))
    }

    /// `cas`: one call to the CAS.
    pub(super) fn cas_call(&self, caller: &mut Caller<'_>, call: CasCall) -> Response {
        let cas = match self.cas() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let t = u64::try_from(now().0).unwrap_or(0);
        match call {
            CasCall::Provision {
                owner,
                signatures: s,
            } => {
                let rule: Rule = match serde_json::from_str(&owner) {
                    Ok(r) => r,
                    Err(e) => return refused(format!("cas: the owner's rule: {e}")),
                };
                match cas.provision(rule, &signatures(s), t) {
                    Ok(()) => answer(CasAnswer::Done),
                    Err(e) => cas_refused(&e),
                }
            }
            CasCall::Put {
                document,
                update,
                signatures: s,
            } => match cas.put(document.as_bytes(), update, &signatures(s), t) {
                Ok(h) => answer(CasAnswer::Stored {
                    hash: h.to_string(),
                }),
                Err(e) => cas_refused(&e),
            },
            CasCall::Nonce => match cas.nonce(t) {
                Ok(n) => answer(CasAnswer::Nonce {
                    nonce: hex::encode(n),
                }),
                Err(e) => cas_refused(&e),
            },
            CasCall::Read {
                name,
                challenge,
                signatures: s,
            } => {
                let Some(c) = hex::decode(&challenge)
                    .ok()
                    .and_then(|c| <[u8; 32]>::try_from(c).ok())
                else {
                    return refused("cas: the challenge is not 64 hex digits");
                };
                match cas
                    .read(&name, &c, &signatures(s), t)
                    .and_then(|s| s.canonical_json())
                {
                    Ok(document) => answer(CasAnswer::Session { document }),
                    Err(e) => cas_refused(&e),
                }
            }
            CasCall::Release {
                node_cert,
                evidence,
            } => self.cas_release(&cas, caller, &node_cert, &evidence, t),
            CasCall::Backup => match cas.backup(t) {
                Ok(b) => answer(CasAnswer::Backup {
                    backup: STANDARD.encode(b),
                }),
                Err(e) => cas_refused(&e),
            },
            CasCall::Restore {
                backup,
                signatures: s,
            } => {
                let Ok(b) = STANDARD.decode(&backup) else {
                    return refused("cas: the backup is not base64");
                };
                match cas.restore(&b, &signatures(s), t) {
                    Ok(()) => answer(CasAnswer::Done),
                    Err(e) => cas_refused(&e),
                }
            }
            CasCall::Log { start } => cas.log().with_log(|l| {
                let mut entries = Vec::new();
                let mut bytes = 0;
                let mut i = start;
                while i < l.size() && bytes < LOG_PAGE_BYTES {
                    match l.entry(i) {
                        Ok(e) => {
                            bytes += e.len();
                            entries.push(STANDARD.encode(e));
                        }
                        Err(e) => return refused(format!("cas: log: {e}")),
                    }
                    i += 1;
                }
                answer(CasAnswer::Log {
                    verifier_key: l.verifier().to_text(),
                    checkpoint: l.checkpoint().to_string(),
                    start,
                    entries,
                })
            }),
        }
    }

    fn cas_release(
        &self,
        cas: &Cas,
        caller: &mut Caller<'_>,
        node_cert: &str,
        evidence: &str,
        t: u64,
    ) -> Response {
        let op = "cas release";
        let parsed = Evidence::parse(evidence.as_bytes());
        let authenticated = match self.lock_state() {
            Err(e) => Err(refused(format!("{op}: {e}"))),
            Ok(st) => self
                .authenticate(&st, caller, node_cert, op)
                .map(|n| (n, st.cluster_id.map(|c| c.0.to_vec()).unwrap_or_default())),
        };
        let (node, cid) = match authenticated {
            Ok(v) => v,
            Err(r) => {
                // Refused before the CAS's rules: in its log all the same.
                if let Response::Refused { reason } | Response::Unavailable { reason } = &r
                    && let Err(e) =
                        cas.record_refusal("cas.release", parsed.as_ref().ok(), reason, t)
                {
                    return cas_refused(&e);
                }
                return r;
            }
        };
        let evidence = match parsed {
            Ok(e) => e,
            Err(e) => {
                let reason = e.to_string();
                return match cas.record_refusal("cas.release", None, &reason, t) {
                    Ok(()) => cas_refused(&e),
                    Err(l) => cas_refused(&l),
                };
            }
        };
        let appraiser = FromNode {
            trust: &self.trust,
            node: &node,
            cluster_id: cid,
        };
        match cas
            .release(&evidence, &appraiser, t)
            .and_then(|r| serde_json::to_string(&r).map_err(|e| CasError::Invalid(e.to_string())))
        {
            Ok(r) => answer(CasAnswer::Released {
                release: SecretText::new(r),
            }),
            Err(e) => cas_refused(&e),
        }
    }
}
