//! Confidential Containers' key-broker protocol (KBS protocol 0.4.0), spoken by the CAS, so a
//! standard KBS client fetches a session's secret with evidence Veil accepts.
//!
//! ```text
//! POST /kbs/v0/auth      Request {version "0.4.0", tee "tpm", extra-params}
//!                        → Challenge {nonce, extra-params {selected-hash-algorithm}}
//!                          and the cookie kbs-session-id
//! POST /kbs/v0/attest    Attestation {runtime-data {nonce, tee-pubkey},
//!                                     tee-evidence {primary_evidence, additional_evidence}}
//!                        → {"token": …}
//! GET  /kbs/v0/resource/<session>/<service>/<secret>
//!                        → the secret's value as a flattened JWE for tee-pubkey
//! ```
//!
//! The primary evidence is a node's agent's word for a workload ([`WorkloadEvidence`]): the
//! workload's identity as the agent established it, the session and service it asks to be,
//! and the node's TPM quote over the workload binding of [`crate::workload`] whose nonce is
//! the report data — the hash (SHA-384 unless the challenge selects another) of the RFC 8785
//! JSON of `{"additional-evidence", "nonce", "tee-pubkey"}` — so the quote covers the
//! challenge and the key the response is encrypted to. The CAS takes the challenge's nonce
//! once, has the node's quote appraised, and admits the workload against the session's
//! service; a resource is then released only if that service's configuration names it, the
//! workload still matching the session as it is at that moment. Every attestation and every
//! resource request, allowed or refused, is an entry of the audit log.
//!
//! Answers: 401 when the cookie is missing, unknown or expired (the client attests again),
//! 403 for a denial (a 401 would make the client attest again, three times, for nothing), 404
//! for a session that does not exist, 400 for a malformed request.

pub mod http;
pub mod jwe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::CasError;
use crate::service::Cas;
use crate::workload::{Identity, MAX_EVIDENCE, NodeAppraiser, NodeFacts};

/// The protocol version spoken (exactly: the client sends it, the server checks it).
pub const VERSION: &str = "0.4.0";
/// The session cookie.
pub const COOKIE: &str = "kbs-session-id";
/// The TEE a Veil workload's evidence is for: it is rooted in its node's TPM.
pub const TEE: &str = "tpm";
/// The largest request body taken.
pub const MAX_BODY: usize = MAX_EVIDENCE + 16 * 1024;
/// How long a challenge may be answered, and an attested session used (seconds).
pub const LIFETIME: u64 = 300;
/// The most KBS sessions held at once.
pub const MAX_SESSIONS: usize = 4096;

/// The client's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The protocol version.
    pub version: String,
    /// The TEE the client's evidence is for.
    pub tee: String,
    /// `{"supported-hash-algorithms": [...]}`, or empty.
    #[serde(rename = "extra-params", default)]
    pub extra_params: Value,
}

/// The server's challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes, base64.
    pub nonce: String,
    /// `{"selected-hash-algorithm": …}`.
    #[serde(rename = "extra-params")]
    pub extra_params: Value,
}

/// What the client's evidence binds besides itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeData {
    /// The challenge's nonce.
    pub nonce: String,
    /// The client's ephemeral key (a JWK), the one the responses are encrypted to.
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: Value,
}

/// The evidence of the client's TEE and of its devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeEvidence {
    /// For Veil: a [`WorkloadEvidence`].
    pub primary_evidence: Value,
    /// Devices' evidence (a JSON map as a string); Veil appraises none, so it must be empty.
    #[serde(default)]
    pub additional_evidence: String,
}

/// The client's answer to the challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Initialisation data from the host: not taken (Veil measures a node's configuration
    /// itself), so it must be absent or null.
    #[serde(rename = "init-data", default)]
    pub init_data: Option<Value>,
    /// The nonce and the key.
    #[serde(rename = "runtime-data")]
    pub runtime_data: RuntimeData,
    /// The evidence.
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: CompositeEvidence,
}

