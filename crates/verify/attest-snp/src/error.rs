//! Why an SNP report was rejected.

use veil_attest_core::crypto::SignatureError;
use veil_attest_core::x509::CertError;
use veil_attest_core::{Malformed, UnixTime};

use crate::report::SigningKey;
use crate::tcb::{Product, TcbComponent};

/// An SNP report or its endorsements were not accepted. Each variant names the field or
/// certificate at fault and, where there is one, the expected and the found value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnpError {
    /// The report bytes are not a well-formed report.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// A certificate is unusable or not trusted.
    #[error("{role}: {source}")]
    Certificate {
        /// The certificate's role (VCEK, VLEK, ASK, ...).
        role: &'static str,
        /// What is wrong with it.
        source: CertError,
    },
    /// The signing certificate is not an AMD VCEK or VLEK.
    #[error("signing certificate `{subject}` is not an AMD VCEK or VLEK: {detail}")]
    NotAnAmdSigner {
        /// Its subject.
        subject: String,
        /// What is missing.
        detail: String,
    },
    /// No issuer certificate for the signer was supplied or bundled.
    #[error("no certificate `{issuer}` to verify the {role} against (supply it with the chain)")]
    MissingIssuer {
        /// VCEK or VLEK.
        role: &'static str,
        /// The issuer it names.
        issuer: String,
    },
    /// The report and the certificate disagree on the processor generation.
    #[error("report is from a {report} processor, but the signing certificate is for {cert}")]
    ProductMismatch {
        /// Generation from the report's CPUID fields.
        report: Product,
        /// Generation from the certificate.
        cert: Product,
    },
    /// The report says another kind of key signed it.
    #[error("report says it is signed by a {report:?}, but the certificate is a {cert:?}")]
    SignerMismatch {
        /// KEY_INFO.SIGNING_KEY.
        report: SigningKey,
        /// The certificate supplied.
        cert: SigningKey,
    },
    /// SIGNATURE_ALGO is not ECDSA P-384/SHA-384.
    #[error("signature_algo: expected 1 (ECDSA P-384 with SHA-384), found {found}")]
    SignatureAlgorithm {
        /// The value in the report.
        found: u32,
    },
    /// The report signature does not verify.
    #[error("report signature does not verify with the {role} key: {source}")]
    Signature {
        /// VCEK or VLEK.
        role: &'static str,
        /// The failure.
        source: SignatureError,
    },
    /// REPORTED_TCB differs from the TCB the certificate was issued for.
    #[error("reported_tcb.{component}: the {role} was issued for {cert}, report has {report}")]
    TcbMismatch {
        /// Component.
        component: TcbComponent,
        /// VCEK or VLEK.
        role: &'static str,
        /// SPL in the certificate.
        cert: u8,
        /// SPL in the report.
        report: u8,
    },
    /// CHIP_ID differs from the VCEK's hwID.
    #[error("chip_id: expected the VCEK hwID {cert}, found {report}")]
    ChipIdMismatch {
        /// hwID (hex).
        cert: String,
        /// chip_id (hex).
        report: String,
    },
    /// The certificates were valid, but not at the verification time.
    #[error("{role} `{subject}` is valid {not_before} to {not_after}, verifying as of {now}")]
    OutsideValidity {
        /// Certificate role.
        role: &'static str,
        /// Its subject.
        subject: String,
        /// Start.
        not_before: UnixTime,
        /// End.
        not_after: UnixTime,
        /// Verification time.
        now: UnixTime,
    },
    /// The evidence is genuine but the policy does not accept it.
    #[error("policy: {0}")]
    Policy(#[from] PolicyViolation),
}

/// A genuine report that the reference values do not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// Debugging is allowed by the guest policy and the reference values forbid it.
    #[error("guest policy {policy:#x} allows debugging (bit 19); debug guests are not accepted")]
    Debug {
        /// The guest policy.
        policy: u64,
    },
    /// Wrong VMPL.
    #[error("vmpl: expected {expected}, found {found}")]
    Vmpl {
        /// Required VMPL.
        expected: u32,
        /// VMPL in the report.
        found: u32,
    },
    /// A TCB component is below its minimum.
    #[error("reported_tcb.{component}: expected at least {minimum}, found {found}")]
    TcbTooLow {
        /// Component.
        component: TcbComponent,
        /// Minimum.
        minimum: u8,
        /// Found.
        found: u8,
    },
    /// Launch measurement not in the accepted set.
    #[error("measurement: {found} is not one of the {count} accepted measurements")]
    Measurement {
        /// The report's measurement.
        found: String,
        /// How many are accepted.
        count: usize,
    },
    /// HOST_DATA differs.
    #[error("host_data: expected {expected}, found {found}")]
    HostData {
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
    /// ID key digest not accepted.
    #[error("id_key_digest: {found} is not one of the {count} accepted ID keys")]
    IdKey {
        /// Found.
        found: String,
        /// How many are accepted.
        count: usize,
    },
    /// Guest SVN too low.
    #[error("guest_svn: expected at least {minimum}, found {found}")]
    GuestSvn {
        /// Minimum.
        minimum: u32,
        /// Found.
        found: u32,
    },
    /// Generation not accepted.
    #[error("product: {found} is not an accepted generation")]
    Product {
        /// Found.
        found: Product,
    },
    /// VLEK-signed reports are not accepted.
    #[error("signing key: VLEK-signed reports are not accepted")]
    Vlek,
    /// REPORT_DATA differs from the expected nonce binding.
    #[error("report_data: expected {expected}, found {found}")]
    ReportData {
        /// Expected (zero-extended to 64 bytes).
        expected: String,
        /// Found.
        found: String,
    },
    /// The expected report data is longer than the field.
    #[error("report_data: expected value is {len} bytes, the field holds at most 64")]
    ReportDataTooLong {
        /// Length given.
        len: usize,
    },
}
