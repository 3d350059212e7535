//! Why a quote or its collateral was rejected.

use veil_attest_core::crypto::SignatureError;
use veil_attest_core::x509::CertError;
use veil_attest_core::{Malformed, UnixTime};

use crate::tcb::TcbStatus;

/// A quote or its collateral was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DcapError {
    /// The quote is malformed.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// A collateral document is unusable (not JSON, missing fields, bad hex...).
    #[error("collateral {what}: {detail}")]
    Collateral {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A certificate or CRL is not valid or not trusted.
    #[error("{role}: {source}")]
    Certificate {
        /// Its role (PCK, PCK CA, TCB signing, ...).
        role: &'static str,
        /// The failure.
        source: CertError,
    },
    /// The signature over a collateral document does not verify.
    #[error("{what} signature does not verify with the TCB signing key: {source}")]
    CollateralSignature {
        /// Which document.
        what: &'static str,
        /// The failure.
        source: SignatureError,
    },
    /// A collateral document is not current.
    #[error("{what} is valid {issue_date} to {next_update}, verifying as of {now}")]
    CollateralStale {
        /// Which document.
        what: &'static str,
        /// issueDate.
        issue_date: UnixTime,
        /// nextUpdate.
        next_update: UnixTime,
        /// Verification time.
        now: UnixTime,
    },
    /// Collateral and quote do not belong together.
    #[error("{field}: expected {expected}, found {found}")]
    Mismatch {
        /// Which field.
        field: &'static str,
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
    /// The QE report signature does not verify with the PCK key.
    #[error("QE report signature does not verify with the PCK key: {0}")]
    QeReportSignature(SignatureError),
    /// The QE report does not bind the attestation key.
    #[error(
        "QE report_data: expected SHA-256(attestation key || QE auth data) = {expected}, found {found}"
    )]
    QeBinding {
        /// Expected (hex, 64 bytes with zero padding).
        expected: String,
        /// Found (hex).
        found: String,
    },
    /// The quote signature does not verify with the attestation key.
    #[error("quote signature does not verify with the attestation key: {0}")]
    QuoteSignature(SignatureError),
    /// The QE is not the one Intel's QE identity describes.
    #[error("QE identity: {field}: expected {expected}, found {found}")]
    QeIdentity {
        /// Field.
        field: &'static str,
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
    /// No TCB level of the collateral covers the platform.
    #[error("no matching {what} TCB level: {detail}")]
    NoTcbLevel {
        /// Platform, QE or TDX module.
        what: &'static str,
        /// The first shortfall.
        detail: String,
    },
    /// The TDX module is not the one the TCB info describes.
    #[error("TDX module: {0}")]
    TdxModule(String),
    /// The TCB is revoked: rejected whatever the policy.
    #[error("TCB status is Revoked")]
    Revoked,
    /// The evidence is genuine but the reference values do not accept it.
    #[error("policy: {0}")]
    Policy(#[from] DcapPolicyViolation),
}

impl DcapError {
    /// Whether the input itself is unusable (as opposed to a verdict on valid input).
    pub fn is_unusable_input(&self) -> bool {
        matches!(self, DcapError::Malformed(_) | DcapError::Collateral { .. })
    }
}

/// A genuine quote the reference values do not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DcapPolicyViolation {
    /// TCB status not accepted.
    #[error("TCB status {status} is not accepted (accepted: {accepted}); advisories: {advisories}")]
    Status {
        /// Status.
        status: TcbStatus,
        /// Accepted statuses.
        accepted: String,
        /// Advisory IDs.
        advisories: String,
    },
    /// An advisory the policy refuses applies.
    #[error("advisory {0} applies and is refused")]
    Advisory(String),
    /// Debug TD/enclave.
    #[error("{0} has the DEBUG attribute; debug {0}s are not accepted")]
    Debug(&'static str),
    /// A measurement is not accepted.
    #[error("{field}: {found} is not one of the {count} accepted values")]
    Measurement {
        /// Field (mr_td, rtmr2, mr_enclave, ...).
        field: String,
        /// Found.
        found: String,
        /// Accepted count.
        count: usize,
    },
    /// A value differs.
    #[error("{field}: expected {expected}, found {found}")]
    Value {
        /// Field.
        field: &'static str,
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
    /// The expected report data is longer than the field.
    #[error("report_data: expected value is {0} bytes, the field holds at most 64")]
    ReportDataTooLong(usize),
}