/// A node's agent's evidence for a workload in the KBS protocol: [`crate::workload::Evidence`]
/// with the report data in place of a CAS nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEvidence {
    /// The session.
    pub session: String,
    /// The service in it.
    pub service: String,
    /// Who asked, as the agent established it.
    pub identity: Identity,
    /// The node's quote over the binding with the report data as its nonce (base64).
    pub quote: String,
}

/// The error body of a refused request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInformation {
    /// What kind of error.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Why.
    pub detail: String,
}

/// The hash of the runtime data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384 (the client's default).
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Its name in the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The one to use: SHA-384 unless the client lists others and not it.
    fn select(extra: &Value) -> Result<Self, KbsError> {
        let listed = match extra.get("supported-hash-algorithms") {
            None => return Ok(Self::Sha384),
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(KbsError::BadRequest(
                    "extra-params.supported-hash-algorithms is not a list".into(),
                ));
            }
        };
        let has = |n: &str| {
            listed
                .iter()
                .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(n)))
        };
        [Self::Sha384, Self::Sha512, Self::Sha256]
            .into_iter()
            .find(|a| has(a.name()))
            .ok_or_else(|| {
                KbsError::BadRequest(format!(
                    "supported-hash-algorithms {listed:?} has none of sha384, sha512, sha256"
                ))
            })
    }
}

/// The report data the evidence must bind: the digest of the RFC 8785 JSON of
/// `{"tee-pubkey", "nonce", "additional-evidence"}`.
pub fn report_data(
    algorithm: HashAlgorithm,
    runtime: &RuntimeData,
    additional_evidence: &str,
) -> Result<Vec<u8>, KbsError> {
    let v = serde_json::json!({
        "tee-pubkey": runtime.tee_pubkey,
        "nonce": runtime.nonce,
        "additional-evidence": additional_evidence,
    });
    let canonical = serde_json_canonicalizer::to_vec(&v)
        .map_err(|e| KbsError::BadRequest(format!("runtime data: {e}")))?;
    Ok(algorithm.digest(&canonical))
}

/// Why a KBS request failed, with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KbsError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no session, or it expired (the client attests again).
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: refused.
    #[error("{0}")]
    Denied(String),
    /// 404: no such session or resource.
    #[error("{0}")]
    NotFound(String),
    /// 503: too many sessions at once.
    #[error("{0}")]
    Busy(String),
    /// 500: this side failed (the audit log could not be written, say).
    #[error("{0}")]
    Internal(String),
}

impl KbsError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::Denied(_) => 403,
            Self::NotFound(_) => 404,
            Self::Busy(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The body.
    pub fn information(&self) -> ErrorInformation {
        let kind = match self {
            Self::BadRequest(_) => "InvalidRequest",
            Self::Unauthenticated(_) => "Unauthenticated",
            Self::Denied(_) => "PolicyDeny",
            Self::NotFound(_) => "ResourceNotFound",
            Self::Busy(_) => "TooManySessions",
            Self::Internal(_) => "InternalError",
        };
        ErrorInformation {
            error_type: format!("https://veil.dev/kbs/errors/{kind}"),
            detail: self.to_string(),
        }
    }

    fn from_cas(e: CasError) -> Self {
        match e {
            CasError::NotFound(_) => Self::NotFound(e.to_string()),
            CasError::Audit(_) | CasError::Database(_) => Self::Internal(e.to_string()),
            _ => Self::Denied(e.to_string()),
        }
    }
}

/// What an attested KBS session established.
#[derive(Clone, Debug)]
pub struct Attested {
    /// The session the workload was admitted to.
    pub session: String,
    /// The service.
    pub service: String,
    /// The workload.
    pub identity: Identity,
    /// Its node, as appraised.
    pub facts: NodeFacts,
    key: jwe::RecipientKey,
}

#[derive(Debug)]
enum State {
    Challenged {
        nonce: [u8; 32],
        algorithm: HashAlgorithm,
    },
    Attested(Box<Attested>),
}

#[derive(Debug)]
struct Entry {
    state: State,
    expires: u64,
}

/// The KBS in front of a CAS.
pub struct Kbs {
    cas: Arc<Cas>,
    appraiser: Arc<dyn NodeAppraiser>,
    sessions: Mutex<HashMap<String, Entry>>,
    token_key: hmac::Key,
}

