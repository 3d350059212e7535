//! Quote verification: signature by the AK, nonce, PCR digest, event-log replay, AK
//! endorsement, then reference values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_attest_core::bytes::hex_vec;
use veil_attest_core::crypto::{EcdsaEncoding, KeyType, PublicKey};
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_core::{Bytes, UnixTime};

use crate::alg::HashAlg;
use crate::error::{TpmError, TpmPolicyViolation};
use crate::eventlog::{EventLog, event_type_name};
use crate::pcrs::PcrValues;
use crate::structures::{Quote, Signature, rsa_scheme};

/// One accepted value or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single hex value.
    One(#[serde(with = "hex_vec")] Vec<u8>),
    /// Several accepted hex values.
    Many(Vec<HexValue>),
}

/// A hex-encoded value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexValue(#[serde(with = "hex_vec")] pub Vec<u8>);

impl OneOrMany {
    fn values(&self) -> Vec<&[u8]> {
        match self {
            OneOrMany::One(v) => vec![v.as_slice()],
            OneOrMany::Many(vs) => vs.iter().map(|v| v.0.as_slice()).collect(),
        }
    }
}

/// Reference values for a TPM quote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmPolicy {
    /// Expected PCR values: bank → index → value or list of accepted values.
    #[serde(default)]
    pub pcrs: BTreeMap<HashAlg, BTreeMap<u32, OneOrMany>>,
    /// Accepted attestation keys: SHA-256 of their SubjectPublicKeyInfo (empty: any).
    #[serde(default)]
    pub ak_spki_sha256: Vec<Bytes<32>>,
    /// Refuse a quote whose AK is neither endorsed by a certificate nor pinned above.
    #[serde(default)]
    pub require_ak_endorsement: bool,
    /// Expected extraData (the verifier's nonce), usually given per verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<HexValue>,
}

/// The signature as supplied: a marshalled TPMT_SIGNATURE, or raw bytes with a known scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteSignature {
    /// A TPMT_SIGNATURE.
    Tpmt(Signature),
    /// A raw RSASSA-PKCS1-v1_5 signature (what `tpm2_quote -f plain` writes) with this hash.
    RawRsaPkcs1(HashAlg, Vec<u8>),
}

impl QuoteSignature {
    /// Interprets signature bytes: a TPMT_SIGNATURE if they parse as one, otherwise a raw
    /// RSASSA signature with SHA-256 when they are exactly the size of the RSA AK's modulus.
    pub fn from_bytes(bytes: &[u8], ak: &PublicKey) -> Result<Self, TpmError> {
        match Signature::parse(bytes) {
            Ok(s) => Ok(Self::Tpmt(s)),
            Err(e) => match ak.kind() {
                KeyType::Rsa(bits) if bytes.len() * 8 == bits as usize => {
                    Ok(Self::RawRsaPkcs1(HashAlg::Sha256, bytes.to_vec()))
                }
                _ => Err(TpmError::Malformed(e)),
            },
        }
    }

    fn parts(&self) -> (veil_attest_core::crypto::Scheme, HashAlg, &[u8]) {
        match self {
            QuoteSignature::Tpmt(s) => (s.scheme, s.hash, &s.bytes),
            QuoteSignature::RawRsaPkcs1(h, b) => (
                // RSASSA has a scheme for every hash.
                rsa_scheme(false, *h).unwrap_or(veil_attest_core::crypto::Scheme::RsaPkcs1Sha256),
                *h,
                b,
            ),
        }
    }
}

/// A certificate chain endorsing the AK (an AK certificate, or an EK certificate for a TPM
/// whose AK is bound to it by credential activation), and the roots it must end at.
#[derive(Clone, Debug)]
pub struct AkEndorsement {
    /// The certificate for the AK (leaf).
    pub ak_cert: Certificate,
    /// Intermediates.
    pub chain: Vec<Certificate>,
    /// Trusted roots (e.g. the TPM manufacturer's CA).
    pub roots: Vec<Certificate>,
}

/// Everything a quote verification looks at.
#[derive(Clone, Debug)]
pub struct QuoteEvidence<'a> {
    /// The TPMS_ATTEST bytes the TPM signed.
    pub attest: &'a [u8],
    /// The signature.
    pub signature: &'a QuoteSignature,
    /// The attestation key.
    pub ak: &'a PublicKey,
    /// The Qualified Name the attestation key must have, when its parent is known (see
    /// [`crate::structures::qualified_name_under_ek`]): the quote's qualifiedSigner must then
    /// be exactly this.
    pub ak_qualified_name: Option<&'a [u8]>,
    /// PCR values (at least every quoted PCR). Without them the signed pcrDigest cannot be
    /// opened: the claims then carry no PCR values.
    pub pcrs: Option<&'a PcrValues>,
    /// The event log, if any.
    pub event_log: Option<&'a EventLog>,
}

