//! Why Azure CVM evidence was rejected.

use veil_attest_core::Malformed;
use veil_attest_dcap::DcapError;
use veil_attest_snp::SnpError;
use veil_attest_tpm::TpmError;

/// Azure CVM evidence was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AzureError {
    /// The evidence document lacks a field or holds the wrong type.
    #[error("evidence: `{field}` must be {expected}")]
    Evidence {
        /// Field.
        field: String,
        /// What it must be.
        expected: String,
    },
    /// The HCL report is malformed.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The HCL report holds another kind of hardware report.
    #[error("HCL report holds a {found} report, expected {expected}")]
    ReportType {
        /// Expected.
        expected: &'static str,
        /// Found.
        found: &'static str,
    },
    /// The SEV-SNP report is not valid.
    #[error("SEV-SNP report: {0}")]
    Snp(#[from] SnpError),
    /// The TD quote is not valid.
    #[error("TD quote: {0}")]
    Tdx(#[from] DcapError),
    /// The vTPM quote is not valid.
    #[error("vTPM quote: {0}")]
    Tpm(#[from] TpmError),
    /// A binding between the pieces does not hold.
    #[error("binding: {what}: expected {expected}, found {found}")]
    Binding {
        /// Which binding.
        what: &'static str,
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
}
