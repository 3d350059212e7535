//! Verification of AMD SEV-SNP attestation reports.
//!
//! Trust chain: **ARK** (pinned by SHA-256 fingerprint, per generation) → **ASK** (or
//! **ASVK** for VLEKs) → **VCEK/VLEK** → the report's ECDSA P-384 signature. On top of the
//! signature, the report's REPORTED_TCB must equal the TCB the certificate was issued for,
//! and (for VCEKs, unless masked) CHIP_ID must equal its hwID. Only then are the reference
//! values ([`SnpPolicy`]) applied.
//!
//! Pure: no I/O, no clock. Fetching VCEKs from AMD's KDS is a separate client's job.
//!
//! ```no_run
//! # use veil_attest_snp::*; use veil_attest_core::{UnixTime, x509::Certificate};
//! # fn f(report: &[u8], vcek: &Certificate) -> Result<(), SnpError> {
//! let roots = AmdRoots::pinned().expect("bundled roots are valid");
//! let now = UnixTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
//! let signer = Signer::establish(vcek, &[], roots, now)?; // cacheable
//! let claims = signer.verify_report(report, &SnpPolicy::default(), now)?;
//! println!("measurement {}", claims.report.measurement);
//! # Ok(()) }
//! ```

pub mod cert_table;
mod error;
mod policy;
pub mod report;
mod roots;
mod tcb;
mod verify;

pub use error::{PolicyViolation, SnpError};
pub use policy::{MinTcb, SnpPolicy};
pub use report::{AttestationReport, SigningKey};
pub use roots::{AmdRoots, PINNED_ARK_SHA256, ProductRoots, is_pinned_ark};
pub use tcb::{Product, TcbComponent, TcbVersion};
pub use verify::{Signer, SnpClaims, check_policy, check_report_data, verify};
