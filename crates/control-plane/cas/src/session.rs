//! The session document, its validation, and its hash.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CasError;

/// The largest session document taken (bytes of its JSON or YAML).
pub const MAX_DOCUMENT: usize = 1 << 20;
const MAX_SEGMENTS: usize = 8;
const MAX_SERVICES: usize = 64;
const MAX_SECRETS: usize = 256;
const MAX_VARIANTS: usize = 32;

/// A session: one policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// `namespace/…/name`: segments of `[a-z0-9][a-z0-9._-]*`.
    pub name: String,
    /// The author's version label.
    pub version: String,
    /// The hash of the session this one replaces (hex): mandatory on update, forbidden on
    /// create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<String>,
    /// The workloads the session configures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Its secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    /// Who may read, update and create sessions below it.
    pub access_policy: AccessPolicy,
}

/// A workload and what it gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Its name in the session.
    pub name: String,
    /// An OR of variants, each an AND of conditions on what was attested of the workload.
    pub attestation: Vec<Variant>,
    /// Environment variables (values may hold `$$secret:NAME$$`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Files by absolute path (contents may hold `$$secret:NAME$$`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// One AND-variant of a service's attestation: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Every image of the workload must be one of these (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_digests: Vec<String>,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The node's reference-value set must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_sets: Vec<String>,
    /// The node's TEE must be one of these (`tpm`, `snp`, `tdx`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tee: Vec<String>,
    /// The node's TCB must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<u64>,
}

/// What a secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// Printable characters.
    Ascii,
    /// Bytes (released base64-encoded).
    Binary,
    /// A private key (PEM).
    PrivateKey,
    /// A CA certificate and its key.
    X509Ca,
    /// A certificate (issued by a CA secret of the session) and its key.
    X509,
}

/// A secret of the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SecretKind,
    /// Its length (ascii: characters, binary: bytes) when the CAS generates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Its value, when given rather than generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `x509`: the name of the `x509-ca` secret that issues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Sessions that may import it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export: Vec<String>,
    /// Taken from another session's exported secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Import>,
    /// For `x509` and `x509-ca`: the subject's common name (default: the secret's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// For `x509`: DNS names in the subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// A reference `NAME` or, for certificates, `NAME.crt` (the certificate, as `NAME`) and
/// `NAME.key` (its private key): the secret's name and which part.
pub fn split_ref(r: &str) -> (&str, Part) {
    match (r.strip_suffix(".crt"), r.strip_suffix(".key")) {
        (Some(n), _) => (n, Part::Certificate),
        (_, Some(n)) => (n, Part::Key),
        _ => (r, Part::Value),
    }
}

/// Which part of a secret a reference takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The value (a certificate's PEM for certificates).
    Value,
    /// A certificate's PEM.
    Certificate,
    /// A certificate's private key (PEM).
    Key,
}

/// A secret imported from another session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The exporting session.
    pub session: String,
    /// The secret's name there.
    pub secret: String,
}

/// Who may do what with a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Read the session (its document, not its secrets' values).
    pub read: crate::policy::Rule,
    /// Replace it.
    pub update: crate::policy::Rule,
    /// Create sessions below it (`name/…`); none may, unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_sessions: Option<crate::policy::Rule>,
}

/// SHA-256 over a session's RFC 8785 canonical JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHash(pub [u8; 32]);

impl std::fmt::Display for SessionHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

fn invalid(why: impl Into<String>) -> CasError {
    CasError::Invalid(why.into())
}

/// Whether `name` is a session name: `/`-separated segments of `[a-z0-9][a-z0-9._-]*`, at
/// most 63 characters each and 8 segments.
pub fn check_name(name: &str) -> Result<(), CasError> {
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(invalid(format!(
            "the name {name:?} has {} segments, at most {MAX_SEGMENTS}",
            segments.len()
        )));
    }
    for s in &segments {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !ok {
            return Err(invalid(format!(
                "the name segment {s:?} of {name:?} is not [a-z0-9][a-z0-9._-]* (at most 63)"
            )));
        }
    }
    Ok(())
}

/// The `$$secret:NAME$$` references in `text`.
pub fn secret_refs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("$$secret:") {
        let after = rest.get(at + 9..).unwrap_or_default();
        match after.find("$$") {
            Some(end) => {
                out.push(after.get(..end).unwrap_or_default());
                rest = after.get(end + 2..).unwrap_or_default();
            }
            None => break,
        }
    }
    out
}

