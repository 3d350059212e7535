//! Workload evidence: what a node's agent says of a workload that asked it for its
//! configuration, bound to a nonce the CAS issued and to the node's TPM.
//!
//! The agent learns the workload's identity from the kernel and the container runtime (the
//! caller's peer credentials → its cgroup → its container → the pod through containerd's CRI),
//! never from the workload. It quotes its TPM over the *binding*:
//!
//! ```text
//! SHA-512("veil-workload/v1\n" || JCS({"identity": …, "nonce": …, "service": …, "session": …}))
//! ```
//!
//! where JCS is RFC 8785 canonical JSON, so anyone can recompute it. The CAS takes the nonce
//! once (a replayed request is refused), has the node's quote appraised over the binding (a
//! quote over other words is refused), and only then matches the identity against the session.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::CasError;
use crate::matching::Workload;

/// The largest evidence document taken.
pub const MAX_EVIDENCE: usize = 64 * 1024;
/// How long a nonce may be used after it was issued (seconds).
pub const NONCE_LIFETIME: u64 = 60;
/// The most nonces outstanding at once.
pub const MAX_NONCES: usize = 1 << 16;

/// What the agent attests of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The node it runs on.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The container that asked.
    pub container: String,
    /// The digests of the images of the pod's containers (`sha256:…`).
    pub image_digests: Vec<String>,
    /// The command of the container that asked.
    pub command: Vec<String>,
}

/// A workload's request for its service's configuration, as the agent sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The session.
    pub session: String,
    /// The service in it.
    pub service: String,
    /// Who asked.
    pub identity: Identity,
    /// The nonce the CAS issued (64 hex digits).
    pub nonce: String,
    /// The node's quote over [`binding`] (base64; its format is the node appraiser's).
    pub quote: String,
}

#[derive(Serialize)]
struct Bound<'a> {
    identity: &'a Identity,
    nonce: &'a str,
    service: &'a str,
    session: &'a str,
}

/// The 64 bytes the node's quote must cover (its report data).
pub fn binding(
    session: &str,
    service: &str,
    identity: &Identity,
    nonce: &str,
) -> Result<[u8; 64], CasError> {
    let canonical = serde_json_canonicalizer::to_vec(&Bound {
        identity,
        nonce,
        service,
        session,
    })
    .map_err(|e| CasError::Invalid(format!("cannot canonicalise the evidence: {e}")))?;
    let mut h = Sha512::new();
    h.update(b"veil-workload/v1\n");
    h.update(&canonical);
    Ok(h.finalize().into())
}

fn bad(why: impl Into<String>) -> CasError {
    CasError::Invalid(format!("evidence: {}", why.into()))
}

impl Evidence {
    /// Parses evidence (JSON, at most [`MAX_EVIDENCE`] bytes), checking its shape.
    pub fn parse(bytes: &[u8]) -> Result<Self, CasError> {
        if bytes.len() > MAX_EVIDENCE {
            return Err(bad(format!(
                "{} bytes, at most {MAX_EVIDENCE}",
                bytes.len()
            )));
        }
        let e: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        crate::session::check_name(&e.session)?;
        e.nonce_bytes()?;
        e.quote_bytes()?;
        let id = &e.identity;
        let fields = [
            ("node", &id.node),
            ("namespace", &id.namespace),
            ("service_account", &id.service_account),
            ("pod", &id.pod),
            ("pod_uid", &id.pod_uid),
            ("container", &id.container),
        ];
        for (what, v) in fields {
            if v.is_empty() || v.len() > 253 {
                return Err(bad(format!("identity.{what} must be 1 to 253 characters")));
            }
        }
        if e.service.is_empty() || e.service.len() > 253 {
            return Err(bad("the service must be 1 to 253 characters"));
        }
        if id.image_digests.is_empty() || id.image_digests.len() > 64 {
            return Err(bad("identity.image_digests must hold 1 to 64 digests"));
        }
        Ok(e)
    }

    /// The nonce's bytes.
    pub fn nonce_bytes(&self) -> Result<[u8; 32], CasError> {
        hex::decode(&self.nonce)
            .ok()
            .and_then(|n| <[u8; 32]>::try_from(n).ok())
            .ok_or_else(|| bad("the nonce is not 64 hex digits"))
    }

    /// The quote's bytes.
    pub fn quote_bytes(&self) -> Result<Vec<u8>, CasError> {
        STANDARD
            .decode(&self.quote)
            .map_err(|e| bad(format!("the quote is not base64: {e}")))
    }

    /// What the quote must cover.
    pub fn binding(&self) -> Result<[u8; 64], CasError> {
        binding(&self.session, &self.service, &self.identity, &self.nonce)
    }
}

/// What the appraisal of a node's quote established about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's reference-value set.
    pub reference_set: String,
    /// Its TEE (`tpm`, `snp`, `tdx`).
    pub tee: String,
    /// Its TCB, where its TEE has one.
    pub tcb: Option<u64>,
}

/// Appraises a node's quote: the control plane's knowledge of its nodes (admitted, not
/// removed, their attestation keys and reference values). Given per request: the control
/// plane knows which node sent it.
pub trait NodeAppraiser: Send + Sync {
    /// Checks that `quote` is node `node`'s current, genuine evidence covering `binding`, and
    /// says what it established; or why not.
    fn appraise(&self, node: &str, quote: &[u8], binding: &[u8; 64]) -> Result<NodeFacts, String>;
}

impl Identity {
    /// The facts sessions match on: this identity on a node with `facts`.
    pub fn workload(&self, facts: &NodeFacts) -> Workload {
        Workload {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            pod: self.pod.clone(),
            image_digests: self.image_digests.clone(),
            reference_set: facts.reference_set.clone(),
            tee: facts.tee.clone(),
            tcb: facts.tcb,
        }
    }
}

/// Nonces issued and not yet used: each is taken once, within [`NONCE_LIFETIME`].
#[derive(Debug, Default)]
pub struct Nonces {
    issued: BTreeMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl Nonces {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(n, at)) = self.order.front() {
            if at + NONCE_LIFETIME > now && self.order.len() < MAX_NONCES {
                break;
            }
            self.order.pop_front();
            if self.issued.get(&n) == Some(&at) {
                self.issued.remove(&n);
            }
        }
    }

    /// Records `nonce` as issued at `now` (the oldest is forgotten when the book is full).
    pub fn issue(&mut self, nonce: [u8; 32], now: u64) {
        self.expire(now);
        self.issued.insert(nonce, now);
        self.order.push_back((nonce, now));
    }

    /// Takes `nonce`: Ok once, if it was issued within [`NONCE_LIFETIME`] of `now`.
    pub fn take(&mut self, nonce: &[u8; 32], now: u64) -> Result<(), CasError> {
        match self.issued.remove(nonce) {
            None => Err(CasError::NotAttested(
                "the nonce was not issued by this CAS or was used already (replayed evidence)"
                    .into(),
            )),
            Some(at) if at + NONCE_LIFETIME <= now => Err(CasError::NotAttested(format!(
                "the nonce expired: issued at {at}, used at {now}, lifetime {NONCE_LIFETIME} s"
            ))),
            Some(_) => Ok(()),
        }
    }
}