/// How far the AK is trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AkTrust {
    /// Endorsed by a certificate chain ending at this root.
    Certificate {
        /// Subject of the AK certificate.
        subject: String,
        /// Subject of the root reached.
        root: String,
    },
    /// Pinned by the reference values.
    Pinned,
    /// Taken on the caller's word (e.g. bound by another report, as on Azure CVMs).
    Unendorsed,
}

/// An event from the log, with whether its PCR was covered by the quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventClaim {
    /// PCR index.
    pub pcr: u32,
    /// Event type name.
    pub event_type: String,
    /// Digests per bank.
    pub digests: BTreeMap<HashAlg, String>,
    /// The event data, when printable text; its size otherwise.
    pub data: String,
    /// Whether the event's PCR is in the quote (and so proved by the replay).
    pub quoted: bool,
}

/// What an accepted quote establishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TpmClaims {
    /// The parsed TPMS_ATTEST.
    pub quote: Quote,
    /// Signature scheme.
    pub scheme: String,
    /// AK key type.
    pub ak_type: String,
    /// SHA-256 of the AK's SubjectPublicKeyInfo.
    pub ak_spki_sha256: Bytes<32>,
    /// How the AK is trusted.
    pub ak_trust: AkTrust,
    /// Whether extraData was compared with an expected nonce.
    pub nonce_checked: bool,
    /// Whether PCR values were supplied and opened the signed pcrDigest.
    pub pcr_digest_checked: bool,
    /// Quoted PCR values: bank → index → hex (empty when none were supplied).
    pub pcrs: BTreeMap<HashAlg, BTreeMap<u32, String>>,
    /// The replayed event log, when one was supplied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventClaim>>,
}

/// Verifies a quote as of `now` (the time matters only for AK certificates).
pub fn verify_quote(
    ev: &QuoteEvidence<'_>,
    endorsement: Option<&AkEndorsement>,
    policy: &TpmPolicy,
    now: UnixTime,
) -> Result<TpmClaims, TpmError> {
    let claims = authenticate(ev, endorsement, policy, now)?;
    check_policy(&claims, policy)?;
    Ok(claims)
}

