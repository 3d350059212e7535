//! X.509 certificates, CRLs and chain validation against pinned anchors.
//!
//! Certificates are parsed once (x509-parser, which tolerates the serial number 0 that
//! AMD's VCEK and VLEK certificates carry) into an owned [`Certificate`] that keeps only
//! what validation needs. Signatures are checked with [`crate::crypto`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::crypto::{EcdsaEncoding, KeyType, PublicKey, Scheme, SignatureError};
use crate::time::UnixTime;

/// Longest chain accepted (leaf to anchor).
pub const MAX_CHAIN_LEN: usize = 8;

/// Why a certificate, CRL or chain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a certificate (or CRL) of the expected form.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed (its role, e.g. "VCEK certificate").
        what: String,
        /// The parser's complaint.
        detail: String,
    },
    /// The certificate uses a key or signature algorithm Veil does not accept.
    #[error("certificate `{subject}`: unsupported algorithm: {detail}")]
    UnsupportedAlgorithm {
        /// Subject of the certificate.
        subject: String,
        /// Which algorithm.
        detail: String,
    },
    /// The certificate's validity ended before `now`.
    #[error("certificate `{subject}` expired at {not_after} (verifying as of {now})")]
    Expired {
        /// Subject of the certificate.
        subject: String,
        /// End of validity.
        not_after: UnixTime,
        /// The verification time.
        now: UnixTime,
    },
    /// The certificate's validity starts after `now`.
    #[error("certificate `{subject}` is not valid before {not_before} (verifying as of {now})")]
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Start of validity.
        not_before: UnixTime,
        /// The verification time.
        now: UnixTime,
    },
    /// A signature in the chain does not verify.
    #[error("signature on `{subject}` does not verify with the key of `{issuer}`: {source}")]
    BadSignature {
        /// The signed certificate or CRL.
        subject: String,
        /// The certificate whose key was used.
        issuer: String,
        /// The signature failure.
        source: SignatureError,
    },
    /// The next certificate in the chain is not the issuer named by this one.
    #[error("`{subject}` is issued by `{expected}`, but the chain continues with `{found}`")]
    IssuerMismatch {
        /// Subject of the certificate.
        subject: String,
        /// Issuer named in the certificate.
        expected: String,
        /// Subject of the next certificate in the chain.
        found: String,
    },
    /// An intermediate certificate is not a CA.
    #[error("`{subject}` signs other certificates but is not a CA (basicConstraints)")]
    NotCa {
        /// Subject of the certificate.
        subject: String,
    },
    /// The chain ends at a certificate that is not a trusted anchor.
    #[error(
        "chain ends at `{subject}` (SHA-256 {fingerprint}), which is not a trusted root; trusted: {trusted}"
    )]
    UntrustedRoot {
        /// Subject of the last certificate.
        subject: String,
        /// Its SHA-256 fingerprint.
        fingerprint: String,
        /// Subjects of the accepted anchors.
        trusted: String,
    },
    /// The chain is empty or too long.
    #[error("certificate chain has {found} certificates, expected 1 to {MAX_CHAIN_LEN}")]
    ChainLength {
        /// Certificates supplied.
        found: usize,
    },
    /// The certificate appears on its issuer's revocation list.
    #[error("certificate `{subject}` (serial {serial}) is revoked by the CRL of `{crl_issuer}`")]
    Revoked {
        /// Subject of the certificate.
        subject: String,
        /// Its serial number in hex.
        serial: String,
        /// Issuer of the CRL.
        crl_issuer: String,
    },
    /// A CRL is outside its update window.
    #[error(
        "CRL of `{issuer}` is not current: valid {this_update} to {next_update}, verifying as of {now}"
    )]
    CrlStale {
        /// Issuer of the CRL.
        issuer: String,
        /// thisUpdate.
        this_update: UnixTime,
        /// nextUpdate.
        next_update: UnixTime,
        /// The verification time.
        now: UnixTime,
    },
    /// A CRL is issued by someone other than the CA it must cover.
    #[error("CRL is issued by `{found}`, expected a CRL of `{expected}`")]
    CrlIssuer {
        /// The CA whose CRL was needed.
        expected: String,
        /// Issuer of the CRL supplied.
        found: String,
    },
}