impl Session {
    /// Parses a session from JSON or YAML (at most [`MAX_DOCUMENT`] bytes) and validates it.
    pub fn parse(document: &[u8]) -> Result<Self, CasError> {
        if document.len() > MAX_DOCUMENT {
            return Err(invalid(format!(
                "the document is {} bytes, at most {MAX_DOCUMENT}",
                document.len()
            )));
        }
        let trimmed = document.iter().position(|b| !b.is_ascii_whitespace());
        let s: Self = match trimmed.and_then(|i| document.get(i)) {
            Some(b'{') => serde_json::from_slice(document).map_err(|e| invalid(e.to_string()))?,
            _ => serde_norway::from_slice(document).map_err(|e| invalid(e.to_string()))?,
        };
        s.validate()?;
        Ok(s)
    }

    /// The session's RFC 8785 canonical JSON.
    pub fn canonical_json(&self) -> Result<String, CasError> {
        serde_json_canonicalizer::to_string(self)
            .map_err(|e| invalid(format!("cannot canonicalise: {e}")))
    }

    /// The session's hash: SHA-256 of its RFC 8785 canonical JSON.
    pub fn hash(&self) -> Result<SessionHash, CasError> {
        Ok(SessionHash(
            Sha256::digest(self.canonical_json()?.as_bytes()).into(),
        ))
    }

    /// The predecessor as a hash.
    pub fn predecessor_hash(&self) -> Result<Option<SessionHash>, CasError> {
        self.predecessor
            .as_deref()
            .map(|p| {
                let raw = hex::decode(p)
                    .ok()
                    .filter(|r| r.len() == 32)
                    .ok_or_else(|| {
                        invalid(format!("the predecessor {p:?} is not 64 hex digits"))
                    })?;
                let mut h = [0u8; 32];
                h.copy_from_slice(&raw);
                Ok(SessionHash(h))
            })
            .transpose()
    }

    /// The session whose `create_sessions` rule decides on creating this one (`None`: a
    /// top-level session, the owner's to create).
    pub fn parent(&self) -> Option<&str> {
        self.name.rsplit_once('/').map(|(p, _)| p)
    }

    /// Checks everything a document must be beyond its shape.
    pub fn validate(&self) -> Result<(), CasError> {
        check_name(&self.name)?;
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(invalid("the version must be 1 to 64 characters"));
        }
        self.predecessor_hash()?;
        if self.services.len() > MAX_SERVICES || self.secrets.len() > MAX_SECRETS {
            return Err(invalid(format!(
                "at most {MAX_SERVICES} services and {MAX_SECRETS} secrets"
            )));
        }
        let mut secrets = BTreeSet::new();
        for s in &self.secrets {
            check_secret(s, &self.secrets)?;
            if !secrets.insert(s.name.as_str()) {
                return Err(invalid(format!("the secret {} is defined twice", s.name)));
            }
        }
        let mut services = BTreeSet::new();
        for svc in &self.services {
            if svc.name.is_empty() || !services.insert(svc.name.as_str()) {
                return Err(invalid(format!(
                    "the service name {:?} is empty or used twice",
                    svc.name
                )));
            }
            if svc.attestation.is_empty() || svc.attestation.len() > MAX_VARIANTS {
                return Err(invalid(format!(
                    "service {}: 1 to {MAX_VARIANTS} attestation variants are needed",
                    svc.name
                )));
            }
            for (i, v) in svc.attestation.iter().enumerate() {
                check_variant(v)
                    .map_err(|e| invalid(format!("service {} variant {i}: {e}", svc.name)))?;
            }
            for path in svc.files.keys() {
                if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                    return Err(invalid(format!(
                        "service {}: the file path {path:?} must be absolute, without ..",
                        svc.name
                    )));
                }
            }
            let texts = svc
                .environment
                .values()
                .chain(svc.files.values())
                .chain(&svc.command);
            for t in texts {
                for r in secret_refs(t) {
                    let (name, part) = split_ref(r);
                    let known = self.secrets.iter().find(|s| s.name == name);
                    let ok = match (known, part) {
                        (Some(_), Part::Value) => true,
                        (Some(s), _) => matches!(s.kind, SecretKind::X509 | SecretKind::X509Ca),
                        (None, _) => false,
                    };
                    if !ok {
                        return Err(invalid(format!(
                            "service {} refers to the secret {r:?}, which the session does not define (.crt and .key only of certificates)",
                            svc.name
                        )));
                    }
                }
            }
        }
        crate::policy::check_rule("read", &self.access_policy.read)?;
        crate::policy::check_rule("update", &self.access_policy.update)?;
        if let Some(r) = &self.access_policy.create_sessions {
            crate::policy::check_rule("create_sessions", r)?;
        }
        Ok(())
    }
}

