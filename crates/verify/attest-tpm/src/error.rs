//! Why a TPM quote was rejected.

use veil_attest_core::Malformed;
use veil_attest_core::crypto::SignatureError;
use veil_attest_core::x509::CertError;

use crate::alg::HashAlg;

/// A quote or its endorsements were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// A structure is malformed.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The quote signature does not verify with the attestation key.
    #[error("quote signature does not verify with the attestation key: {0}")]
    Signature(SignatureError),
    /// extraData differs from the verifier's nonce.
    #[error("extraData (nonce): expected {expected}, found {found}")]
    Nonce {
        /// Expected nonce (hex).
        expected: String,
        /// Found (hex).
        found: String,
    },
    /// A PCR selected by the quote has no supplied value.
    #[error("PCR {bank}:{index} is quoted but no value was supplied for it")]
    MissingPcr {
        /// Bank.
        bank: HashAlg,
        /// Index.
        index: u32,
    },
    /// The supplied PCR values do not hash to the quoted digest.
    #[error("pcrDigest: the supplied PCR values hash to {computed}, the quote signs {quoted}")]
    PcrDigest {
        /// Digest of the supplied values (hex).
        computed: String,
        /// Digest in the quote (hex).
        quoted: String,
    },
    /// The event log does not replay to the quoted PCR value.
    #[error("event log replays PCR {bank}:{index} to {replayed}, the quote has {quoted}")]
    EventLog {
        /// Bank.
        bank: HashAlg,
        /// Index.
        index: u32,
        /// Replayed value (hex).
        replayed: String,
        /// Quoted value (hex).
        quoted: String,
    },
    /// An event's data does not match its digest, for an event type whose digest is the hash
    /// of its data.
    #[error("event log: event {index} ({event_type}, PCR {pcr}): {reason}")]
    EventData {
        /// Position in the log.
        index: usize,
        /// PCR.
        pcr: u32,
        /// Event type name.
        event_type: String,
        /// What is wrong.
        reason: String,
    },
    /// The AK certificate certifies another key.
    #[error(
        "AK certificate `{subject}` certifies a different key than the one that signed the quote"
    )]
    AkCertKey {
        /// Subject of the AK certificate.
        subject: String,
    },
    /// The AK certificate chain is not trusted.
    #[error("AK certificate: {0}")]
    AkChain(CertError),
    /// The key that signed is not a restricted signing key of a TPM (any digest could have
    /// been signed with it, a hand-made TPMS_ATTEST too).
    #[error(
        "attestation key: objectAttributes {attributes:#010x}: `{attribute}` must be {}, it is {} (only a restricted signing key fixed to its TPM can attest)",
        if *required { "set" } else { "clear" },
        if *required { "clear" } else { "set" }
    )]
    AkAttribute {
        /// The attribute (TPMA_OBJECT name, or `nameAlg` when the key has no Name).
        attribute: &'static str,
        /// Whether it must be set.
        required: bool,
        /// The key's objectAttributes.
        attributes: u32,
    },
    /// The quote names another key as its signer than the attestation key.
    #[error(
        "qualifiedSigner: expected {expected} (the Qualified Name of the attestation key under the EK), found {found}"
    )]
    QualifiedSigner {
        /// The AK's Name (hex).
        expected: String,
        /// The Name in TPMS_ATTEST (hex).
        found: String,
    },
    /// The evidence is genuine but the reference values do not accept it.
    #[error("policy: {0}")]
    Policy(#[from] TpmPolicyViolation),
}

/// A genuine quote the reference values do not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmPolicyViolation {
    /// A PCR the reference values name is not in the quote.
    #[error("PCR {bank}:{index} has a reference value but is not quoted")]
    PcrNotQuoted {
        /// Bank.
        bank: HashAlg,
        /// Index.
        index: u32,
    },
    /// A PCR has an unexpected value.
    #[error("PCR {bank}:{index}: expected {expected}, found {found}")]
    PcrValue {
        /// Bank.
        bank: HashAlg,
        /// Index.
        index: u32,
        /// Accepted values (hex, `|`-separated).
        expected: String,
        /// Found (hex).
        found: String,
    },
    /// The AK is neither endorsed by a certificate nor pinned, and the policy requires one.
    #[error("attestation key: not endorsed by a certificate chain to a trusted root, nor pinned")]
    AkNotEndorsed,
    /// The AK is not one of the pinned keys.
    #[error(
        "attestation key: SHA-256 of its SubjectPublicKeyInfo {found} is not one of the {count} pinned keys"
    )]
    AkNotPinned {
        /// SPKI SHA-256 (hex).
        found: String,
        /// Number of pinned keys.
        count: usize,
    },
}