/// Everything but the reference values: signature, nonce, PCR digest, event log, AK chain.
pub fn authenticate(
    ev: &QuoteEvidence<'_>,
    endorsement: Option<&AkEndorsement>,
    policy: &TpmPolicy,
    now: UnixTime,
) -> Result<TpmClaims, TpmError> {
    let quote = Quote::parse(ev.attest)?;
    if let Some(name) = ev.ak_qualified_name
        && quote.qualified_signer != name
    {
        return Err(TpmError::QualifiedSigner {
            expected: hex::encode(name),
            found: hex::encode(&quote.qualified_signer),
        });
    }
    let (scheme, hash, sig) = ev.signature.parts();
    ev.ak
        .verify(scheme, EcdsaEncoding::Fixed, ev.attest, sig)
        .map_err(TpmError::Signature)?;

    let nonce_checked = policy.nonce.is_some();
    if let Some(n) = &policy.nonce
        && n.0 != quote.extra_data
    {
        return Err(TpmError::Nonce {
            expected: hex::encode(&n.0),
            found: hex::encode(&quote.extra_data),
        });
    }

    // pcrDigest is computed with the signing scheme's hash over the selected values, bank by
    // bank in selection order, ascending index within a bank.
    let mut quoted: BTreeMap<HashAlg, BTreeMap<u32, String>> = BTreeMap::new();
    if let Some(pcrs) = ev.pcrs {
        let mut concat = Vec::new();
        for sel in &quote.pcr_select {
            for idx in sel.pcrs.iter().map(|i| u32::from(*i)) {
                let v = pcrs.get(&(sel.hash, idx)).ok_or(TpmError::MissingPcr {
                    bank: sel.hash,
                    index: idx,
                })?;
                concat.extend_from_slice(v);
                quoted
                    .entry(sel.hash)
                    .or_default()
                    .insert(idx, hex::encode(v));
            }
        }
        let computed = hash.hash(&[&concat]);
        if computed != quote.pcr_digest {
            return Err(TpmError::PcrDigest {
                computed: hex::encode(computed),
                quoted: hex::encode(&quote.pcr_digest),
            });
        }
    }

    let events = match ev.event_log {
        None => None,
        Some(log) => {
            for (i, e) in log.events.iter().enumerate() {
                if let Err(reason) = e.check_data() {
                    return Err(TpmError::EventData {
                        index: i,
                        pcr: e.pcr,
                        event_type: event_type_name(e.event_type),
                        reason,
                    });
                }
            }
            for ((bank, index), replayed) in log.replay() {
                if let Some(q) = quoted.get(&bank).and_then(|b| b.get(&index))
                    && *q != hex::encode(&replayed)
                {
                    return Err(TpmError::EventLog {
                        bank,
                        index,
                        replayed: hex::encode(replayed),
                        quoted: q.clone(),
                    });
                }
            }
            Some(
                log.events
                    .iter()
                    .map(|e| EventClaim {
                        pcr: e.pcr,
                        event_type: event_type_name(e.event_type),
                        digests: e
                            .digests
                            .iter()
                            .map(|(b, d)| (*b, hex::encode(d)))
                            .collect(),
                        data: printable(&e.data),
                        quoted: e
                            .digests
                            .iter()
                            .any(|(b, _)| quoted.get(b).is_some_and(|m| m.contains_key(&e.pcr))),
                    })
                    .collect(),
            )
        }
    };

    let spki = ev.ak.spki_der().map_err(TpmError::Signature)?;
    let ak_spki_sha256 = Bytes(Sha256::digest(&spki).into());
    let ak_trust = match endorsement {
        Some(e) => {
            let certified = e.ak_cert.public_key().map_err(TpmError::AkChain)?;
            if certified != ev.ak {
                return Err(TpmError::AkCertKey {
                    subject: e.ak_cert.subject().to_string(),
                });
            }
            let mut path = vec![&e.ak_cert];
            path.extend(e.chain.iter());
            let root = verify_chain(&path, &e.roots, now).map_err(TpmError::AkChain)?;
            AkTrust::Certificate {
                subject: e.ak_cert.subject().to_string(),
                root: root.subject().to_string(),
            }
        }
        None if policy.ak_spki_sha256.contains(&ak_spki_sha256) => AkTrust::Pinned,
        None => AkTrust::Unendorsed,
    };

    Ok(TpmClaims {
        quote,
        scheme: scheme.to_string(),
        ak_type: ev.ak.kind().to_string(),
        ak_spki_sha256,
        ak_trust,
        nonce_checked,
        pcr_digest_checked: ev.pcrs.is_some(),
        pcrs: quoted,
        events,
    })
}

/// Applies reference values to authenticated claims.
pub fn check_policy(claims: &TpmClaims, policy: &TpmPolicy) -> Result<(), TpmPolicyViolation> {
    if !policy.ak_spki_sha256.is_empty() && !policy.ak_spki_sha256.contains(&claims.ak_spki_sha256)
    {
        return Err(TpmPolicyViolation::AkNotPinned {
            found: claims.ak_spki_sha256.to_string(),
            count: policy.ak_spki_sha256.len(),
        });
    }
    if policy.require_ak_endorsement && claims.ak_trust == AkTrust::Unendorsed {
        return Err(TpmPolicyViolation::AkNotEndorsed);
    }
    for (bank, expected) in &policy.pcrs {
        for (index, accepted) in expected {
            let found = claims.pcrs.get(bank).and_then(|b| b.get(index)).ok_or(
                TpmPolicyViolation::PcrNotQuoted {
                    bank: *bank,
                    index: *index,
                },
            )?;
            let ok = accepted.values().iter().any(|v| hex::encode(v) == *found);
            if !ok {
                return Err(TpmPolicyViolation::PcrValue {
                    bank: *bank,
                    index: *index,
                    expected: accepted
                        .values()
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join("|"),
                    found: found.clone(),
                });
            }
        }
    }
    Ok(())
}

fn printable(data: &[u8]) -> String {
    let trimmed = data.strip_suffix(&[0]).unwrap_or(data);
    match std::str::from_utf8(trimmed) {
        Ok(s) if s.len() <= 256 && s.chars().all(|c| !c.is_control() || c == '\n') => s.to_string(),
        _ => format!("<{} bytes>", data.len()),
    }
}