impl std::fmt::Debug for Kbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kbs")
    }
}

fn random<const N: usize>() -> Result<[u8; N], KbsError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KbsError::Internal("the system's random generator failed".into()))?;
    Ok(b)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, KbsError> {
    if body.len() > MAX_BODY {
        return Err(KbsError::BadRequest(format!(
            "{what}: {} bytes, at most {MAX_BODY}",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| KbsError::BadRequest(format!("{what}: {e}")))
}

impl Kbs {
    /// A KBS releasing `cas`'s secrets, nodes' quotes judged by `appraiser`.
    pub fn new(cas: Arc<Cas>, appraiser: Arc<dyn NodeAppraiser>) -> Result<Self, KbsError> {
        let k: [u8; 32] = random()?;
        Ok(Self {
            cas,
            appraiser,
            sessions: Mutex::new(HashMap::new()),
            token_key: hmac::Key::new(hmac::HMAC_SHA256, &k),
        })
    }

    /// `/auth`: a new session and its challenge. Returns the cookie's value and the challenge.
    pub fn auth(&self, body: &[u8], now: u64) -> Result<(String, Challenge), KbsError> {
        let algorithm = check_request(body)?;
        let nonce = self
            .cas
            .nonce(now)
            .map_err(|e| KbsError::Internal(e.to_string()))?;
        let id = hex::encode(random::<32>()?);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, e| e.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(KbsError::Busy(format!(
                "{MAX_SESSIONS} KBS sessions are open; try again later"
            )));
        }
        sessions.insert(
            id.clone(),
            Entry {
                state: State::Challenged { nonce, algorithm },
                expires: now.saturating_add(LIFETIME),
            },
        );
        Ok((
            id,
            Challenge {
                nonce: STANDARD.encode(nonce),
                extra_params: serde_json::json!({"selected-hash-algorithm": algorithm.name()}),
            },
        ))
    }

    fn take_challenge(
        &self,
        cookie: &str,
        now: u64,
    ) -> Result<([u8; 32], HashAlgorithm), KbsError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = sessions
            .remove(cookie)
            .ok_or_else(|| KbsError::Unauthenticated("no KBS session of this cookie".into()))?;
        if entry.expires <= now {
            return Err(KbsError::Unauthenticated("the KBS session expired".into()));
        }
        match entry.state {
            State::Challenged { nonce, algorithm } => Ok((nonce, algorithm)),
            State::Attested(_) => Err(KbsError::BadRequest(
                "this KBS session is attested already; start another at /auth".into(),
            )),
        }
    }

    /// `/attest`: the evidence for the session's challenge. Returns the token.
    pub fn attest(&self, cookie: &str, body: &[u8], now: u64) -> Result<String, KbsError> {
        // The challenge goes with the first answer, right or wrong: it is never taken twice.
        let (nonce, algorithm) = self.take_challenge(cookie, now)?;
        let checked = check_attestation(&nonce, algorithm, body);
        let (evidence, report, key) = match checked {
            Ok(c) => c,
            Err(e) => {
                self.cas
                    .record_refusal("cas.kbs.attest", None, &e.to_string(), now)
                    .map_err(|e| KbsError::Internal(e.to_string()))?;
                return Err(e);
            }
        };
        let quote = STANDARD
            .decode(&evidence.quote)
            .map_err(|e| KbsError::BadRequest(format!("the quote is not base64: {e}")));
        let facts = quote.and_then(|q| {
            self.cas
                .kbs_attest(&evidence, &q, &nonce, &report, self.appraiser.as_ref(), now)
                .map_err(KbsError::from_cas)
        })?;
        let attested = Attested {
            session: evidence.session,
            service: evidence.service,
            identity: evidence.identity,
            facts,
            key,
        };
        let token = self.token(&attested, now)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.insert(
            cookie.to_string(),
            Entry {
                state: State::Attested(Box::new(attested)),
                expires: now.saturating_add(LIFETIME),
            },
        );
        Ok(token)
    }

    /// An HS256 JWT naming the attested workload: the client reads its expiry; only this
    /// KBS could check it, and nothing takes it as a credential (the cookie is the session).
    fn token(&self, a: &Attested, now: u64) -> Result<String, KbsError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": "veil-cas",
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(LIFETIME),
            "session": a.session,
            "service": a.service,
            "namespace": a.identity.namespace,
            "pod": a.identity.pod,
            "node": a.identity.node,
        });
        let claims = serde_json::to_vec(&claims).map_err(|e| KbsError::Internal(e.to_string()))?;
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let tag = hmac::sign(&self.token_key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// `/resource/<repository>/<type>/<tag>`: secret `tag` of session `repository` for its
    /// service `type`, encrypted to the session's key.
    pub fn resource(
        &self,
        cookie: &str,
        repository: &str,
        kind: &str,
        tag: &str,
        now: u64,
    ) -> Result<jwe::Flattened, KbsError> {
        let attested = {
            let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            match sessions.get(cookie) {
                Some(Entry {
                    state: State::Attested(a),
                    expires,
                }) if *expires > now => a.as_ref().clone(),
                Some(Entry {
                    state: State::Attested(_),
                    ..
                }) => return Err(KbsError::Unauthenticated("the KBS session expired".into())),
                Some(_) => {
                    return Err(KbsError::Unauthenticated(
                        "the KBS session is not attested".into(),
                    ));
                }
                None => {
                    return Err(KbsError::Unauthenticated(
                        "no KBS session of this cookie".into(),
                    ));
                }
            }
        };
        let value = self
            .cas
            .kbs_resource(&attested, repository, kind, tag, now)
            .map_err(KbsError::from_cas)?;
        attested
            .key
            .seal(&value)
            .map_err(|e| KbsError::Internal(e.to_string()))
    }

    /// Sessions held (for metrics).
    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Checks a client's first message: protocol version 0.4.0, TEE `tpm`, a hash algorithm both
/// sides know. Returns the algorithm selected.
pub fn check_request(body: &[u8]) -> Result<HashAlgorithm, KbsError> {
    let request: Request = parse("request", body)?;
    if request.version != VERSION {
        return Err(KbsError::BadRequest(format!(
            "protocol version expected {VERSION}, found {}",
            request.version
        )));
    }
    if request.tee != TEE {
        return Err(KbsError::BadRequest(format!(
            "tee expected {TEE} (a Veil node's agent's evidence for the workload), found {}",
            request.tee
        )));
    }
    HashAlgorithm::select(&request.extra_params)
}

/// Checks an attestation's shape against its session's challenge (`nonce`, `algorithm`):
/// the nonce answered, no init-data, no devices' evidence, a key for ECDH-ES+A256KW, Veil's
/// workload evidence. Returns the evidence, the report data its quote must bind, and the key.
pub fn check_attestation(
    nonce: &[u8; 32],
    algorithm: HashAlgorithm,
    body: &[u8],
) -> Result<(WorkloadEvidence, Vec<u8>, jwe::RecipientKey), KbsError> {
    let a: Attestation = parse("attestation", body)?;
    if a.runtime_data.nonce != STANDARD.encode(nonce) {
        return Err(KbsError::Denied(
            "runtime-data.nonce is not this session's challenge".into(),
        ));
    }
    if a.init_data.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(KbsError::BadRequest(
            "init-data is not taken: a Veil node's configuration is measured by its agent".into(),
        ));
    }
    if !a.tee_evidence.additional_evidence.is_empty() {
        return Err(KbsError::BadRequest(format!(
            "additional evidence ({} bytes) is not appraised by Veil: expected none",
            a.tee_evidence.additional_evidence.len()
        )));
    }
    let key =
        jwe::RecipientKey::from_jwk(&a.runtime_data.tee_pubkey).map_err(KbsError::BadRequest)?;
    let report = report_data(
        algorithm,
        &a.runtime_data,
        &a.tee_evidence.additional_evidence,
    )?;
    let evidence: WorkloadEvidence = serde_json::from_value(a.tee_evidence.primary_evidence)
        .map_err(|e| KbsError::BadRequest(format!("primary_evidence: {e}")))?;
    Ok((evidence, report, key))
}