/// One X.509 extension, kept raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Dotted OID.
    pub oid: String,
    /// Critical flag.
    pub critical: bool,
    /// The extnValue contents (DER of the extension's own value).
    pub value: Vec<u8>,
}

/// A parsed X.509 certificate, owning what validation needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Arc<[u8]>,
    tbs: Vec<u8>,
    scheme: Result<Scheme, String>,
    signature: Vec<u8>,
    public_key: Result<PublicKey, String>,
    subject: String,
    issuer: String,
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
    serial: Vec<u8>,
    not_before: UnixTime,
    not_after: UnixTime,
    is_ca: bool,
    extensions: Vec<Extension>,
    fingerprint: [u8; 32],
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("sha256", &hex::encode(self.fingerprint))
            .finish()
    }
}

impl Certificate {
    /// Parses one DER certificate; `what` names its role in errors.
    pub fn from_der(der: &[u8], what: &str) -> Result<Self, CertError> {
        let perr = |detail: String| CertError::Parse {
            what: what.to_string(),
            detail,
        };
        let (rest, c) = X509Certificate::from_der(der).map_err(|e| perr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(perr(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        if c.signature_algorithm != c.tbs_certificate.signature {
            return Err(perr(
                "signatureAlgorithm differs from the signature field of the signed part (RFC 5280 4.1.1.2)".into(),
            ));
        }
        let subject = c.subject().to_string();
        let scheme = scheme_of(&c.signature_algorithm);
        let public_key = public_key_of(c.public_key());
        let is_ca = c
            .basic_constraints()
            .map_err(|e| perr(format!("basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        let extensions = c
            .extensions()
            .iter()
            .map(|e| Extension {
                oid: e.oid.to_id_string(),
                critical: e.critical,
                value: e.value.to_vec(),
            })
            .collect();
        let der_owned = der.get(..der.len() - rest.len()).unwrap_or(der);
        Ok(Self {
            der: der_owned.into(),
            tbs: c.tbs_certificate.as_ref().to_vec(),
            scheme,
            signature: c.signature_value.data.to_vec(),
            public_key,
            issuer: c.issuer().to_string(),
            subject_der: c.subject().as_raw().to_vec(),
            issuer_der: c.issuer().as_raw().to_vec(),
            serial: c.raw_serial().to_vec(),
            not_before: UnixTime(c.validity().not_before.timestamp()),
            not_after: UnixTime(c.validity().not_after.timestamp()),
            is_ca,
            extensions,
            fingerprint: Sha256::digest(der_owned).into(),
            subject,
        })
    }

    /// Parses a PEM bundle (every `CERTIFICATE` block, in order) or a single DER certificate.
    pub fn parse_many(bytes: &[u8], what: &str) -> Result<Vec<Self>, CertError> {
        if looks_like_pem(bytes) {
            let blocks = pem::parse_many(bytes).map_err(|e| CertError::Parse {
                what: what.to_string(),
                detail: format!("PEM: {e}"),
            })?;
            let certs: Vec<Self> = blocks
                .iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| Self::from_der(p.contents(), what))
                .collect::<Result<_, _>>()?;
            if certs.is_empty() {
                return Err(CertError::Parse {
                    what: what.to_string(),
                    detail: "no CERTIFICATE block in PEM input".into(),
                });
            }
            Ok(certs)
        } else {
            Ok(vec![Self::from_der(bytes, what)?])
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Subject, as a distinguished-name string.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Issuer, as a distinguished-name string.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Serial number (big-endian, as encoded).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// Start of validity.
    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// SHA-256 of the DER encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Whether basicConstraints says this is a CA.
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// The subject public key.
    pub fn public_key(&self) -> Result<&PublicKey, CertError> {
        self.public_key
            .as_ref()
            .map_err(|d| CertError::UnsupportedAlgorithm {
                subject: self.subject.clone(),
                detail: d.clone(),
            })
    }

    /// All extensions.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// The extension with this dotted OID, if present.
    pub fn extension(&self, oid: &str) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.oid == oid)
    }

    /// Fails unless `now` lies within the validity period.
    pub fn check_validity(&self, now: UnixTime) -> Result<(), CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                subject: self.subject.clone(),
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(CertError::Expired {
                subject: self.subject.clone(),
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    /// Whether the issuer name equals the subject name of `other`.
    pub fn issued_by_name(&self, other: &Certificate) -> bool {
        self.issuer_der == other.subject_der
    }

    /// Whether subject and issuer names are the same.
    pub fn is_self_issued(&self) -> bool {
        self.issuer_der == self.subject_der
    }

    /// Checks this certificate's signature with `issuer`'s key (names only are not compared).
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), CertError> {
        check_signed(
            &self.subject,
            &self.tbs,
            &self.scheme,
            &self.signature,
            issuer,
        )
    }
}

/// Validates `chain` (leaf first; it may end with the anchor itself or stop below it) up to
/// one of `anchors` as of `now`. Returns the anchor reached.
///
/// Checks, for every certificate: validity at `now`, issuer name = next subject, signature by
/// the next key, and that every signer is a CA. The chain must end at a certificate whose DER
/// equals an anchor's, or at a certificate issued (and signed) by an anchor.
pub fn verify_chain<'a>(
    chain: &[&Certificate],
    anchors: &'a [Certificate],
    now: UnixTime,
) -> Result<&'a Certificate, CertError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN_LEN {
        return Err(CertError::ChainLength { found: chain.len() });
    }
    for (i, cert) in chain.iter().enumerate() {
        if let Some(anchor) = anchors.iter().find(|a| a.der == cert.der) {
            anchor.check_validity(now)?;
            return Ok(anchor);
        }
        cert.check_validity(now)?;
        match chain.get(i + 1) {
            Some(next) => {
                if !cert.issued_by_name(next) {
                    return Err(CertError::IssuerMismatch {
                        subject: cert.subject.clone(),
                        expected: cert.issuer.clone(),
                        found: next.subject.clone(),
                    });
                }
                if !next.is_ca {
                    return Err(CertError::NotCa {
                        subject: next.subject.clone(),
                    });
                }
                cert.verify_signed_by(next)?;
            }
            None => {
                let Some(anchor) = anchors
                    .iter()
                    .find(|a| cert.issued_by_name(a) && !cert.is_self_issued())
                else {
                    return Err(untrusted(cert, anchors));
                };
                anchor.check_validity(now)?;
                cert.verify_signed_by(anchor)?;
                return Ok(anchor);
            }
        }
    }
    // Unreachable: the last iteration always returns. Kept as an error, not a panic.
    Err(CertError::ChainLength { found: chain.len() })
}

fn untrusted(cert: &Certificate, anchors: &[Certificate]) -> CertError {
    CertError::UntrustedRoot {
        subject: cert.subject.clone(),
        fingerprint: hex::encode(cert.fingerprint),
        trusted: anchors
            .iter()
            .map(|a| a.subject.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// A parsed certificate revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    tbs: Vec<u8>,
    scheme: Result<Scheme, String>,
    signature: Vec<u8>,
    issuer: String,
    issuer_der: Vec<u8>,
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    revoked: BTreeSet<Vec<u8>>,
    number: Option<Vec<u8>>,
}

impl Crl {
    /// Parses a DER CRL; `what` names its role in errors.
    pub fn from_der(der: &[u8], what: &str) -> Result<Self, CertError> {
        let perr = |detail: String| CertError::Parse {
            what: what.to_string(),
            detail,
        };
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| perr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(perr(format!("{} trailing bytes after the CRL", rest.len())));
        }
        if crl.signature_algorithm != crl.tbs_cert_list.signature {
            return Err(perr(
                "signatureAlgorithm differs from the signature field of the signed part (RFC 5280 5.1.1.2)".into(),
            ));
        }
        Ok(Self {
            tbs: crl.tbs_cert_list.as_ref().to_vec(),
            scheme: scheme_of(&crl.signature_algorithm),
            signature: crl.signature_value.data.to_vec(),
            issuer: crl.issuer().to_string(),
            issuer_der: crl.issuer().as_raw().to_vec(),
            this_update: UnixTime(crl.last_update().timestamp()),
            next_update: crl.next_update().map(|t| UnixTime(t.timestamp())),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| normalize_serial(r.raw_serial()))
                .collect(),
            number: crl.crl_number().map(|n| n.to_bytes_be()),
        })
    }

    /// Parses PEM (`X509 CRL`) or DER.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, CertError> {
        if looks_like_pem(bytes) {
            let p = pem::parse(bytes).map_err(|e| CertError::Parse {
                what: what.to_string(),
                detail: format!("PEM: {e}"),
            })?;
            Self::from_der(p.contents(), what)
        } else {
            Self::from_der(bytes, what)
        }
    }

    /// Issuer name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// thisUpdate.
    pub fn this_update(&self) -> UnixTime {
        self.this_update
    }

    /// nextUpdate, if present.
    pub fn next_update(&self) -> Option<UnixTime> {
        self.next_update
    }

    /// Number of revoked serials listed.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// The CRL number extension, big-endian.
    pub fn number(&self) -> Option<&[u8]> {
        self.number.as_deref()
    }

    /// Verifies that `issuer` signed this CRL and is the CA it names.
    pub fn verify_issued_by(&self, issuer: &Certificate) -> Result<(), CertError> {
        if self.issuer_der != issuer.subject_der {
            return Err(CertError::CrlIssuer {
                expected: issuer.subject.clone(),
                found: self.issuer.clone(),
            });
        }
        let label = format!("CRL of {}", self.issuer);
        check_signed(&label, &self.tbs, &self.scheme, &self.signature, issuer)
    }

    /// Fails unless `now` lies in thisUpdate..=nextUpdate.
    pub fn check_time(&self, now: UnixTime) -> Result<(), CertError> {
        let next = self.next_update.unwrap_or(UnixTime(i64::MAX));
        if now < self.this_update || now > next {
            return Err(CertError::CrlStale {
                issuer: self.issuer.clone(),
                this_update: self.this_update,
                next_update: next,
                now,
            });
        }
        Ok(())
    }

    /// Fails if `cert` is listed. The caller checks that this CRL belongs to `cert`'s issuer.
    pub fn check_not_revoked(&self, cert: &Certificate) -> Result<(), CertError> {
        if self.issuer_der == cert.issuer_der
            && self.revoked.contains(&normalize_serial(&cert.serial))
        {
            return Err(CertError::Revoked {
                subject: cert.subject.clone(),
                serial: hex::encode(&cert.serial),
                crl_issuer: self.issuer.clone(),
            });
        }
        Ok(())
    }
}

/// Verifies a signed structure (certificate or CRL) named `subject` with `issuer`'s key.
fn check_signed(
    subject: &str,
    tbs: &[u8],
    scheme: &Result<Scheme, String>,
    signature: &[u8],
    issuer: &Certificate,
) -> Result<(), CertError> {
    let scheme = scheme
        .clone()
        .map_err(|detail| CertError::UnsupportedAlgorithm {
            subject: subject.to_string(),
            detail,
        })?;
    issuer
        .public_key()?
        .verify(scheme, EcdsaEncoding::Der, tbs, signature)
        .map_err(|source| CertError::BadSignature {
            subject: subject.to_string(),
            issuer: issuer.subject.clone(),
            source,
        })
}

fn normalize_serial(s: &[u8]) -> Vec<u8> {
    let i = s.iter().position(|b| *b != 0).unwrap_or(s.len());
    s.get(i..).unwrap_or_default().to_vec()
}

/// Whether the bytes look like PEM text rather than DER.
pub fn looks_like_pem(bytes: &[u8]) -> bool {
    let trimmed = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .and_then(|i| bytes.get(i..))
        .unwrap_or_default();
    trimmed.starts_with(b"-----BEGIN")
}

/// Parses a SubjectPublicKeyInfo (DER, or PEM `PUBLIC KEY`) into a [`PublicKey`].
pub fn public_key_from_spki(bytes: &[u8]) -> Result<PublicKey, CertError> {
    let perr = |detail: String| CertError::Parse {
        what: "public key".into(),
        detail,
    };
    let der = if looks_like_pem(bytes) {
        let p = pem::parse(bytes).map_err(|e| perr(format!("PEM: {e}")))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(perr(format!(
                "expected a PEM `PUBLIC KEY` block, found `{}`",
                p.tag()
            )));
        }
        p.contents().to_vec()
    } else {
        bytes.to_vec()
    };
    let (rest, spki) = SubjectPublicKeyInfo::from_der(&der).map_err(|e| perr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(perr(format!("{} trailing bytes", rest.len())));
    }
    public_key_of(&spki).map_err(perr)
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";

fn public_key_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKey, String> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let key = &spki.subject_public_key.data;
    match alg.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let kind = match curve.as_str() {
                OID_P256 => KeyType::EcP256,
                OID_P384 => KeyType::EcP384,
                other => return Err(format!("EC curve `{other}`")),
            };
            PublicKey::ec(kind, key).map_err(|e| e.to_string())
        }
        OID_RSA | OID_RSA_PSS => PublicKey::rsa_pkcs1(key).map_err(|e| e.to_string()),
        other => Err(format!("public key algorithm `{other}`")),
    }
}

