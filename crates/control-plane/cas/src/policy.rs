//! Access policies: a rule lists Ed25519 public keys and how many of them must sign
//! (`require: all`, `require: at-least-N`; one by default). A request is signed over
//! `veil-cas/v1 <action> <session name> <hash>\n`: the action, the session it acts on, and
//! the hash of what it acts with (the new session for a create or update, a fresh challenge
//! for a read), so a signature cannot be replayed for another action, session or document.

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::CasError;

/// Keys and how many of them must agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Ed25519 public keys, base64.
    pub keys: Vec<String>,
    /// `all` or `at-least-N` (default: `at-least-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<String>,
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a session.
    Create,
    /// Replace a session.
    Update,
    /// Read a session.
    Read,
    /// Replace every session with a backup's (the owner's, signed over the backup's hash).
    Restore,
    /// Become the CAS's owner (signed by the owner's keys over the rule's hash).
    Provision,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Read => "read",
            Self::Restore => "restore",
            Self::Provision => "provision",
        }
    }
}

/// SHA-256 of a rule's RFC 8785 canonical JSON: what a provisioning signs.
pub fn rule_hash(rule: &Rule) -> Result<[u8; 32], CasError> {
    use sha2::Digest;
    let canonical = serde_json_canonicalizer::to_vec(rule)
        .map_err(|e| CasError::Invalid(format!("cannot canonicalise the rule: {e}")))?;
    Ok(sha2::Sha256::digest(&canonical).into())
}

/// The bytes a request's signatures sign.
pub fn payload(action: Action, session: &str, hash: &[u8; 32]) -> Vec<u8> {
    format!(
        "veil-cas/v1 {} {session} {}\n",
        action.word(),
        hex::encode(hash)
    )
    .into_bytes()
}

/// One signature of a request: the signer's public key and the signature (base64 each).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The Ed25519 public key.
    pub key: String,
    /// The signature over [`payload`].
    pub signature: String,
}

fn key_bytes(k: &str) -> Option<[u8; 32]> {
    STANDARD.decode(k).ok()?.try_into().ok()
}

/// How many signers a rule needs.
fn needed(what: &str, r: &Rule) -> Result<usize, CasError> {
    let n = r.keys.len();
    match r.require.as_deref() {
        None => Ok(1),
        Some("all") => Ok(n),
        Some(other) => {
            let k = other
                .strip_prefix("at-least-")
                .and_then(|k| k.parse::<usize>().ok())
                .ok_or_else(|| {
                    CasError::Invalid(format!(
                        "{what}: require is `all` or `at-least-N`, found {other:?}"
                    ))
                })?;
            if k == 0 || k > n {
                return Err(CasError::Invalid(format!(
                    "{what}: require at-least-{k} of {n} keys can never or always be met"
                )));
            }
            Ok(k)
        }
    }
}

/// Checks a rule as written in a session.
pub fn check_rule(what: &str, r: &Rule) -> Result<(), CasError> {
    if r.keys.is_empty() || r.keys.len() > 64 {
        return Err(CasError::Invalid(format!(
            "{what}: 1 to 64 keys are needed"
        )));
    }
    for (i, k) in r.keys.iter().enumerate() {
        if key_bytes(k).is_none() {
            return Err(CasError::Invalid(format!(
                "{what}: key {i} is not a base64 Ed25519 public key (32 bytes)"
            )));
        }
        if r.keys.iter().take(i).any(|o| o == k) {
            return Err(CasError::Invalid(format!(
                "{what}: key {i} is listed twice"
            )));
        }
    }
    needed(what, r).map(|_| ())
}

/// Whether `signatures` over `payload` satisfy `rule`: enough distinct keys of the rule
/// signed, each signature verified (a bad signature by a listed key refuses the request).
pub fn authorises(
    what: &str,
    rule: &Rule,
    payload: &[u8],
    signatures: &[Signature],
) -> Result<(), CasError> {
    let need = needed(what, rule)?;
    let mut signed: Vec<&str> = Vec::new();
    for s in signatures {
        if !rule.keys.contains(&s.key) || signed.contains(&s.key.as_str()) {
            continue;
        }
        let (Some(pk), Ok(sig)) = (key_bytes(&s.key), STANDARD.decode(&s.signature)) else {
            return Err(CasError::Unauthorised(format!(
                "{what}: a signature by a listed key is malformed"
            )));
        };
        if UnparsedPublicKey::new(&ED25519, pk)
            .verify(payload, &sig)
            .is_err()
        {
            return Err(CasError::Unauthorised(format!(
                "{what}: the signature of key {} does not verify",
                s.key
            )));
        }
        signed.push(&s.key);
    }
    if signed.len() < need {
        return Err(CasError::Unauthorised(format!(
            "{what}: {} of the {need} signatures required ({}) by its keys",
            signed.len(),
            rule.require.as_deref().unwrap_or("at-least-1")
        )));
    }
    Ok(())
}
