//! Verification of Intel TDX and SGX quotes (DCAP, ECDSA P-256 attestation keys).
//!
//! Trust chain: **Intel SGX Root CA** (pinned by fingerprint) → **PCK CA** (Platform or
//! Processor) → **PCK certificate** → signs the **QE report** → whose REPORTDATA binds the
//! **attestation key** → which signs the **quote** (header and TD/enclave report). The
//! collateral — TCB info and QE identity (JSON signed by Intel's TCB signing key, which chains
//! to the same root) and the root and PCK CRLs — decides the TCB status: the PCK's SVNs select
//! a platform TCB level, the QE's ISVSVN a QE level, and for TDX the module version and SVN a
//! module level; statuses converge as Intel's QVL converges them.
//!
//! Verified collateral and verified PCK chains are reusable ([`VerifiedCollateral`],
//! [`QuoteVerifier`]); each quote then costs two ECDSA verifications. Pure: no I/O, no clock.
//! `dcap-qvl` serves as the reference implementation in this crate's tests.

pub mod collateral;
mod error;
pub mod pck;
mod policy;
pub mod quote;
pub mod tcb;
mod verify;

pub use collateral::{Collateral, PcsFiles, VerifiedCollateral};
pub use error::{DcapError, DcapPolicyViolation};
pub use policy::{DcapPolicy, HexBytes};
pub use quote::{Body, Quote};
pub use tcb::TcbStatus;
pub use verify::{
    DcapClaims, INTEL_ROOT_SHA256, QuoteVerifier, TcbVerdict, check_policy, intel_root,
    verify_signatures_only,
};