fn check_variant(v: &Variant) -> Result<(), String> {
    let empty = v.image_digests.is_empty()
        && v.namespace.is_none()
        && v.service_account.is_none()
        && v.reference_sets.is_empty()
        && v.tee.is_empty()
        && v.min_tcb.is_none();
    if empty {
        return Err("a variant with no condition would admit any workload".into());
    }
    for d in &v.image_digests {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !ok {
            return Err(format!(
                "the image digest {d:?} is not sha256:<64 lowercase hex>"
            ));
        }
    }
    for t in &v.tee {
        if !matches!(t.as_str(), "tpm" | "snp" | "tdx" | "sgx") {
            return Err(format!("the TEE {t:?} is not one of tpm, snp, tdx, sgx"));
        }
    }
    Ok(())
}

fn check_secret(s: &Secret, all: &[Secret]) -> Result<(), CasError> {
    check_name(&s.name)
        .map_err(|_| invalid(format!("the secret name {:?} is malformed", s.name)))?;
    if s.name.contains('/') || s.name.ends_with(".crt") || s.name.ends_with(".key") {
        return Err(invalid(format!(
            "the secret name {:?} holds a / or ends in .crt or .key",
            s.name
        )));
    }
    let sources = usize::from(s.value.is_some()) + usize::from(s.import.is_some());
    if sources > 1 {
        return Err(invalid(format!(
            "secret {}: a value and an import are exclusive",
            s.name
        )));
    }
    if s.import.is_some() && !s.export.is_empty() {
        return Err(invalid(format!(
            "secret {}: an imported secret cannot be exported again",
            s.name
        )));
    }
    if let Some(i) = &s.import {
        check_name(&i.session)?;
    }
    for e in &s.export {
        check_name(e)?;
    }
    match s.kind {
        SecretKind::Ascii | SecretKind::Binary => {
            if let Some(n) = s.size
                && !(1..=4096).contains(&n)
            {
                return Err(invalid(format!(
                    "secret {}: the size must be 1 to 4096, found {n}",
                    s.name
                )));
            }
        }
        SecretKind::X509 => {
            let issuer = s.issuer.as_deref().ok_or_else(|| {
                invalid(format!(
                    "secret {}: an x509 secret names its issuer",
                    s.name
                ))
            })?;
            if !all
                .iter()
                .any(|o| o.name == issuer && o.kind == SecretKind::X509Ca)
            {
                return Err(invalid(format!(
                    "secret {}: its issuer {issuer:?} is not an x509-ca secret of the session",
                    s.name
                )));
            }
        }
        SecretKind::PrivateKey | SecretKind::X509Ca => {}
    }
    let certificate = matches!(s.kind, SecretKind::X509 | SecretKind::X509Ca);
    if !certificate && (s.common_name.is_some() || !s.dns.is_empty()) {
        return Err(invalid(format!(
            "secret {}: only certificates have a common name or DNS names",
            s.name
        )));
    }
    if s.kind == SecretKind::X509Ca && !s.dns.is_empty() {
        return Err(invalid(format!("secret {}: a CA has no DNS names", s.name)));
    }
    if s.common_name
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.len() > 64)
        || s.dns.len() > 16
        || s.dns.iter().any(|d| d.is_empty() || d.len() > 253)
    {
        return Err(invalid(format!(
            "secret {}: a common name is 1 to 64 characters, at most 16 DNS names of 1 to 253",
            s.name
        )));
    }
    if s.kind != SecretKind::X509 && s.issuer.is_some() {
        return Err(invalid(format!(
            "secret {}: only x509 secrets have an issuer",
            s.name
        )));
    }
    Ok(())
}
