//! Verification of Azure confidential VM evidence (SEV-SNP or TDX with a paravisor vTPM).
//!
//! Chain: the **hardware report** (SNP report signed by the VCEK, or a TD quote verified
//! by DCAP) carries in REPORTDATA the hash of the **HCL report's variable data**, which holds
//! the vTPM's attestation key `HCLAkPub`; that key signs the **vTPM quote**, whose extraData
//! is the verifier's nonce and whose PCRs describe the boot. Each link is checked here; the
//! links themselves are verified by the SNP, DCAP and TPM crates.

mod error;
pub mod evidence;
pub mod hcl;
mod verify;

pub use error::AzureError;
pub use evidence::{AzureEvidence, TpmQuoteParts};
pub use hcl::HclReport;
pub use verify::{
    AzureClaims, HclClaims, TdxTrust, TdxVerdict, authenticate_snp_vtpm, authenticate_tdx_vtpm,
    check_user_data,
};