fn scheme_of(alg: &AlgorithmIdentifier<'_>) -> Result<Scheme, String> {
    let oid = alg.algorithm.to_id_string();
    Ok(match oid.as_str() {
        "1.2.840.10045.4.3.2" => Scheme::EcdsaSha256,
        "1.2.840.10045.4.3.3" => Scheme::EcdsaSha384,
        "1.2.840.10045.4.3.4" => Scheme::EcdsaSha512,
        "1.2.840.113549.1.1.11" => Scheme::RsaPkcs1Sha256,
        "1.2.840.113549.1.1.12" => Scheme::RsaPkcs1Sha384,
        "1.2.840.113549.1.1.13" => Scheme::RsaPkcs1Sha512,
        OID_RSA_PSS => {
            let Ok(SignatureAlgorithm::RSASSA_PSS(p)) = SignatureAlgorithm::try_from(alg) else {
                return Err("RSASSA-PSS without valid parameters".into());
            };
            let hash = p.hash_algorithm_oid().to_id_string();
            let (scheme, len) = match hash.as_str() {
                "2.16.840.1.101.3.4.2.1" => (Scheme::RsaPssSha256, 32),
                "2.16.840.1.101.3.4.2.2" => (Scheme::RsaPssSha384, 48),
                "2.16.840.1.101.3.4.2.3" => (Scheme::RsaPssSha512, 64),
                other => return Err(format!("RSASSA-PSS with hash `{other}`")),
            };
            if p.salt_length() != len {
                return Err(format!(
                    "RSASSA-PSS salt length {} (expected {len})",
                    p.salt_length()
                ));
            }
            scheme
        }
        other => return Err(format!("signature algorithm `{other}`")),
    })
}
